//! One training loop for every method (ERM, GroupDRO, JTT, MAT, RWG, SUBG, XRM + GroupDRO), and
//! [`run_method`], which builds each method's loss and runs it.
//!
//! # The loop ([`train`])
//!
//! The training, validation and test features go to the device **once**, at the start (`x` as
//! one `n × d` tensor, labels as [`Indices`]). Each step takes a batch of row positions from
//! the seeded [`Batcher`] and gathers those rows with [`Tensor::index_select`]; when the batch
//! is the whole training set (`batch_size >= n`) the tensors are used as they are, with no
//! gather. The model `f` maps the batch to logits `z = f(x_B)` and the step minimises the
//! method's [`Objective`] on the batch `B` with labels `y_B`:
//!
//! - `Mean` (ERM, SUBG): `(1/|B|) Σ_{i∈B} CE(z_i, y_i)`;
//! - `Shifted(s)` (MAT): `(1/|B|) Σ_{i∈B} CE(z_i + s_i, y_i)`, with the constant rows `s_i` of
//!   MAT's shift; the fused kernel computes loss and gradient in one pass;
//! - `Weighted(w)` (JTT, RWG): `(1/|B|) Σ_{i∈B} w_i CE(z_i, y_i)`;
//! - `GroupDro`: per-row losses `l_i`, group means `L_g` over the groups present in the batch
//!   (on the host, from the `|B|` row losses), `q_g ← q_g exp(η L_g)` for those groups,
//!   `q ← q / Σ q`, then `Σ_{i∈B} w_i l_i` with `w_i = q_{g_i} / n_{g_i}(B)` as a constant:
//!   that is `Σ_g q_g L_g`, and `q` stays a distribution (see [`GroupDroState`]).
//!
//! SUBG trains on a subset of the training rows: the subset is gathered once, and the batcher
//! walks it. Evaluation always uses `argmax f(x)`: MAT's shift is a training device only.
//!
//! On the CPU, a linear model of at most 4 classes trained without weight decay skips the
//! blocks of feature columns that are zero in every fitted row
//! (`TrainConfig::skip_zero_features`, module `zero_features`): their weights get a zero
//! gradient at every step, so the run has the same bits and each pass over `x` reads only the
//! other columns.
//!
//! # Checkpoints
//!
//! After the update with 0-based index `s`, when `s % checkpoint_freq == 0` or `s` is the last
//! step, the model is evaluated under `no_grad` on test and (when `eval_valid` is set)
//! validation with the true groups `g = n_attr · y + a`, on validation with XRM-inferred
//! groups `g = 2y + m` when given, and on the training set when `eval_train` is set. `Checkpoint::step` is `s` (the checkpoint
//! reflects `s + 1` updates), as the reference records it; `train_loss` is the objective on
//! the step's batch before the update. With full batches on the whole training set, the
//! training forward pass of step `s + 1` computes exactly the logits of the model that the
//! checkpoint evaluates, so training accuracy is read from it instead of a second forward
//! pass (the checkpoint is emitted one step later; the last one after a final forward).
//!
//! Per-step host work is `O(|B|)` (batch indices, labels, GroupDRO's row losses); per
//! checkpoint it is `O(n)` (predicted classes), never `O(n · d)`.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::model::{ModelSpec, OptimizerSpec};
use super::xrm::XrmOutput;
use super::zero_features::{CompactLinear, KeptColumns};
use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::batch::{group_weights_balanced, subsample_groups, Batcher};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::{split_metrics, SplitMetrics};
use crate::eval::selection::{Checkpoint, JsonlWriter};
use crate::nn::{Linear, Module};
use crate::ops::Reduction;
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

/// Sub-streams of `Rng::new(seed)` used by a training run.
const STREAM_INIT: u64 = 1;
const STREAM_BATCH: u64 = 2;
const STREAM_SUBG: u64 = 3;
const STREAM_JTT_STAGE2: u64 = 4;

/// How a training run goes, whatever the method.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per batch; `>= n` means full batch (every step sees the whole training set).
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    /// Evaluate every this many steps (and at the last step).
    pub checkpoint_freq: usize,
    /// Seeds the model initialization, the batch order and SUBG's subsample.
    pub seed: u64,
    pub device: Device,
    /// Also evaluate on the training set at each checkpoint (`Checkpoint::tr`).
    pub eval_train: bool,
    /// Evaluate on the validation set at each checkpoint (`Checkpoint::va`, and `va_gi` when
    /// inferred groups are given). Model selection needs it; a run that only records
    /// training and test curves saves one pass over the validation features per checkpoint.
    pub eval_valid: bool,
    /// A JSON-lines file that receives each checkpoint as it is made (created or truncated).
    pub checkpoints_path: Option<PathBuf>,
    /// On the CPU, train a linear model of at most 4 classes without weight decay on the
    /// blocks of feature columns that are nonzero in some fitted row only: the others get a
    /// zero gradient at every step, so the run has the same bits (see `zero_features.rs`) and
    /// each pass reads fewer bytes. [`TrainOutcome::feature_columns`] says how many columns
    /// were trained on. Off gives the dense computation, for comparison.
    pub skip_zero_features: bool,
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::arg("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        if self.checkpoint_freq == 0 {
            return Err(Error::arg("checkpoint_freq", "must be at least 1"));
        }
        Ok(())
    }
}

/// A method of the paper's Table 1 (PAPER.md §2, §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Mean cross-entropy.
    Erm,
    /// GroupDRO on the true training groups, step size `eta`.
    GroupDro { eta: f32 },
    /// JTT: ERM for `first_stage_steps`, then a fresh model with the first stage's training
    /// errors weighted `lambda_up`.
    Jtt {
        first_stage_steps: usize,
        lambda_up: f32,
    },
    /// MAT with held-out logits from XRM, temperature `tau`.
    Mat { tau: f32 },
    /// Group-balanced per-example weights on the true groups.
    Rwg,
    /// Training on a random subsample with every true group at the smallest group's size.
    Subg,
    /// GroupDRO on the XRM-inferred groups `g = 2y + m`.
    XrmGroupDro { eta: f32 },
}

