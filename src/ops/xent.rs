//! The fused shifted softmax-cross-entropy: MAT's training loss.
//!
//! `loss_i = w_i · (logsumexp(z_i + s_i) - z_iy - s_iy)` with an optional constant shift `s`
//! (no gradient) and optional per-row weights `w` (no gradient), reduced as
//! [`Reduction`] says. Because the upstream gradient of a reduced loss is known when the loss
//! is computed, the backend writes `∂loss/∂z = scale · w_i · (softmax(z_i + s_i) - onehot(y_i))`
//! in the same pass that computes the loss (one read of `z` and `s`, one write of `dz`);
//! backward only multiplies it by the incoming scalar (or per-row vector for
//! `Reduction::None`).

use crate::autograd::{grad_enabled, Op};
use crate::backend::XentArgs;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::{Indices, Tensor};

/// How per-row losses `w_i · l_i` are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The per-row vector.
    None,
    /// `Σ_i w_i l_i / N`.
    Mean,
    /// `Σ_i w_i l_i`.
    Sum,
    /// `Σ_i w_i l_i / Σ_i w_i` (needs weights).
    WeightedMean,
}

impl Tensor {
    /// Fused `cross_entropy(self + shift, labels)` with per-row `weights`; see the module docs.
    /// `self` is `N × C` logits, `shift` `N × C`, `labels` `N` classes, `weights` `N`.
    pub fn shifted_cross_entropy(
        &self,
        labels: &Indices,
        shift: Option<&Tensor>,
        weights: Option<&Tensor>,
        reduction: Reduction,
    ) -> Result<Tensor> {
        const OP: &str = "shifted_cross_entropy";
        let (rows, cols) = self.shape().dims2(OP)?;
        if rows == 0 || cols == 0 {
            return Err(Error::bad_shape(
                OP,
                self.dims(),
                "needs at least one row and one class",
            ));
        }
        if labels.len() != rows {
            return Err(Error::shape_detail(
                OP,
                self.dims(),
                &[labels.len()],
                "one label per row",
            ));
        }
        if labels.device() != self.device() {
            return Err(Error::Device(format!("{OP}: labels on another device")));
        }
        if let Some(s) = shift {
            self.check_same_device(s, OP)?;
            if s.shape() != self.shape() {
                return Err(Error::shape_detail(
                    OP,
                    self.dims(),
                    s.dims(),
                    "shift must match the logits",
                ));
            }
        }
        if let Some(w) = weights {
            self.check_same_device(w, OP)?;
            if w.dims() != [rows] {
                return Err(Error::shape_detail(
                    OP,
                    self.dims(),
                    w.dims(),
                    "weights must be one per row",
                ));
            }
        }
        let grad_scale = match reduction {
            Reduction::None | Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / rows as f32,
            Reduction::WeightedMean => {
                let w = weights
                    .ok_or_else(|| Error::arg("reduction", "WeightedMean needs per-row weights"))?;
                let total = w.sum_all()?.to_scalar()?;
                if !(total.is_finite() && total > 0.0) {
                    return Err(Error::NonFinite {
                        op: OP,
                        what: format!("the weights sum to {total}"),
                    });
                }
                1.0 / total
            }
        };
        let write_grad = grad_enabled() && self.tracks_grad();
        // A reduced loss asks the backend for the sum of the row losses (the bits of
        // `sum_all` over them), which it can add as it computes them.
        let reduced = reduction != Reduction::None;
        let (losses, unit_grad) = {
            let z = self.storage();
            let s = shift.map(|s| s.storage());
            let w = weights.map(|w| w.storage());
            let args = XentArgs {
                shift: s.as_deref(),
                labels: &*labels.storage,
                weights: w.as_deref(),
                rows,
                cols,
                grad_scale,
                write_grad,
            };
            if reduced {
                z.xent_total(args)?
            } else {
                z.xent(args)?
            }
        };
        let device = self.device();
        let (storage, shape) = if !reduced {
            (losses, Shape::from(rows))
        } else if grad_scale == 1.0 {
            (losses, Shape::from(()))
        } else {
            let scaled = losses.unary(crate::backend::UnaryOp::Affine {
                mul: grad_scale,
                add: 0.0,
            })?;
            (scaled, Shape::from(()))
        };
        let unit_grad =
            unit_grad.map(|g| Tensor::from_storage(g, self.shape().clone(), device.clone()));
        let loss = Tensor::from_op(storage, shape, device, &[self], || Op::ShiftedXent {
            logits: self.clone(),
            unit_grad: unit_grad
                .clone()
                .expect("the gradient is written whenever the logits track gradients"),
        });
        super::check_finite(&loss, OP)?;
        Ok(loss)
    }
}
