//! # memaware
//!
//! Memorization-aware training (MAT, Bayat, Pezeshki et al., ICLR 2025) from first principles:
//! an f32 tensor and reverse-mode autodiff engine with a CPU backend (and a CUDA backend behind
//! the `cuda` feature), the XRM held-out estimator, MAT and its baselines, and the paper's
//! reproductions.
//!
//! Layers, bottom up (`docs/ARCHITECTURE.md` gives a reading order; `tests/layering.rs`
//! keeps every `crate::` path pointing down):
//! - [`error`], [`rng`], [`shape`], [`io`], [`buffer`], [`progress`]: errors, a seeded generator
//!   with a documented stream, shapes, atomic file writes, host f32 buffers (owned, shared or
//!   mapped from a file), progress events (usable from anywhere);
//! - [`backend`], [`tensor`]: contiguous f32 tensors on a device, and the primitive kernels
//!   each backend provides;
//! - [`autograd`], [`ops`]: the op surface with a backward rule for each op, including the
//!   fused shifted softmax-cross-entropy that MAT trains with;
//! - [`nn`], [`optim`]: layers and optimizers with PyTorch's semantics;
//! - [`data`]: data sets (features, labels, group attributes), batching, generators, files;
//!   [`eval`]: metrics, model selection, memorization scores;
//! - [`algo`]: XRM, MAT and the baselines; [`report`]: tables and figures;
//! - [`recipes`]: each data set's defaults; [`repro`]: the paper's experiments; [`cli`]: the
//!   command line.
//!
//! # Quick start
//!
//! XRM for held-out predictions, then MAT on Figure 1's data (small here, so that the example
//! runs in a moment; `memaware reproduce` runs the full size):
//!
//! ```
//! use memaware::algo::model::{ModelSpec, OptimizerSpec};
//! use memaware::algo::xrm::{run_xrm, XrmConfig, XrmLoss};
//! use memaware::algo::{run_method, Method, TrainConfig};
//! use memaware::data::synthetic::{interpretable, InterpretableConfig};
//! use memaware::Device;
//!
//! # fn main() -> memaware::Result<()> {
//! // Figure 1's data: a spurious feature that agrees with the label on 90% of training.
//! let ds = interpretable(&InterpretableConfig { n: 200, d: 300, ..Default::default() })?;
//! let spec = ModelSpec::linear_no_bias();
//! let sgd = OptimizerSpec::plain_sgd(1e-2);
//! // Phase 1: twins trained on halves; each example's logits from the twin that never saw it.
//! let xrm = run_xrm(
//!     &ds,
//!     &spec,
//!     &XrmConfig {
//!         steps: 300,
//!         batch_size: usize::MAX,
//!         optimizer: sgd.clone(),
//!         loss: XrmLoss::ClassBalanced,
//!         seed: 0,
//!         device: Device::Cpu,
//!         log_every: 100,
//!     },
//! )?;
//! // Phase 2: MAT trains on `CE(f(x_i) + log p_ho(· | x_i), y_i)` and predicts with `f` alone.
//! let cfg = TrainConfig::full_batch(300, sgd, 100);
//! let mat = run_method(&ds, &Method::Mat { tau: 0.1 }, &spec, &cfg, Some(&xrm))?;
//! let last = mat.outcome.checkpoints.last().expect("a checkpoint at the last step");
//! assert!(last.te.worst_group_acc.is_finite());
//! println!("MAT: test worst-group accuracy {:.3}", last.te.worst_group_acc);
//! # Ok(())
//! # }
//! ```

pub mod algo;
pub mod autograd;
pub mod backend;
pub mod buffer;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod progress;
pub mod recipes;
pub mod report;
pub mod repro;
pub mod rng;
pub mod shape;
pub mod tensor;

pub use autograd::{no_grad, GradStore, NoGradGuard};
pub use backend::Device;
pub use error::{Error, Result};
pub use ops::Reduction;
pub use rng::Rng;
pub use shape::Shape;
pub use tensor::{Indices, Tensor};
