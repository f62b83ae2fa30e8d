//! The `memaware` command line: one module per subcommand, each an `Args` struct (clap) and a
//! `run` function over the library API, so the binary, the examples and the tests share one
//! code path.

pub mod common;
pub mod memscore;
pub mod plan;
pub mod report;
pub mod reproduce;
pub mod sweep;
pub mod table1;
pub mod train;
pub mod xrm;

use clap::{Parser, Subcommand};

/// Memorization-aware training (MAT): the XRM held-out estimator, MAT and its baselines, and
/// the reproductions of "The Pitfalls of Memorization" (ICLR 2025).
#[derive(Parser, Debug)]
#[command(name = "memaware", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Reproduce the paper's Figures 1 and 3 (the default when no subcommand is given).
    Reproduce(reproduce::Args),
    /// Phase 1: held-out logits and inferred groups from XRM twins, K-fold models or a file.
    #[command(visible_alias = "heldout")]
    Xrm(xrm::Args),
    /// Phase 2: train one method (ERM, GroupDRO, JTT, MAT, RWG, SUBG) and record checkpoints.
    Train(train::Args),
    /// Random hyperparameter draws × seeds for one method, with model selection.
    Sweep(sweep::Args),
    /// Summarise recorded runs into a Markdown/JSON table.
    Report(report::Args),
    /// The offline Table 1: every method on ColorMNIST and Waterbirds-shaped features.
    Table1(table1::Args),
    /// Per-example memorization scores (Feldman) under ERM and MAT.
    Memscore(memscore::Args),
    /// Run one job of a sweep planned with `sweep --plan` or `table1 --plan` (a Slurm array
    /// task: the index comes from SLURM_ARRAY_TASK_ID).
    Job(plan::JobArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> crate::Result<()> {
    match cli
        .command
        .unwrap_or(Command::Reproduce(reproduce::Args::default()))
    {
        Command::Reproduce(a) => reproduce::run(&a),
        Command::Xrm(a) => xrm::run(&a),
        Command::Train(a) => train::run(&a),
        Command::Sweep(a) => sweep::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Table1(a) => table1::run(&a),
        Command::Memscore(a) => memscore::run(&a),
        Command::Job(a) => plan::run_job(&a),
    }
}