impl Method {
    /// Short name used in files and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Erm => "erm",
            Method::GroupDro { .. } => "group_dro",
            Method::Jtt { .. } => "jtt",
            Method::Mat { .. } => "mat",
            Method::Rwg => "rwg",
            Method::Subg => "subg",
            Method::XrmGroupDro { .. } => "xrm_group_dro",
        }
    }

    /// Whether the method needs XRM's outputs (held-out logits or inferred groups).
    pub fn needs_xrm(&self) -> bool {
        matches!(self, Method::Mat { .. } | Method::XrmGroupDro { .. })
    }

    /// Whether the method reads the true training groups (the paper's "group labels in
    /// training" column).
    pub fn uses_training_groups(&self) -> bool {
        matches!(self, Method::GroupDro { .. } | Method::Rwg | Method::Subg)
    }
}

/// The per-step loss of [`train`] (see the module docs).
#[derive(Clone, Debug)]
pub enum Objective {
    /// Mean cross-entropy.
    Mean,
    /// Mean cross-entropy of `logits + shift`; the shift is `n_tr × K` on the run's device,
    /// indexed by training row.
    Shifted(Tensor),
    /// Mean of `w_i · CE`, one weight per training row (finite, `>= 0`, not all zero).
    Weighted(Vec<f32>),
    /// GroupDRO over `groups` (one id in `0..n_groups` per training row) with step size `eta`.
    GroupDro {
        groups: Vec<u32>,
        n_groups: usize,
        eta: f32,
    },
}

/// Everything [`train`] needs besides the data, the model and the config.
#[derive(Clone, Debug)]
pub struct TrainSetup {
    pub objective: Objective,
    /// Train on these training rows only (SUBG); `None` for all of them.
    pub rows: Option<Vec<usize>>,
    /// XRM-inferred validation groups `2y + m` (in `0..2K`), for `Checkpoint::va_gi`.
    pub va_inferred_groups: Option<Vec<u32>>,
    /// Evaluate at checkpoints (off for JTT's first stage, which only needs its final model).
    pub evaluate: bool,
}

impl TrainSetup {
    /// A setup that trains on every row with `objective` and evaluates.
    pub fn new(objective: Objective) -> Self {
        TrainSetup {
            objective,
            rows: None,
            va_inferred_groups: None,
            evaluate: true,
        }
    }
}

/// What a training run leaves.
pub struct TrainOutcome {
    /// Every checkpoint, in step order.
    pub checkpoints: Vec<Checkpoint>,
    /// The model after the last step.
    pub model: Box<dyn Module>,
    /// The objective on the last step's batch, before its update.
    pub final_train_loss: f64,
    /// Steps per second of wall time over the whole loop, checkpoint evaluations included.
    pub steps_per_s: f64,
    /// GroupDRO's group weights after the last step.
    pub group_dro_q: Option<Vec<f64>>,
    /// Feature columns the training steps read: `d`, or fewer when blocks of columns that are
    /// zero in every fitted row were skipped ([`TrainConfig::skip_zero_features`]).
    pub feature_columns: usize,
}

impl std::fmt::Debug for TrainOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOutcome")
            .field("checkpoints", &self.checkpoints.len())
            .field("final_train_loss", &self.final_train_loss)
            .field("steps_per_s", &self.steps_per_s)
            .field("group_dro_q", &self.group_dro_q)
            .field("feature_columns", &self.feature_columns)
            .finish_non_exhaustive()
    }
}

/// GroupDRO's adversarial group weights `q` (Sagawa et al. 2020), kept in f64 on the host.
///
/// One batch: `L_g` = mean row loss of group `g` over its rows in the batch; for every group
/// present, `q_g ← q_g · exp(η L_g)`; then `q ← q / Σ q`. The update runs in log space
/// (`ln q_g + η L_g`, max-subtracted before `exp`), which is the same map without overflow.
/// The returned row weights `w_i = q_{g_i} / n_{g_i}` make `Σ_i w_i l_i = Σ_g q_g L_g`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDroState {
    q: Vec<f64>,
    eta: f64,
}

impl GroupDroState {
    /// Uniform `q` over `n_groups` groups. Errors: no groups, `eta` negative or not finite.
    pub fn new(n_groups: usize, eta: f32) -> Result<Self> {
        if n_groups == 0 {
            return Err(Error::arg("n_groups", "GroupDRO needs at least one group"));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::arg(
                "eta",
                format!("GroupDRO's step size must be finite and >= 0, got {eta}"),
            ));
        }
        Ok(GroupDroState {
            q: vec![1.0 / n_groups as f64; n_groups],
            eta: eta as f64,
        })
    }

    /// The current group weights (a distribution).
    pub fn q(&self) -> &[f64] {
        &self.q
    }

    /// Updates `q` from one batch's row losses and group ids and returns the row weights
    /// `q_{g_i} / n_{g_i}` (see the type docs).
    pub fn update(&mut self, row_losses: &[f32], groups: &[u32]) -> Result<Vec<f32>> {
        if row_losses.len() != groups.len() {
            return Err(Error::shape_detail(
                "group_dro",
                &[row_losses.len()],
                &[groups.len()],
                "one group id per row loss",
            ));
        }
        let n_groups = self.q.len();
        let mut sum = vec![0.0f64; n_groups];
        let mut count = vec![0usize; n_groups];
        for (position, (&l, &g)) in row_losses.iter().zip(groups).enumerate() {
            let g = g as usize;
            if g >= n_groups {
                return Err(Error::IndexOutOfRange {
                    op: "group_dro",
                    position,
                    index: g,
                    size: n_groups,
                });
            }
            if !l.is_finite() {
                return Err(Error::NonFinite {
                    op: "group_dro",
                    what: format!("row loss {l} at batch position {position}"),
                });
            }
            sum[g] += l as f64;
            count[g] += 1;
        }
        let log_q: Vec<f64> = (0..n_groups)
            .map(|g| {
                let lq = self.q[g].ln();
                if count[g] > 0 {
                    lq + self.eta * sum[g] / count[g] as f64
                } else {
                    lq
                }
            })
            .collect();
        let max = log_q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let unnormalised: Vec<f64> = log_q.iter().map(|&v| (v - max).exp()).collect();
        // The largest entry contributes exp(0) = 1, so the total is at least 1.
        let total: f64 = unnormalised.iter().sum();
        for (q, u) in self.q.iter_mut().zip(&unnormalised) {
            *q = u / total;
        }
        Ok(groups
            .iter()
            .map(|&g| (self.q[g as usize] / count[g as usize] as f64) as f32)
            .collect())
    }
}

