//! Checkpoints: per-group accuracy of the model during training.
//!
//! A checkpoint after the update of step `s` evaluates `argmax f(x)` (no shift: MAT's shift is
//! a training device only) under `no_grad` on test and, when asked, on validation with the
//! true groups `g = n_attr · y + a`, on validation with XRM-inferred groups `g = 2y + m`, and
//! on the training set. Per checkpoint the host work is `O(n)` (predicted classes and counts).
//!
//! Two things make checkpoints cheap without changing a bit of them:
//! - A linear model is evaluated several checkpoints at a time: its parameters are copied
//!   (`K × d` values) and, once enough are waiting, one product over the evaluation features
//!   serves them all ([`LinearSnapshot::predict_all`], exact where the backend keeps each
//!   column's bits), in blocks of rows where the backend promises that a row's logits do
//!   not depend on the other rows ([`Device::row_independent_columns`]), so that the logits
//!   held at once stay small however large the evaluation splits are.
//! - In a full-batch run over every training row, the training forward pass of step `s + 1`
//!   computes exactly the logits of the model that checkpoint `s` evaluates, so training
//!   accuracy is read from it instead of another pass (the last one after a final forward).
//!
//! Checkpoints are therefore completed out of order and emitted in step order, each once it
//! and every earlier one are complete.

use std::collections::VecDeque;

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::{Dataset, Split};
use crate::error::Result;
use crate::eval::metrics::{split_metrics, SplitMetrics};
use crate::eval::selection::Checkpoint;
use crate::nn::{LinearSnapshot, Module};
use crate::tensor::Tensor;

/// Predicted classes `argmax f(x)` under `no_grad`.
pub(crate) fn predict_tensor(model: &dyn Module, x: &Tensor) -> Result<Vec<u32>> {
    no_grad(|| model.forward(x)?.argmax_rows()?.to_vec())
}

/// Logits per row block of a batched snapshot evaluation: below the CPU buffer pool's
/// threshold (2^18 values), so a block's logits go back to the allocator when dropped.
const EVAL_BLOCK_VALUES: usize = 1 << 17;

/// [`LinearSnapshot::predict_all`] over `x`, in blocks of rows when the backend promises
/// that a row's logits do not depend on the other rows
/// ([`Device::row_independent_columns`]): the same predictions, bit for bit, while the
/// logits held at once are one block's (about 0.5 MiB) instead of `rows × columns` for the
/// whole split (80 MB for MultiNLI's test split and 21 snapshots).
fn predict_snapshots(
    x: &Tensor,
    snapshots: &[&LinearSnapshot],
    per_pass: usize,
) -> Result<Vec<Vec<u32>>> {
    let Some(first) = snapshots.first() else {
        return Ok(Vec::new());
    };
    let (n, d) = x.dims2()?;
    // Columns of one product: `per_pass` snapshots at most (`Tensor::linear_predictions`
    // groups them by the same device bound).
    let columns = first.classes * snapshots.len().min(per_pass);
    let block = (EVAL_BLOCK_VALUES / columns.max(1)).max(1);
    if n <= block || columns > x.device().row_independent_columns(d) {
        return LinearSnapshot::predict_all(x, snapshots);
    }
    let mut out: Vec<Vec<u32>> = snapshots.iter().map(|_| Vec::with_capacity(n)).collect();
    for start in (0..n).step_by(block) {
        let rows = x.rows(start, block.min(n - start))?;
        for (all, part) in out
            .iter_mut()
            .zip(LinearSnapshot::predict_all(&rows, snapshots)?)
        {
            all.extend(part);
        }
    }
    Ok(out)
}

/// What the checkpoints of a run evaluate.
pub(crate) struct EvalPlan {
    /// Evaluate on validation (true and inferred groups).
    pub valid: bool,
    /// Evaluate on the training set.
    pub train: bool,
    /// XRM-inferred validation groups `2y + m`.
    pub va_inferred: Option<Vec<u32>>,
    /// The run takes full batches of every training row in order, so each step's training
    /// logits are those of the model after the previous step.
    pub train_logits_follow: bool,
}

/// Makes, completes and emits the checkpoints of one run.
pub(crate) struct Checkpoints<'a> {
    ds: &'a Dataset,
    plan: EvalPlan,
    x_tr: Tensor,
    x_va: Option<Tensor>,
    x_te: Tensor,
    groups: [Vec<u32>; 3],
    /// Linear snapshots evaluated per pass over the features.
    per_pass: usize,
    pending: VecDeque<Pending>,
    emit: &'a mut dyn FnMut(Checkpoint) -> Result<()>,
}

