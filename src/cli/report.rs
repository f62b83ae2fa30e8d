//! `memaware report` (in progress).

use crate::error::Result;

/// Arguments of `memaware report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`report` is not available yet",
    ))
}
