//! Figure 1 of the paper: the interpretable experiment (PAPER.md §6), numbers and picture.
//!
//! # What runs
//!
//! Data ([`interpretable`]): `n` examples per split, `x = [x_y, 5·x_a, σ_ε·N(0, I_{d−2})]`,
//! the spurious feature agreeing with the label on 90% of the training set and 50% of
//! validation and test. Model: linear `d → 2` without bias, PyTorch's default initialization,
//! trained full batch with plain SGD for `epochs` epochs (one update per epoch). Per seed:
//!
//! 1. ERM, `σ_ε = 0`, lr `3e-2`: minimise `mean_i CE(W x_i, y_i)`;
//! 2. ERM, `σ_ε = 0.5`, lr `1e-2`;
//! 3. MAT, `σ_ε = 0.5`: XRM twins (plain mean CE on the held-in logits, label flipping,
//!    full-batch steps, lr `1e-2`), the shift `s_i = ln(p_ho(·|x_i) + 1e-6)` at `τ = 0.1`
//!    from the twins' held-out logits, then a fresh linear model trained `epochs` epochs
//!    (lr `1e-2`) on `mean_i CE(W x_i + s_i, y_i)` and evaluated with `argmax W x`.
//!
//! # When the numbers are read ([`Figure1Timing`])
//!
//! By default as the reference (`Pitfalls-of-Memorization/interpretable_experiment.py`,
//! `run_erm` and `run_mat`): epoch `t` (1-based) logs the accuracies **before** its update,
//! i.e. of the model after `t − 1` updates, so the last logged values are those of the model
//! after `epochs − 1` updates (the last update only moves the plotted decision boundary); and
//! MAT's shift is computed from the held-out logits of the **last twin iteration**, which that
//! iteration computes before its update: the twins after `epochs − 1` updates. The reference's
//! last twin update and last round of label flips reach nothing MAT uses, so XRM runs the
//! `epochs − 1` updates that do (its flip rate is read after them) and the shift comes from
//! its final held-out logits. [`Figure1Timing::AfterUpdate`] gives this crate's earlier rule:
//! accuracies after each update, XRM run for `epochs` updates.
//!
//! # What is measured
//!
//! Every epoch, on the training and test splits, the accuracy of the majority (`a = y`,
//! groups `g = 2y + a ∈ {0, 3}`) and of the minority (`a ≠ y`, `g ∈ {1, 2}`), each pooled
//! over its two groups: `acc = Σ_g correct_g / Σ_g n_g`. Across seeds: mean and **sample**
//! standard deviation (denominator `n − 1`). For MAT also XRM's final flip rate
//! `mean_i 1[y_dyn,i ≠ y_i]` and the agreement of the inferred bit `m` with the true minority
//! indicator, `mean_i 1[m_i = 1[a_i ≠ y_i]]`, on training and validation.
//!
//! Training time is wall time around the training calls only (features to the device, the
//! epochs and their per-epoch evaluation on the training and test splits, which the reference
//! also performs, and the evaluation of the initial model under the reference timing); data
//! generation, plotting and file writing are outside it. The validation
//! split is not evaluated per epoch: nothing in the figure selects on it.
//!
//! The runs are independent, so on the CPU they run concurrently by default, longest first
//! (MAT's two phases), one run per core: each product is then computed by one thread with no
//! fork-join per operation, and every result is bitwise the same as run after run.
//!
//! # Seeds
//!
//! Seed `s` draws the data (its splits from independent streams, so consecutive seeds share
//! nothing), the ERM models and the XRM twins (twin A therefore starts where the ERM model
//! starts, as in the reference, where both are the first network drawn after the same torch
//! seed). MAT's fresh model is seeded from stream [`MAT_MODEL_STREAM`] of `Rng::new(s)`, so
//! it is independent of both twins, like the reference's third network.
//!
//! # Output
//!
//! With `out` set: `out/figure1.png` and `out/figure1.svg` (one column per run: accuracy
//! curves averaged over seeds on top, the training points of the first seed in the
//! `(x_y, x_a)` plane with that seed's decision boundary below) and `out/figure1.json` with
//! every number of the [`Figure1Report`], curves included.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::algo::model::{ModelSpec, OptimizerSpec};
use crate::algo::train::predict;
use crate::algo::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput};
use crate::algo::{run_method_with, Method, MethodOutcome, TrainConfig};
use crate::backend::Device;
use crate::data::synthetic::{
    core_spurious_columns, interpretable, is_minority, InterpretableConfig,
};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::{split_metrics, SplitMetrics};
use crate::eval::selection::{mean_std, Checkpoint, MeanStd};
use crate::io::write_json;
use crate::nn::Module;
use crate::progress::{Progress, ProgressFn};
use crate::report::plot::{
    linear_boundary_2d, save, Curve, Figure, LineStyle, Marker, Panel, Scatter, PALETTE_BLACK,
};
use crate::rng::Rng;

