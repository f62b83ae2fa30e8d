//! Helpers shared by the subcommands: naming a data set on the command line, choosing the
//! device, output folders that say which run produced what, progress bars that stay quiet
//! when the output is not a terminal, and the flags `train` and `xrm` share, filled in from
//! the data set's recipe ([`crate::recipes`]) when left open.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::algo::model::{ModelSpec, OptimizerKind, OptimizerSpec, MODEL_HELP};
use crate::algo::sweep::{Estimator, SweepConfig, XrmOutputs};
use crate::backend::Device;
use crate::data::batch::Sampler;
use crate::data::colormnist::{
    bundled_mnist_sample, color_mnist, load_mnist_idx, ColorMnistConfig,
};
use crate::data::features::load_features;
use crate::data::synthetic::{
    interpretable, waterbirds_like, InterpretableConfig, WaterbirdsLikeConfig,
};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::selection::{Spread, StepZero};
use crate::progress::{Progress, ProgressFn};
use crate::recipes;

/// Help text for `--data`.
pub const DATA_HELP: &str = "data set: `interpretable` (Figure 1; `interpretable:sigma=0.5` \
sets sigma_eps), `colormnist` (from the bundled 5000-digit MNIST sample, or \
`colormnist:DIR` with the MNIST IDX files), `waterbirds-like` (synthetic 2048-d features; \
`waterbirds-like:imperfect` has a weaker background, so held-out errors find the minority only \
in part; options core, core_std, spurious, spurious_std, noise, d as key=value), \
or a path to a features file (`.safetensors`, or a folder with `x.npy` + `meta.csv`)";

/// `s` with every character but ASCII letters, digits, `.`, `_` and `-` replaced by `_`: a
/// name that is safe in a path on any file system.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `spec` names a built-in data set (`name` or `name:options`). Built-in names win
/// over a file or folder of the same name in the working folder.
pub fn is_builtin(spec: &str) -> bool {
    let name = spec.split_once(':').map_or(spec, |(n, _)| n);
    matches!(name, "interpretable" | "colormnist" | "waterbirds-like")
}

/// Loads the data set named by `spec` (see [`DATA_HELP`]), seeded by `seed`, and validates it.
pub fn load_dataset(spec: &str, seed: u64) -> Result<Dataset> {
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    let ds = match name {
        "interpretable" => {
            let mut cfg = InterpretableConfig {
                seed,
                ..Default::default()
            };
            if let Some(arg) = arg {
                for kv in arg.split(',') {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| Error::arg("data", format!("`{kv}`: expected key=value")))?;
                    let num = |v: &str| -> Result<f64> {
                        match v.trim().parse::<f64>() {
                            Ok(x) if x.is_finite() => Ok(x),
                            Ok(_) => Err(Error::arg(
                                "data",
                                format!("`{k}={v}`: `{k}` must be a finite number"),
                            )),
                            Err(_) => Err(Error::arg(
                                "data",
                                format!("`{k}={v}`: `{k}` is not a number"),
                            )),
                        }
                    };
                    // A size: a whole number >= 0, never truncated or wrapped.
                    let int = |v: &str| -> Result<usize> {
                        whole(v)
                            .ok()
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| {
                                Error::arg(
                                    "data",
                                    format!("`{k}={v}`: `{k}` must be a whole number >= 0"),
                                )
                            })
                    };
                    match k {
                        "sigma" | "sigma_eps" => cfg.sigma_eps = num(v)? as f32,
                        "n" => cfg.n = int(v)?,
                        "d" => cfg.d = int(v)?,
                        "majority" => cfg.train_majority = num(v)?,
                        "spurious" => cfg.spurious_scale = num(v)? as f32,
                        other => {
                            return Err(Error::arg(
                                "data",
                                format!("unknown interpretable option `{other}` (sigma, n, d, majority, spurious)"),
                            ))
                        }
                    }
                }
            }
            interpretable(&cfg)?
        }
        "colormnist" => {
            let (images, labels) = match arg {
                Some(dir) => load_mnist_idx(dir)?,
                None => bundled_mnist_sample()?,
            };
            let cfg = ColorMnistConfig {
                seed,
                ..Default::default()
            };
            color_mnist(&images, &labels, &cfg)?
        }
        "waterbirds-like" => {
            let mut cfg = WaterbirdsLikeConfig {
                seed,
                ..Default::default()
            };
            if let Some(options) = arg {
                cfg.apply_options(options)?;
            }
            waterbirds_like(&cfg)?
        }
        _ => {
            let path = Path::new(spec);
            if !path.exists() {
                return Err(Error::arg(
                    "data",
                    format!("`{spec}` is neither a built-in data set nor an existing file"),
                ));
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "features".into());
            load_features(path, &name)?
        }
    };
    ds.validate()?;
    Ok(ds)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    Device::parse(name)
}