/// JTT's per-example weights: `lambda_up` on the rows in `errors`, 1 elsewhere.
///
/// With mean reduction over uniform batches, `E[(1/|B|) Σ_{i∈B} w_i l_i] = (1/n) Σ_i w_i l_i`,
/// while JTT's upsampling (each error example repeated `lambda_up` times, set size
/// `n' = n + (lambda_up − 1)|E|`) gives `(1/n') Σ_i w_i l_i`: the same objective up to the
/// constant factor `n'/n`, i.e. the same per-example weighting with the learning rate scaled
/// by `n'/n`. Weights avoid repeated rows in a batch and keep epochs the size of the data.
pub fn jtt_weights(n: usize, errors: &[usize], lambda_up: f32) -> Result<Vec<f32>> {
    if !(lambda_up.is_finite() && lambda_up > 0.0) {
        return Err(Error::arg(
            "lambda_up",
            format!("must be positive and finite, got {lambda_up}"),
        ));
    }
    let mut w = vec![1.0f32; n];
    for (position, &i) in errors.iter().enumerate() {
        *w.get_mut(i).ok_or(Error::IndexOutOfRange {
            op: "jtt_weights",
            position,
            index: i,
            size: n,
        })? = lambda_up;
    }
    Ok(w)
}

/// Predicted classes `argmax f(x)` for every row of `split`, computed on `device` under
/// `no_grad` (no shift: MAT predicts with the model's logits only).
pub fn predict(model: &dyn Module, split: &Split, device: &Device) -> Result<Vec<u32>> {
    let x = Tensor::from_slice(&split.x, (split.n, split.d), device)?;
    predict_tensor(model, &x)
}

fn predict_tensor(model: &dyn Module, x: &Tensor) -> Result<Vec<u32>> {
    no_grad(|| model.forward(x)?.argmax_rows()?.to_vec())
}

/// Checks that every true group present in training has a validation example: otherwise
/// validation worst-group accuracy would silently skip it.
fn check_validation_groups(ds: &Dataset) -> Result<()> {
    let n_groups = ds.n_groups();
    let tr = Split::counts(&ds.train.groups(ds.n_attr), n_groups);
    let va = Split::counts(&ds.valid.groups(ds.n_attr), n_groups);
    if let Some(g) = (0..n_groups).find(|&g| tr[g] > 0 && va[g] == 0) {
        return Err(Error::Data(format!(
            "`{}`: the validation split has no example of group {g} (y = {}, a = {}), which has \
             {} training examples; its worst-group accuracy would ignore that group",
            ds.name,
            g / ds.n_attr,
            g % ds.n_attr,
            tr[g]
        )));
    }
    Ok(())
}

/// The training rows a run fits, with everything indexed by batch position.
struct FitSet {
    x: Tensor,
    y_host: Vec<u32>,
    y: Indices,
    shift: Option<Tensor>,
    weights: Option<Tensor>,
    groups: Option<Vec<u32>>,
}

fn check_rows(rows: &[usize], n: usize) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::Data("the training subset is empty".into()));
    }
    if let Some((position, &i)) = rows.iter().enumerate().find(|(_, &i)| i >= n) {
        return Err(Error::IndexOutOfRange {
            op: "train: training subset",
            position,
            index: i,
            size: n,
        });
    }
    Ok(())
}

