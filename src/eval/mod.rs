//! Evaluation: per-group accuracy, worst-group accuracy, selection.
