//! A training run's state on disk, so that a killed run continues where it stopped and ends
//! with the bits of an uninterrupted one ([`TrainConfig::state_dir`]).
//!
//! At every checkpoint (once every earlier checkpoint is written) the loop saves
//! `state.safetensors` in the state folder: the model's parameters (`model.<name>`), the
//! optimizer's buffers (`optim.<parameter>.<buffer>`: SGD's momentum, Adam's `m` and `v`) and,
//! in the header's metadata under `state`, a JSON [`StateRecord`]: the next step, the
//! checkpoints written so far, the last training loss, the batcher's position
//! ([`BatcherState`]), the optimizer's step counts, GroupDRO's `q`, and the **key** of the run
//! (a digest of the data, the model, the objective and the config). One file, written to a
//! temporary name and renamed, so a kill leaves the previous state or the new one.
//!
//! A run started with a state folder holding a state with its own key restores all of that,
//! keeps the first `checkpoints` records of its checkpoint file (dropping any written after
//! the state was saved), and goes on from the next step. A state with another key, or one
//! that does not read, is ignored: the run starts afresh and replaces it. The state is
//! removed when the run finishes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::model::ModelSpec;
use super::objective::{Objective, StepLoss};
use super::train::{TrainConfig, TrainSetup};
use crate::data::batch::{Batcher, BatcherState};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::selection::Checkpoint;
use crate::io::{read_jsonl, write_atomic, write_jsonl, Digest, JsonlWriter};
use crate::nn::Module;
use crate::optim::{Optimizer, OptimizerState};

/// The state file's name in the state folder.
pub const STATE_FILE: &str = "state.safetensors";
const FORMAT: &str = "memaware-train-state-v1";

/// The JSON half of a saved state (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateRecord {
    pub format: String,
    /// Digest of what determines the run; a state is only resumed by the run that made it.
    pub key: String,
    /// The first step still to run.
    pub next_step: usize,
    /// Checkpoints written to the checkpoint file when the state was saved.
    pub checkpoints: usize,
    pub final_train_loss: f64,
    pub batcher: BatcherState,
    pub optimizer_kind: String,
    pub optimizer_steps: Vec<u32>,
    /// Per parameter, how many optimizer buffers are saved (0 before its first update).
    pub optimizer_buffers: Vec<usize>,
    pub group_dro_q: Option<Vec<f64>>,
}

/// Where a resumed run starts.
pub(crate) struct Resumed {
    pub first_step: usize,
    pub checkpoints: Vec<Checkpoint>,
    pub final_train_loss: f64,
}

/// A digest of the data set: its name, sizes and every split's features (bit patterns),
/// labels, attributes and ids.
pub fn data_digest(ds: &Dataset) -> String {
    let mut d = Digest::new();
    d.str(&ds.name);
    d.u32s([ds.classes as u32, ds.n_attr as u32].into_iter());
    let split = |d: &mut Digest, s: &Split| {
        d.u32s([s.n as u32, s.d as u32].into_iter());
        d.f32s(&s.x);
        d.u32s(s.y.iter().copied());
        d.u32s(s.a.iter().copied());
        let ids: Vec<u32> = s
            .ids
            .iter()
            .flat_map(|&i| [i as u32, (i >> 32) as u32])
            .collect();
        d.u32s(ids.into_iter());
    };
    for s in [&ds.train, &ds.valid, &ds.test] {
        split(&mut d, s);
    }
    d.hex()
}

