//! The method and its baselines: model and optimizer specs ([`model`]), one training loop for
//! every method ([`train`]), the XRM held-out estimator ([`xrm`]), MAT's shift ([`shift`]) and
//! training ([`mat`]), and model selection by hyperparameter sweeps ([`sweep`]).

pub mod mat;
pub mod model;
pub mod shift;
pub mod sweep;
pub mod train;
pub mod xrm;
mod zero_features;
