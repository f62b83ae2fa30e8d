//! The method and its baselines.

pub mod shift;
