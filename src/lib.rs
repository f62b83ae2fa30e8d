//! # memaware
//!
//! Memorization-aware training (MAT, Bayat, Pezeshki et al., ICLR 2025) from first principles.
//!
//! Layers, bottom up:
//! - [`rng`]: a seeded generator with a documented, platform-independent stream;
//! - [`data`]: data sets (features, labels, group attributes), splits, batching, generators
//!   and file formats;
//! - [`eval`]: per-group accuracy, worst-group accuracy, checkpoint selection;
//! - [`report`]: tables and figures.

pub mod algo;
pub mod data;
pub mod error;
pub mod eval;
pub mod report;
pub mod rng;

pub use error::{Error, Result};
pub use rng::Rng;
