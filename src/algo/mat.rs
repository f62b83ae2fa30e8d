//! Memorization-aware training (PAPER.md §2).
//!
//! With held-out logits `h_i` from XRM and temperature `tau`, the constant shift
//! `s_i = ln(p_ho(· | x_i) + 1e-6)` ([`crate::algo::shift::mat_shift`]: `p(yho | x_i) =
//! softmax(h_i / tau)`, global `p(y | yho)` over the whole training set,
//! `p_ho(y | x_i) = Σ_yho p(yho | x_i) p(y | yho)`) enters training as
//!
//! ```text
//! minimise  mean_i CE(f(x_i) + s_i, y_i)
//! ```
//!
//! ([`Method::Mat`](crate::algo::method::Method::Mat), through the fused shifted cross-entropy), and the
//! model predicts with `argmax f(x)`: the shift is **not** used at test time. Examples the
//! held-out model already explains (`p_ho(y_i | x_i)` near 1) add little gradient; examples it
//! gets wrong (the minority under a spurious rule) keep a large one, so `f` must learn what
//! they share with the rest instead of memorizing them.

use super::shift::mat_shift;
use super::xrm::XrmOutput;
use crate::backend::Device;
use crate::data::Dataset;
use crate::error::Result;
use crate::tensor::Tensor;

/// MAT's shift for the training set of `ds`, `n_tr × K` on `device`, from XRM's held-out
/// logits at temperature `tau`.
///
/// Errors: XRM outputs of another shape than `ds` (`Error::Data`), and everything
/// [`mat_shift`] rejects (`tau` not positive and finite, non-finite logits, labels out of
/// range).
pub fn mat_shift_tensor(
    xrm: &XrmOutput,
    ds: &Dataset,
    tau: f32,
    device: &Device,
) -> Result<Tensor> {
    xrm.check_matches(ds)?;
    let (n, k) = (ds.train.n, ds.classes);
    let shift = mat_shift(&xrm.heldout_logits, &ds.train.y, k, tau)?;
    Tensor::from_vec(shift, (n, k), device)
}