/// Groups `g = 2y + a` whose spurious attribute disagrees with the label.
pub const MINORITY_GROUPS: [usize; 2] = [1, 2];
/// Groups `g = 2y + a` whose spurious attribute agrees with the label.
pub const MAJORITY_GROUPS: [usize; 2] = [0, 3];
/// Stream of `Rng::new(seed)` that seeds MAT's fresh model.
pub const MAT_MODEL_STREAM: u64 = 7;
/// Stream of `Rng::new(seed)` from which the training loop ([`crate::algo::train()`], its
/// private `STREAM_INIT`) draws the initial model of a run with seed `seed`; [`initial_model`]
/// rebuilds that model to log the accuracies before the first update (`tests/repro.rs` checks
/// that the two agree).
pub const TRAIN_INIT_STREAM: u64 = 1;
/// Describes the spread reported over seeds.
pub const STD_KIND: &str = "sample standard deviation over seeds (denominator n - 1)";

/// When Figure 1 reads its accuracies and MAT's held-out logits, relative to the updates
/// (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure1Timing {
    /// As the reference: epoch `t` logs the model after `t − 1` updates (before its own), and
    /// the shift reads the held-out logits of the twins after `epochs − 1` updates (those the
    /// reference's last twin iteration computes before its update). Needs `epochs >= 2`.
    #[default]
    Reference,
    /// This crate's earlier rule: epoch `t` logs the model after `t` updates, and the shift
    /// reads the held-out logits of the twins after all `epochs` updates.
    AfterUpdate,
}

impl Figure1Timing {
    /// XRM updates made before the held-out logits that feed the shift are read.
    pub fn xrm_updates(self, epochs: usize) -> usize {
        match self {
            Figure1Timing::Reference => epochs.saturating_sub(1),
            Figure1Timing::AfterUpdate => epochs,
        }
    }

    /// Updates applied to the model whose accuracies epoch `t` (1-based) logs.
    pub fn updates_logged_at(self, t: usize) -> usize {
        match self {
            Figure1Timing::Reference => t.saturating_sub(1),
            Figure1Timing::AfterUpdate => t,
        }
    }
}

/// How Figure 1 runs; `Default` is the paper's setting with seeds 0–4 on the CPU.
#[derive(Clone, Debug)]
pub struct Figure1Config {
    /// One full set of three runs per seed.
    pub seeds: Vec<u64>,
    /// Full-batch epochs of every training phase (ERM, XRM, MAT).
    pub epochs: usize,
    /// Examples per split.
    pub n: usize,
    /// Feature dimension.
    pub d: usize,
    /// Noise scale of the second ERM run and of MAT.
    pub sigma_eps: f32,
    /// Learning rate of ERM at `σ_ε = 0`.
    pub lr_clean: f32,
    /// Learning rate of ERM at `sigma_eps`, of the XRM twins and of MAT.
    pub lr_noisy: f32,
    /// MAT's temperature.
    pub tau: f32,
    /// When accuracies and held-out logits are read (default: as the reference).
    pub timing: Figure1Timing,
    pub device: Device,
    /// Folder for `figure1.{png,svg,json}`; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// On the CPU, run the independent runs (three per seed) concurrently, one per core,
    /// instead of one after the other with the cores splitting each product. The results are
    /// the same bits either way.
    pub concurrent_runs: bool,
}

impl Default for Figure1Config {
    fn default() -> Self {
        Figure1Config {
            seeds: (0..5).collect(),
            epochs: 1000,
            n: 1000,
            d: 1800,
            sigma_eps: 0.5,
            lr_clean: 3e-2,
            lr_noisy: 1e-2,
            tau: 0.1,
            timing: Figure1Timing::Reference,
            device: Device::Cpu,
            out: None,
            concurrent_runs: true,
        }
    }
}

/// The three runs of the figure, in column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure1Run {
    ErmClean,
    ErmNoisy,
    Mat,
}

impl Figure1Run {
    pub const ALL: [Figure1Run; 3] = [Figure1Run::ErmClean, Figure1Run::ErmNoisy, Figure1Run::Mat];

    /// Column index in the figure and position in [`Figure1Report::runs`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One value per epoch: under [`Figure1Timing::Reference`] before the update of that epoch
/// (the model after `epoch − 1` updates), under [`Figure1Timing::AfterUpdate`] after it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupCurves {
    /// 1, 2, …, epochs.
    pub epoch: Vec<usize>,
    pub train_majority: Vec<f64>,
    pub train_minority: Vec<f64>,
    pub test_majority: Vec<f64>,
    pub test_minority: Vec<f64>,
}

/// Majority and minority accuracy on training and test at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GroupAccuracies {
    pub train_majority: f64,
    pub train_minority: f64,
    pub test_majority: f64,
    pub test_minority: f64,
}

impl GroupCurves {
    fn push(&mut self, epoch: usize, acc: GroupAccuracies) {
        self.epoch.push(epoch);
        self.train_majority.push(acc.train_majority);
        self.train_minority.push(acc.train_minority);
        self.test_majority.push(acc.test_majority);
        self.test_minority.push(acc.test_minority);
    }

    /// The values at position `i`.
    pub fn at(&self, i: usize) -> Option<GroupAccuracies> {
        Some(GroupAccuracies {
            train_majority: *self.train_majority.get(i)?,
            train_minority: *self.train_minority.get(i)?,
            test_majority: *self.test_majority.get(i)?,
            test_minority: *self.test_minority.get(i)?,
        })
    }

