//! `memaware reproduce` (in progress).

use crate::error::Result;

/// Arguments of `memaware reproduce`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`reproduce` is not available yet",
    ))
}
