//! The paper's Figure 1 (the interpretable experiment): ERM at `σ_ε = 0` and `0.5`, and XRM +
//! MAT at `σ_ε = 0.5`, 1000 full-batch SGD epochs each, group accuracies every epoch.
//!
//! ```text
//! cargo run --release --example interpretable -- [--seeds N] [--out DIR] [--epochs N]
//! ```
//!
//! A thin wrapper over [`memaware::repro::figure1::run`]: writes `DIR/figure1.{png,svg,json}`
//! (default `results/`) and prints the table.

use std::path::PathBuf;

use clap::Parser;
use memaware::cli::common::with_progress_bar;
use memaware::repro::figure1::{run, Figure1Config};

#[derive(Parser)]
#[command(about = "Reproduce Figure 1 of \"The Pitfalls of Memorization\"")]
struct Args {
    /// Seeds 0, 1, …, N-1; the table reports mean ± sample std over them
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Output folder
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Full-batch epochs of every training phase
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
}

fn main() -> memaware::Result<()> {
    let args = Args::parse();
    let cfg = Figure1Config {
        seeds: (0..args.seeds).collect(),
        epochs: args.epochs,
        out: Some(args.out),
        ..Default::default()
    };
    let report = with_progress_bar("Figure 1 (epochs)", |p| run(&cfg, p))?;
    println!("{}", report.table());
    for f in report.figure_files.iter().chain(&report.json_file) {
        println!("wrote {}", f.display());
    }
    Ok(())
}