fn check_objective(objective: &Objective, ds: &Dataset, device: &Device) -> Result<()> {
    let (n, k) = (ds.train.n, ds.classes);
    match objective {
        Objective::Mean => {}
        Objective::Shifted(s) => {
            if s.dims() != [n, k] {
                return Err(Error::shape_detail(
                    "train: MAT shift",
                    s.dims(),
                    &[n, k],
                    "one row of K shifts per training example",
                ));
            }
            if s.device() != device {
                return Err(Error::Device(
                    "train: the MAT shift is on another device than the run".into(),
                ));
            }
        }
        Objective::Weighted(w) => {
            if w.len() != n {
                return Err(Error::shape_detail(
                    "train: row weights",
                    &[w.len()],
                    &[n],
                    "one weight per training example",
                ));
            }
            if let Some((i, v)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
            {
                return Err(Error::arg(
                    "weights",
                    format!("weight {v} of training row {i} is not finite and >= 0"),
                ));
            }
            if w.iter().all(|&v| v == 0.0) {
                return Err(Error::arg("weights", "every row weight is zero"));
            }
        }
        Objective::GroupDro {
            groups,
            n_groups,
            eta,
        } => {
            GroupDroState::new(*n_groups, *eta)?;
            if groups.len() != n {
                return Err(Error::shape_detail(
                    "train: GroupDRO groups",
                    &[groups.len()],
                    &[n],
                    "one group id per training example",
                ));
            }
            if let Some((position, &g)) = groups
                .iter()
                .enumerate()
                .find(|(_, &g)| g as usize >= *n_groups)
            {
                return Err(Error::IndexOutOfRange {
                    op: "train: GroupDRO groups",
                    position,
                    index: g as usize,
                    size: *n_groups,
                });
            }
        }
    }
    Ok(())
}

impl FitSet {
    fn new(
        ds: &Dataset,
        x_tr: &Tensor,
        rows: Option<&[usize]>,
        objective: &Objective,
    ) -> Result<FitSet> {
        let device = x_tr.device();
        let rows_idx = rows.map(|r| Indices::from_usize(r, device)).transpose()?;
        let pick = |t: &Tensor| -> Result<Tensor> {
            match &rows_idx {
                Some(idx) => t.index_select(idx),
                None => Ok(t.clone()),
            }
        };
        let by_row = |v: &[u32]| -> Vec<u32> {
            match rows {
                Some(r) => r.iter().map(|&i| v[i]).collect(),
                None => v.to_vec(),
            }
        };
        let y_host = by_row(&ds.train.y);
        let y = Indices::new(y_host.clone(), device)?;
        let (shift, weights, groups) = match objective {
            Objective::Mean => (None, None, None),
            Objective::Shifted(s) => (Some(pick(s)?), None, None),
            Objective::Weighted(w) => {
                let w = Tensor::from_slice(w, w.len(), device)?;
                (None, Some(pick(&w)?), None)
            }
            Objective::GroupDro { groups, .. } => (None, None, Some(by_row(groups))),
        };
        Ok(FitSet {
            x: pick(x_tr)?,
            y_host,
            y,
            shift,
            weights,
            groups,
        })
    }

    fn len(&self) -> usize {
        self.y_host.len()
    }
}

/// Runs the training loop of the module docs; `on_checkpoint` sees each checkpoint as it is
/// made (after it is written to `cfg.checkpoints_path`, when set).
///
/// Errors: an invalid data set ([`Dataset::validate`]), a validation split missing a group
/// that training has, a config or objective that does not fit the data, a non-finite loss,
/// and whatever `on_checkpoint` returns.
pub fn train(
    ds: &Dataset,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    setup: &TrainSetup,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
) -> Result<TrainOutcome> {
    ds.validate()?;
    cfg.validate()?;
    if cfg.eval_valid {
        check_validation_groups(ds)?;
    }
    let (n, d, k) = (ds.train.n, ds.d(), ds.classes);
    let device = &cfg.device;
    if let Some(rows) = &setup.rows {
        check_rows(rows, n)?;
    }
    check_objective(&setup.objective, ds, device)?;
    if let Some(g) = &setup.va_inferred_groups {
        if g.len() != ds.valid.n {
            return Err(Error::shape_detail(
                "train: inferred validation groups",
                &[g.len()],
                &[ds.valid.n],
                "one inferred group per validation example",
            ));
        }
        if let Some((position, &v)) = g.iter().enumerate().find(|(_, &v)| v as usize >= 2 * k) {
            return Err(Error::IndexOutOfRange {
                op: "train: inferred validation groups",
                position,
                index: v as usize,
                size: 2 * k,
            });
        }
    }

    let root = Rng::new(cfg.seed);
    let model = model_spec.build(d, k, &mut root.fork(STREAM_INIT), device)?;
    let mut dro = match &setup.objective {
        Objective::GroupDro { n_groups, eta, .. } => Some(GroupDroState::new(*n_groups, *eta)?),
        _ => None,
    };
    // A linear model without weight decay trains on the feature columns that are nonzero in
    // some fitted row (see `zero_features`): `compact` is that layer, `model` gets its
    // weights back before anything reads them.
    let compact = match (model.as_linear(), &dro) {
        (Some(full), None)
            if cfg.skip_zero_features
                && cfg.optimizer.weight_decay() == 0.0
                && device.is_cpu()
                && crate::backend::cpu::dot_products_at_any_depth(k) =>
        {
            KeptColumns::nonzero(&ds.train.x, d, setup.rows.as_deref())
                .map(|cols| CompactLinear::of(full, cols))
                .transpose()?
        }
        _ => None,
    };
    let kept = compact.as_ref().map(|c| &c.columns);
    let trained: &dyn Module = match &compact {
        Some(c) => &c.layer,
        None => model.as_ref(),
    };
    let write_back = || -> Result<()> {
        match (&compact, model.as_linear()) {
            (Some(c), Some(full)) => c.write_back(full),
            _ => Ok(()),
        }
    };
    let mut optimizer = cfg.optimizer.build(trained.parameters())?;

    // Data to the device, once.
    let x_tr = Tensor::from_slice(&ds.train.x, (n, d), device)?;
    let x_fit = match kept {
        Some(cols) => cols.gather_tensor(&ds.train.x, device)?,
        None => x_tr.clone(),
    };
    let fit = FitSet::new(ds, &x_fit, setup.rows.as_deref(), &setup.objective)?;
    let mut batcher = Batcher::new(
        fit.len(),
        cfg.batch_size,
        root.fork(STREAM_BATCH).next_u64(),
    )?;
    // Evaluation splits that are zero on the dropped columns too are evaluated on the kept
    // ones, with the compact layer; otherwise with the full model.
    let eval_columns = kept.filter(|cols| {
        setup.evaluate && cols.covers(&ds.test.x) && (!cfg.eval_valid || cols.covers(&ds.valid.x))
    });
    let evaluated: &dyn Module = if eval_columns.is_some() {
        trained
    } else {
        model.as_ref()
    };
    let evaluator = if setup.evaluate {
        Some(Evaluator::new(
            ds,
            device,
            cfg.eval_valid,
            setup.va_inferred_groups.clone(),
            eval_columns,
        )?)
    } else {
        None
    };
    // The training forward pass covers the whole training set in order: reuse its logits.
    let reuse_train_logits = batcher.is_full_batch() && setup.rows.is_none();

    let mut writer = cfg
        .checkpoints_path
        .as_ref()
        .map(JsonlWriter::create)
        .transpose()?;
    let mut checkpoints = Vec::new();
    let mut emit = |cp: Checkpoint| -> Result<()> {
        if let Some(w) = writer.as_mut() {
            w.write(&cp)?;
        }
        on_checkpoint(&cp)?;
        checkpoints.push(cp);
        Ok(())
    };
    // A linear model on the CPU is evaluated in batches of parameter snapshots (see
    // `Evaluator::held_out_of_snapshots`): one pass over the evaluation features serves
    // `snapshots_per_pass` checkpoints, with the same bits as one pass each.
    let snapshots_per_pass = match (evaluated.as_linear(), device.is_cpu()) {
        (Some(layer), true) => {
            let s = (SNAPSHOT_COLUMNS / k).max(1);
            (s > 1 && crate::backend::cpu::dot_products_cover(layer.in_dim(), s * k)).then_some(s)
        }
        _ => None,
    };
    let mut queue = CheckpointQueue::default();

    let start = Instant::now();
    let mut final_train_loss = f64::NAN;
    let outcome = (|| -> Result<()> {
        for step in 0..cfg.steps {
            let full = batcher.is_full_batch();
            let batch = batcher.next_batch();
            let gathered;
            let (x, y, shift, weights) = if full {
                (&fit.x, &fit.y, fit.shift.as_ref(), fit.weights.as_ref())
            } else {
                let idx = Indices::from_usize(batch, device)?;
                let labels: Vec<u32> = batch.iter().map(|&p| fit.y_host[p]).collect();
                gathered = (
                    fit.x.index_select(&idx)?,
                    Indices::new(labels, device)?,
                    fit.shift
                        .as_ref()
                        .map(|s| s.index_select(&idx))
                        .transpose()?,
                    fit.weights
                        .as_ref()
                        .map(|w| w.index_select(&idx))
                        .transpose()?,
                );
                (
                    &gathered.0,
                    &gathered.1,
                    gathered.2.as_ref(),
                    gathered.3.as_ref(),
                )
            };
            // A linear model under a mean loss trains through the fused linear + cross-entropy
            // op: one pass over the batch for logits, loss and weight gradient.
            let fused = match (&dro, trained.as_linear()) {
                (None, Some(lin)) => Some(x.linear_shifted_cross_entropy(
                    &lin.weight,
                    lin.bias.as_ref(),
                    y,
                    shift,
                    weights,
                    Reduction::Mean,
                )?),
                _ => None,
            };
            let logits = match &fused {
                Some((_, z)) => z.clone(),
                None => trained.forward(x)?,
            };
            if let Some(waiting) = queue.awaiting_train_metrics(step) {
                let ev = evaluator
                    .as_ref()
                    .expect("checkpoints wait only when evaluating");
                waiting.tr = Some(ev.train_metrics(&logits.argmax_rows()?.to_vec()?)?);
                queue.emit_ready(&mut emit)?;
            }
            let loss = match (fused, &mut dro, &fit.groups) {
                (Some((loss, _)), _, _) => loss,
                (None, Some(dro), Some(groups)) => {
                    let rows = logits.shifted_cross_entropy(y, None, None, Reduction::None)?;
                    let batch_groups: Vec<u32> = if full {
                        groups.clone()
                    } else {
                        batch.iter().map(|&p| groups[p]).collect()
                    };
                    let w = dro.update(&rows.to_vec()?, &batch_groups)?;
                    let w = Tensor::from_vec(w, batch_groups.len(), device)?;
                    rows.mul(&w)?.sum_all()?
                }
                _ => logits.shifted_cross_entropy(y, shift, weights, Reduction::Mean)?,
            };
            final_train_loss = loss.to_scalar()? as f64;
            // The loss is read back every step anyway, so checking it here catches a diverging
            // run on every device (the CPU kernels also check inside the op).
            if !final_train_loss.is_finite() {
                return Err(Error::NonFinite {
                    op: "train",
                    what: format!("the training loss at step {step} is {final_train_loss}"),
                });
            }
            let grads = loss.backward()?;
            optimizer.step(&grads)?;

            let due = step % cfg.checkpoint_freq == 0 || step + 1 == cfg.steps;
            if let (true, Some(ev)) = (due, evaluator.as_ref()) {
                let mut waiting = Waiting {
                    step,
                    train_loss: final_train_loss,
                    held_out: None,
                    snapshot: None,
                    tr: None,
                    train_from_next_step: cfg.eval_train && reuse_train_logits,
                };
                if eval_columns.is_none() || (cfg.eval_train && !reuse_train_logits) {
                    write_back()?;
                }
                match (snapshots_per_pass, evaluated.as_linear()) {
                    (Some(_), Some(lin)) => waiting.snapshot = Some(LinearSnapshot::of(lin)?),
                    _ => waiting.held_out = Some(ev.held_out(evaluated)?),
                }
                if cfg.eval_train && !reuse_train_logits {
                    waiting.tr = Some(ev.train_metrics(&predict_tensor(model.as_ref(), &x_tr)?)?);
                }
                queue.push(waiting);
                if let Some(s) = snapshots_per_pass {
                    if queue.snapshots() >= s {
                        queue.evaluate_snapshots(ev)?;
                    }
                }
                queue.emit_ready(&mut emit)?;
            }
        }
        Ok(())
    })();
    // Whatever ended the loop, checkpoints already made are completed and emitted: deferred
    // ones by their snapshots (which carry their own parameters), the last one's training
    // metrics by a final forward pass of the full model, written back first.
    let written_back = write_back();
    if let Some(ev) = evaluator.as_ref() {
        let finish = (|| -> Result<()> {
            queue.evaluate_snapshots(ev)?;
            queue.emit_ready(&mut emit)?;
            written_back?;
            if let Some(waiting) = queue.last_awaiting_train_metrics() {
                waiting.tr = Some(ev.train_metrics(&predict_tensor(model.as_ref(), &x_tr)?)?);
            }
            queue.emit_ready(&mut emit)
        })();
        outcome?;
        finish?;
    } else {
        outcome?;
        written_back?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        checkpoints,
        model,
        final_train_loss,
        steps_per_s: cfg.steps as f64 / elapsed.max(1e-12),
        group_dro_q: dro.map(|d| d.q().to_vec()),
        feature_columns: kept.map_or(d, KeptColumns::len),
    })
}