    /// The values of the last epoch.
    pub fn last(&self) -> Option<GroupAccuracies> {
        self.at(self.epoch.len().checked_sub(1)?)
    }
}

/// XRM's outcome in the MAT run of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct XrmSeedResult {
    /// Twin updates made ([`Figure1Timing::xrm_updates`]): the shift reads the held-out
    /// logits of the twins after them, and every XRM number here is read after them.
    pub updates: usize,
    /// Final `mean_i 1[y_dyn,i ≠ y_i]`.
    pub flip_rate: f64,
    /// `(epoch, flip rate)` after every update (epochs counted from 1).
    pub flip_rate_history: Vec<(usize, f64)>,
    /// Training minority share, which a perfect XRM run flips.
    pub minority_share_train: f64,
    /// `mean_i 1[m_i = 1[a_i ≠ y_i]]` on training and validation.
    pub agreement_train: f64,
    pub agreement_valid: f64,
    /// Held-out accuracy against `y` per true training group `2y + a`.
    pub heldout_acc_by_group: Vec<Option<f64>>,
    /// Why the inferred groups are degenerate, if they are.
    pub degenerate: Option<String>,
    /// Training time of the twins and of the shifted model.
    pub xrm_s: f64,
    pub mat_s: f64,
}

/// One run of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Logged at the last epoch (the last point of `curves`).
    pub final_acc: GroupAccuracies,
    pub curves: GroupCurves,
    /// Training time of the run (XRM and MAT together for the MAT run).
    pub training_s: f64,
    /// Full-batch updates per second over the run (XRM's updates plus `epochs` for MAT).
    pub steps_per_s: f64,
    /// Rows `(w_c[x_y], w_c[x_a])` of the final weights (after all `epochs` updates, as the
    /// reference plots its boundary) for classes 0 and 1, in plot
    /// coordinates: the model sees `5·x_a`, so the spurious weight is multiplied by 5.
    pub plane_weights: [[f32; 2]; 2],
    /// The MAT run only.
    pub xrm: Option<XrmSeedResult>,
}

/// Mean and sample std over seeds of the reported numbers.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub test_minority: MeanStd,
    pub test_majority: MeanStd,
    pub train_minority: MeanStd,
    pub train_majority: MeanStd,
    pub training_s: MeanStd,
    pub steps_per_s: MeanStd,
    /// MAT run only.
    pub flip_rate: Option<MeanStd>,
    pub agreement_train: Option<MeanStd>,
    pub agreement_valid: Option<MeanStd>,
}

/// One column of the figure: a run over every seed.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Short name (`erm_sigma0`, `erm_sigma0.5`, `mat_sigma0.5`).
    pub name: String,
    /// Panel title.
    pub title: String,
    pub method: String,
    pub sigma_eps: f32,
    pub lr: f32,
    /// MAT's temperature.
    pub tau: Option<f32>,
    pub seeds: Vec<SeedResult>,
    pub summary: RunSummary,
    /// Mean over seeds, epoch by epoch.
    pub mean_curves: GroupCurves,
}

/// The configuration as recorded in the JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct Figure1ConfigRecord {
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub n: usize,
    pub d: usize,
    pub sigma_eps: f32,
    pub lr_clean: f32,
    pub lr_noisy: f32,
    pub tau: f32,
    pub timing: Figure1Timing,
    pub device: String,
    pub model: String,
    pub optimizer: String,
}

/// Everything Figure 1 produced.
#[derive(Clone, Debug, Serialize)]
pub struct Figure1Report {
    pub config: Figure1ConfigRecord,
    /// What `std` means in every [`MeanStd`].
    pub std: String,
    /// ERM `σ_ε = 0`, ERM `σ_ε`, MAT `σ_ε`, in that order ([`Figure1Run::index`]).
    pub runs: Vec<RunReport>,
    /// Wall time of the training phase: all runs of all seeds (concurrent when
    /// [`Figure1Config::concurrent_runs`]).
    pub training_s_total: f64,
    /// Sum of the three runs' own wall times for one seed, over seeds (with concurrent runs
    /// each run shares the machine, so this exceeds the wall time it took).
    pub training_s_per_seed: MeanStd,
    /// `figure1.png` and `figure1.svg`, when written.
    pub figure_files: Vec<PathBuf>,
    /// `figure1.json`, when written.
    pub json_file: Option<PathBuf>,
}

impl Figure1Report {
    /// The report of `run`.
    pub fn run(&self, run: Figure1Run) -> &RunReport {
        &self.runs[run.index()]
    }

