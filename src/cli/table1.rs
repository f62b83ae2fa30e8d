//! `memaware table1`: the offline Table 1 ([`crate::repro::table1`]).
//!
//! Loads every data set first (so a bad feature file fails before any training), runs every
//! method's sweep on each, writes `table1.md` and `table1.json` under `--out`, and prints the
//! Markdown, the worst-group margins and the wall time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::common::{self, load_dataset, parse_device, with_progress_bar, ProtocolArgs, DATA_HELP};
use crate::algo::model::{ModelSpec, MODEL_HELP};
use crate::algo::sweep::{MethodKind, Parallelism, XrmOutputs};
use crate::data::features::load_features;
use crate::error::{Error, Result};
use crate::eval::selection::Spread;
use crate::recipes::{preset_sweep, Family, Sizes};
use serde::{Deserialize, Serialize};

use crate::algo::sweep::Scope;
use crate::repro::table1::{
    entry_dir, margin_lines, run_table1_scoped, Table1Config, Table1Entry, TABLE_JSON, TABLE_MD,
};

/// Built-in columns of the table, by their `--data` names, with their column labels.
const BUILTINS: [(&str, &str); 2] = [
    ("colormnist", "ColorMNIST"),
    ("waterbirds-like", "Waterbirds-like"),
];

/// Arguments of `memaware table1`.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct Args {
    /// Smoke-test sizes: 201 steps, 2 draws, 2 seeds (under 2 minutes in release); the full
    /// table runs 1001 steps, 10 draws and 5 seeds.
    #[arg(long)]
    pub quick: bool,
    /// Output folder: table1.md, table1.json and one folder of runs per data set
    /// [default: results/table1].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Adds a column (repeatable). A features file (`.safetensors`, or a folder with `x.npy`
    /// and `meta.csv`) gets a linear head trained with SGD; a built-in name works too.
    #[arg(long = "data", value_name = "SPEC", long_help = DATA_HELP)]
    pub data: Vec<String>,
    /// Leave out the built-in columns (ColorMNIST, Waterbirds-like); only `--data` columns.
    #[arg(long)]
    pub no_builtin: bool,
    /// Seeds the hyperparameter draws and the training runs (seeds `seed .. seed + S`).
    #[arg(long, default_value_t = 0, value_parser = common::parse_seed, allow_hyphen_values = true)]
    pub seed: u64,
    /// Seeds the built-in data sets (splits, label noise, synthetic features).
    #[arg(long, default_value_t = 0, value_parser = common::parse_seed, allow_hyphen_values = true)]
    pub data_seed: u64,
    /// Hyperparameter draws per method (and for XRM) [default: 10, quick 2].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub draws: Option<usize>,
    /// Seeds the winning draw runs over [default: 5, quick 2].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub seeds: Option<usize>,
    /// Training steps of every run, XRM's included [default: 1001, quick 201].
    #[arg(long, value_parser = common::parse_count, allow_hyphen_values = true)]
    pub steps: Option<usize>,
    /// Methods, comma-separated, spelled as for `sweep --method`
    /// [default: erm,group_dro,jtt,xrm_group_dro,mat].
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<MethodKind>,
    /// `runs`: independent runs in parallel across cores (one task per run); `ops`: one run
    /// at a time, parallel inside each op [default: runs].
    #[arg(long)]
    pub parallel: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Replace runs of another configuration found in the output folder. Without it, a rerun
    /// on the same folder with the same configuration keeps every finished run and runs the
    /// rest, and another configuration is an error.
    #[arg(long)]
    pub overwrite: bool,
    /// Step-0 rule, spread, phase-1 estimator, XRM output and sampler.
    #[command(flatten)]
    #[serde(flatten)]
    pub protocol: ProtocolArgs,
    /// The model of every column, replacing each data set's recipe (see `memaware train
    /// --help`).
    #[arg(long, value_name = "SPEC", help = MODEL_HELP)]
    pub model: Option<ModelSpec>,
    /// The official protocol's settings where the defaults differ (docs/fidelity.md):
    /// zero-initialised linear heads on feature columns (`linear:zeros`), MAT on XRM's
    /// selection-seed output at every seed (`--xrm-output first`), and the population std
    /// (`--spread population`). Step 0 is dropped from selection by default already.
    #[arg(long)]
    pub official: bool,
    /// More selection criteria, comma-separated (e.g. `va_wca`, worst-class accuracy, the
    /// official no-annotation setting; `va_avg`): each adds a block of rows, one per method,
    /// after the `va_wga` and `va_gi_wga` blocks.
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Plan the table as cluster jobs instead of running it: write `plan.json` and a Slurm
    /// `submit.sh` to DIR (see `memaware job --help`).
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub plan: Option<PathBuf>,
}

