//! Figure 3 of the paper: good, bad and ugly memorization in regression (PAPER.md §6).
//!
//! # What runs
//!
//! Data ([`good_bad_ugly`]): `f(x) = tanh(x) + 0.5·tanh(−5x)` on 1000 grid points over
//! `[−1.5, 1.5]`; 20 training points at evenly spaced grid indices with labels
//! `f(x) + 0.08·N(0, 1)`; every input carries 30 extra coordinates, `σ_ε·N(0, 1)` on the
//! training points and 0 on the grid. Model: MLP `31 → 300 → 300 → 1`, tanh, biases, PyTorch's
//! default initialization. Training: Adam (lr `1e-3`, β = (0.9, 0.999), ε = 1e-8), full batch,
//! loss `L = (1/20) Σ_i (g(x_i) − y_i)²`, one update per step, until the loss computed
//! before an update is below `1e-6` (that update still counts, as in the reference) or
//! `max_steps` updates have been made. Three settings per seed: `σ_ε = 1e-4` good, `1e-3`
//! bad, `0` ugly.
//!
//! # What is measured
//!
//! Per setting and seed: the number of updates, whether the stop criterion was reached, and
//! the test MSE against the true function, `(1/1000) Σ_j (g(x_j) − f(x_j))²` (computed in f64
//! from the model's f32 outputs), on two grids of the same 1000 points `x_j`:
//! - the **clean grid** (`test_mse`, the headline number): every extra coordinate 0, so it
//!   measures the function learned off the training inputs;
//! - the **reference grid** (`test_mse_reference_grid`, [`reference_grid`]): the official
//!   script's `x_sweep` (`good_bad_ugly_memorization.py`, lines 22–28), whose 20 rows at the
//!   training indices carry the training inputs' noise coordinates, so there `g` is evaluated
//!   at the very inputs it memorized. This is the grid the official script draws its curves on
//!   and the one `benches/pytorch_reference.py` evaluates PyTorch on (it reports both grids).
//!
//! Across seeds: mean and sample standard deviation (denominator `n − 1`), plus minimum and
//! maximum. Training time is wall time of
//! the update loop (parameters and data to the device included; data generation, the grid
//! evaluation and plotting excluded). On the CPU the fits run concurrently by default, one per
//! core, each product on one thread; the results are bitwise those of fits run in turn.
//!
//! # Seeds
//!
//! Seed `s` draws the data ([`good_bad_ugly`] with seed `s`: the three settings of one seed
//! share the label noise and the noise directions) and the initial network
//! (stream [`MODEL_STREAM`] of `Rng::new(s)`, the same for the three settings, as in the
//! reference, which reseeds before each setting).
//!
//! # Output
//!
//! With `out` set: `out/figure3.png` and `out/figure3.svg` (three panels: training points,
//! true `f` and the learned function of the first seed on the grid) and `out/figure3.json`
//! with every number of the [`Figure3Report`], learned functions included.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::synthetic::{good_bad_ugly, RegressionConfig, RegressionData};
use crate::error::{Error, Result};
use crate::eval::selection::{mean_std, MeanStd};
use crate::io::write_json;
use crate::nn::{Activation, Init, Linear, Mlp, Module};
use crate::optim::{Adam, Optimizer};
use crate::progress::{Progress, ProgressFn};
use crate::report::plot::{save, Curve, Figure, LineStyle, Marker, Panel, Scatter, PALETTE_BLACK};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Stream of `Rng::new(seed)` that initializes the network.
pub const MODEL_STREAM: u64 = 1;
/// Describes the spread reported over seeds.
pub const STD_KIND: &str = "sample standard deviation over seeds (denominator n - 1)";
/// Loss values are recorded every this many steps (and at the last step).
pub const LOSS_LOG_EVERY: usize = 100;