    /// A short plain-text table: our numbers beside the paper's reference run.
    pub fn table(&self) -> String {
        let s = &self.config;
        let ms = |m: &MeanStd| format!("{:.3} ± {:.3}", m.mean, m.std);
        let mut t = format!(
            "Figure 1 — interpretable experiment (n = {}, d = {}, {} epochs, {} seed{}; \
             mean ± {STD_KIND}; {})\n",
            s.n,
            s.d,
            s.epochs,
            s.seeds.len(),
            if s.seeds.len() == 1 { "" } else { "s" },
            match s.timing {
                Figure1Timing::Reference =>
                    "accuracies logged before each update and MAT's shift from the twins before \
                     their last update, as the reference",
                Figure1Timing::AfterUpdate =>
                    "accuracies logged after each update, MAT's shift from the final twins",
            }
        );
        t.push_str(&format!(
            "  {:<14} {:>15} {:>15} {:>15} {:>10}   {}\n",
            "run", "minority test", "majority test", "minority train", "train s", "paper (PyTorch)"
        ));
        let paper = [
            "minority test 1.00, train 1.00",
            "minority test 0.15 ± 0.03, majority 1.00, train 1.00",
            "minority test 0.91 ± 0.014, majority 0.98",
        ];
        for (r, p) in self.runs.iter().zip(paper) {
            t.push_str(&format!(
                "  {:<14} {:>15} {:>15} {:>15} {:>10.2}   {}\n",
                r.name,
                ms(&r.summary.test_minority),
                ms(&r.summary.test_majority),
                ms(&r.summary.train_minority),
                r.summary.training_s.mean,
                p
            ));
        }
        let mat = self.run(Figure1Run::Mat);
        if let (Some(f), Some(at), Some(av)) = (
            &mat.summary.flip_rate,
            &mat.summary.agreement_train,
            &mat.summary.agreement_valid,
        ) {
            t.push_str(&format!(
                "  XRM: flip rate {} (paper 0.099; minority share 0.099), inferred groups agree \
                 with the true minority on {} of training / {} of validation (paper: equal)\n",
                ms(f),
                ms(at),
                ms(av)
            ));
        }
        t.push_str(&format!(
            "  training time: {:.2} s per seed for the three runs (mean), {:.2} s in all\n",
            self.training_s_per_seed.mean, self.training_s_total
        ));
        t
    }
}

fn device_name(device: &Device) -> String {
    if device.is_cpu() {
        "cpu".into()
    } else {
        "cuda".into()
    }
}

fn validate(cfg: &Figure1Config) -> Result<()> {
    if cfg.seeds.is_empty() {
        return Err(Error::arg("seeds", "Figure 1 needs at least one seed"));
    }
    if cfg.epochs == 0 {
        return Err(Error::arg("epochs", "must be at least 1"));
    }
    if cfg.timing == Figure1Timing::Reference && cfg.epochs < 2 {
        return Err(Error::arg(
            "epochs",
            "must be at least 2 with the reference timing: MAT's shift reads the twins' \
             held-out logits before their last update, after at least one",
        ));
    }
    for (name, lr) in [("lr_clean", cfg.lr_clean), ("lr_noisy", cfg.lr_noisy)] {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::arg(
                name,
                format!("{lr} must be positive and finite"),
            ));
        }
    }
    if !(cfg.tau.is_finite() && cfg.tau > 0.0) {
        return Err(Error::arg(
            "tau",
            format!("{} must be positive and finite", cfg.tau),
        ));
    }
    Ok(())
}

/// Checks that the training and test splits each hold majority and minority examples, so that
/// every pooled accuracy is defined.
fn check_groups(ds: &Dataset) -> Result<()> {
    for (name, split) in [("training", &ds.train), ("test", &ds.test)] {
        let counts = Split::counts(&split.groups(ds.n_attr), ds.n_groups());
        for (kind, groups) in [("minority", MINORITY_GROUPS), ("majority", MAJORITY_GROUPS)] {
            if groups.iter().map(|&g| counts[g]).sum::<usize>() == 0 {
                return Err(Error::Data(format!(
                    "the {name} split of the interpretable data (n = {}) has no {kind} example; \
                     use a larger n",
                    split.n
                )));
            }
        }
    }
    Ok(())
}

/// Accuracy over the union of `groups`, each group weighted by its size.
fn pooled(m: &SplitMetrics, groups: [usize; 2]) -> Result<f64> {
    let mut correct = 0.0;
    let mut count = 0usize;
    for g in groups {
        let n = m.group_count.get(g).copied().unwrap_or(0);
        if let Some(acc) = m.group_acc.get(g).copied().flatten() {
            correct += acc * n as f64;
            count += n;
        }
    }
    if count == 0 {
        return Err(Error::Data(format!(
            "no example of groups {groups:?} to pool an accuracy over"
        )));
    }
    Ok(correct / count as f64)
}

fn accuracies(cp: &Checkpoint) -> Result<GroupAccuracies> {
    let tr = cp.tr.as_ref().ok_or_else(|| {
        Error::Data(format!(
            "checkpoint at step {} has no training metrics (eval_train was off)",
            cp.step
        ))
    })?;
    Ok(GroupAccuracies {
        train_majority: pooled(tr, MAJORITY_GROUPS)?,
        train_minority: pooled(tr, MINORITY_GROUPS)?,
        test_majority: pooled(&cp.te, MAJORITY_GROUPS)?,
        test_minority: pooled(&cp.te, MINORITY_GROUPS)?,
    })
}