/// Validation (when evaluated) and test data on the device, with the labels and groups
/// metrics need.
struct Evaluator<'a> {
    ds: &'a Dataset,
    x_va: Option<Tensor>,
    x_te: Tensor,
    g_tr: Vec<u32>,
    g_va: Vec<u32>,
    g_te: Vec<u32>,
    va_inferred: Option<Vec<u32>>,
}

impl<'a> Evaluator<'a> {
    fn new(
        ds: &'a Dataset,
        device: &Device,
        eval_valid: bool,
        va_inferred: Option<Vec<u32>>,
        columns: Option<&KeptColumns>,
    ) -> Result<Self> {
        let d = ds.d();
        let features = |split: &Split| match columns {
            Some(cols) => cols.gather_tensor(&split.x, device),
            None => Tensor::from_slice(&split.x, (split.n, d), device),
        };
        Ok(Evaluator {
            ds,
            x_va: eval_valid.then(|| features(&ds.valid)).transpose()?,
            x_te: features(&ds.test)?,
            g_tr: ds.train.groups(ds.n_attr),
            g_va: ds.valid.groups(ds.n_attr),
            g_te: ds.test.groups(ds.n_attr),
            va_inferred,
        })
    }

    fn metrics(
        &self,
        pred: &[u32],
        split: &Split,
        groups: &[u32],
        n_groups: usize,
    ) -> Result<SplitMetrics> {
        split_metrics(pred, &split.y, groups, n_groups, self.ds.classes)
    }