/// How Figure 3 runs; `Default` is the paper's setting with seeds 0–4 on the CPU.
#[derive(Clone, Debug)]
pub struct Figure3Config {
    pub seeds: Vec<u64>,
    /// Stop once the full-batch MSE falls below this.
    pub target_mse: f32,
    /// Stop after this many updates at the latest.
    pub max_steps: usize,
    pub lr: f32,
    /// Width of both hidden layers.
    pub hidden: usize,
    pub device: Device,
    /// Folder for `figure3.{png,svg,json}`; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// On the CPU, run the independent fits (three per seed) concurrently, one per core,
    /// instead of one after the other with the cores splitting each product. The results are
    /// the same bits either way.
    pub concurrent_runs: bool,
}

impl Default for Figure3Config {
    fn default() -> Self {
        Figure3Config {
            seeds: (0..5).collect(),
            target_mse: 1e-6,
            max_steps: 100_000,
            lr: 1e-3,
            hidden: 300,
            device: Device::Cpu,
            out: None,
            concurrent_runs: true,
        }
    }
}

/// The three noise levels, in panel order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Good,
    Bad,
    Ugly,
}

impl Setting {
    pub const ALL: [Setting; 3] = [Setting::Good, Setting::Bad, Setting::Ugly];

    pub fn name(self) -> &'static str {
        match self {
            Setting::Good => "good",
            Setting::Bad => "bad",
            Setting::Ugly => "ugly",
        }
    }

    /// The data of this setting for `seed`.
    pub fn data_config(self, seed: u64) -> RegressionConfig {
        match self {
            Setting::Good => RegressionConfig::good(seed),
            Setting::Bad => RegressionConfig::bad(seed),
            Setting::Ugly => RegressionConfig::ugly(seed),
        }
    }

    /// Position in [`Figure3Report::settings`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One setting, one seed.
#[derive(Clone, Debug, Serialize)]
pub struct FitResult {
    pub seed: u64,
    /// Updates made.
    pub steps: usize,
    /// Whether the loss fell below the target (else `max_steps` ended the run).
    pub converged: bool,
    /// The last loss computed (before the last update).
    pub final_train_mse: f64,
    /// `(step, loss before that step's update)`, steps counted from 1, every
    /// [`LOSS_LOG_EVERY`] steps and at the last one.
    pub loss_history: Vec<(usize, f64)>,
    /// MSE of the learned function against the true `f` on the clean grid.
    pub test_mse: f64,
    /// The same on the reference grid ([`reference_grid`]); `None` when the data does not
    /// say where its training points sit on the grid (empty `train_idx`).
    pub test_mse_reference_grid: Option<f64>,
    /// The learned function on the grid.
    pub learned: Vec<f32>,
    pub training_s: f64,
    pub steps_per_s: f64,
}

/// Summary of one setting over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct SettingSummary {
    /// On the clean grid.
    pub test_mse: MeanStd,
    pub test_mse_min: f64,
    pub test_mse_max: f64,
    /// On the reference grid, when every fit has it.
    pub test_mse_reference_grid: Option<MeanStd>,
    pub steps: MeanStd,
    pub steps_min: usize,
    pub steps_max: usize,
    /// Seeds whose run reached the target loss.
    pub converged: usize,
    pub training_s: MeanStd,
    pub steps_per_s: MeanStd,
}

/// One panel of the figure: a setting over every seed.
#[derive(Clone, Debug, Serialize)]
pub struct SettingReport {
    pub name: String,
    pub sigma_eps: f32,
    pub seeds: Vec<FitResult>,
    pub summary: SettingSummary,
}

/// The configuration as recorded in the JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct Figure3ConfigRecord {
    pub seeds: Vec<u64>,
    pub target_mse: f32,
    pub max_steps: usize,
    pub lr: f32,
    pub model: String,
    pub optimizer: String,
    pub device: String,
    pub n_grid: usize,
    pub n_train: usize,
    pub label_noise: f32,
    pub extra_dims: usize,
}

