//! `memaware sweep` (in progress).

use crate::error::Result;

/// Arguments of `memaware sweep`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`sweep` is not available yet",
    ))
}