    fn train_metrics(&self, pred: &[u32]) -> Result<SplitMetrics> {
        self.metrics(pred, &self.ds.train, &self.g_tr, self.ds.n_groups())
    }

    /// Validation and test metrics of the model as it is now.
    fn held_out(&self, model: &dyn Module) -> Result<HeldOutMetrics> {
        let pred_va = self
            .x_va
            .as_ref()
            .map(|x| predict_tensor(model, x))
            .transpose()?;
        let pred_te = predict_tensor(model, &self.x_te)?;
        self.held_out_metrics(pred_va.as_deref(), &pred_te)
    }

    /// Validation and test metrics of each snapshot of a linear model, from one product per
    /// split: `X · [W_1; …; W_S]ᵀ`, whose columns `s·K .. (s+1)·K` are snapshot `s`'s logits
    /// before its bias. The CPU's dot-product path computes every column with the same
    /// operations as the live model's `X · W_sᵀ`, and the bias is added in f32 as
    /// `broadcast_add` does, so the predictions are the ones a per-step evaluation makes.
    fn held_out_of_snapshots(&self, snapshots: &[&LinearSnapshot]) -> Result<Vec<HeldOutMetrics>> {
        let pred_va = self
            .x_va
            .as_ref()
            .map(|x| snapshot_predictions(x, snapshots))
            .transpose()?;
        let pred_te = snapshot_predictions(&self.x_te, snapshots)?;
        (0..snapshots.len())
            .map(|s| self.held_out_metrics(pred_va.as_ref().map(|p| &p[s][..]), &pred_te[s]))
            .collect()
    }

    fn held_out_metrics(&self, pred_va: Option<&[u32]>, pred_te: &[u32]) -> Result<HeldOutMetrics> {
        let n_groups = self.ds.n_groups();
        let (va, va_gi) = match pred_va {
            Some(pred) => (
                Some(self.metrics(pred, &self.ds.valid, &self.g_va, n_groups)?),
                self.va_inferred
                    .as_ref()
                    .map(|g| self.metrics(pred, &self.ds.valid, g, 2 * self.ds.classes))
                    .transpose()?,
            ),
            None => (None, None),
        };
        Ok(HeldOutMetrics {
            va,
            va_gi,
            te: self.metrics(pred_te, &self.ds.test, &self.g_te, n_groups)?,
        })
    }
}

/// `argmax (x_i W_sᵀ + b_s)` for every row `i` of `x` and every snapshot `s`, from one product
/// `x · [W_1; …; W_S]ᵀ`.
fn snapshot_predictions(x: &Tensor, snapshots: &[&LinearSnapshot]) -> Result<Vec<Vec<u32>>> {
    let Some(first) = snapshots.first() else {
        return Ok(Vec::new());
    };
    let k = first.classes;
    let d = first.weight.len() / k.max(1);
    let mut stacked = Vec::with_capacity(snapshots.len() * k * d);
    for s in snapshots {
        stacked.extend_from_slice(&s.weight);
    }
    let width = snapshots.len() * k;
    let w = Tensor::from_vec(stacked, (width, d), x.device())?;
    let z = no_grad(|| x.matmul_t(&w)?.to_vec())?;
    Ok(snapshots
        .iter()
        .enumerate()
        .map(|(s, snap)| {
            z.chunks_exact(width)
                .map(|row| {
                    let mut logits = row[s * k..(s + 1) * k].to_vec();
                    if let Some(b) = &snap.bias {
                        for (z, b) in logits.iter_mut().zip(b) {
                            *z += b;
                        }
                    }
                    crate::backend::cpu::argmax_first_max(&logits) as u32
                })
                .collect()
        })
        .collect())
}

/// Output columns of one snapshot-evaluation product: snapshots of a `K`-class linear model
/// are evaluated `SNAPSHOT_COLUMNS / K` at a time.
const SNAPSHOT_COLUMNS: usize = 64;

/// The validation and test metrics of one checkpoint.
struct HeldOutMetrics {
    va: Option<SplitMetrics>,
    va_gi: Option<SplitMetrics>,
    te: SplitMetrics,
}

/// A linear model's parameters at a checkpoint, kept for a later evaluation.
struct LinearSnapshot {
    classes: usize,
    /// `K × d`, row-major.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl LinearSnapshot {
    fn of(layer: &Linear) -> Result<Self> {
        Ok(LinearSnapshot {
            classes: layer.weight.dims()[0],
            weight: layer.weight.to_vec()?,
            bias: layer.bias.as_ref().map(Tensor::to_vec).transpose()?,
        })
    }
}

