//! Results as tables and figures.

pub mod table;
pub mod plot;