/// The curves of a run of `epochs` updates with a checkpoint after each: `initial` is the
/// model's accuracy before the first update (needed, and only used, under
/// [`Figure1Timing::Reference`]).
fn curves(
    checkpoints: &[Checkpoint],
    initial: Option<GroupAccuracies>,
    timing: Figure1Timing,
    epochs: usize,
) -> Result<GroupCurves> {
    // Accuracy by the number of updates applied: 0 (initial), then one per checkpoint.
    let mut by_updates = vec![None; epochs + 1];
    by_updates[0] = initial;
    for cp in checkpoints {
        if let Some(slot) = by_updates.get_mut(cp.step + 1) {
            *slot = Some(accuracies(cp)?);
        }
    }
    let mut c = GroupCurves::default();
    for t in 1..=epochs {
        let updates = timing.updates_logged_at(t);
        let acc = by_updates[updates].ok_or_else(|| {
            Error::Data(format!(
                "no accuracy of the model after {updates} updates to log at epoch {t}"
            ))
        })?;
        c.push(t, acc);
    }
    Ok(c)
}

/// The model that [`crate::algo::train()`] starts from for a run of `spec` on `ds` with seed
/// `seed` (drawn from stream [`TRAIN_INIT_STREAM`] of `Rng::new(seed)`, as the loop does).
pub fn initial_model(
    spec: &ModelSpec,
    ds: &Dataset,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Module>> {
    spec.build(
        ds.d(),
        ds.classes,
        &mut Rng::new(seed).fork(TRAIN_INIT_STREAM),
        device,
    )
}

/// Majority and minority accuracy of `model` (`argmax f(x)`) on training and test.
pub fn model_accuracies(
    model: &dyn Module,
    ds: &Dataset,
    device: &Device,
) -> Result<GroupAccuracies> {
    let metrics = |split: &Split| -> Result<SplitMetrics> {
        split_metrics(
            &predict(model, split, device)?,
            &split.y,
            &split.groups(ds.n_attr),
            ds.n_groups(),
            ds.classes,
        )
    };
    let (tr, te) = (metrics(&ds.train)?, metrics(&ds.test)?);
    Ok(GroupAccuracies {
        train_majority: pooled(&tr, MAJORITY_GROUPS)?,
        train_minority: pooled(&tr, MINORITY_GROUPS)?,
        test_majority: pooled(&te, MAJORITY_GROUPS)?,
        test_minority: pooled(&te, MINORITY_GROUPS)?,
    })
}

/// Share of examples whose inferred bit equals the true minority indicator.
fn agreement(bits: &[u32], split: &Split) -> f64 {
    let minority = is_minority(split);
    let same = bits
        .iter()
        .zip(&minority)
        .filter(|(&m, &is_min)| (m == 1) == is_min)
        .count();
    same as f64 / split.n.max(1) as f64
}

/// The final weights of the classifier restricted to the plotted plane (see
/// [`SeedResult::plane_weights`]).
fn plane_weights(outcome: &MethodOutcome, d: usize, spurious_scale: f32) -> Result<[[f32; 2]; 2]> {
    let params = outcome.outcome.model.named_parameters();
    let (_, weight) = params
        .first()
        .ok_or_else(|| Error::Data("the trained model has no parameters".into()))?;
    let w = weight.to_vec()?;
    if w.len() != 2 * d {
        return Err(Error::Data(format!(
            "expected a 2 × {d} weight matrix, found {} values",
            w.len()
        )));
    }
    Ok([
        [w[0], w[1] * spurious_scale],
        [w[d], w[d + 1] * spurious_scale],
    ])
}

/// A trained run: its outcome, its accuracy before the first update (reference timing only)
/// and its training time.
struct Trained {
    outcome: MethodOutcome,
    initial: Option<GroupAccuracies>,
    seconds: f64,
}

fn seed_result(
    cfg: &Figure1Config,
    seed: u64,
    run: &Trained,
    training_s: f64,
    updates: usize,
    data: &InterpretableConfig,
    xrm: Option<XrmSeedResult>,
) -> Result<SeedResult> {
    let outcome = &run.outcome;
    let curves = curves(
        &outcome.outcome.checkpoints,
        run.initial,
        cfg.timing,
        cfg.epochs,
    )?;
    let final_acc = curves
        .last()
        .ok_or_else(|| Error::Data("the run recorded no checkpoint".into()))?;
    Ok(SeedResult {
        seed,
        final_acc,
        curves,
        training_s,
        steps_per_s: updates as f64 / training_s.max(1e-12),
        plane_weights: plane_weights(outcome, data.d, data.spurious_scale)?,
        xrm,
    })
}

fn xrm_result(xrm: &XrmOutput, ds: &Dataset, xrm_s: f64, mat_s: f64) -> XrmSeedResult {
    let minority = is_minority(&ds.train).iter().filter(|&&m| m).count();
    XrmSeedResult {
        updates: xrm.config.steps,
        flip_rate: xrm.final_flip_rate,
        flip_rate_history: xrm
            .flip_rate_history
            .iter()
            .map(|&(step, rate)| (step + 1, rate))
            .collect(),
        minority_share_train: minority as f64 / ds.train.n.max(1) as f64,
        agreement_train: agreement(&xrm.inferred_tr, &ds.train),
        agreement_valid: agreement(&xrm.inferred_va, &ds.valid),
        heldout_acc_by_group: xrm.heldout_acc_by_group.clone(),
        degenerate: xrm.degenerate.clone(),
        xrm_s,
        mat_s,
    }
}

/// Wall time of `f`, after the device has finished its queued work.
fn timed<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let value = f()?;
    device.synchronize()?;
    Ok((value, start.elapsed().as_secs_f64()))
}