/// The key of a run: everything that determines its steps.
fn run_key(
    ds: &Dataset,
    model_spec: &ModelSpec,
    cfg: &TrainConfig,
    setup: &TrainSetup,
) -> Result<String> {
    let path = Path::new(STATE_FILE);
    let mut d = Digest::new();
    d.str(FORMAT).str(env!("CARGO_PKG_VERSION"));
    d.str(&data_digest(ds));
    d.json(path, model_spec)?;
    d.json(path, &cfg.optimizer)?;
    d.json(
        path,
        &(
            cfg.steps,
            cfg.batch_size.min(ds.train.n),
            cfg.checkpoint_freq,
            cfg.seed,
            cfg.device.is_cpu(),
            cfg.eval_train,
            cfg.eval_valid,
            setup.evaluate,
        ),
    )?;
    match &setup.objective {
        Objective::Mean => d.str("mean"),
        Objective::Shifted(s) => d
            .str("shifted")
            .u32s(s.to_vec()?.into_iter().map(f32::to_bits)),
        Objective::Weighted(w) => d.str("weighted").u32s(w.iter().map(|v| v.to_bits())),
        Objective::GroupDro {
            groups,
            n_groups,
            eta,
        } => d
            .str("group_dro")
            .u32s(groups.iter().copied())
            .u32s([*n_groups as u32, eta.to_bits()].into_iter()),
    };
    d.json(path, &setup.rows)?;
    d.json(path, &setup.va_inferred_groups)?;
    Ok(d.hex())
}

/// Saves and restores the state of one run (a no-op without [`TrainConfig::state_dir`]).
pub(crate) struct RunState {
    dir: Option<PathBuf>,
    key: String,
    checkpoint_freq: usize,
    /// Checkpoints made since the last save.
    unsaved: std::cell::Cell<usize>,
}

/// The most checkpoints a run makes between two saves of its state. A save waits for the
/// moment every checkpoint made is written (a linear model's checkpoints are evaluated in
/// batches), and forces it after this many.
const MAX_UNSAVED: usize = 32;

impl RunState {
    pub(crate) fn new(
        ds: &Dataset,
        model_spec: &ModelSpec,
        cfg: &TrainConfig,
        setup: &TrainSetup,
    ) -> Result<RunState> {
        let key = match cfg.state_dir {
            Some(_) => run_key(ds, model_spec, cfg, setup)?,
            None => String::new(),
        };
        Ok(RunState {
            dir: cfg.state_dir.clone(),
            key,
            checkpoint_freq: cfg.checkpoint_freq,
            unsaved: std::cell::Cell::new(0),
        })
    }

    /// Whether to save the state after the checkpoint of step `step` of `steps`: when every
    /// checkpoint made is already written (saving then costs no extra evaluation), and at the
    /// latest [`MAX_UNSAVED`] checkpoints after the last save. Never after the last step.
    pub(crate) fn due(&self, step: usize, steps: usize, all_written: bool) -> bool {
        if self.dir.is_none() || step + 1 >= steps {
            return false;
        }
        let unsaved = self.unsaved.get() + 1;
        let due = all_written || unsaved >= MAX_UNSAVED;
        self.unsaved.set(if due { 0 } else { unsaved });
        due
    }