/// Everything Figure 3 produced.
#[derive(Clone, Debug, Serialize)]
pub struct Figure3Report {
    pub config: Figure3ConfigRecord,
    /// What `std` means in every [`MeanStd`].
    pub std: String,
    /// Good, bad, ugly, in that order ([`Setting::index`]).
    pub settings: Vec<SettingReport>,
    /// The grid inputs (first coordinate) and the true function on them.
    pub grid_x: Vec<f32>,
    pub grid_f: Vec<f32>,
    /// Training inputs (first coordinate) and noisy labels of the first seed.
    pub train_x: Vec<f32>,
    pub train_y: Vec<f32>,
    /// Wall time of all fits of all seeds (concurrent when [`Figure3Config::concurrent_runs`]).
    pub training_s_total: f64,
    /// Sum of the three fits' own wall times for one seed, over seeds (with concurrent fits
    /// each shares the machine, so this exceeds the wall time it took).
    pub training_s_per_seed: MeanStd,
    pub figure_files: Vec<PathBuf>,
    pub json_file: Option<PathBuf>,
}

impl Figure3Report {
    /// The report of `setting`.
    pub fn setting(&self, setting: Setting) -> &SettingReport {
        &self.settings[setting.index()]
    }

    /// A short plain-text table: our numbers beside the paper's reference run.
    pub fn table(&self) -> String {
        let n = self.config.seeds.len();
        let mut t = format!(
            "Figure 3 — good, bad and ugly memorization (MLP 31-300-300-1, Adam 1e-3, until MSE < \
             {:e} or {} steps; {n} seed{}; mean ± {STD_KIND})\n",
            self.config.target_mse,
            self.config.max_steps,
            if n == 1 { "" } else { "s" }
        );
        t.push_str(&format!(
            "  {:<5} {:>7} {:>21} {:>21} {:>22} {:>9} {:>9}   {}\n",
            "",
            "σ_ε",
            "test MSE, clean grid",
            "reference grid",
            "steps (min–max)",
            "converged",
            "train s",
            "paper (PyTorch, 6 seeds)"
        ));
        let paper = [
            "MSE 0.0025 (0.0010–0.0044), 4.0k–11k steps",
            "MSE 0.013 (0.009–0.016), 0.9k–1.7k steps",
            "MSE 0.0065 (0.004–0.011), 4.9k–7.8k steps",
        ];
        for (s, p) in self.settings.iter().zip(paper) {
            let m = &s.summary;
            t.push_str(&format!(
                "  {:<5} {:>7} {:>21} {:>21} {:>22} {:>9} {:>9.2}   {}\n",
                s.name,
                sigma_text(s.sigma_eps),
                format!("{:.4} ± {:.4}", m.test_mse.mean, m.test_mse.std),
                m.test_mse_reference_grid
                    .as_ref()
                    .map_or_else(|| "-".into(), |r| format!("{:.4} ± {:.4}", r.mean, r.std)),
                format!("{:.0} ({}–{})", m.steps.mean, m.steps_min, m.steps_max),
                format!("{}/{}", m.converged, n),
                m.training_s.mean,
                p
            ));
        }
        t.push_str(&format!(
            "  training time: {:.2} s per seed for the three settings (mean), {:.2} s in all\n",
            self.training_s_per_seed.mean, self.training_s_total
        ));
        t
    }
}

/// `0`, `1e-4`, `1e-3`: the noise scale as the paper writes it.
fn sigma_text(sigma: f32) -> String {
    if sigma == 0.0 {
        "0".into()
    } else {
        format!("{sigma:e}")
    }
}

fn validate(cfg: &Figure3Config) -> Result<()> {
    if cfg.seeds.is_empty() {
        return Err(Error::arg("seeds", "Figure 3 needs at least one seed"));
    }
    if cfg.max_steps == 0 {
        return Err(Error::arg("max_steps", "must be at least 1"));
    }
    if cfg.hidden == 0 {
        return Err(Error::arg("hidden", "must be at least 1"));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::arg(
            "lr",
            format!("{} must be positive and finite", cfg.lr),
        ));
    }
    if !(cfg.target_mse.is_finite() && cfg.target_mse >= 0.0) {
        return Err(Error::arg(
            "target_mse",
            format!("{} must be finite and >= 0", cfg.target_mse),
        ));
    }
    Ok(())
}

