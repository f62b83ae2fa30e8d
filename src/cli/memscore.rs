//! `memaware memscore` (in progress).

use crate::error::Result;

/// Arguments of `memaware memscore`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    Err(crate::error::Error::arg(
        "command",
        "`memscore` is not available yet",
    ))
}
