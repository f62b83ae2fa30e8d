//! `memaware memscore`: per-example memorization scores (Feldman) under ERM and MAT, per
//! group, with the XRM proxy ([`crate::repro::memscore`]).
//!
//! The recipe follows the data set: the Figure-1 linear model and full-batch SGD on
//! `interpretable`, the MLP recipe on `colormnist` (whose training groups become
//! (label, colour), the groups that break the spurious rule), a linear head with bias
//! otherwise. Flags override the recipe's values.

use std::path::PathBuf;

use crate::cli::common::{self, load_dataset, parse_device, run_dir, with_progress_bar, DATA_HELP};
use crate::data::colormnist::with_colour_attribute;
use crate::error::{Error, Result};
use crate::recipes::Family;
use crate::repro::memscore::{run_memscore, write_memscore, MemscoreExperiment, Methods};

/// Arguments of `memaware memscore`. Every flag left out takes the recipe's value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Data set (default `interpretable:sigma=0.5`).
    #[arg(long, long_help = DATA_HELP)]
    pub data: Option<String>,
    /// Methods to score: `erm`, `mat` or `both` (default `both`).
    #[arg(long)]
    pub method: Option<String>,
    /// Subset models per method, M (default 20, at least 2).
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub models: Option<usize>,
    /// Share of the training set each subset model trains on, in (0, 1) (default 0.5).
    #[arg(long, value_parser = common::parse_share, allow_hyphen_values = true)]
    pub share: Option<f64>,
    /// Optimizer steps per subset model (and for the XRM run).
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub steps: Option<usize>,
    /// Batch size (`0` or a value above the subset size: full batch).
    #[arg(long, value_parser = common::parse_size, allow_hyphen_values = true)]
    pub batch: Option<usize>,
    /// Learning rate of the recipe's optimizer.
    #[arg(long, value_parser = common::parse_positive, allow_hyphen_values = true)]
    pub lr: Option<f32>,
    /// MAT's temperature (default 0.1).
    #[arg(long, value_parser = common::parse_positive, allow_hyphen_values = true)]
    pub tau: Option<f32>,
    /// Seed of the data, the subsets, the models and XRM (default 0).
    #[arg(long, value_parser = common::parse_seed, allow_hyphen_values = true)]
    pub seed: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N` (default `cpu`).
    #[arg(long)]
    pub device: Option<String>,
    /// Train the subset models one after another instead of in parallel across cores.
    #[arg(long)]
    pub sequential: bool,
    /// Width of the histogram bins, centred on its multiples (default 0.05).
    #[arg(long, value_parser = common::parse_positive, allow_hyphen_values = true)]
    pub bin_width: Option<f32>,
    /// Output folder; the run writes into `OUT/memscore-<data>-<method>-m<M>-seed<seed>`
    /// (default `runs`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_methods(name: &str) -> Result<Methods> {
    match name {
        "erm" => Ok(Methods::Erm),
        "mat" => Ok(Methods::Mat),
        "both" => Ok(Methods::Both),
        other => Err(Error::arg(
            "method",
            format!("`{other}`: expected erm, mat or both"),
        )),
    }
}

/// Loads the data, picks the recipe, applies the flags, runs, writes the outputs and prints
/// the summary table.
pub fn run(args: &Args) -> Result<()> {
    let spec = args
        .data
        .clone()
        .unwrap_or_else(|| "interpretable:sigma=0.5".into());
    let seed = args.seed.unwrap_or(0);
    let methods = parse_methods(args.method.as_deref().unwrap_or("both"))?;
    let device = parse_device(args.device.as_deref().unwrap_or("cpu"))?;
    let mut ds = load_dataset(&spec, seed)?;
    let mut exp = match Family::of(&ds) {
        Family::Interpretable => MemscoreExperiment::interpretable(seed),
        Family::ColorMnist => {
            ds = with_colour_attribute(&ds)?;
            MemscoreExperiment::colormnist(seed)
        }
        Family::Features => MemscoreExperiment::linear_head(seed),
    }
    .on_device(device);
    exp.methods = methods;
    let est = &mut exp.estimator;
    if let Some(m) = args.models {
        est.models = m;
    }
    if let Some(s) = args.share {
        est.share = s;
    }
    if let Some(steps) = args.steps {
        est.steps = steps;
        exp.xrm.steps = steps;
    }
    if let Some(batch) = args.batch {
        let batch = if batch == 0 { usize::MAX } else { batch };
        est.batch_size = batch;
        exp.xrm.batch_size = batch;
    }
    if let Some(lr) = args.lr {
        for o in [&mut est.optimizer, &mut exp.xrm.optimizer] {
            *o = o.with_lr_and_decay(lr, o.weight_decay());
        }
    }
    est.parallel = !args.sequential;
    if let Some(tau) = args.tau {
        exp.tau = tau;
    }
    if let Some(w) = args.bin_width {
        exp.bin_width = w;
    }

    let report = with_progress_bar("subset models", |p| run_memscore(&ds, &exp, p))?;

    let label = format!(
        "memscore-{}-{}-m{}-seed{seed}",
        ds.name,
        args.method.as_deref().unwrap_or("both"),
        exp.estimator.models
    );
    let dir = run_dir(
        &args.out.clone().unwrap_or_else(|| PathBuf::from("runs")),
        &label,
    )?;
    let paths = write_memscore(&report, &dir)?;
    println!("{}", report.summary_markdown());
    for p in paths {
        println!("wrote {}", p.display());
    }
    Ok(())
}