/// The official script's evaluation grid `x_sweep` (`good_bad_ugly_memorization.py`, lines
/// 22–28): the clean grid `data.grid_x` with row `train_idx[r]` replaced by training input
/// `r`, noise coordinates included (`x_sweep[i, 1:] = noise; x = x_sweep[i]`). Row-major
/// `n_grid × d`. `None` when `data.train_idx` is empty (data that does not say where its
/// training points sit).
///
/// Errors: `train_idx` of another length than the training set, or an index off the grid.
pub fn reference_grid(data: &RegressionData) -> Result<Option<Vec<f32>>> {
    if data.train_idx.is_empty() {
        return Ok(None);
    }
    let (d, n_train, n_grid) = (data.d, data.train_y.len(), data.grid_f.len());
    if data.train_idx.len() != n_train {
        return Err(Error::Data(format!(
            "{} grid indices for {n_train} training points",
            data.train_idx.len()
        )));
    }
    let mut grid = data.grid_x.clone();
    for (r, &j) in data.train_idx.iter().enumerate() {
        if j >= n_grid {
            return Err(Error::IndexOutOfRange {
                op: "figure3: reference grid",
                position: r,
                index: j,
                size: n_grid,
            });
        }
        grid[j * d..(j + 1) * d].copy_from_slice(&data.train_x[r * d..(r + 1) * d]);
    }
    Ok(Some(grid))
}

/// `(1/n) Σ_j (g_j − f_j)²` in f64.
fn mse_against(learned: &[f32], f: &[f32]) -> f64 {
    learned
        .iter()
        .zip(f)
        .map(|(&g, &f)| (g as f64 - f as f64).powi(2))
        .sum::<f64>()
        / f.len().max(1) as f64
}

/// Fits one setting of one seed with Adam on the full batch (see the module docs).
pub fn fit(data: &RegressionData, cfg: &Figure3Config, seed: u64) -> Result<FitResult> {
    validate(cfg)?;
    let start = Instant::now();
    let mut rng = Rng::new(seed).fork(MODEL_STREAM);
    let model = Mlp::new(
        &[data.d, cfg.hidden, cfg.hidden, 1],
        Activation::Tanh,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &cfg.device,
    )?;
    fit_timed(&model, data, cfg, seed, start)
}

/// Fits `model` (an MLP `d → … → 1` on `cfg.device`, trained in place) as [`fit`] fits its
/// own: to start two implementations from the same weights (`examples/figure3_same_start.rs`).
/// `seed` only labels the result.
///
/// Errors: a config [`fit`] rejects, a model whose input or output width does not fit the
/// data, and any training error.
pub fn fit_model(
    model: &Mlp,
    data: &RegressionData,
    cfg: &Figure3Config,
    seed: u64,
) -> Result<FitResult> {
    validate(cfg)?;
    let inputs = model.layers.first().map(Linear::in_dim);
    let outputs = model.layers.last().map(Linear::out_dim);
    if inputs != Some(data.d) || outputs != Some(1) {
        return Err(Error::arg(
            "model",
            format!(
                "needs {} inputs and 1 output, has {inputs:?} inputs and {outputs:?} outputs",
                data.d
            ),
        ));
    }
    fit_timed(model, data, cfg, seed, Instant::now())
}