    fn file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(STATE_FILE))
    }

    /// Restores a saved state of this run into the model, optimizer, batcher and objective,
    /// and opens the checkpoint file: truncated to the checkpoints the state counts and
    /// appended to when resuming, created afresh otherwise.
    pub(crate) fn restore(
        &self,
        model: &dyn Module,
        optimizer: &mut dyn Optimizer,
        batcher: &mut Batcher,
        objective: &mut StepLoss,
        checkpoints_path: Option<&Path>,
    ) -> Result<(Resumed, Option<JsonlWriter>)> {
        let fresh = Resumed {
            first_step: 0,
            checkpoints: Vec::new(),
            final_train_loss: f64::NAN,
        };
        let resumed = match (self.file(), checkpoints_path) {
            (Some(file), Some(cps)) if file.is_file() => {
                // A state that does not read, or another run's, is replaced: start afresh.
                self.load(&file, cps, model, optimizer, batcher, objective)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let writer = match (checkpoints_path, &resumed) {
            (Some(p), Some(r)) => {
                write_jsonl(p, &r.checkpoints)?;
                Some(JsonlWriter::append(p)?)
            }
            (Some(p), None) => Some(JsonlWriter::create(p)?),
            (None, _) => None,
        };
        Ok((resumed.unwrap_or(fresh), writer))
    }

    fn load(
        &self,
        file: &Path,
        checkpoints_path: &Path,
        model: &dyn Module,
        optimizer: &mut dyn Optimizer,
        batcher: &mut Batcher,
        objective: &mut StepLoss,
    ) -> Result<Option<Resumed>> {
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        let bad = |problem: String| Error::File {
            path: file.to_path_buf(),
            tensor: String::new(),
            problem,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a state file: {e}")))?;
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .ok_or_else(|| bad("no `state` record in its metadata".into()))?;
        let record: StateRecord =
            serde_json::from_str(text).map_err(|e| bad(format!("state record: {e}")))?;
        if record.format != FORMAT || record.key != self.key {
            return Ok(None);
        }
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a complete safetensors file: {e}")))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let view = tensors
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is not F32")));
            }
            Ok(view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut cps: Vec<Checkpoint> = read_jsonl(checkpoints_path)?;
        if cps.len() < record.checkpoints {
            return Ok(None);
        }
        cps.truncate(record.checkpoints);
        // Stage everything, then change anything.
        let params = model.named_parameters();
        let mut values = Vec::with_capacity(params.len());
        for (name, t) in &params {
            let v = read(&format!("model.{name}"))?;
            if v.len() != t.elem_count() {
                return Err(bad(format!("parameter `{name}` has another size")));
            }
            values.push(crate::tensor::Tensor::from_vec(
                v,
                t.shape().clone(),
                t.device(),
            )?);
        }
        let opt = OptimizerState {
            kind: record.optimizer_kind.clone(),
            buffers: record
                .optimizer_buffers
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| read(&format!("optim.{i}.{j}"))).collect())
                .collect::<Result<_>>()?,
            steps: record.optimizer_steps.clone(),
        };
        let restored = Batcher::from_state(&record.batcher)?;
        if restored.n() != batcher.n() || restored.batch_size() != batcher.batch_size() {
            return Err(bad("the batcher's sizes differ".into()));
        }
        optimizer.load_state(&opt)?;
        objective.set_group_dro_q(record.group_dro_q.as_deref())?;
        for ((_, t), v) in params.iter().zip(&values) {
            t.assign(v)?;
        }
        *batcher = restored;
        Ok(Some(Resumed {
            first_step: record.next_step,
            checkpoints: cps,
            final_train_loss: record.final_train_loss,
        }))
    }

    /// Saves the state after step `step` (every checkpoint up to it written).
    pub(crate) fn save(
        &self,
        step: usize,
        final_train_loss: f64,
        model: &dyn Module,
        optimizer: &dyn Optimizer,
        batcher: &Batcher,
        objective: &StepLoss,
    ) -> Result<()> {
        let Some(file) = self.file() else {
            return Ok(());
        };
        let opt = optimizer.state()?;
        let record = StateRecord {
            format: FORMAT.into(),
            key: self.key.clone(),
            next_step: step + 1,
            checkpoints: step / self.checkpoint_freq + 1,
            final_train_loss,
            batcher: batcher.state(),
            optimizer_kind: opt.kind.clone(),
            optimizer_steps: opt.steps.clone(),
            optimizer_buffers: opt.buffers.iter().map(Vec::len).collect(),
            group_dro_q: objective.group_dro_q(),
        };
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (name, t) in model.named_parameters() {
            let bytes = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((format!("model.{name}"), bytes, t.dims().to_vec()));
        }
        for (i, buffers) in opt.buffers.iter().enumerate() {
            for (j, b) in buffers.iter().enumerate() {
                let bytes = b.iter().flat_map(|v| v.to_le_bytes()).collect();
                data.push((format!("optim.{i}.{j}"), bytes, vec![b.len()]));
            }
        }
        let bad = |problem: String| Error::File {
            path: file.clone(),
            tensor: String::new(),
            problem,
        };
        let views = data
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let text = serde_json::to_string(&record).map_err(|e| bad(e.to_string()))?;
        let meta: HashMap<String, String> = [("state".to_string(), text)].into();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(e.to_string()))?;
        write_atomic(&[(&file, &bytes)])
    }

    /// Removes the saved state (the run finished).
    pub(crate) fn clear(&self) -> Result<()> {
        match self.file() {
            Some(f) if f.is_file() => std::fs::remove_file(&f).map_err(|e| Error::io(&f, e)),
            _ => Ok(()),
        }
    }
}
