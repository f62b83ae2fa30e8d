//! Evaluation: per-group accuracy, worst-group accuracy, selection.

pub mod memscore;
pub mod metrics;
pub mod selection;
