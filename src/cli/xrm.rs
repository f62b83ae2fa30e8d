//! `memaware xrm` (in progress).

use crate::error::Result;

/// Arguments of `memaware xrm`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`xrm` is not available yet",
    ))
}