/// The two data sets of one seed: `σ_ε = 0` (ERM clean) and `σ_ε = cfg.sigma_eps` (ERM noisy
/// and MAT).
struct SeedData {
    seed: u64,
    clean_cfg: InterpretableConfig,
    clean: Dataset,
    noisy_cfg: InterpretableConfig,
    noisy: Dataset,
}

fn seed_data(cfg: &Figure1Config, seed: u64) -> Result<SeedData> {
    let data_cfg = |sigma_eps: f32| InterpretableConfig {
        n: cfg.n,
        d: cfg.d,
        sigma_eps,
        seed,
        ..Default::default()
    };
    let (clean_cfg, noisy_cfg) = (data_cfg(0.0), data_cfg(cfg.sigma_eps));
    let clean = interpretable(&clean_cfg)?;
    let noisy = interpretable(&noisy_cfg)?;
    check_groups(&clean)?;
    check_groups(&noisy)?;
    Ok(SeedData {
        seed,
        clean_cfg,
        clean,
        noisy_cfg,
        noisy,
    })
}

/// One run of one seed, timed from its first training call to its last.
fn run_one(
    cfg: &Figure1Config,
    data: &SeedData,
    run: Figure1Run,
    progress: ProgressFn<'_>,
) -> Result<SeedResult> {
    let seed = data.seed;
    let spec = ModelSpec::linear_no_bias();
    let device = &cfg.device;
    let train_cfg = |lr: f32, seed: u64| TrainConfig {
        seed,
        device: device.clone(),
        eval_train: true,
        eval_valid: false,
        ..TrainConfig::full_batch(cfg.epochs, OptimizerSpec::plain_sgd(lr), 1)
    };
    let mut tick = |_: &Checkpoint| -> Result<()> {
        progress(Progress::Done(1));
        Ok(())
    };
    // Trains `method` for `epochs` updates; under the reference timing it also evaluates the
    // initial model, as the reference logs before its first update.
    let mut train = |ds: &Dataset, method: &Method, lr: f32, seed: u64, xrm: Option<&XrmOutput>| {
        timed(device, || {
            let initial = match cfg.timing {
                Figure1Timing::Reference => Some(model_accuracies(
                    initial_model(&spec, ds, seed, device)?.as_ref(),
                    ds,
                    device,
                )?),
                Figure1Timing::AfterUpdate => None,
            };
            let outcome = run_method_with(ds, method, &spec, &train_cfg(lr, seed), xrm, &mut tick)?;
            Ok((outcome, initial))
        })
        .map(|((outcome, initial), seconds)| Trained {
            outcome,
            initial,
            seconds,
        })
    };
    match run {
        Figure1Run::ErmClean => {
            let t = train(&data.clean, &Method::Erm, cfg.lr_clean, seed, None)?;
            seed_result(cfg, seed, &t, t.seconds, cfg.epochs, &data.clean_cfg, None)
        }
        Figure1Run::ErmNoisy => {
            let t = train(&data.noisy, &Method::Erm, cfg.lr_noisy, seed, None)?;
            seed_result(cfg, seed, &t, t.seconds, cfg.epochs, &data.noisy_cfg, None)
        }
        Figure1Run::Mat => {
            let xrm_cfg = XrmConfig {
                steps: cfg.timing.xrm_updates(cfg.epochs),
                batch_size: usize::MAX,
                optimizer: OptimizerSpec::plain_sgd(cfg.lr_noisy),
                loss: XrmLoss::Mean,
                seed,
                device: device.clone(),
                log_every: 1,
            };
            let (xrm, xrm_s) = timed(device, || run_xrm(&data.noisy, &spec, &xrm_cfg))?;
            progress(Progress::Done(cfg.epochs as u64));
            let mat_seed = Rng::new(seed).fork(MAT_MODEL_STREAM).next_u64();
            let mat = train(
                &data.noisy,
                &Method::Mat { tau: cfg.tau },
                cfg.lr_noisy,
                mat_seed,
                Some(&xrm),
            )?;
            seed_result(
                cfg,
                seed,
                &mat,
                xrm_s + mat.seconds,
                xrm_cfg.steps + cfg.epochs,
                &data.noisy_cfg,
                Some(xrm_result(&xrm, &data.noisy, xrm_s, mat.seconds)),
            )
        }
    }
}

fn summarise(seeds: &[SeedResult]) -> RunSummary {
    let stat = |f: &dyn Fn(&SeedResult) -> f64| mean_std(&seeds.iter().map(f).collect::<Vec<_>>());
    let xrm_stat = |f: &dyn Fn(&XrmSeedResult) -> f64| -> Option<MeanStd> {
        let values: Option<Vec<f64>> = seeds.iter().map(|s| s.xrm.as_ref().map(f)).collect();
        values.map(|v| mean_std(&v))
    };
    RunSummary {
        test_minority: stat(&|s| s.final_acc.test_minority),
        test_majority: stat(&|s| s.final_acc.test_majority),
        train_minority: stat(&|s| s.final_acc.train_minority),
        train_majority: stat(&|s| s.final_acc.train_majority),
        training_s: stat(&|s| s.training_s),
        steps_per_s: stat(&|s| s.steps_per_s),
        flip_rate: xrm_stat(&|x| x.flip_rate),
        agreement_train: xrm_stat(&|x| x.agreement_train),
        agreement_valid: xrm_stat(&|x| x.agreement_valid),
    }
}