/// The fit of [`fit`] and [`fit_model`], timed from `start`.
fn fit_timed(
    model: &Mlp,
    data: &RegressionData,
    cfg: &Figure3Config,
    seed: u64,
    start: Instant,
) -> Result<FitResult> {
    let (n, d) = (data.train_y.len(), data.d);
    let n_grid = data.grid_f.len();
    let device = &cfg.device;
    let mut optimizer = Adam::new(model.parameters(), cfg.lr, 0.0)?;
    let x = Tensor::from_slice(&data.train_x, (n, d), device)?;
    let y = Tensor::from_slice(&data.train_y, (n, 1), device)?;
    let mut steps = 0;
    let mut loss_history = Vec::new();
    let loss_value = loop {
        let loss = model.forward(&x)?.mse(&y)?;
        let loss_value = loss.to_scalar()?;
        let grads = loss.backward()?;
        optimizer.step(&grads)?;
        steps += 1;
        let done = loss_value < cfg.target_mse || steps >= cfg.max_steps;
        if steps % LOSS_LOG_EVERY == 0 || done {
            loss_history.push((steps, loss_value as f64));
        }
        if done {
            break loss_value;
        }
    };
    device.synchronize()?;
    let training_s = start.elapsed().as_secs_f64();

    let on_grid = |grid: &[f32]| -> Result<Vec<f32>> {
        let grid = Tensor::from_slice(grid, (n_grid, d), device)?;
        no_grad(|| model.forward(&grid)?.to_vec())
    };
    let learned = on_grid(&data.grid_x)?;
    let test_mse = mse_against(&learned, &data.grid_f);
    let test_mse_reference_grid = reference_grid(data)?
        .map(|grid| on_grid(&grid).map(|g| mse_against(&g, &data.grid_f)))
        .transpose()?;
    if !(test_mse.is_finite() && test_mse_reference_grid.is_none_or(f64::is_finite)) {
        return Err(Error::NonFinite {
            op: "figure3: test MSE",
            what: format!("the learned function is not finite on the grid (seed {seed})"),
        });
    }
    Ok(FitResult {
        seed,
        steps,
        converged: loss_value < cfg.target_mse,
        final_train_mse: loss_value as f64,
        loss_history,
        test_mse,
        test_mse_reference_grid,
        learned,
        training_s,
        steps_per_s: steps as f64 / training_s.max(1e-12),
    })
}

fn summarise(fits: &[FitResult]) -> SettingSummary {
    let stat = |f: &dyn Fn(&FitResult) -> f64| mean_std(&fits.iter().map(f).collect::<Vec<_>>());
    let mse = || fits.iter().map(|r| r.test_mse);
    let steps = || fits.iter().map(|r| r.steps);
    SettingSummary {
        test_mse: stat(&|r| r.test_mse),
        test_mse_min: mse().fold(f64::INFINITY, f64::min),
        test_mse_max: mse().fold(f64::NEG_INFINITY, f64::max),
        test_mse_reference_grid: fits
            .iter()
            .map(|r| r.test_mse_reference_grid)
            .collect::<Option<Vec<f64>>>()
            .map(|v| mean_std(&v)),
        steps: stat(&|r| r.steps as f64),
        steps_min: steps().min().unwrap_or(0),
        steps_max: steps().max().unwrap_or(0),
        converged: fits.iter().filter(|r| r.converged).count(),
        training_s: stat(&|r| r.training_s),
        steps_per_s: stat(&|r| r.steps_per_s),
    }
}

