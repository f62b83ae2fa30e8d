//! # memaware
//!
//! Memorization-aware training (MAT, Bayat, Pezeshki et al., ICLR 2025) from first principles:
//! an f32 tensor and reverse-mode autodiff engine with a CPU backend (and a CUDA backend behind
//! the `cuda` feature), the XRM held-out estimator, MAT and its baselines, and the paper's
//! reproductions.
//!
//! Layers, bottom up:
//! - [`rng`]: a seeded generator with a documented, platform-independent stream;
//! - [`shape`], [`tensor`], [`backend`]: contiguous f32 tensors on a device, and the primitive
//!   kernels each backend provides;
//! - [`autograd`], [`ops`]: the op surface with a backward rule for each op, including the
//!   fused shifted softmax-cross-entropy that MAT trains with;
//! - [`nn`], [`optim`]: layers and optimizers with PyTorch's semantics;
//! - [`data`]: data sets (features, labels, group attributes), batching, generators, files;
//! - [`algo`]: XRM, MAT and the baselines; [`eval`]: metrics and model selection;
//! - [`report`]: tables and figures.

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
