//! `memaware sweep`: random hyperparameter draws × seeds for one or more methods on one data
//! set, with model selection (PAPER.md §4; the protocol is in [`crate::algo::sweep`]).
//!
//! Writes under `OUT/<data set>/`: `xrm/` (XRM's draws and seeds, when needed), one folder per
//! method with `sweep.json` and a folder per run (`run.json`, `checkpoints.jsonl`), and
//! `sweep.md`, the results table, which it also prints.

use std::path::{Path, PathBuf};

use super::common::{self, load_dataset, parse_device, with_progress_bar, ProtocolArgs, DATA_HELP};
use crate::algo::model::{ModelSpec, MODEL_HELP};
use serde::{Deserialize, Serialize};

use crate::algo::sweep::{
    data_digest, prepare_folder, run_sweeps_scoped, Manifest, MethodKind, MethodPlan, Parallelism,
    Scope, SweepConfig,
};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::selection::Criterion;
use crate::recipes::{preset_sweep, Family, Sizes};
use crate::report::table::ResultsTable;
use crate::repro::table1::{entry_dir, row_label};

/// Arguments of `memaware sweep`.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {
    /// The data set. ColorMNIST gets the MLP/Adam recipe of Table 1, anything else a linear
    /// head with SGD (momentum 0.9); see `memaware table1 --help`.
    #[arg(long, required = true, long_help = DATA_HELP)]
    pub data: String,
    /// Methods, comma-separated: erm, group_dro, jtt, xrm_group_dro, mat, rwg, subg, xrm_rwg,
    /// xrm_subg (rwg and subg on XRM's inferred training groups) (hyphens work too, and
    /// groupdro, xrm-groupdro). They share the draws and XRM's phase.
    #[arg(long, required = true, value_delimiter = ',')]
    pub method: Vec<MethodKind>,
    #[arg(long, value_name = "SPEC", help = MODEL_HELP)]
    pub model: Option<ModelSpec>,
    /// Random hyperparameter draws per method (and for XRM unless --xrm-draws) [default: 10].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub draws: Option<usize>,
    /// Seeds the winning draw of each criterion runs over (the first is the selection seed)
    /// [default: 3].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub seeds: Option<usize>,
    /// Training steps per run [default: 1001].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub steps: Option<usize>,
    /// Evaluate every this many steps (and at the last) [default: 50].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub checkpoint_freq: Option<usize>,
    /// Selection criteria, comma-separated: va_wga (validation group annotations), va_gi_wga
    /// (XRM-inferred validation groups), va_avg, va_wca (validation worst-class accuracy: no
    /// annotation, the official `--group_labels no`) [default: va_wga,va_gi_wga].
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// XRM hyperparameter draws (highest final flip rate wins) [default: --draws].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub xrm_draws: Option<usize>,
    /// XRM training steps [default: --steps].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub xrm_steps: Option<usize>,
    /// Seeds the draws and the training runs (seeds `seed .. seed + S`).
    #[arg(long, default_value_t = 0, value_parser = common::parse_seed, allow_hyphen_values = true)]
    pub seed: u64,
    /// Seeds the built-in data sets.
    #[arg(long, default_value_t = 0, value_parser = common::parse_seed, allow_hyphen_values = true)]
    pub data_seed: u64,
    /// Output folder [default: runs/sweep].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `runs` (independent runs in parallel across cores) or `ops` (one run at a time,
    /// parallel inside each op) [default: runs].
    #[arg(long)]
    pub parallel: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Replace a sweep of another configuration found in the output folder. Without it, a
    /// rerun on the same folder with the same configuration keeps every finished run and
    /// runs the rest, and another configuration is an error.
    #[arg(long)]
    pub overwrite: bool,
    /// Step-0 rule, spread, phase-1 estimator, XRM output and sampler.
    #[command(flatten)]
    #[serde(flatten)]
    pub protocol: ProtocolArgs,
    /// Plan the sweep as cluster jobs instead of running it: write `plan.json` and a Slurm
    /// `submit.sh` to DIR (see `memaware job --help`).
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub plan: Option<PathBuf>,
}

/// The sweep the arguments describe, its data set loaded.
pub struct Planned {
    pub ds: Dataset,
    pub plans: Vec<MethodPlan>,
    pub cfg: SweepConfig,
    pub criteria: Vec<Criterion>,
    /// The data set's folder under `--out`.
    pub dir: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    match &args.plan {
        Some(dir) => super::plan::write(dir, super::plan::Command::Sweep(args.clone())),
        None => run_scoped(args, Scope::All),
    }
}