/// Creates (if needed) and returns `out/label`, the folder of one run.
pub fn run_dir(out: &Path, label: &str) -> Result<PathBuf> {
    let dir = out.join(label);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, message: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{msg:>24} [{bar:32}] {pos}/{len} ({elapsed} / ~{eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

/// Runs `job` with a progress bar on stderr (hidden when stderr is not a terminal) driven by
/// the [`Progress`] it reports; a finished run's label becomes the bar's message.
pub fn with_progress_bar<T>(message: &str, job: impl FnOnce(ProgressFn<'_>) -> T) -> T {
    let bar = progress_bar(0, message);
    let report = |p: Progress<'_>| match p {
        Progress::Queued(n) => bar.inc_length(n),
        Progress::Done(n) => bar.inc(n),
        Progress::Finished(label) => {
            bar.set_message(label.to_string());
            bar.inc(1);
        }
    };
    let out = job(&report);
    bar.finish_and_clear();
    out
}

/// A spinner on stderr for work that reports no progress of its own (elapsed time only),
/// hidden when stderr is not a terminal.
pub fn spinner(message: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Parses `--batch-size`: a positive integer, or `full` (every step sees the whole training
/// set; returned as `usize::MAX`, which the batchers read as full batch). Any value at least
/// the training set's size is full batch, so a huge one is accepted.
pub fn parse_batch_size(s: &str) -> std::result::Result<usize, String> {
    if s == "full" {
        return Ok(usize::MAX);
    }
    match whole(s) {
        Ok(b) if b >= 1 => Ok(usize::try_from(b).unwrap_or(usize::MAX)),
        _ => Err("must be a whole number of at least 1, or `full`".into()),
    }
}

// -------------------------------------------------------------------------------------------
// Value parsers for the numeric flags. Each numeric flag also takes values that start with a
// hyphen (`allow_hyphen_values`), so that `--lr -1` reaches its parser, which names the flag
// through clap (`invalid value '-1' for '--lr <LR>': …`) and says what is allowed, instead of
// clap's `unexpected argument '-1' found`.

/// The largest value a count flag (`--steps`, `--draws`, `--seeds`, `--checkpoint-freq`, …)
/// accepts: a larger one could not finish, and products of counts must not overflow.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// The largest value a rate or scale flag (`--lr`, `--weight-decay`, `--tau`, `--eta`,
/// `--jtt-lambda`, `--bin-width`) accepts: a larger one is a typo, and overflows float32
/// training at once.
pub const MAX_SCALE: f32 = 1e4;

/// A whole number, or its problem in words (a sign counts: `-3` is a whole number, below any
/// count's range).
fn whole(s: &str) -> std::result::Result<i128, &'static str> {
    let t = s.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a whole number");
    }
    // Longer than any i128: far out of range either way.
    Ok(t.parse::<i128>().unwrap_or(if t.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    }))
}

/// A whole number in `min..=max`.
fn whole_in(s: &str, min: u64, max: u64) -> std::result::Result<u64, String> {
    let allowed = format!("must be a whole number from {min} to {max}");
    match whole(s) {
        Ok(n) if n >= min as i128 && n <= max as i128 => Ok(n as u64),
        Ok(n) if n < min as i128 => Err(allowed),
        Ok(_) => Err(format!("too large: {allowed}")),
        Err(why) => Err(format!("{why}: {allowed}")),
    }
}

/// A count: a whole number from 1 to [`MAX_COUNT`].
pub fn parse_count(s: &str) -> std::result::Result<usize, String> {
    whole_in(s, 1, MAX_COUNT).map(|n| n as usize)
}

/// A seed: a whole number from 0 to 2^64 − 1.
pub fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    whole_in(s, 0, u64::MAX)
}

/// A whole number >= 0 with no upper bound (a batch size where 0 and huge values mean full
/// batch).
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    whole_in(s, 0, u64::MAX).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A finite float (`f32` or `f64`), with `ok` saying whether it is in range and `allowed`
/// saying what is.
fn float_in<T: std::str::FromStr + Copy + Into<f64>>(
    s: &str,
    ok: impl Fn(f64) -> bool,
    allowed: &str,
) -> std::result::Result<T, String> {
    let v: T = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number: must be {allowed}"))?;
    let x: f64 = v.into();
    if x.is_nan() {
        return Err(format!("NaN: must be {allowed}"));
    }
    if x.is_infinite() {
        return Err(format!("infinite or out of range: must be {allowed}"));
    }
    if !ok(x) {
        return Err(format!("must be {allowed}"));
    }
    Ok(v)
}

/// A rate or scale in `(0, MAX_SCALE]`: `--lr`, `--tau`, `--jtt-lambda`, `--bin-width`.
pub fn parse_positive(s: &str) -> std::result::Result<f32, String> {
    float_in(
        s,
        |v| v > 0.0 && v <= MAX_SCALE as f64,
        &format!("a number above 0 and at most {MAX_SCALE}"),
    )
}

/// A rate or scale in `[0, MAX_SCALE]`: `--weight-decay`, `--eta`.
pub fn parse_non_negative(s: &str) -> std::result::Result<f32, String> {
    float_in(
        s,
        |v| (0.0..=MAX_SCALE as f64).contains(&v),
        &format!("a number from 0 to {MAX_SCALE}"),
    )
}

/// `--momentum`: in `[0, 1)`.
pub fn parse_momentum(s: &str) -> std::result::Result<f32, String> {
    float_in(
        s,
        |v| (0.0..1.0).contains(&v),
        "a number from 0 up to, not including, 1",
    )
}

/// A share strictly between 0 and 1 (`memscore --share`).
pub fn parse_share(s: &str) -> std::result::Result<f64, String> {
    float_in(
        s,
        |v| v > 0.0 && v < 1.0,
        "a number strictly between 0 and 1",
    )
}

/// The flags `xrm` and `train` share: the data, the model, the optimizer, the run length,
/// the seed, the device and the output folder.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, value_name = "SPEC", help = DATA_HELP)]
    pub data: String,
    /// Seed of the data set's generator (synthetic draws, ColorMNIST's split and noise)
    /// [default: --seed]. Phase 1 and phase 2 must use the same data: give both the same
    /// --seed/--data-seed.
    #[arg(long, value_name = "N", value_parser = parse_seed, allow_hyphen_values = true)]
    pub data_seed: Option<u64>,
    #[arg(long, value_name = "SPEC", help = MODEL_HELP)]
    pub model: Option<ModelSpec>,
    /// Optimizer steps (one batch each) [default: per data set]
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    pub steps: Option<usize>,
    /// Examples per batch, or `full` for the whole training set every step (any value >= the
    /// training set's size is full batch) [default: per data set]
    #[arg(long, value_name = "B|full", value_parser = parse_batch_size, allow_hyphen_values = true)]
    pub batch_size: Option<usize>,
    /// Optimizer: sgd, adam or adamw [default: per data set]
    #[arg(long, value_name = "NAME")]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate [default: per data set and optimizer]
    #[arg(long, value_name = "LR", value_parser = parse_positive, allow_hyphen_values = true)]
    pub lr: Option<f32>,
    /// SGD momentum in [0, 1) (no dampening, no Nesterov); sgd only [default: per data set]
    #[arg(long, value_name = "M", value_parser = parse_momentum, allow_hyphen_values = true)]
    pub momentum: Option<f32>,
    /// Weight decay: L2 for sgd and adam, decoupled for adamw [default: per data set]
    #[arg(long, value_name = "WD", value_parser = parse_non_negative, allow_hyphen_values = true)]
    pub weight_decay: Option<f32>,
    /// Seed of the run: model initialization, batch order, and (XRM) the held-in assignment
    /// and label flips. The same seed gives bitwise-identical results.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_seed,
          allow_hyphen_values = true)]
    pub seed: u64,
    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`)
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
    /// Output folder; each run writes into its own subfolder named after the run
    #[arg(long, value_name = "DIR", default_value = "runs")]
    pub out: PathBuf,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            data: "interpretable".into(),
            data_seed: None,
            model: None,
            steps: None,
            batch_size: None,
            optimizer: None,
            lr: None,
            momentum: None,
            weight_decay: None,
            seed: 0,
            device: "cpu".into(),
            out: PathBuf::from("runs"),
        }
    }
}

/// [`RunArgs`] with every default filled in for one data set.
#[derive(Clone, Debug)]
pub struct ResolvedRun {
    pub model: ModelSpec,
    pub optimizer: OptimizerSpec,
    pub steps: usize,
    /// At most the training set's size (equal to it: full batch).
    pub batch_size: usize,
    pub device: Device,
    pub defaults: recipes::Defaults,
}

impl RunArgs {
    /// The seed of the data set's generator.
    pub fn data_seed(&self) -> u64 {
        self.data_seed.unwrap_or(self.seed)
    }

    /// Loads `--data` with the data seed.
    pub fn load_data(&self) -> Result<Dataset> {
        load_dataset(&self.data, self.data_seed())
    }

    /// Fills the flags left open with `ds`'s defaults and builds the model and optimizer specs.
    pub fn resolve(&self, ds: &Dataset) -> Result<ResolvedRun> {
        let defaults = recipes::defaults(ds);
        let model = self.model.clone().unwrap_or_else(|| defaults.model.clone());
        let kind = self.optimizer.unwrap_or(defaults.optimizer);
        let same_optimizer = kind == defaults.optimizer;
        let lr = self.lr.unwrap_or(match (same_optimizer, kind) {
            (true, _) => defaults.lr,
            (false, OptimizerKind::Sgd) => 1e-2,
            (false, _) => 1e-3,
        });
        let momentum = self.momentum.unwrap_or(if same_optimizer {
            defaults.momentum
        } else {
            0.0
        });
        let weight_decay = self.weight_decay.unwrap_or(defaults.weight_decay);
        let optimizer = OptimizerSpec::new(kind, lr, momentum, weight_decay)?;
        let steps = self.steps.unwrap_or(defaults.steps);
        if steps == 0 {
            return Err(Error::arg("steps", "must be at least 1"));
        }
        let batch_size = self
            .batch_size
            .or(defaults.batch_size)
            .unwrap_or(usize::MAX)
            .min(ds.train.n);
        Ok(ResolvedRun {
            model,
            optimizer,
            steps,
            batch_size,
            device: parse_device(&self.device)?,
            defaults,
        })
    }

    /// A file-name-safe label of the data set: the built-in name with its options
    /// (`interpretable-n200-d300`), `colormnist-idx` for MNIST IDX files, a features file's
    /// stem and a digest of its full path ([`file_label`]); with `-dseedN` when the data seed
    /// differs from the run seed.
    pub fn data_label(&self, ds: &Dataset) -> String {
        let (name, arg) = match self.data.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (self.data.as_str(), None),
        };
        let mut label = match (name, arg) {
            ("interpretable" | "waterbirds-like", Some(options)) => {
                let options: String = options
                    .chars()
                    .filter(|c| *c != '=')
                    .map(|c| if c == ',' { '-' } else { c })
                    .collect();
                format!("{name}-{options}")
            }
            ("colormnist", Some(_)) => "colormnist-idx".into(),
            ("interpretable" | "colormnist" | "waterbirds-like", None) => name.into(),
            _ => file_label(Path::new(&self.data), &ds.name),
        };
        label = file_safe(&label);
        if self.data_seed() != self.seed {
            label.push_str(&format!("-dseed{}", self.data_seed()));
        }
        label
    }
}

/// The label of a features file in run folder names: `stem` and the first 8 hex digits of a
/// 64-bit FNV-1a digest of the file's canonical path (`features-1f3a9c07`). Two files with the
/// same stem (`a/features.safetensors` and `b/features.safetensors`, or `data.safetensors`
/// and the folder `data/`) get different labels, so one run never overwrites another's
/// folder; the same file, named by any relative path, keeps its label.
pub fn file_label(path: &Path, stem: &str) -> String {
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in full.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{stem}-{:08x}", h >> 32)
}

/// Checks that the seeds `seed .. seed + seeds` of a sweep fit in 64 bits.
pub fn check_seed_range(seed: u64, seeds: usize) -> Result<()> {
    match seed.checked_add(seeds.saturating_sub(1) as u64) {
        Some(_) => Ok(()),
        None => Err(Error::arg(
            "seed",
            format!(
                "{seed} + {seeds} seeds runs past the largest seed, {}: use a smaller --seed",
                u64::MAX
            ),
        )),
    }
}

/// Formats an accuracy in `[0, 1]` with three decimals, `-` when absent.
pub fn fmt_acc(acc: Option<f64>) -> String {
    acc.map_or_else(|| "-".to_string(), |a| format!("{a:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_data_sets_load() {
        let ds = load_dataset("interpretable:sigma=0,n=100,d=50", 0).unwrap();
        assert_eq!((ds.train.n, ds.d()), (100, 50));
        assert!(load_dataset("interpretable:bogus=1", 0).is_err());
        assert!(load_dataset("/no/such/file.safetensors", 0).is_err());
    }

    #[test]
    fn batch_sizes_parse() {
        assert_eq!(parse_batch_size("full"), Ok(usize::MAX));
        assert_eq!(parse_batch_size("64"), Ok(64));
        assert!(parse_batch_size("0").is_err());
    }

    #[test]
    fn defaults_follow_the_data_set_and_flags_override_them() {
        let ds = load_dataset("interpretable:n=50,d=20", 0).unwrap();
        let args = RunArgs {
            data: "interpretable:n=50,d=20".into(),
            ..Default::default()
        };
        let r = args.resolve(&ds).unwrap();
        assert_eq!(r.model, ModelSpec::linear_no_bias());
        assert_eq!(r.optimizer, OptimizerSpec::plain_sgd(1e-2));
        assert_eq!((r.steps, r.batch_size), (1000, 50));
        assert_eq!(args.data_label(&ds), "interpretable-n50-d20");
        let noiseless = load_dataset("interpretable:n=50,d=20,sigma=0", 0).unwrap();
        assert_eq!(recipes::defaults(&noiseless).lr, 3e-2);
        let args = RunArgs {
            optimizer: Some(OptimizerKind::Adam),
            batch_size: Some(16),
            data_seed: Some(3),
            ..args
        };
        let r = args.resolve(&ds).unwrap();
        assert_eq!(
            r.optimizer,
            OptimizerSpec::Adam {
                lr: 1e-3,
                weight_decay: 0.0
            }
        );
        assert_eq!(r.batch_size, 16);
        assert_eq!(args.data_label(&ds), "interpretable-n50-d20-dseed3");
    }
}

/// The protocol options `sweep` and `table1` share: what [`ProtocolArgs::apply`] sets on a
/// [`SweepConfig`], and the printed spread.
#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProtocolArgs {
    /// Whether a step-0 checkpoint may be selected: `drop` (the official rule) or `keep`.
    #[arg(long, value_name = "RULE", default_value = "drop")]
    pub step_zero: StepZero,
    /// The ± of the printed tables: `sample` std (n − 1) or `population` std (n, as the
    /// official tables).
    #[arg(long, value_name = "STD", default_value = "sample")]
    pub spread: Spread,
    /// Phase-1 group estimator: `xrm` (cross-risk minimization), `kfold:K` (K-fold
    /// held-out predictions, with XRM's draw of steps, batch, optimizer and seed) or
    /// `external:PATH` (held-out logits from a file, e.g. a PyTorch run; see `xrm --help`).
    #[arg(long, value_name = "EST", default_value = "xrm")]
    pub estimator: Estimator,
    /// Which XRM output MAT's runs at each seed read: `per-seed` (XRM's chosen draw rerun at
    /// every seed) or `first` (the selection seed's output at every seed, as the official
    /// MAT; other methods read their own seed's output either way).
    #[arg(long, value_name = "WHICH", default_value = "per-seed")]
    pub xrm_output: XrmOutputs,
    /// How training batches are drawn: shuffle (every example once per epoch) or
    /// class_balanced (with replacement, every class equally likely: the official
    /// `balanced_batch`; RWG keeps its own balancing).
    #[arg(long, value_name = "SAMPLER", default_value = "shuffle")]
    pub sampler: Sampler,
}

impl ProtocolArgs {
    /// Sets the step-0 rule, the estimator, the XRM output and the sampler of `cfg`.
    pub fn apply(&self, cfg: &mut SweepConfig) {
        cfg.step_zero = self.step_zero;
        cfg.xrm.estimator = self.estimator.clone();
        cfg.xrm.outputs = self.xrm_output;
        cfg.sampler = self.sampler;
    }
}
