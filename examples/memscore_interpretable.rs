//! The paper's Figure 2 on the Figure-1 data (`σ_ε = 0.5`): memorization scores of every
//! training example under ERM and MAT, per group, with the Figure-1 recipe (linear model without
//! bias, full-batch plain SGD at lr 1e-2, 1000 steps; MAT's shift from one XRM run, `τ = 0.1`).
//!
//! ```text
//! cargo run --release --example memscore_interpretable -- [--models M] [--seed S] [--out DIR]
//!     [--compare-sequential]
//! ```
//!
//! A thin wrapper over [`memaware::repro::memscore`]: writes `DIR/memscore.json`,
//! `memscore_summary.md` and the histograms `memscore_{acc,prob}.{png,svg}` (default
//! `results/memscore/interpretable`) and prints the summary. With `--compare-sequential` it
//! also trains ERM's subset models one after another, checks that the records are bitwise the
//! same as the parallel run's, and prints both wall times.

use std::path::PathBuf;

use clap::Parser;
use memaware::data::synthetic::{interpretable, InterpretableConfig};
use memaware::repro::memscore::{
    estimate, run_memscore, write_memscore, MemscoreExperiment, ScoredMethod,
};

#[derive(Parser)]
#[command(about = "Figure 2 (memorization scores, ERM vs MAT) on the Figure-1 data")]
struct Args {
    /// Subset models per method
    #[arg(long, default_value_t = 20)]
    models: usize,
    /// Seed of the data, the subsets, the models and XRM
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Example-specific noise scale
    #[arg(long, default_value_t = 0.5)]
    sigma: f32,
    /// Output folder
    #[arg(long, default_value = "results/memscore/interpretable")]
    out: PathBuf,
    /// Also time ERM's subset models trained sequentially, and check they match
    #[arg(long)]
    compare_sequential: bool,
}

fn main() -> memaware::Result<()> {
    let args = Args::parse();
    let ds = interpretable(&InterpretableConfig {
        sigma_eps: args.sigma,
        seed: args.seed,
        ..Default::default()
    })?;
    let mut exp = MemscoreExperiment::interpretable(args.seed);
    exp.estimator.models = args.models;
    let report = run_memscore(&ds, &exp, &|_| {})?;
    let paths = write_memscore(&report, &args.out)?;
    println!("{}", report.summary_markdown());
    for p in paths {
        println!("wrote {}", p.display());
    }
    if args.compare_sequential {
        let erm = report.erm.as_ref().expect("the recipe scores ERM");
        let mut sequential_cfg = exp.estimator.clone();
        sequential_cfg.parallel = false;
        let sequential = estimate(&ds, &ScoredMethod::Erm, &sequential_cfg, &|_| {})?;
        println!(
            "ERM, {} subset models on {} threads: parallel {:.2} s, sequential {:.2} s \
             (speed-up {:.2}×); records identical: {}",
            args.models,
            rayon::current_num_threads(),
            erm.wall_s,
            sequential.wall_s,
            sequential.wall_s / erm.wall_s,
            sequential.records == erm.records
        );
    }
    Ok(())
}