/// Load average of the last minute, when the system tells it (Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The table's configuration from the arguments, data sets loaded and validated.
pub fn config(args: &Args) -> Result<Table1Config> {
    let base = if args.quick {
        Sizes::QUICK
    } else {
        Sizes::FULL
    };
    let sizes = Sizes {
        steps: args.steps.unwrap_or(base.steps),
        draws: args.draws.unwrap_or(base.draws),
        seeds: args.seeds.unwrap_or(base.seeds),
    };
    let parallelism: Parallelism = args.parallel.as_deref().unwrap_or("runs").parse()?;
    let device = parse_device(args.device.as_deref().unwrap_or("cpu"))?;
    let methods: Vec<MethodKind> = if args.methods.is_empty() {
        MethodKind::TABLE1.to_vec()
    } else {
        args.methods.clone()
    };

    common::check_seed_range(args.seed, sizes.seeds)?;
    let mut specs: Vec<(String, String)> = Vec::new();
    if !args.no_builtin {
        specs.extend(BUILTINS.iter().map(|(s, l)| (s.to_string(), l.to_string())));
    }
    for spec in &args.data {
        let path = std::path::Path::new(spec);
        let label = if !common::is_builtin(spec) && path.exists() {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.clone())
        } else {
            spec.clone()
        };
        specs.push((spec.clone(), label));
    }
    // Each data set's column label names its folder under --out: two data sets with one
    // label would share (and overwrite) a folder and a column.
    for (i, (spec, label)) in specs.iter().enumerate() {
        let folder = entry_dir(Path::new(""), label);
        if let Some((first, _)) = specs[..i]
            .iter()
            .find(|(_, l)| entry_dir(Path::new(""), l) == folder)
        {
            return Err(Error::arg(
                "data",
                format!(
                    "`{first}` and `{spec}` would share the column and folder `{label}`: \
                     rename one of the files (the label is the file's stem)"
                ),
            ));
        }
    }
    if specs.is_empty() {
        return Err(Error::arg(
            "data",
            "no data set: drop --no-builtin or add --data",
        ));
    }
    let mut entries = Vec::with_capacity(specs.len());
    for (spec, label) in specs {
        let path = std::path::Path::new(&spec);
        // A path loads as a features file, whose errors name the file, tensor and problem.
        let dataset = if !common::is_builtin(&spec) && path.exists() {
            let ds = load_features(path, &label)?;
            ds.validate()?;
            ds
        } else {
            load_dataset(&spec, args.data_seed)?
        };
        let mut sweep = preset_sweep(Family::of(&dataset), sizes, args.seed);
        sweep.parallelism = parallelism;
        sweep.device = device.clone();
        args.protocol.apply(&mut sweep);
        if args.official {
            sweep.xrm.outputs = XrmOutputs::First;
            if Family::of(&dataset) == Family::Features {
                sweep.model = "linear:zeros".parse()?;
            }
        }
        if let Some(m) = &args.model {
            sweep.model = m.clone();
        }
        entries.push(Table1Entry {
            label,
            dataset,
            sweep,
        });
    }
    Ok(Table1Config {
        entries,
        methods,
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results/table1")),
        overwrite: args.overwrite,
        extra_criteria: args
            .select
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_>>()?,
        spread: if args.official {
            Spread::Population
        } else {
            args.protocol.spread
        },
    })
}

pub fn run(args: &Args) -> Result<()> {
    match &args.plan {
        Some(dir) => super::plan::write(dir, super::plan::Command::Table1(args.clone())),
        None => run_scoped(args, Scope::All),
    }
}

/// Runs the part of the table that `scope` names; the whole table and [`Scope::Finish`] end
/// by writing and printing it.
pub fn run_scoped(args: &Args, scope: Scope) -> Result<()> {
    let cfg = config(args)?;
    let load_before = load_average();
    let start = Instant::now();
    let outcome = with_progress_bar("table1", |p| run_table1_scoped(&cfg, scope, p))?;
    let Some(outcome) = outcome else {
        return Ok(());
    };
    let seconds = start.elapsed().as_secs_f64();
    println!("{}", outcome.markdown);
    for line in margin_lines(&outcome.record.margins) {
        println!("{line}");
    }
    let load = |l: Option<f64>| l.map_or("unknown".to_string(), |v| format!("{v:.2}"));
    println!(
        "\ntable1: {seconds:.1} s on {} threads (load average {} before, {} after); wrote {} and {}",
        rayon::current_num_threads(),
        load(load_before),
        load(load_average()),
        cfg.out.join(TABLE_MD).display(),
        cfg.out.join(TABLE_JSON).display()
    );
    Ok(())
}