/// A checkpoint whose metrics are still being gathered.
struct Waiting {
    step: usize,
    train_loss: f64,
    held_out: Option<HeldOutMetrics>,
    /// Set while the held-out metrics wait for a batched snapshot evaluation.
    snapshot: Option<LinearSnapshot>,
    tr: Option<SplitMetrics>,
    /// The training metrics come from the next step's training forward pass.
    train_from_next_step: bool,
}

impl Waiting {
    fn is_complete(&self) -> bool {
        self.held_out.is_some() && (self.tr.is_some() || !self.train_from_next_step)
    }
}

/// Checkpoints in step order; each is emitted once it and every earlier one are complete.
#[derive(Default)]
struct CheckpointQueue {
    waiting: std::collections::VecDeque<Waiting>,
}

impl CheckpointQueue {
    fn push(&mut self, waiting: Waiting) {
        self.waiting.push_back(waiting);
    }

    /// Checkpoints waiting for a snapshot evaluation.
    fn snapshots(&self) -> usize {
        self.waiting.iter().filter(|w| w.snapshot.is_some()).count()
    }

    /// The checkpoint of the step before `step`, when it takes its training metrics from
    /// this step's training pass.
    fn awaiting_train_metrics(&mut self, step: usize) -> Option<&mut Waiting> {
        self.last_awaiting_train_metrics()
            .filter(|w| w.step + 1 == step)
    }

    /// The last checkpoint, when it still waits for training metrics from a forward pass.
    fn last_awaiting_train_metrics(&mut self) -> Option<&mut Waiting> {
        self.waiting
            .back_mut()
            .filter(|w| w.train_from_next_step && w.tr.is_none())
    }

    fn evaluate_snapshots(&mut self, ev: &Evaluator<'_>) -> Result<()> {
        let snapshots: Vec<&LinearSnapshot> = self
            .waiting
            .iter()
            .filter_map(|w| w.snapshot.as_ref())
            .collect();
        let metrics = ev.held_out_of_snapshots(&snapshots)?;
        let mut metrics = metrics.into_iter();
        for w in self.waiting.iter_mut().filter(|w| w.snapshot.is_some()) {
            w.held_out = metrics.next();
            w.snapshot = None;
        }
        Ok(())
    }

    fn emit_ready(&mut self, emit: &mut dyn FnMut(Checkpoint) -> Result<()>) -> Result<()> {
        while self.waiting.front().is_some_and(Waiting::is_complete) {
            let w = self
                .waiting
                .pop_front()
                .expect("the front was just seen complete");
            let held_out = w
                .held_out
                .expect("a complete checkpoint has held-out metrics");
            emit(Checkpoint {
                step: w.step,
                train_loss: w.train_loss,
                va: held_out.va,
                te: held_out.te,
                va_gi: held_out.va_gi,
                tr: w.tr,
            })?;
        }
        Ok(())
    }
}

/// What [`run_method`] leaves: the training run and what the method decided on the way.
pub struct MethodOutcome {
    pub method: Method,
    /// The (final-stage) training run.
    pub outcome: TrainOutcome,
    /// JTT: the training rows the first-stage model misclassified (sorted).
    pub jtt_error_set: Option<Vec<usize>>,
    /// JTT and RWG: the per-example weights of the training loss.
    pub row_weights: Option<Vec<f32>>,
    /// SUBG: the training rows kept (sorted).
    pub subg_rows: Option<Vec<usize>>,
}

