//! `memaware table1` (in progress).

use crate::error::Result;

/// Arguments of `memaware table1`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`table1` is not available yet",
    ))
}
