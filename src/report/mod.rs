//! Results as tables and figures.

pub mod plot;
pub mod table;
