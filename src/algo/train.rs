//! The training loop shared by every method ([`train`]).
//!
//! The training, validation and test features go to the device **once**, at the start (`x` as
//! one `n × d` tensor, labels as [`Indices`]). Each step takes a batch of row positions from
//! the seeded [`Batcher`] (the whole training set, with no gather, when `batch_size >= n`),
//! asks the model for the method's [`Objective`] on the batch and its logits, backpropagates
//! and takes an optimizer step:
//!
//! ```text
//! for step in 0..steps:
//!     B = next batch;  loss, z = objective(f, x_B, y_B)
//!     loss.backward();  optimizer.step()
//!     if step % checkpoint_freq == 0 or step is the last: checkpoint(f)
//! ```
//!
//! SUBG trains on a subset of the training rows: the subset is gathered once, and the batcher
//! walks it. With [`Sampler::ClassBalanced`] ([`train_sampled`]) the batches are drawn with
//! replacement, class-balanced, by a [`WeightedBatcher`] over the rows trained on (the subset,
//! for SUBG) instead, seeded from the same stream; the default [`Sampler::Shuffle`] is the
//! batcher above, bit for bit. A checkpoint after the update with 0-based index `s` (when
//! `s % checkpoint_freq == 0` or `s` is the last step) has `Checkpoint::step = s`, reflecting
//! `s + 1` updates as the reference records it, and `train_loss` is the objective on the
//! step's batch before the update; see [`super::evaluate`] for what it measures.
//!
//! Per-step host work is `O(|B|)` (batch indices, labels, GroupDRO's row losses). Memory
//! traffic per step: a mini-batch is gathered (`|B|·d` values read and written), then read
//! by the forward pass and again by the weight gradient, or once in all by a linear model
//! on the CPU, whose layer is fused with the loss. With `TrainConfig::state_dir` the run
//! saves its state at checkpoints and a killed run continues from it bit for bit.

use std::path::PathBuf;
use std::time::Instant;

use super::evaluate::{predict_tensor, Checkpoints, EvalPlan};
use super::model::{ModelSpec, OptimizerSpec};
use super::objective::{Objective, StepLoss};
use super::run_state::RunState;
use crate::backend::Device;
use crate::data::batch::{class_weights_balanced, Batcher, Sampler, WeightedBatcher};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::selection::Checkpoint;
use crate::nn::Module;
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

/// Sub-streams of `Rng::new(seed)` used by the loop.
const STREAM_INIT: u64 = 1;
const STREAM_BATCH: u64 = 2;

/// How a training run goes, whatever the method. The default is one full-batch step of plain
/// SGD (lr 0.01) on the CPU with seed 0, a checkpoint after it on validation and test, and no
/// file; set the fields that differ (`TrainConfig { steps: 500, ..Default::default() }`).
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
    /// Save the run's state here at checkpoints (at least every 32), and continue from a
    /// state this run saved here before (see [`super::run_state`]; needs `checkpoints_path`).
    pub state_dir: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1,
            batch_size: usize::MAX,
            optimizer: OptimizerSpec::plain_sgd(0.01),
            checkpoint_freq: 1,
            seed: 0,
            device: Device::Cpu,
            eval_train: false,
            eval_valid: true,
            checkpoints_path: None,
            state_dir: None,
        }
    }
}

impl TrainConfig {
    /// `steps` full-batch steps of `optimizer`, a checkpoint every `checkpoint_freq`.
    pub fn full_batch(steps: usize, optimizer: OptimizerSpec, checkpoint_freq: usize) -> Self {
        TrainConfig {
            steps,
            optimizer,
            checkpoint_freq,
            ..Default::default()
        }
    }

    /// `steps` steps of `optimizer` on batches of `batch_size`, a checkpoint every
    /// `checkpoint_freq`.
    pub fn minibatch(
        steps: usize,
        batch_size: usize,
        optimizer: OptimizerSpec,
        checkpoint_freq: usize,
    ) -> Self {
        TrainConfig {
            batch_size,
            ..Self::full_batch(steps, optimizer, checkpoint_freq)
        }
    }

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
}

impl std::fmt::Debug for TrainOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOutcome")
            .field("checkpoints", &self.checkpoints.len())
            .field("final_train_loss", &self.final_train_loss)
            .field("steps_per_s", &self.steps_per_s)
            .field("group_dro_q", &self.group_dro_q)
            .finish_non_exhaustive()
    }
}

