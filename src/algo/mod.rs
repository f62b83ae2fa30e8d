//! The method and its baselines: model and optimizer specs ([`model`]), one training loop for
//! every method ([`train`]), the XRM held-out estimator ([`xrm`]), MAT's shift ([`shift`]) and
//! training ([`mat`]).

pub mod mat;
pub mod model;
pub mod shift;
pub mod train;
pub mod xrm;