impl std::fmt::Debug for MethodOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodOutcome")
            .field("method", &self.method)
            .field("outcome", &self.outcome)
            .field("jtt_error_set", &self.jtt_error_set.as_ref().map(Vec::len))
            .field("subg_rows", &self.subg_rows.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Runs `method` on `ds`; see [`run_method_with`].
pub fn run_method(
    ds: &Dataset,
    method: &Method,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    xrm: Option<&XrmOutput>,
) -> Result<MethodOutcome> {
    run_method_with(ds, method, model_spec, cfg, xrm, &mut |_| Ok(()))
}

/// Builds `method`'s objective and runs [`train`], calling `on_checkpoint` for each checkpoint.
///
/// - ERM: `Objective::Mean`.
/// - GroupDRO: `Objective::GroupDro` on the true groups `n_attr · y + a`.
/// - JTT: stage 1 is exactly ERM with `steps = first_stage_steps` and the same seed (no
///   checkpoints); its misclassified training rows `E` get weight `lambda_up` (see
///   [`jtt_weights`]) in stage 2, a fresh model (initialized from a seed derived from
///   `cfg.seed`) trained for `cfg.steps` with `Objective::Weighted`.
/// - MAT: `Objective::Shifted` with [`super::mat::mat_shift_tensor`]`(xrm, tau)`.
/// - RWG: `Objective::Weighted` with `w_i = n / (G n_{g_i})` ([`group_weights_balanced`]), so
///   that the expected batch loss is the unweighted mean over present groups of each group's
///   mean loss. Weights, not a weighted sampler: every example is seen once per epoch.
/// - SUBG: `Objective::Mean` on [`subsample_groups`] of the true groups (seeded from
///   `cfg.seed`).
/// - XRM + GroupDRO: `Objective::GroupDro` on the inferred groups `2y + m` (`2K` groups).
///
/// When `xrm` is given (whatever the method), checkpoints also carry validation metrics over
/// the inferred groups (`va_gi`). MAT and XRM + GroupDRO without `xrm` are an error, as is an
/// `xrm` computed on another data set (sizes or labels differ).
pub fn run_method_with(
    ds: &Dataset,
    method: &Method,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    xrm: Option<&XrmOutput>,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
) -> Result<MethodOutcome> {
    ds.validate()?;
    if method.needs_xrm() && xrm.is_none() {
        return Err(Error::arg(
            "xrm",
            format!(
                "{} needs XRM's outputs (held-out logits and inferred groups); run XRM first",
                method.name()
            ),
        ));
    }
    if let Some(x) = xrm {
        x.check_matches(ds)?;
    }
    let va_inferred_groups = xrm.map(|x| x.inferred_groups_va(ds));
    let mut jtt_error_set = None;
    let mut row_weights = None;
    let mut subg_rows = None;
    let mut run_cfg = cfg.clone();
    let (objective, rows) = match method {
        Method::Erm => (Objective::Mean, None),
        Method::GroupDro { eta } => (
            Objective::GroupDro {
                groups: ds.train.groups(ds.n_attr),
                n_groups: ds.n_groups(),
                eta: *eta,
            },
            None,
        ),
        Method::Jtt {
            first_stage_steps,
            lambda_up,
        } => {
            if *first_stage_steps == 0 {
                return Err(Error::arg("first_stage_steps", "must be at least 1"));
            }
            // Validate before spending the first stage.
            jtt_weights(0, &[], *lambda_up)?;
            let stage1_cfg = TrainConfig {
                steps: *first_stage_steps,
                eval_train: false,
                eval_valid: true,
                checkpoints_path: None,
                skip_zero_features: true,
                ..cfg.clone()
            };
            let stage1_setup = TrainSetup {
                evaluate: false,
                ..TrainSetup::new(Objective::Mean)
            };
            let stage1 = train(ds, model_spec, &stage1_cfg, &stage1_setup, &mut |_| Ok(()))?;
            let pred = predict(stage1.model.as_ref(), &ds.train, &cfg.device)?;
            let errors: Vec<usize> = (0..ds.train.n)
                .filter(|&i| pred[i] != ds.train.y[i])
                .collect();
            let w = jtt_weights(ds.train.n, &errors, *lambda_up)?;
            jtt_error_set = Some(errors);
            row_weights = Some(w.clone());
            run_cfg.seed = Rng::new(cfg.seed).fork(STREAM_JTT_STAGE2).next_u64();
            (Objective::Weighted(w), None)
        }
        Method::Mat { tau } => {
            let xrm = xrm.expect("checked above: MAT has XRM outputs");
            let shift = super::mat::mat_shift_tensor(xrm, ds, *tau, &cfg.device)?;
            (Objective::Shifted(shift), None)
        }
        Method::Rwg => {
            let w = group_weights_balanced(&ds.train.groups(ds.n_attr), ds.n_groups())?;
            row_weights = Some(w.clone());
            (Objective::Weighted(w), None)
        }
        Method::Subg => {
            let mut rng = Rng::new(cfg.seed).fork(STREAM_SUBG);
            let rows = subsample_groups(&ds.train.groups(ds.n_attr), ds.n_groups(), &mut rng);
            subg_rows = Some(rows.clone());
            (Objective::Mean, Some(rows))
        }
        Method::XrmGroupDro { eta } => {
            let xrm = xrm.expect("checked above: XRM + GroupDRO has XRM outputs");
            (
                Objective::GroupDro {
                    groups: xrm.inferred_groups_tr(ds),
                    n_groups: 2 * ds.classes,
                    eta: *eta,
                },
                None,
            )
        }
    };
    let setup = TrainSetup {
        objective,
        rows,
        va_inferred_groups,
        evaluate: true,
    };
    let outcome = train(ds, model_spec, &run_cfg, &setup, on_checkpoint)?;
    Ok(MethodOutcome {
        method: method.clone(),
        outcome,
        jtt_error_set,
        row_weights,
        subg_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Init;

    #[test]
    fn batched_snapshots_predict_what_each_live_model_predicts() {
        let (n, d) = (257, 600);
        let mut rng = Rng::new(11);
        // Logits near zero make near-ties, where any difference in rounding would show.
        let x = Tensor::from_vec(rng.normal_vec(n * d), (n, d), &Device::Cpu).unwrap();
        for bias in [false, true] {
            let models: Vec<Linear> = (0..5)
                .map(|_| Linear::new(d, 2, bias, Init::PyTorchDefault, &mut rng, &Device::Cpu))
                .collect::<Result<_>>()
                .unwrap();
            let snapshots: Vec<LinearSnapshot> = models
                .iter()
                .map(|m| LinearSnapshot::of(m).unwrap())
                .collect();
            let refs: Vec<&LinearSnapshot> = snapshots.iter().collect();
            assert!(crate::backend::cpu::dot_products_cover(d, 2 * refs.len()));
            let batched = snapshot_predictions(&x, &refs).unwrap();
            for (model, got) in models.iter().zip(&batched) {
                assert_eq!(got, &predict_tensor(model, &x).unwrap());
            }
        }
    }

    #[test]
    fn group_dro_weights_reproduce_the_group_weighted_loss() {
        let mut dro = GroupDroState::new(3, 0.5).unwrap();
        let losses = [1.0f32, 3.0, 0.5, 0.5, 2.0];
        let groups = [0u32, 0, 2, 2, 2];
        let w = dro.update(&losses, &groups).unwrap();
        let q = dro.q().to_vec();
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // By hand: L0 = 2, L2 = 1; q ∝ (e^{1}, 1, e^{0.5}).
        let z = 1f64.exp() + 1.0 + 0.5f64.exp();
        assert!((q[0] - 1f64.exp() / z).abs() < 1e-12);
        assert!((q[1] - 1.0 / z).abs() < 1e-12);
        let weighted: f64 = w
            .iter()
            .zip(&losses)
            .map(|(&w, &l)| w as f64 * l as f64)
            .sum();
        assert!((weighted - (q[0] * 2.0 + q[2] * 1.0)).abs() < 1e-6);
        assert!(dro.update(&[1.0], &[3]).is_err());
        assert!(dro.update(&[f32::NAN], &[0]).is_err());
        assert!(GroupDroState::new(2, -1.0).is_err());
    }

    #[test]
    fn jtt_weights_mark_exactly_the_errors() {
        let w = jtt_weights(5, &[1, 3], 20.0).unwrap();
        assert_eq!(w, vec![1.0, 20.0, 1.0, 20.0, 1.0]);
        assert!(jtt_weights(2, &[2], 5.0).is_err());
        assert!(jtt_weights(2, &[], 0.0).is_err());
    }
}