/// Validation and test metrics of one checkpoint.
struct HeldOut {
    va: Option<SplitMetrics>,
    va_gi: Option<SplitMetrics>,
    te: SplitMetrics,
}

/// A checkpoint whose metrics are still being gathered.
struct Pending {
    step: usize,
    train_loss: f64,
    held_out: Option<HeldOut>,
    /// Set while the held-out metrics wait for a batched snapshot evaluation.
    snapshot: Option<LinearSnapshot>,
    tr: Option<SplitMetrics>,
    /// The training metrics come from the next step's training logits.
    tr_from_next_step: bool,
}

impl Pending {
    fn is_complete(&self) -> bool {
        self.held_out.is_some() && (self.tr.is_some() || !self.tr_from_next_step)
    }
}

impl<'a> Checkpoints<'a> {
    /// The evaluation features go to `device` once; `x_tr` is the whole training set there.
    pub(crate) fn new(
        ds: &'a Dataset,
        device: &Device,
        plan: EvalPlan,
        x_tr: Tensor,
        emit: &'a mut dyn FnMut(Checkpoint) -> Result<()>,
    ) -> Result<Self> {
        let features = |s: &Split| Tensor::from_buffer(s.x.clone(), (s.n, ds.d()), device);
        let k = ds.classes.max(1);
        Ok(Checkpoints {
            ds,
            x_tr,
            x_va: plan.valid.then(|| features(&ds.valid)).transpose()?,
            x_te: features(&ds.test)?,
            groups: [&ds.train, &ds.valid, &ds.test].map(|s| s.groups(ds.n_attr)),
            per_pass: (device.stackable_columns(ds.d()) / k).max(1),
            plan,
            pending: VecDeque::new(),
            emit,
        })
    }

    /// Step `step`'s training logits on the batch it trained on.
    pub(crate) fn training_logits(&mut self, step: usize, logits: &Tensor) -> Result<()> {
        if self
            .awaiting_train_metrics()
            .is_none_or(|p| p.step + 1 != step)
        {
            return Ok(());
        }
        let tr = self.metrics(&logits.argmax_rows()?.to_vec()?, 0)?;
        if let Some(p) = self.awaiting_train_metrics() {
            p.tr = Some(tr);
        }
        self.emit_ready()
    }

    /// A checkpoint of `model` after the update of step `step`.
    pub(crate) fn record(
        &mut self,
        step: usize,
        train_loss: f64,
        model: &dyn Module,
    ) -> Result<()> {
        let tr_from_next_step = self.plan.train && self.plan.train_logits_follow;
        let snapshot = model.snapshot()?;
        let held_out = match snapshot {
            Some(_) => None,
            None => Some(
                self.held_out(|x| predict_tensor(model, x).map(|p| vec![p]))?
                    .remove(0),
            ),
        };
        let tr = if self.plan.train && !tr_from_next_step {
            Some(self.metrics(&predict_tensor(model, &self.x_tr)?, 0)?)
        } else {
            None
        };
        self.pending.push_back(Pending {
            step,
            train_loss,
            held_out,
            snapshot,
            tr,
            tr_from_next_step,
        });
        if self.pending.iter().filter(|p| p.snapshot.is_some()).count() >= self.per_pass {
            self.evaluate_snapshots()?;
        }
        self.emit_ready()
    }

    /// Completes and emits every checkpoint made so far; `model` is the current model (the
    /// one a checkpoint still waiting for training metrics evaluated). The same metrics as
    /// completing them later: a snapshot's predictions do not depend on its batch, and the
    /// next step's training logits are this model's.
    pub(crate) fn flush(&mut self, model: &dyn Module) -> Result<()> {
        self.evaluate_snapshots()?;
        self.emit_ready()?;
        if self.awaiting_train_metrics().is_some() {
            let tr = self.metrics(&predict_tensor(model, &self.x_tr)?, 0)?;
            if let Some(p) = self.awaiting_train_metrics() {
                p.tr = Some(tr);
            }
        }
        self.emit_ready()
    }

    /// Completes and emits every checkpoint made; `model` is the final model.
    pub(crate) fn finish(mut self, model: &dyn Module) -> Result<()> {
        self.flush(model)
    }

    /// Whether every checkpoint made so far has been emitted.
    pub(crate) fn all_emitted(&self) -> bool {
        self.pending.is_empty()
    }

