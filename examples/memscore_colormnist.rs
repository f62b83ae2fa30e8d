//! The paper's Figure 2 on ColorMNIST (built from the bundled 5000-digit MNIST sample, or from
//! full MNIST with `--mnist DIR`): memorization scores under ERM and MAT per (label, colour)
//! group, with the MLP recipe (392 → 390 → 390 → 2, ReLU, Xavier; Adam lr 1e-3, weight decay
//! 1e-4, batch 128, 600 steps; MAT's shift from one class-balanced XRM run, `τ = 0.1`).
//!
//! ```text
//! cargo run --release --example memscore_colormnist -- [--models M] [--steps N] [--seed S]
//!     [--tau T] [--mnist DIR] [--out DIR]
//! ```
//!
//! The training groups are (label, colour): the groups whose colour disagrees with the label
//! are the minority that the spurious colour rule gets wrong. Writes the same files as
//! `memscore_interpretable` (default `results/memscore/colormnist`) and prints the summary.

use std::path::PathBuf;

use clap::Parser;
use memaware::cli::common::load_dataset;
use memaware::data::colormnist::with_colour_attribute;
use memaware::repro::memscore::{run_memscore, write_memscore, MemscoreExperiment};

#[derive(Parser)]
#[command(about = "Figure 2 (memorization scores, ERM vs MAT) on ColorMNIST")]
struct Args {
    /// Subset models per method
    #[arg(long, default_value_t = 20)]
    models: usize,
    /// Adam steps per subset model and for XRM
    #[arg(long, default_value_t = 600)]
    steps: usize,
    /// MAT's temperature
    #[arg(long, default_value_t = 0.1)]
    tau: f32,
    /// Seed of the data, the subsets, the models and XRM
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder with the MNIST IDX files (default: the bundled 5000-digit sample)
    #[arg(long)]
    mnist: Option<String>,
    /// Output folder
    #[arg(long, default_value = "results/memscore/colormnist")]
    out: PathBuf,
}

fn main() -> memaware::Result<()> {
    let args = Args::parse();
    let spec = match &args.mnist {
        Some(dir) => format!("colormnist:{dir}"),
        None => "colormnist".to_string(),
    };
    let ds = with_colour_attribute(&load_dataset(&spec, args.seed)?)?;
    let mut exp = MemscoreExperiment::colormnist(args.seed);
    exp.estimator.models = args.models;
    exp.estimator.steps = args.steps;
    exp.xrm.steps = args.steps;
    exp.tau = args.tau;
    let report = run_memscore(&ds, &exp, &|_| {})?;
    let paths = write_memscore(&report, &args.out)?;
    println!("{}", report.summary_markdown());
    for p in paths {
        println!("wrote {}", p.display());
    }
    Ok(())
}