/// Reads the arguments into the sweep they describe.
pub fn planned(args: &Args) -> Result<Planned> {
    if args.data.is_empty() {
        return Err(Error::arg("data", "name a data set with --data"));
    }
    let kinds = &args.method;
    if kinds.is_empty() {
        return Err(Error::arg(
            "method",
            "name at least one method with --method",
        ));
    }
    let criteria: Vec<Criterion> = if args.select.is_empty() {
        vec![Criterion::VaWga, Criterion::VaGiWga]
    } else {
        args.select
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_>>()?
    };
    let ds = load_dataset(&args.data, args.data_seed)?;
    let sizes = Sizes {
        steps: args.steps.unwrap_or(Sizes::FULL.steps),
        draws: args.draws.unwrap_or(Sizes::FULL.draws),
        seeds: args.seeds.unwrap_or(3),
    };
    common::check_seed_range(args.seed, sizes.seeds)?;
    let mut cfg = preset_sweep(Family::of(&ds), sizes, args.seed);
    if let Some(f) = args.checkpoint_freq {
        cfg.checkpoint_freq = f;
    }
    if let Some(m) = &args.model {
        cfg.model = m.clone();
    }
    cfg.xrm.draws = args.xrm_draws.unwrap_or(sizes.draws);
    cfg.xrm.steps = args.xrm_steps.unwrap_or(sizes.steps);
    cfg.parallelism = args
        .parallel
        .as_deref()
        .unwrap_or("runs")
        .parse::<Parallelism>()?;
    args.protocol.apply(&mut cfg);
    cfg.device = parse_device(args.device.as_deref().unwrap_or("cpu"))?;
    let plans: Vec<MethodPlan> = kinds
        .iter()
        .map(|&kind| MethodPlan {
            kind,
            criteria: criteria.clone(),
        })
        .collect();

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/sweep"));
    // A features file's folder carries a digest of its path: two files with the same stem
    // never share (and overwrite) one sweep folder.
    let label = if !common::is_builtin(&args.data) && Path::new(&args.data).exists() {
        common::file_label(Path::new(&args.data), &ds.name)
    } else {
        ds.name.clone()
    };
    let dir = entry_dir(&out, &label);
    Ok(Planned {
        ds,
        plans,
        cfg,
        criteria,
        dir,
    })
}

/// Readies the output folder for the sweep's jobs (its manifest), training nothing.
pub fn prepare(p: &Planned, overwrite: bool) -> Result<()> {
    p.cfg.validate()?;
    p.ds.validate()?;
    std::fs::create_dir_all(&p.dir).map_err(|e| Error::io(&p.dir, e))?;
    let manifest = Manifest::new(&p.ds, &data_digest(&p.ds), &p.plans, &p.cfg)?;
    prepare_folder(&p.dir, &manifest, overwrite)
}

/// Runs the part of the sweep that `scope` names; the whole sweep and [`Scope::Finish`] end
/// by writing and printing `sweep.md`.
pub fn run_scoped(args: &Args, scope: Scope) -> Result<()> {
    let Planned {
        ds,
        plans,
        cfg,
        criteria,
        dir,
    } = planned(args)?;
    let set = with_progress_bar("sweep", |p| {
        run_sweeps_scoped(&ds, &plans, &cfg, &dir, args.overwrite, scope, p)
    })?;
    let Some(set) = set else {
        return Ok(());
    };

    let mut table = ResultsTable::new(vec![ds.name.clone()]);
    let mut notes = String::new();
    for &c in &criteria {
        for s in &set.sweeps {
            if let Some(sel) = s.selection(c) {
                table.push_row(
                    row_label(s.method, c),
                    vec![Some(sel.cell.with_spread(args.protocol.spread))],
                )?;
                let seeds: Vec<String> = sel.seeds.iter().map(|s| s.seed.to_string()).collect();
                notes.push_str(&format!(
                    "- {}: draw {} (lr {:.2e}, batch {}, weight decay {:.2e}, tau {}, eta {:.2e}), \
                     seeds {}\n",
                    row_label(s.method, c),
                    sel.winner,
                    sel.hparams.lr,
                    sel.hparams.batch_size,
                    sel.hparams.weight_decay,
                    sel.hparams.tau,
                    sel.hparams.eta,
                    seeds.join(", ")
                ));
            }
        }
    }
    let md = format!(
        "{}\nTest accuracy (%), mean ± {} std over seeds; Avg is the plain test accuracy.\n\n\
         Winning draws:\n{notes}",
        table.to_markdown(),
        args.protocol.spread
    );
    crate::io::write_text(&dir.join("sweep.md"), &md)?;
    println!("{md}");
    if let Some(x) = &set.xrm {
        println!(
            "XRM: draw {} chosen (final flip rate {:.3} at seed {}); {} of {} seeds degenerate",
            x.record.chosen_draw,
            x.record.seeds[0].final_flip_rate,
            x.record.seeds[0].seed,
            x.record
                .seeds
                .iter()
                .filter(|s| s.degenerate.is_some())
                .count(),
            x.record.seeds.len()
        );
    }
    println!("wrote {}", dir.display());
    Ok(())
}