fn mean_curves(seeds: &[SeedResult]) -> GroupCurves {
    let Some(first) = seeds.first() else {
        return GroupCurves::default();
    };
    let n = seeds.len() as f64;
    let mean = |f: &dyn Fn(&GroupCurves) -> &Vec<f64>| -> Vec<f64> {
        (0..first.curves.epoch.len())
            .map(|i| seeds.iter().map(|s| f(&s.curves)[i]).sum::<f64>() / n)
            .collect()
    };
    GroupCurves {
        epoch: first.curves.epoch.clone(),
        train_majority: mean(&|c| &c.train_majority),
        train_minority: mean(&|c| &c.train_minority),
        test_majority: mean(&|c| &c.test_majority),
        test_minority: mean(&|c| &c.test_minority),
    }
}

fn run_header(run: Figure1Run, cfg: &Figure1Config) -> (String, String, String, f32, f32) {
    let sigma = cfg.sigma_eps;
    match run {
        Figure1Run::ErmClean => (
            "erm_sigma0".into(),
            "ERM, σ_ε = 0".into(),
            "erm".into(),
            0.0,
            cfg.lr_clean,
        ),
        Figure1Run::ErmNoisy => (
            format!("erm_sigma{sigma}"),
            format!("ERM, σ_ε = {sigma}"),
            "erm".into(),
            sigma,
            cfg.lr_noisy,
        ),
        Figure1Run::Mat => (
            format!("mat_sigma{sigma}"),
            format!("MAT, σ_ε = {sigma}"),
            "mat".into(),
            sigma,
            cfg.lr_noisy,
        ),
    }
}

/// Runs Figure 1 (see the module docs) and, when `cfg.out` is set, writes the figure and the
/// JSON file.
/// Reports progress in epochs (XRM's twins count as one run).
///
/// Errors: no seeds, zero epochs, a non-positive learning rate or temperature, data that
/// [`interpretable`] rejects or whose training or test split lacks a majority or minority
/// example (tiny `n`), and any training, plotting or file error.
pub fn run(cfg: &Figure1Config, progress: ProgressFn<'_>) -> Result<Figure1Report> {
    validate(cfg)?;
    progress(Progress::Queued((cfg.seeds.len() * 4 * cfg.epochs) as u64));
    let data: Vec<SeedData> = cfg
        .seeds
        .iter()
        .map(|&seed| seed_data(cfg, seed))
        .collect::<Result<_>>()?;
    // Longest runs first (MAT trains twice as long as ERM), so that concurrent runs finish
    // together.
    let jobs: Vec<(usize, Figure1Run)> =
        [Figure1Run::Mat, Figure1Run::ErmClean, Figure1Run::ErmNoisy]
            .into_iter()
            .flat_map(|run| (0..data.len()).map(move |i| (i, run)))
            .collect();
    let start = Instant::now();
    let results: Vec<Result<SeedResult>> = if cfg.concurrent_runs && cfg.device.is_cpu() {
        jobs.par_iter()
            .with_max_len(1)
            .map(|&(i, run)| run_one(cfg, &data[i], run, progress))
            .collect()
    } else {
        jobs.iter()
            .map(|&(i, run)| run_one(cfg, &data[i], run, progress))
            .collect()
    };
    let training_s_total = start.elapsed().as_secs_f64();
    let mut per_run: [Vec<SeedResult>; 3] = Default::default();
    for (&(_, run), result) in jobs.iter().zip(results) {
        per_run[run.index()].push(result?);
    }

    let runs: Vec<RunReport> = Figure1Run::ALL
        .iter()
        .zip(per_run)
        .map(|(&run, seeds)| {
            let (name, title, method, sigma_eps, lr) = run_header(run, cfg);
            RunReport {
                name,
                title,
                method,
                sigma_eps,
                lr,
                tau: (run == Figure1Run::Mat).then_some(cfg.tau),
                summary: summarise(&seeds),
                mean_curves: mean_curves(&seeds),
                seeds,
            }
        })
        .collect();
    let per_seed: Vec<f64> = (0..cfg.seeds.len())
        .map(|i| runs.iter().map(|r| r.seeds[i].training_s).sum())
        .collect();
    let mut report = Figure1Report {
        config: Figure1ConfigRecord {
            seeds: cfg.seeds.clone(),
            epochs: cfg.epochs,
            n: cfg.n,
            d: cfg.d,
            sigma_eps: cfg.sigma_eps,
            lr_clean: cfg.lr_clean,
            lr_noisy: cfg.lr_noisy,
            tau: cfg.tau,
            timing: cfg.timing,
            device: device_name(&cfg.device),
            model: format!("linear {} → 2, no bias, PyTorch default init", cfg.d),
            optimizer: "plain SGD, full batch".into(),
        },
        std: STD_KIND.into(),
        runs,
        training_s_total,
        training_s_per_seed: mean_std(&per_seed),
        figure_files: Vec::new(),
        json_file: None,
    };
    if let Some(out) = &cfg.out {
        let first = data
            .first()
            .expect("validate() guarantees at least one seed");
        report.figure_files = save(&figure(&report, &first.clean.train), &out.join("figure1"))?;
        let json = out.join("figure1.json");
        report.json_file = Some(json.clone());
        write_json(&json, &report)?;
    }
    Ok(report)
}

