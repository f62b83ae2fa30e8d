//! The paper's Figure 3 (good, bad and ugly memorization): an MLP 31 → 300 → 300 → 1 fitted
//! with Adam until MSE < 1e-6 for `σ_ε = 1e-4` (good), `1e-3` (bad) and `0` (ugly).
//!
//! ```text
//! cargo run --release --example good_bad_ugly -- [--seeds N] [--out DIR] [--max-steps N]
//! ```
//!
//! A thin wrapper over [`memaware::repro::figure3::run`]: writes `DIR/figure3.{png,svg,json}`
//! (default `results/`) and prints the table.

use std::path::PathBuf;

use clap::Parser;
use memaware::cli::common::with_progress_bar;
use memaware::repro::figure3::{run, Figure3Config};

#[derive(Parser)]
#[command(about = "Reproduce Figure 3 of \"The Pitfalls of Memorization\"")]
struct Args {
    /// Seeds 0, 1, …, N-1; the table reports mean ± sample std over them
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Output folder
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Most Adam steps per fit
    #[arg(long, default_value_t = 100_000)]
    max_steps: usize,
}

fn main() -> memaware::Result<()> {
    let args = Args::parse();
    let cfg = Figure3Config {
        seeds: (0..args.seeds).collect(),
        max_steps: args.max_steps,
        out: Some(args.out),
        ..Default::default()
    };
    let report = with_progress_bar("Figure 3 (fits)", |p| run(&cfg, p))?;
    println!("{}", report.table());
    for f in report.figure_files.iter().chain(&report.json_file) {
        println!("wrote {}", f.display());
    }
    Ok(())
}
