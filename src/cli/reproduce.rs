//! `memaware reproduce`: the paper's Figures 1 and 3, numbers and pictures, in one command (the
//! default when `memaware` runs without a subcommand).
//!
//! Runs [`crate::repro::figure1::run`] and [`crate::repro::figure3::run`] over seeds
//! `0..--seeds`, writes `OUT/figure1.{png,svg,json}` and `OUT/figure3.{png,svg,json}`, and
//! prints a table of our numbers (mean ± sample std over seeds) beside the paper's PyTorch
//! reference run, the training times, and where the files are.

use std::path::PathBuf;

use super::common::{self, with_progress_bar};
use crate::error::{Error, Result};
use crate::repro::{figure1, figure3};

/// Default number of seeds per run.
pub const DEFAULT_SEEDS: usize = 5;
/// Default output folder.
pub const DEFAULT_OUT: &str = "results";

/// Which figures to reproduce.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Only {
    /// Figure 1: ERM and MAT on the interpretable data.
    Fig1,
    /// Figure 3: good, bad and ugly memorization in regression.
    Fig3,
}

/// Arguments of `memaware reproduce`; `Args::default()` is the main job (both figures, 5
/// seeds, into `results/`, on the CPU, the paper's epochs and step limit).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Args {
    /// Seeds per run (seeds 0, 1, …, N-1); the table reports mean ± sample std over them
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEEDS, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub seeds: usize,
    /// Reproduce only one figure
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Folder for figure1.{png,svg,json} and figure3.{png,svg,json}
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N` (cuda needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Figure 1: full-batch epochs of every training phase (ERM, XRM, MAT)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub epochs: usize,
    /// Figure 3: most Adam steps per fit (the fit stops earlier once MSE < 1e-6)
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub max_steps: usize,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            seeds: DEFAULT_SEEDS,
            only: None,
            out: PathBuf::from(DEFAULT_OUT),
            device: "cpu".into(),
            epochs: 1000,
            max_steps: 100_000,
        }
    }
}

/// Runs `memaware reproduce`.
pub fn run(args: &Args) -> Result<()> {
    if args.seeds == 0 {
        return Err(Error::arg("seeds", "must be at least 1"));
    }
    let device = super::common::parse_device(&args.device)?;
    let seeds: Vec<u64> = (0..args.seeds as u64).collect();
    let want = |figure: Only| args.only.is_none() || args.only == Some(figure);
    let mut files = Vec::new();
    if want(Only::Fig1) {
        eprintln!(
            "Figure 1: ERM (σ_ε = 0, 0.5) and XRM + MAT (σ_ε = 0.5), {} epochs each, {} seed(s)…",
            args.epochs, args.seeds
        );
        let cfg = figure1::Figure1Config {
            seeds: seeds.clone(),
            epochs: args.epochs,
            device: device.clone(),
            out: Some(args.out.clone()),
            ..Default::default()
        };
        let report = with_progress_bar("Figure 1 (epochs)", |p| figure1::run(&cfg, p))?;
        println!("{}", report.table());
        files.extend(report.figure_files.iter().cloned());
        files.extend(report.json_file.iter().cloned());
    }
    if want(Only::Fig3) {
        eprintln!(
            "Figure 3: good / bad / ugly MLP fits, up to {} Adam steps each, {} seed(s)…",
            args.max_steps, args.seeds
        );
        let cfg = figure3::Figure3Config {
            seeds,
            max_steps: args.max_steps,
            device,
            out: Some(args.out.clone()),
            ..Default::default()
        };
        let report = with_progress_bar("Figure 3 (fits)", |p| figure3::run(&cfg, p))?;
        println!("{}", report.table());
        files.extend(report.figure_files.iter().cloned());
        files.extend(report.json_file.iter().cloned());
    }
    println!("Figures and numbers:");
    for f in &files {
        println!("  {}", f.display());
    }
    Ok(())
}