/// Predicted classes `argmax f(x)` for every row of `split`, computed on `device` under
/// `no_grad` (no shift: MAT predicts with the model's logits only).
pub fn predict(model: &dyn Module, split: &Split, device: &Device) -> Result<Vec<u32>> {
    let x = Tensor::from_buffer(split.x.clone(), (split.n, split.d), device)?;
    predict_tensor(model, &x)
}

/// Runs the training loop of the module docs; `on_checkpoint` sees each checkpoint as it is
/// made (after it is written to `cfg.checkpoints_path`, when set).
///
/// Errors: an invalid data set ([`Dataset::validate`]), a validation split missing a group
/// that training has, a config or objective that does not fit the data, a non-finite loss,
/// and whatever `on_checkpoint` returns. Checkpoints made before an error are still emitted.
pub fn train(
    ds: &Dataset,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    setup: &TrainSetup,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
) -> Result<TrainOutcome> {
    train_sampled(ds, model_spec, cfg, setup, Sampler::Shuffle, on_checkpoint)
}

/// The sub-folder of `TrainConfig::state_dir` that keeps the state of a class-balanced run.
/// The state's key does not cover the sampler, so a shuffled run and a class-balanced run
/// sharing a folder must never resume each other's state.
const CLASS_BALANCED_STATE_DIR: &str = "class_balanced";

