//! `memaware train` (in progress).

use crate::error::Result;

/// Arguments of `memaware train`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`train` is not available yet",
    ))
}
