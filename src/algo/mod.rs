//! The method and its baselines, bottom up: model and optimizer specs ([`model`]), the per-step
//! objectives ([`objective`]), checkpoint evaluation ([`evaluate`]), one training loop for every
//! method ([`mod@train`]), the XRM held-out estimator ([`xrm`]) and the other phase-1 sources
//! (K-fold, [`kfold`]; external files, [`heldout`]), MAT's shift ([`shift`], [`mat`]),
//! each method's setup ([`method`]), model selection by hyperparameter sweeps ([`sweep`]), and
//! the saved state that lets a killed run continue ([`run_state`]).

pub mod evaluate;
pub mod heldout;
pub mod kfold;
pub mod mat;
pub mod method;
pub mod model;
pub mod objective;
pub mod run_state;
pub mod shift;
pub mod sweep;
pub mod train;
pub mod xrm;

pub use method::{run_method, run_method_with, Method, MethodOutcome};
pub use objective::Objective;
pub use train::{train, TrainConfig, TrainOutcome, TrainSetup};