    /// The last checkpoint, when it still waits for training metrics.
    fn awaiting_train_metrics(&mut self) -> Option<&mut Pending> {
        self.pending
            .back_mut()
            .filter(|p| p.tr_from_next_step && p.tr.is_none())
    }

    fn evaluate_snapshots(&mut self) -> Result<()> {
        let snapshots: Vec<&LinearSnapshot> = self
            .pending
            .iter()
            .filter_map(|p| p.snapshot.as_ref())
            .collect();
        if snapshots.is_empty() {
            return Ok(());
        }
        let held_out = self.held_out(|x| predict_snapshots(x, &snapshots, self.per_pass))?;
        let waiting = self.pending.iter_mut().filter(|p| p.snapshot.is_some());
        for (p, h) in waiting.zip(held_out) {
            p.held_out = Some(h);
            p.snapshot = None;
        }
        Ok(())
    }

    /// Held-out metrics of each model that `predict` evaluates (one prediction vector per
    /// model and split).
    fn held_out(&self, predict: impl Fn(&Tensor) -> Result<Vec<Vec<u32>>>) -> Result<Vec<HeldOut>> {
        let pred_va = self.x_va.as_ref().map(&predict).transpose()?;
        let pred_te = predict(&self.x_te)?;
        let n_groups = 2 * self.ds.classes;
        (0..pred_te.len())
            .map(|m| {
                let (va, va_gi) = match &pred_va {
                    Some(pred) => (
                        Some(self.metrics(&pred[m], 1)?),
                        self.plan
                            .va_inferred
                            .as_ref()
                            .map(|g| self.split_metrics(&pred[m], &self.ds.valid, g, n_groups))
                            .transpose()?,
                    ),
                    None => (None, None),
                };
                let te = self.metrics(&pred_te[m], 2)?;
                Ok(HeldOut { va, va_gi, te })
            })
            .collect()
    }

    /// Metrics over the true groups of split 0 (train), 1 (valid) or 2 (test).
    fn metrics(&self, pred: &[u32], split: usize) -> Result<SplitMetrics> {
        let s = [&self.ds.train, &self.ds.valid, &self.ds.test][split];
        self.split_metrics(pred, s, &self.groups[split], self.ds.n_groups())
    }

    fn split_metrics(
        &self,
        pred: &[u32],
        split: &Split,
        groups: &[u32],
        n_groups: usize,
    ) -> Result<SplitMetrics> {
        split_metrics(pred, &split.y, groups, n_groups, self.ds.classes)
    }

    fn emit_ready(&mut self) -> Result<()> {
        while self.pending.front().is_some_and(Pending::is_complete) {
            let Some(Pending {
                step,
                train_loss,
                held_out: Some(h),
                tr,
                ..
            }) = self.pending.pop_front()
            else {
                break;
            };
            (self.emit)(Checkpoint {
                step,
                train_loss,
                va: h.va,
                te: h.te,
                va_gi: h.va_gi,
                tr,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::F32Buffer;
    use crate::rng::Rng;

    /// Row-blocked snapshot evaluation gives every prediction of one pass over all rows:
    /// owned features (blocks copied) and shared ones (blocks read in place), a last block
    /// shorter than the others, a narrow (K = 2) and a wide (K = 3, d ≥ 512) product, fewer
    /// snapshots than a pass holds.
    #[test]
    fn row_blocks_give_the_predictions_of_one_pass() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(21);
        for (d, k, count) in [(40, 2, 2), (512, 2, 32), (520, 3, 21), (520, 3, 5)] {
            let per_pass = (dev.stackable_columns(d) / k).max(1);
            let columns = k * count.min(per_pass);
            let block = EVAL_BLOCK_VALUES / columns;
            let n = 2 * block + 17;
            let x = rng.normal_vec(n * d);
            let snapshots: Vec<LinearSnapshot> = (0..count)
                .map(|_| LinearSnapshot {
                    weight: rng.normal_vec(k * d),
                    bias: Some(rng.normal_vec(k)),
                    classes: k,
                })
                .collect();
            let snaps: Vec<&LinearSnapshot> = snapshots.iter().collect();
            let owned = Tensor::from_vec(x.clone(), (n, d), &dev).unwrap();
            let want = LinearSnapshot::predict_all(&owned, &snaps).unwrap();
            let shared = F32Buffer::new(x).into_shared();
            let shared = Tensor::from_buffer(shared, (n, d), &dev).unwrap();
            for x in [&owned, &shared] {
                let got = predict_snapshots(x, &snaps, per_pass).unwrap();
                assert_eq!(got, want, "d = {d}, K = {k}, {count} snapshots");
            }
        }
    }
}