/// Palette indices: curves majority bluish green, minority reddish purple; points class 0
/// blue, class 1 orange (no colour means two things in one figure).
const MAJORITY_COLOUR: usize = 2;
const MINORITY_COLOUR: usize = 4;
const CLASS_COLOURS: [usize; 2] = [0, 1];

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The figure: accuracy curves (mean over seeds) on top, the `(x_y, x_a)` plane with the
/// training points and the first seed's boundary below, one column per run.
fn figure(report: &Figure1Report, train: &Split) -> Figure {
    let (x_y, x_a_scaled) = core_spurious_columns(train);
    let scale = InterpretableConfig::default().spurious_scale;
    let minority = is_minority(train);
    let mut groups: [Vec<(f32, f32)>; 4] = Default::default();
    for i in 0..train.n {
        let slot = 2 * train.y[i] as usize + usize::from(minority[i]);
        groups[slot].push((x_y[i], x_a_scaled[i] / scale));
    }
    let scatters: Vec<Scatter> = groups
        .iter()
        .enumerate()
        .map(|(slot, points)| {
            let (class, is_min) = (slot / 2, slot % 2 == 1);
            Scatter {
                label: format!(
                    "y = {class}, {} ({})",
                    if is_min { "minority" } else { "majority" },
                    points.len()
                ),
                points: points.clone(),
                colour: CLASS_COLOURS[class],
                marker: if is_min {
                    Marker::Cross
                } else {
                    Marker::Circle
                },
            }
        })
        .collect();

    let n_seeds = report.config.seeds.len();
    let first_seed = report.config.seeds.first().copied().unwrap_or(0);
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for (column, run) in report.runs.iter().enumerate() {
        // One legend per row, in the first column: the three columns share their styles.
        let legend = column == 0;
        let c = &run.mean_curves;
        let epochs: Vec<f32> = c.epoch.iter().map(|&e| e as f32).collect();
        let curve = |label: &str, ys: &[f64], colour: usize, dashed: bool| {
            Curve::new(
                label,
                epochs.clone(),
                as_f32(ys),
                if dashed {
                    LineStyle::dashed(colour)
                } else {
                    LineStyle::solid(colour)
                },
            )
        };
        let s = &run.summary;
        top.push(Panel {
            title: format!(
                "{}: minority test {:.2} ± {:.2}",
                run.title, s.test_minority.mean, s.test_minority.std
            ),
            x_label: "epoch".into(),
            y_label: format!(
                "accuracy (mean of {n_seeds} seed{})",
                if n_seeds == 1 { "" } else { "s" }
            ),
            x_range: Some((0.0, report.config.epochs as f32)),
            y_range: Some((-0.03, 1.03)),
            curves: vec![
                curve("majority, train", &c.train_majority, MAJORITY_COLOUR, false),
                curve("majority, test", &c.test_majority, MAJORITY_COLOUR, true),
                curve("minority, train", &c.train_minority, MINORITY_COLOUR, false),
                curve("minority, test", &c.test_minority, MINORITY_COLOUR, true),
            ],
            scatters: Vec::new(),
            lines: Vec::new(),
            legend,
        });

        let range = (-1.7f32, 1.7f32);
        let mut lines = Vec::new();
        if let Some(seed0) = run.seeds.first() {
            let [w0, w1] = seed0.plane_weights;
            if let Some(mut boundary) = linear_boundary_2d((w0[0], w0[1]), (w1[0], w1[1]), range) {
                // The plane is the slice where the noise coordinates are 0 (as for a test point
                // without noise); each noisy training point is classified with its own noise.
                boundary.label = format!("boundary at ε = 0 (seed {first_seed})");
                boundary.style = LineStyle::solid(PALETTE_BLACK);
                lines.push(boundary);
            }
        }
        bottom.push(Panel {
            title: format!("{}: training set, seed {first_seed}", run.title),
            x_label: "x_y (core feature)".into(),
            y_label: "x_a (spurious feature)".into(),
            x_range: Some(range),
            y_range: Some(range),
            curves: Vec::new(),
            scatters: scatters.clone(),
            lines,
            legend,
        });
    }
    let mut panels = top;
    panels.extend(bottom);
    Figure {
        title: Some(format!(
            "Figure 1: the spurious feature is learned first; with noise σ_ε ERM memorizes the \
             minority, MAT learns the core feature ({} epochs, {n_seeds} seed{})",
            report.config.epochs,
            if n_seeds == 1 { "" } else { "s" }
        )),
        panels,
        columns: 3,
        panel_size: (600, 460),
    }
}
