//! The paper's experiments, as library functions that the CLI and the examples call.

pub mod figure1;
pub mod figure3;
pub mod memscore;
pub mod table1;