/// [`train`] with batches drawn by `sampler`. [`Sampler::Shuffle`] is [`train`] itself;
/// [`Sampler::ClassBalanced`] draws every batch with replacement, class-balanced over the rows
/// trained on (see the module docs). A class-balanced run keeps its state (with
/// `TrainConfig::state_dir`) in the sub-folder `class_balanced/` and, when resumed, draws its
/// batches up to the saved step again, so it ends with the bits of an uninterrupted run.
pub fn train_sampled(
    ds: &Dataset,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    setup: &TrainSetup,
    sampler: Sampler,
    on_checkpoint: &mut dyn FnMut(&Checkpoint) -> Result<()>,
) -> Result<TrainOutcome> {
    check_setup(ds, cfg, setup)?;
    let device = &cfg.device;
    let root = Rng::new(cfg.seed);
    let model = model_spec.build(ds.d(), ds.classes, &mut root.fork(STREAM_INIT), device)?;
    let mut optimizer = cfg.optimizer.build(model.parameters())?;

    // Data to the device, once; the objective's per-row data with it.
    let rows = setup.rows.as_deref();
    let x_tr = Tensor::from_buffer(ds.train.x.clone(), (ds.train.n, ds.d()), device)?;
    let x_fit = match rows {
        Some(r) => x_tr.index_select(&Indices::from_usize(r, device)?)?,
        None => x_tr.clone(),
    };
    let y_fit: Vec<u32> = match rows {
        Some(r) => r.iter().map(|&i| ds.train.y[i]).collect(),
        None => ds.train.y.clone(),
    };
    let y_fit_dev = Indices::new(y_fit.clone(), device)?;
    let mut objective = StepLoss::new(&setup.objective, rows, device)?;
    let batch_seed = root.fork(STREAM_BATCH).next_u64();
    let mut batcher = Batcher::new(y_fit.len(), cfg.batch_size, batch_seed)?;
    // Class-balanced draws replace the batcher's (which then stays at its start).
    let mut weighted = match sampler {
        Sampler::Shuffle => None,
        Sampler::ClassBalanced => Some(WeightedBatcher::new(
            &class_weights_balanced(&y_fit, ds.classes)?,
            cfg.batch_size,
            batch_seed,
        )?),
    };
    let balanced_cfg;
    let state_cfg = match (&weighted, &cfg.state_dir) {
        (Some(_), Some(dir)) => {
            balanced_cfg = TrainConfig {
                state_dir: Some(dir.join(CLASS_BALANCED_STATE_DIR)),
                ..cfg.clone()
            };
            &balanced_cfg
        }
        _ => cfg,
    };

    // A killed run continues from its last saved state (a no-op without `state_dir`).
    let state = RunState::new(ds, model_spec, state_cfg, setup)?;
    let (resumed, mut writer) = state.restore(
        model.as_ref(),
        optimizer.as_mut(),
        &mut batcher,
        &mut objective,
        cfg.checkpoints_path.as_deref(),
    )?;
    if let Some(w) = weighted.as_mut() {
        // Each step draws one batch: redraw those of the steps already run.
        w.skip(resumed.first_step);
    }
    let mut made = resumed.checkpoints;
    let mut emit = |cp: Checkpoint| -> Result<()> {
        if let Some(w) = writer.as_mut() {
            w.write(&cp)?;
        }
        on_checkpoint(&cp)?;
        made.push(cp);
        Ok(())
    };
    let plan = EvalPlan {
        valid: cfg.eval_valid,
        train: cfg.eval_train,
        va_inferred: setup.va_inferred_groups.clone(),
        train_logits_follow: batcher.is_full_batch() && rows.is_none() && weighted.is_none(),
    };
    let mut checkpoints = setup
        .evaluate
        .then(|| Checkpoints::new(ds, device, plan, x_tr, &mut emit))
        .transpose()?;

    let start = Instant::now();
    let mut final_train_loss = resumed.final_train_loss;
    let run = (|| -> Result<()> {
        for step in resumed.first_step..cfg.steps {
            let (full, positions) = match weighted.as_mut() {
                Some(w) => (false, w.next_batch()),
                None => (batcher.is_full_batch(), batcher.next_batch()),
            };
            let (loss, logits) = if full {
                objective.on_batch(model.as_ref(), &x_fit, &y_fit_dev, None)?
            } else {
                let idx = Indices::from_usize(positions, device)?;
                let y = Indices::new(positions.iter().map(|&p| y_fit[p]).collect(), device)?;
                let x = x_fit.index_select(&idx)?;
                objective.on_batch(model.as_ref(), &x, &y, Some((positions, &idx)))?
            };
            if let Some(c) = checkpoints.as_mut() {
                c.training_logits(step, &logits)?;
            }
            final_train_loss = loss.to_scalar()? as f64;
            // Read back every step anyway: checking it here stops a diverging run on every
            // device.
            if !final_train_loss.is_finite() {
                return Err(Error::NonFinite {
                    op: "train",
                    what: format!("the training loss at step {step} is {final_train_loss}"),
                });
            }
            optimizer.step(&loss.backward()?)?;
            if step % cfg.checkpoint_freq == 0 || step + 1 == cfg.steps {
                if let Some(c) = checkpoints.as_mut() {
                    c.record(step, final_train_loss, model.as_ref())?;
                    if state.due(step, cfg.steps, c.all_emitted()) {
                        c.flush(model.as_ref())?;
                        let (m, o) = (model.as_ref(), optimizer.as_ref());
                        state.save(step, final_train_loss, m, o, &batcher, &objective)?;
                    }
                }
            }
        }
        Ok(())
    })();
    // Whatever ended the loop, the checkpoints already made are completed and emitted.
    let finished = checkpoints.map_or(Ok(()), |c| c.finish(model.as_ref()));
    run?;
    finished?;
    state.clear()?;
    if let (Some(_), Some(dir)) = (&weighted, &cfg.state_dir) {
        // The sub-folder is left empty: remove it (a folder still holding anything stays).
        let _ = std::fs::remove_dir(dir.join(CLASS_BALANCED_STATE_DIR));
    }
    Ok(TrainOutcome {
        checkpoints: made,
        model,
        final_train_loss,
        steps_per_s: cfg.steps as f64 / start.elapsed().as_secs_f64().max(1e-12),
        group_dro_q: objective.group_dro_q(),
    })
}

fn check_setup(ds: &Dataset, cfg: &TrainConfig, setup: &TrainSetup) -> Result<()> {
    ds.validate()?;
    cfg.validate()?;
    if cfg.eval_valid {
        check_validation_groups(ds)?;
    }
    if let Some(rows) = &setup.rows {
        check_rows(rows, ds.train.n)?;
    }
    setup.objective.check(ds, &cfg.device)?;
    if let Some(g) = &setup.va_inferred_groups {
        if g.len() != ds.valid.n {
            return Err(Error::shape_detail(
                "train: inferred validation groups",
                &[g.len()],
                &[ds.valid.n],
                "one inferred group per validation example",
            ));
        }
        let k = ds.classes;
        if let Some((position, &v)) = g.iter().enumerate().find(|(_, &v)| v as usize >= 2 * k) {
            return Err(Error::IndexOutOfRange {
                op: "train: inferred validation groups",
                position,
                index: v as usize,
                size: 2 * k,
            });
        }
    }
    Ok(())
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