/// Runs Figure 3 (see the module docs) and, when `cfg.out` is set, writes the figure and the
/// JSON file. Reports progress in fits.
///
/// Errors: no seeds, zero `max_steps` or `hidden`, a non-positive learning rate, a negative
/// target, a non-finite loss or prediction, and any plotting or file error.
pub fn run(cfg: &Figure3Config, progress: ProgressFn<'_>) -> Result<Figure3Report> {
    validate(cfg)?;
    progress(Progress::Queued((cfg.seeds.len() * 3) as u64));
    // Slowest settings first (the reference's step counts: ugly ≳ good ≫ bad), so that
    // concurrent fits finish together.
    let jobs: Vec<(Setting, u64)> = [Setting::Ugly, Setting::Good, Setting::Bad]
        .into_iter()
        .flat_map(|setting| cfg.seeds.iter().map(move |&seed| (setting, seed)))
        .collect();
    let one = |&(setting, seed): &(Setting, u64)| -> Result<FitResult> {
        let data = good_bad_ugly(&setting.data_config(seed))?;
        let result = fit(&data, cfg, seed);
        progress(Progress::Done(1));
        result
    };
    let start = Instant::now();
    let results: Vec<Result<FitResult>> = if cfg.concurrent_runs && cfg.device.is_cpu() {
        jobs.par_iter().with_max_len(1).map(one).collect()
    } else {
        jobs.iter().map(one).collect()
    };
    let training_s_total = start.elapsed().as_secs_f64();
    let mut per_setting: [Vec<FitResult>; 3] = Default::default();
    for (&(setting, _), result) in jobs.iter().zip(results) {
        per_setting[setting.index()].push(result?);
    }
    let data = good_bad_ugly(&Setting::ALL[0].data_config(cfg.seeds[0]))?;
    let reg = RegressionConfig::default();

    let settings: Vec<SettingReport> = Setting::ALL
        .iter()
        .zip(per_setting)
        .map(|(&setting, seeds)| SettingReport {
            name: setting.name().into(),
            sigma_eps: setting.data_config(0).sigma_eps,
            summary: summarise(&seeds),
            seeds,
        })
        .collect();
    let per_seed: Vec<f64> = (0..cfg.seeds.len())
        .map(|i| settings.iter().map(|s| s.seeds[i].training_s).sum())
        .collect();
    let first_column = |x: &[f32]| x.iter().step_by(data.d).copied().collect::<Vec<f32>>();
    let mut report = Figure3Report {
        config: Figure3ConfigRecord {
            seeds: cfg.seeds.clone(),
            target_mse: cfg.target_mse,
            max_steps: cfg.max_steps,
            lr: cfg.lr,
            model: format!(
                "MLP {} → {h} → {h} → 1, tanh, biases, PyTorch default init",
                data.d,
                h = cfg.hidden
            ),
            optimizer: "Adam (0.9, 0.999), eps 1e-8, no weight decay, full batch".into(),
            device: if cfg.device.is_cpu() { "cpu" } else { "cuda" }.into(),
            n_grid: reg.n_grid,
            n_train: reg.n_train,
            label_noise: reg.label_noise,
            extra_dims: reg.extra_dims,
        },
        std: STD_KIND.into(),
        settings,
        grid_x: first_column(&data.grid_x),
        grid_f: data.grid_f.clone(),
        train_x: first_column(&data.train_x),
        train_y: data.train_y.clone(),
        training_s_total,
        training_s_per_seed: mean_std(&per_seed),
        figure_files: Vec::new(),
        json_file: None,
    };
    if let Some(out) = &cfg.out {
        report.figure_files = save(&figure(&report), &out.join("figure3"))?;
        let json = out.join("figure3.json");
        report.json_file = Some(json.clone());
        write_json(&json, &report)?;
    }
    Ok(report)
}

const LEARNED_COLOUR: usize = 0;
const POINT_COLOUR: usize = 3;

/// Three panels: the first seed's training points, the true `f` and the learned function.
fn figure(report: &Figure3Report) -> Figure {
    let first_seed = report.config.seeds.first().copied().unwrap_or(0);
    let points: Vec<(f32, f32)> = report
        .train_x
        .iter()
        .copied()
        .zip(report.train_y.iter().copied())
        .collect();
    let panels = report
        .settings
        .iter()
        .map(|s| {
            let m = &s.summary;
            let mut curves = vec![Curve::new(
                "true f",
                report.grid_x.clone(),
                report.grid_f.clone(),
                LineStyle::dashed(PALETTE_BLACK),
            )];
            if let Some(fit) = s.seeds.first() {
                curves.push(Curve::new(
                    format!("learned (seed {first_seed}, test MSE {:.4})", fit.test_mse),
                    report.grid_x.clone(),
                    fit.learned.clone(),
                    LineStyle::solid(LEARNED_COLOUR),
                ));
            }
            Panel {
                title: format!(
                    "{}: σ_ε = {}, MSE {:.4}, {:.0} steps",
                    s.name,
                    sigma_text(s.sigma_eps),
                    m.test_mse.mean,
                    m.steps.mean
                ),
                x_label: "x".into(),
                y_label: "y".into(),
                x_range: Some((-1.55, 1.55)),
                y_range: Some((-0.75, 0.75)),
                curves,
                scatters: vec![Scatter {
                    label: "training points".into(),
                    points: points.clone(),
                    colour: POINT_COLOUR,
                    marker: Marker::Circle,
                }],
                lines: Vec::new(),
                legend: true,
            }
        })
        .collect();
    let n = report.config.seeds.len();
    Figure {
        title: Some(format!(
            "Figure 3: good (σ_ε = 1e-4), bad (1e-3) and ugly (0) memorization; curves: seed \
             {first_seed}, panel titles: mean over {n} seed{}",
            if n == 1 { "" } else { "s" }
        )),
        panels,
        columns: 3,
        panel_size: (600, 460),
    }
}
