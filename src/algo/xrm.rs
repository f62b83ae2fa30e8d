//! XRM, cross-risk minimization (Pezeshki et al. 2024): held-out logits for every training
//! example and inferred groups, as PAPER.md §3 states it.
//!
//! - Twins `A` and `B` of one [`ModelSpec`], initialized from independent streams.
//! - Each training example `i` is assigned once to its held-in twin: `assignment[i] = 0` (A)
//!   or `1` (B), a fair coin per example from the seed. The other twin never trains on it.
//! - Dynamic labels `y_dyn` start as `y`. Each step takes a batch `B` and splits it into
//!   `B_A` and `B_B` by assignment. Before the update, under `no_grad`, the held-out logits
//!   `B(x_{B_A})` and `A(x_{B_B})` are computed. The held-in logits `A(x_{B_A})` and
//!   `B(x_{B_B})` train on `y_dyn` with
//!   - [`XrmLoss::ClassBalanced`]: `Σ_{c present} mean_{i ∈ B, y_dyn,i = c} CE_i`, i.e. row
//!     weights `1/n_c` and a sum over both twins' rows, or
//!   - [`XrmLoss::Mean`]: `mean_{i ∈ B} CE_i`;
//!
//!   one optimizer over both twins' parameters takes one step. A twin with no row in the
//!   batch takes it with a zero gradient (weight decay, momentum, Adam's moments and step
//!   count move), as PyTorch's optimizer does for the official twins, which are both in
//!   every step's graph.
//! - After the step, label flipping from the held-out logits `h_i` of the batch: with
//!   `p_i, ŷ_i = max, argmax softmax(h_i)`, set `y_dyn,i = ŷ_i` with probability
//!   [`flip_probability`]`(p_i, K) = (p_i − 1/K) · K/(K−1)`, one uniform per row (A's rows
//!   first, then B's, each in batch order). Flips persist; a later flip back to `y_i` undoes
//!   one. `flip_rate = mean_i 1[y_dyn,i ≠ y_i]` is recorded every `log_every` steps and at the
//!   last step. [`flip_targets`] computes a flip step, in f64 (`p_i` as `1/Σ_j exp(h_ij −
//!   h_iŷ)`): on the host for CPU tensors, on the device for CUDA tensors (the held-out
//!   logits never leave the GPU: the uniforms, drawn on the host from the seeded stream, go
//!   up and the flip targets come back, 12 bytes a row), with the same uniforms and the same
//!   f64 operations, so both flip the same rows.
//! - At the end: `heldout_logits[i]` from the twin that did not train on `i`; the inferred
//!   bit `m_i = 1[argmax A(x_i) ≠ y_i] ∨ 1[argmax B(x_i) ≠ y_i]` on training and validation
//!   examples; inferred groups `g = 2y + m`. If some class present in a split lacks either
//!   bit value there, the run is *degenerate* (reported, not an error; its flip rate counts as
//!   0 for hyperparameter selection, as in the reference).
//!
//! With full batches the twins' row subsets are gathered once; otherwise each step gathers the
//! batch rows of each twin with `index_select`. The final held-out logits come, where the
//! twins promise that a row's logits do not depend on the rows beside it
//! ([`Module::rows_independent`]: linear twins within [`Device::row_independent_columns`],
//! on the CPU), from each twin's pass over all the
//! training rows (the same passes that give the inferred bits), each row taking its
//! held-out twin's logits: no subset of the training features is gathered, so a run holds
//! the features once (a mapped file is never copied). Elsewhere each twin's held-out subset
//! is gathered, one at a time. Linear twins take a twin's held-in loss (and
//! its weight gradient) and the other twin's held-out logits of the same rows from one pass
//! over those rows ([`Tensor::linear_shifted_cross_entropy_beside`]): one read of the training
//! features per step instead of three. Per-step host work is `O(|B|)` on a GPU
//! (labels, weights, uniforms) and `O(|B| · K)` on the CPU (also the held-out probabilities).
//!
//! Files ([`XrmOutput::save`] / [`XrmOutput::load`]): `xrm.safetensors` holds
//! `heldout_logits` (F32 `[n_tr, K]`), `assignment` (U8 `[n_tr]`), `y_dyn`, `y_tr` (I64
//! `[n_tr]`), `y_va` (I64 `[n_va]`), `inferred_tr` (U8 `[n_tr]`), `inferred_va` (U8 `[n_va]`);
//! `xrm.json` holds the data set's name and sizes, the model and config, the flip-rate
//! history, group counts and the degeneracy verdict. Both are written to temporary names and
//! renamed (the JSON last), so a failed save leaves earlier files intact.

use std::path::{Path, PathBuf};
use std::time::Instant;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::evaluate::predict_tensor;
use super::model::{ModelSpec, OptimizerSpec};
use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::batch::Batcher;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::split_metrics;
use crate::nn::Module;
use crate::rng::Rng;
use crate::tensor::{Indices, Tensor};

const STREAM_TWIN_A: u64 = 1;
const STREAM_TWIN_B: u64 = 2;
const STREAM_ASSIGN: u64 = 3;
const STREAM_BATCH: u64 = 4;
const STREAM_FLIP: u64 = 5;

/// File names inside an XRM output directory.
pub const XRM_TENSORS_FILE: &str = "xrm.safetensors";
pub const XRM_JSON_FILE: &str = "xrm.json";
const FORMAT: &str = "memaware-xrm-v1";

/// The held-in loss of the twins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrmLoss {
    /// Sum over classes present in the batch of the mean CE over that class's rows (by `y_dyn`).
    ClassBalanced,
    /// Mean CE over the batch (the Figure-1 recipe).
    Mean,
}

fn cpu() -> Device {
    Device::Cpu
}

/// How XRM runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XrmConfig {
    pub steps: usize,
    /// Examples per batch, both twins together; `>= n` means full batch.
    pub batch_size: usize,
    /// One optimizer over both twins' parameters.
    pub optimizer: OptimizerSpec,
    pub loss: XrmLoss,
    pub seed: u64,
    /// Where the run computes (not saved: a loaded output reports the CPU).
    #[serde(skip, default = "cpu")]
    pub device: Device,
    /// Record the flip rate every this many steps (and at the last step).
    pub log_every: usize,
}

/// XRM's results (see the module docs).
#[derive(Clone, Debug)]
pub struct XrmOutput {
    /// Name of the data set it was computed on.
    pub dataset: String,
    pub classes: usize,
    pub model_spec: ModelSpec,
    pub config: XrmConfig,
    /// `n_tr × K`, row-major: logits of the twin that never trained on each example.
    pub heldout_logits: Vec<f32>,
    /// Held-in twin per training example: 0 = A, 1 = B.
    pub assignment: Vec<u8>,
    /// Dynamic labels after the last flip.
    pub y_dyn: Vec<u32>,
    /// `(step, flip rate)`, step being the 0-based index of the update just applied.
    pub flip_rate_history: Vec<(usize, f64)>,
    pub final_flip_rate: f64,
    /// Inferred bit `m` per training example (0 or 1).
    pub inferred_tr: Vec<u32>,
    /// Inferred bit `m` per validation example (0 or 1).
    pub inferred_va: Vec<u32>,
    /// Why the inferred groups are degenerate, if they are.
    pub degenerate: Option<String>,
    /// Held-out accuracy against `y` per true training group `n_attr · y + a`.
    pub heldout_acc_by_group: Vec<Option<f64>>,
    /// Training speed (0 for a loaded output).
    pub steps_per_s: f64,
}

pub use crate::ops::flip_probability;

/// One XRM flip step on held-out logits; see [`Tensor::xrm_flip_targets`].
pub fn flip_targets(heldout: &Tensor, uniforms: &[f64]) -> Result<Vec<Option<u32>>> {
    heldout.xrm_flip_targets(uniforms)
}

fn flip_rate(y_dyn: &[u32], y: &[u32]) -> f64 {
    y_dyn.iter().zip(y).filter(|(a, b)| a != b).count() as f64 / y.len().max(1) as f64
}

/// Row positions of `rows` that belong to twin `t`.
fn rows_of(rows: &[usize], assignment: &[u8], t: u8) -> Vec<usize> {
    rows.iter()
        .copied()
        .filter(|&i| assignment[i] == t)
        .collect()
}

/// The trained twins: `a` holds in the examples with `assignment == 0`, `b` the others.
pub struct XrmTwins {
    pub a: Box<dyn Module>,
    pub b: Box<dyn Module>,
}

/// Runs XRM on `ds` (see the module docs).
///
/// Errors: an invalid data set or config (zero steps, batch size or `log_every`), a
/// non-finite loss.
pub fn run_xrm(ds: &Dataset, model_spec: &ModelSpec, cfg: &XrmConfig) -> Result<XrmOutput> {
    run_xrm_with_twins(ds, model_spec, cfg).map(|(out, _)| out)
}

/// [`run_xrm`], also returning the trained twins.
pub fn run_xrm_with_twins(
    ds: &Dataset,
    model_spec: &ModelSpec,
    cfg: &XrmConfig,
) -> Result<(XrmOutput, XrmTwins)> {
    ds.validate()?;
    if cfg.steps == 0 {
        return Err(Error::arg("steps", "XRM needs at least one step"));
    }
    if cfg.batch_size == 0 {
        return Err(Error::arg("batch_size", "must be at least 1"));
    }
    if cfg.log_every == 0 {
        return Err(Error::arg("log_every", "must be at least 1"));
    }
    let (n, d, k) = (ds.train.n, ds.d(), ds.classes);
    let device = &cfg.device;
    let root = Rng::new(cfg.seed);
    let twin_a = model_spec.build(d, k, &mut root.fork(STREAM_TWIN_A), device)?;
    let twin_b = model_spec.build(d, k, &mut root.fork(STREAM_TWIN_B), device)?;
    let mut params = twin_a.parameters();
    params.extend(twin_b.parameters());
    let mut optimizer = cfg.optimizer.build(params)?;
    let mut assign_rng = root.fork(STREAM_ASSIGN);
    let assignment: Vec<u8> = (0..n)
        .map(|_| u8::from(assign_rng.bernoulli(0.5)))
        .collect();
    let mut flip_rng = root.fork(STREAM_FLIP);
    let mut batcher = Batcher::new(n, cfg.batch_size, root.fork(STREAM_BATCH).next_u64())?;

    let x_tr = Tensor::from_buffer(ds.train.x.clone(), (n, d), device)?;
    let all: Vec<usize> = (0..n).collect();
    let rows_a_all = rows_of(&all, &assignment, 0);
    let rows_b_all = rows_of(&all, &assignment, 1);
    let gather = |rows: &[usize]| -> Result<Option<Tensor>> {
        if rows.is_empty() {
            return Ok(None);
        }
        x_tr.index_select(&Indices::from_usize(rows, device)?)
            .map(Some)
    };
    // The twins' held-in subsets, gathered once when every step uses them (full batches);
    // otherwise, where a row's logits may depend on the batch, only for the final held-out
    // logits, one at a time.
    let full_batches = batcher.is_full_batch();
    let (x_a_all, x_b_all) = if full_batches {
        (gather(&rows_a_all)?, gather(&rows_b_all)?)
    } else {
        (None, None)
    };

    let mut y_dyn = ds.train.y.clone();
    let mut history = Vec::new();
    let start = Instant::now();
    for step in 0..cfg.steps {
        let full = batcher.is_full_batch();
        let batch = batcher.next_batch();
        let (rows_a, rows_b, x_a, x_b) = if full {
            (
                rows_a_all.clone(),
                rows_b_all.clone(),
                x_a_all.clone(),
                x_b_all.clone(),
            )
        } else {
            let (ra, rb) = (
                rows_of(batch, &assignment, 0),
                rows_of(batch, &assignment, 1),
            );
            let (xa, xb) = (gather(&ra)?, gather(&rb)?);
            (ra, rb, xa, xb)
        };
        let labels_a: Vec<u32> = rows_a.iter().map(|&i| y_dyn[i]).collect();
        let labels_b: Vec<u32> = rows_b.iter().map(|&i| y_dyn[i]).collect();
        let batch_len = rows_a.len() + rows_b.len();
        let weight_of = |labels: &[u32], counts: &[usize]| -> Vec<f32> {
            labels
                .iter()
                .map(|&c| match cfg.loss {
                    XrmLoss::ClassBalanced => 1.0 / counts[c as usize] as f32,
                    XrmLoss::Mean => 1.0 / batch_len as f32,
                })
                .collect()
        };
        let mut counts = Split::counts(&labels_a, k);
        for (c, extra) in counts.iter_mut().zip(Split::counts(&labels_b, k)) {
            *c += extra;
        }

        // Per twin: the held-in loss on its rows and the other twin's held-out logits of the
        // same rows, before the update (they stay on the device; linear twins take both from
        // one pass over the rows).
        let mut loss: Option<Tensor> = None;
        let mut heldout = [None, None];
        for (slot, (twin, other, x, labels)) in [
            (&twin_a, &twin_b, &x_a, &labels_a),
            (&twin_b, &twin_a, &x_b, &labels_b),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(x) = x else { continue };
            // Σ_i w_i CE(twin(x_i), y_dyn,i) over the twin's rows.
            let y = Indices::new(labels.to_vec(), device)?;
            let w = Tensor::from_vec(weight_of(labels, &counts), labels.len(), device)?;
            let (part, ho) = twin.loss_beside(other.as_ref(), x, &y, &w)?;
            heldout[slot] = Some(ho);
            loss = Some(match loss {
                Some(l) => l.add(&part)?,
                None => part,
            });
        }
        let [ho_a, ho_b] = heldout;
        let loss = loss.expect("a batch has at least one row, held in by A or B");
        let grads = loss.backward()?;
        // Every parameter of both twins steps, as in the official code (one optimizer over
        // both twins, which are both in the graph): a twin with no row in the batch has no
        // gradient here and takes a zero one, so its weight decay, momentum and Adam's step
        // count move as PyTorch's do.
        optimizer.step_all(&grads)?;

        // Label flipping from the pre-update held-out predictions: one uniform per row.
        for (rows, ho) in [(&rows_a, &ho_a), (&rows_b, &ho_b)] {
            if let Some(ho) = ho {
                let uniforms: Vec<f64> = rows.iter().map(|_| flip_rng.uniform_f64()).collect();
                for (&i, target) in rows.iter().zip(flip_targets(ho, &uniforms)?) {
                    if let Some(yhat) = target {
                        y_dyn[i] = yhat;
                    }
                }
            }
        }
        if step % cfg.log_every == 0 || step + 1 == cfg.steps {
            history.push((step, flip_rate(&y_dyn, &ds.train.y)));
        }
    }
    let steps_per_s = cfg.steps as f64 / start.elapsed().as_secs_f64().max(1e-12);

    // Held-out logits of every training example, from the twin that never trained on it,
    // and the inferred training bits.
    let (heldout_logits, inferred_tr) =
        if twin_a.rows_independent(device) && twin_b.rows_independent(device) {
            // One pass of each twin over all the training rows (the inferred bits need both
            // anyway); each row takes the logits of the twin that did not train on it. A row's
            // logits do not depend on the rows beside it, so they are the bits of a pass over
            // the other twin's held-in rows alone, without gathering those rows (half the
            // training features).
            let (za, pred_a) = logits_and_predictions(twin_a.as_ref(), &x_tr)?;
            let (zb, pred_b) = logits_and_predictions(twin_b.as_ref(), &x_tr)?;
            let heldout_logits = assignment
                .iter()
                .enumerate()
                .flat_map(|(i, &t)| {
                    let z = if t == 0 { &zb } else { &za };
                    z[i * k..(i + 1) * k].iter().copied()
                })
                .collect();
            (heldout_logits, mistakes(&ds.train.y, &pred_a, &pred_b))
        } else {
            // Each twin's pass over the other twin's held-in rows, gathered one subset at a
            // time.
            let mut heldout_logits = vec![0.0f32; n * k];
            no_grad(|| -> Result<()> {
                for (rows, x, other) in [
                    (&rows_a_all, x_a_all, &twin_b),
                    (&rows_b_all, x_b_all, &twin_a),
                ] {
                    let x = match x {
                        Some(x) => Some(x),
                        None => gather(rows)?,
                    };
                    if let Some(x) = x {
                        let h = other.forward(&x)?.to_vec()?;
                        for (&i, row) in rows.iter().zip(h.chunks_exact(k)) {
                            heldout_logits[i * k..(i + 1) * k].copy_from_slice(row);
                        }
                    }
                }
                Ok(())
            })?;
            let pred_a = predict_tensor(twin_a.as_ref(), &x_tr)?;
            let pred_b = predict_tensor(twin_b.as_ref(), &x_tr)?;
            (heldout_logits, mistakes(&ds.train.y, &pred_a, &pred_b))
        };
    let inferred_va = cross_mistakes(twin_a.as_ref(), twin_b.as_ref(), &ds.valid, device)?;
    let heldout_pred = crate::eval::metrics::argmax_rows(&heldout_logits, k);
    let heldout_acc_by_group = split_metrics(
        &heldout_pred,
        &ds.train.y,
        &ds.train.groups(ds.n_attr),
        ds.n_groups(),
        k,
    )?
    .group_acc;
    let degenerate = degeneracy(
        ds,
        &inferred_tr,
        &inferred_va,
        ("by a twin", "by either twin"),
    );
    let final_flip_rate = flip_rate(&y_dyn, &ds.train.y);
    let output = XrmOutput {
        dataset: ds.name.clone(),
        classes: k,
        model_spec: model_spec.clone(),
        config: cfg.clone(),
        heldout_logits,
        assignment,
        y_dyn,
        flip_rate_history: history,
        final_flip_rate,
        inferred_tr,
        inferred_va,
        degenerate,
        heldout_acc_by_group,
        steps_per_s,
    };
    Ok((
        output,
        XrmTwins {
            a: twin_a,
            b: twin_b,
        },
    ))
}

/// `m_i = 1[A mispredicts y_i] ∨ 1[B mispredicts y_i]` over a split.
fn cross_mistakes(
    a: &dyn Module,
    b: &dyn Module,
    split: &Split,
    device: &Device,
) -> Result<Vec<u32>> {
    let pred_a = super::train::predict(a, split, device)?;
    let pred_b = super::train::predict(b, split, device)?;
    Ok(mistakes(&split.y, &pred_a, &pred_b))
}

/// `1[pred_a,i ≠ y_i] ∨ 1[pred_b,i ≠ y_i]`.
fn mistakes(y: &[u32], pred_a: &[u32], pred_b: &[u32]) -> Vec<u32> {
    y.iter()
        .zip(pred_a.iter().zip(pred_b))
        .map(|(&y, (&pa, &pb))| u32::from(pa != y || pb != y))
        .collect()
}

/// `model(x)` on the host and its predicted classes, under `no_grad`: the bits of
/// [`predict_tensor`] from one pass.
fn logits_and_predictions(model: &dyn Module, x: &Tensor) -> Result<(Vec<f32>, Vec<u32>)> {
    no_grad(|| {
        let z = model.forward(x)?;
        Ok((z.to_vec()?, z.argmax_rows()?.to_vec()?))
    })
}

/// Counts of inferred groups `2y + m` in `0..2K`.
fn inferred_counts(y: &[u32], bits: &[u32], classes: usize) -> Vec<usize> {
    let groups: Vec<u32> = y.iter().zip(bits).map(|(&y, &m)| 2 * y + m).collect();
    Split::counts(&groups, 2 * classes)
}

/// The first (split, class, bit) with no example, among the classes present in the split:
/// XRM's degeneracy rule, shared by every phase-1 estimator. `by` names what marks an example
/// in the message: (when every example is marked, when none is).
pub(crate) fn degeneracy(
    ds: &Dataset,
    inferred_tr: &[u32],
    inferred_va: &[u32],
    by: (&str, &str),
) -> Option<String> {
    for (name, split, bits) in [
        ("training", &ds.train, inferred_tr),
        ("validation", &ds.valid, inferred_va),
    ] {
        let counts = inferred_counts(&split.y, bits, ds.classes);
        for c in 0..ds.classes {
            let (m0, m1) = (counts[2 * c], counts[2 * c + 1]);
            if m0 + m1 == 0 {
                continue;
            }
            if m0 == 0 || m1 == 0 {
                let (missing, what) = if m0 == 0 {
                    (
                        0,
                        format!("every example of the class is mispredicted {}", by.0),
                    )
                } else {
                    (
                        1,
                        format!("no example of the class is mispredicted {}", by.1),
                    )
                };
                return Some(format!(
                    "{name} split: no example of class {c} with inferred bit {missing} ({what})"
                ));
            }
        }
    }
    None
}

impl XrmOutput {
    /// Number of training examples.
    pub fn n_tr(&self) -> usize {
        self.assignment.len()
    }

    /// The flip rate that selects XRM's hyperparameters: 0 for a degenerate run, as the
    /// reference reports it, else the final flip rate.
    pub fn selection_flip_rate(&self) -> f64 {
        if self.degenerate.is_some() {
            0.0
        } else {
            self.final_flip_rate
        }
    }

    /// Inferred training groups `2y + m` (in `0..2K`).
    pub fn inferred_groups_tr(&self, ds: &Dataset) -> Vec<u32> {
        ds.train
            .y
            .iter()
            .zip(&self.inferred_tr)
            .map(|(&y, &m)| 2 * y + m)
            .collect()
    }

    /// Inferred validation groups `2y + m` (in `0..2K`).
    pub fn inferred_groups_va(&self, ds: &Dataset) -> Vec<u32> {
        ds.valid
            .y
            .iter()
            .zip(&self.inferred_va)
            .map(|(&y, &m)| 2 * y + m)
            .collect()
    }

    /// Checks that this output fits `ds`: the same class count and training and validation
    /// sizes ([`XrmOutput::load`] also checks the labels). Errors are `Error::Data` naming what
    /// differs.
    pub fn check_matches(&self, ds: &Dataset) -> Result<()> {
        let (n, k) = (ds.train.n, ds.classes);
        let mismatch = |what: String| {
            Error::Data(format!(
                "XRM outputs (computed on `{}`) do not fit data set `{}`: {what}",
                self.dataset, ds.name
            ))
        };
        if self.classes != k {
            return Err(mismatch(format!(
                "{} classes, the data set has {k}",
                self.classes
            )));
        }
        for (name, len, want) in [
            ("held-out logits", self.heldout_logits.len(), n * k),
            ("assignment", self.assignment.len(), n),
            ("dynamic labels", self.y_dyn.len(), n),
            ("inferred training bits", self.inferred_tr.len(), n),
            (
                "inferred validation bits",
                self.inferred_va.len(),
                ds.valid.n,
            ),
        ] {
            if len != want {
                return Err(mismatch(format!("{len} {name}, expected {want}")));
            }
        }
        Ok(())
    }

    /// Writes `xrm.safetensors` and `xrm.json` into `dir` (created if needed); see the module
    /// docs. Both files go to temporary names first and are renamed only once both are
    /// written ([`crate::io::write_atomic`]), so an error leaves any earlier output in `dir`
    /// as it was.
    pub fn save(&self, dir: impl AsRef<Path>, ds: &Dataset) -> Result<()> {
        let dir = dir.as_ref();
        self.check_matches(ds)?;
        let tensors_path = dir.join(XRM_TENSORS_FILE);
        let json_path = dir.join(XRM_JSON_FILE);
        let tensors = self.tensor_bytes(ds, &tensors_path)?;
        let json = crate::io::to_json(&json_path, &self.record(ds))?;
        crate::io::write_atomic(&[(&tensors_path, &tensors), (&json_path, json.as_bytes())])
    }

    fn tensor_bytes(&self, ds: &Dataset, path: &Path) -> Result<Vec<u8>> {
        let (n, k, n_va) = (ds.train.n, ds.classes, ds.valid.n);
        let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let i64_bytes =
            |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect() };
        let u8_bytes = |v: &[u32]| -> Vec<u8> { v.iter().map(|&x| x as u8).collect() };
        let data: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            (
                "heldout_logits",
                Dtype::F32,
                vec![n, k],
                f32_bytes(&self.heldout_logits),
            ),
            ("assignment", Dtype::U8, vec![n], self.assignment.clone()),
            ("y_dyn", Dtype::I64, vec![n], i64_bytes(&self.y_dyn)),
            ("y_tr", Dtype::I64, vec![n], i64_bytes(&ds.train.y)),
            ("y_va", Dtype::I64, vec![n_va], i64_bytes(&ds.valid.y)),
            (
                "inferred_tr",
                Dtype::U8,
                vec![n],
                u8_bytes(&self.inferred_tr),
            ),
            (
                "inferred_va",
                Dtype::U8,
                vec![n_va],
                u8_bytes(&self.inferred_va),
            ),
        ];
        let file_error = |tensor: &str, problem: String| Error::File {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            problem,
        };
        let views = data
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.to_string(), v))
                    .map_err(|e| file_error(name, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None).map_err(|e| file_error("", e.to_string()))
    }

    fn record(&self, ds: &Dataset) -> XrmRecord {
        XrmRecord {
            format: FORMAT.to_string(),
            dataset: DatasetRecord {
                name: ds.name.clone(),
                classes: ds.classes,
                n_tr: ds.train.n,
                n_va: ds.valid.n,
            },
            model_spec: self.model_spec.clone(),
            config: self.config.clone(),
            flip_rate_history: self.flip_rate_history.clone(),
            final_flip_rate: self.final_flip_rate,
            degenerate: self.degenerate.clone(),
            heldout_acc_by_group: self.heldout_acc_by_group.clone(),
            inferred_group_counts_tr: inferred_counts(&ds.train.y, &self.inferred_tr, ds.classes),
            inferred_group_counts_va: inferred_counts(&ds.valid.y, &self.inferred_va, ds.classes),
            steps_per_s: self.steps_per_s,
            inference_quality: super::heldout::inference_quality(self, ds),
        }
    }

    /// Reads the files [`XrmOutput::save`] wrote in `dir` and checks them against `ds`.
    ///
    /// Errors (each `Error::File` naming the file and the tensor, or `Error::Json` for a JSON
    /// file that does not parse): a missing file; a file that is not a complete safetensors
    /// file (truncated, corrupt); a missing tensor; a tensor with the wrong dtype or a shape
    /// that does not match the data set (`n_tr`, `K`, `n_va`); values out of range (labels
    /// `>= K`, bits or assignments other than 0/1, non-finite logits); training or validation
    /// labels that differ from the data set's (outputs of another data set or seed).
    pub fn load(dir: impl AsRef<Path>, ds: &Dataset) -> Result<XrmOutput> {
        let dir = dir.as_ref();
        let json_path = dir.join(XRM_JSON_FILE);
        let tensors_path = dir.join(XRM_TENSORS_FILE);
        let read = |path: &PathBuf| -> Result<Vec<u8>> {
            std::fs::read(path).map_err(|e| Error::File {
                path: path.clone(),
                tensor: String::new(),
                problem: format!(
                    "cannot read the XRM output ({e}); looked in `{}`, which {}; run XRM \
                     first (`memaware xrm` on this data set)",
                    dir.display(),
                    folder_contents(dir)
                ),
            })
        };
        let json = read(&json_path)?;
        let record: XrmRecord = serde_json::from_slice(&json).map_err(|e| Error::Json {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        if record.format != FORMAT {
            return Err(Error::File {
                path: json_path,
                tensor: String::new(),
                problem: format!("format `{}`, expected `{FORMAT}`", record.format),
            });
        }
        let (n, k, n_va) = (ds.train.n, ds.classes, ds.valid.n);
        let expected = DatasetRecord {
            name: record.dataset.name.clone(),
            classes: k,
            n_tr: n,
            n_va,
        };
        if record.dataset != expected {
            return Err(Error::File {
                path: json_path,
                tensor: "dataset".into(),
                problem: format!(
                    "written for `{}` ({} classes, {} training and {} validation examples), but \
                     the data set `{}` has {k} classes, {n} training and {n_va} validation \
                     examples",
                    record.dataset.name,
                    record.dataset.classes,
                    record.dataset.n_tr,
                    record.dataset.n_va,
                    ds.name
                ),
            });
        }

        let bytes = read(&tensors_path)?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::File {
            path: tensors_path.clone(),
            tensor: String::new(),
            problem: format!("not a complete safetensors file (truncated or corrupt?): {e}"),
        })?;
        let bad = |tensor: &str, problem: String| Error::File {
            path: tensors_path.clone(),
            tensor: tensor.to_string(),
            problem,
        };
        let view = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let v = file.tensor(name).map_err(|_| bad(name, "missing".into()))?;
            if v.dtype() != dtype {
                return Err(bad(
                    name,
                    format!("dtype {:?}, expected {dtype:?}", v.dtype()),
                ));
            }
            if v.shape() != shape {
                return Err(bad(
                    name,
                    format!(
                        "shape {:?}, expected {shape:?} for data set `{}` (n_tr = {n}, K = {k}, n_va = {n_va})",
                        v.shape(),
                        ds.name
                    ),
                ));
            }
            Ok(v.data().to_vec())
        };
        let labels = |name: &str, len: usize, limit: usize| -> Result<Vec<u32>> {
            view(name, Dtype::I64, &[len])?
                .chunks_exact(8)
                .enumerate()
                .map(|(i, c)| {
                    let v =
                        i64::from_le_bytes(c.try_into().expect("chunks_exact(8) gives 8 bytes"));
                    if v < 0 || v as usize >= limit {
                        Err(bad(
                            name,
                            format!("value {v} at row {i} is outside 0..{limit}"),
                        ))
                    } else {
                        Ok(v as u32)
                    }
                })
                .collect()
        };
        let bits = |name: &str, len: usize| -> Result<Vec<u32>> {
            view(name, Dtype::U8, &[len])?
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if b > 1 {
                        Err(bad(name, format!("value {b} at row {i} is not 0 or 1")))
                    } else {
                        Ok(b as u32)
                    }
                })
                .collect()
        };
        let heldout_logits: Vec<f32> = view("heldout_logits", Dtype::F32, &[n, k])?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4) gives 4 bytes")))
            .collect();
        if let Some(i) = heldout_logits.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                "heldout_logits",
                format!("non-finite value at row {}, class {}", i / k, i % k),
            ));
        }
        // XRM's twins are 0 and 1; a K-fold output stores each example's fold (0..K).
        let assignment: Vec<u8> = view("assignment", Dtype::U8, &[n])?;
        let y_dyn = labels("y_dyn", n, k)?;
        for (name, stored, actual) in [
            ("y_tr", labels("y_tr", n, k)?, &ds.train.y),
            ("y_va", labels("y_va", n_va, k)?, &ds.valid.y),
        ] {
            if let Some(i) = stored.iter().zip(actual.iter()).position(|(a, b)| a != b) {
                return Err(bad(
                    name,
                    format!(
                        "label {} at row {i} differs from the data set's {} (outputs of another \
                         data set or seed?)",
                        stored[i], actual[i]
                    ),
                ));
            }
        }
        let inferred_tr = bits("inferred_tr", n)?;
        let inferred_va = bits("inferred_va", n_va)?;
        Ok(XrmOutput {
            dataset: record.dataset.name,
            classes: k,
            model_spec: record.model_spec,
            config: record.config,
            heldout_logits,
            assignment,
            y_dyn,
            flip_rate_history: record.flip_rate_history,
            final_flip_rate: record.final_flip_rate,
            inferred_tr,
            inferred_va,
            degenerate: record.degenerate,
            heldout_acc_by_group: record.heldout_acc_by_group,
            steps_per_s: 0.0,
        })
    }
}

/// What a folder holds, for an error message: `does not exist`, `is empty`, or `holds a, b`
/// (the first few names).
fn folder_contents(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return "does not exist or cannot be read".into();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match names.len() {
        0 => "is empty".into(),
        n if n <= 5 => format!("holds {}", names.join(", ")),
        n => format!("holds {} and {} more", names[..5].join(", "), n - 5),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DatasetRecord {
    name: String,
    classes: usize,
    n_tr: usize,
    n_va: usize,
}

/// The JSON half of a saved XRM output.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct XrmRecord {
    format: String,
    dataset: DatasetRecord,
    model_spec: ModelSpec,
    config: XrmConfig,
    flip_rate_history: Vec<(usize, f64)>,
    final_flip_rate: f64,
    degenerate: Option<String>,
    heldout_acc_by_group: Vec<Option<f64>>,
    inferred_group_counts_tr: Vec<usize>,
    inferred_group_counts_va: Vec<usize>,
    steps_per_s: f64,
    /// Inferred-group precision and recall against the true minority ([`super::heldout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inference_quality: Option<super::heldout::InferenceQuality>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::model::OptimizerKind;
    use crate::data::synthetic::{interpretable, InterpretableConfig};

    /// Per twin, its parameters' values.
    type TwinParams = [Vec<Vec<f32>>; 2];

    /// The seed's initial twins, its assignment and its first `steps` batches, as
    /// [`run_xrm_with_twins`] draws them.
    fn replay(
        ds: &Dataset,
        spec: &ModelSpec,
        seed: u64,
        batch_size: usize,
        steps: usize,
    ) -> (TwinParams, Vec<u8>, Vec<Vec<usize>>) {
        let root = Rng::new(seed);
        let params = |stream| -> Vec<Vec<f32>> {
            spec.build(ds.d(), ds.classes, &mut root.fork(stream), &Device::Cpu)
                .unwrap()
                .parameters()
                .iter()
                .map(|p| p.to_vec().unwrap())
                .collect()
        };
        let mut assign_rng = root.fork(STREAM_ASSIGN);
        let assignment = (0..ds.train.n)
            .map(|_| u8::from(assign_rng.bernoulli(0.5)))
            .collect();
        let mut batcher =
            Batcher::new(ds.train.n, batch_size, root.fork(STREAM_BATCH).next_u64()).unwrap();
        let batches = (0..steps).map(|_| batcher.next_batch().to_vec()).collect();
        (
            [params(STREAM_TWIN_A), params(STREAM_TWIN_B)],
            assignment,
            batches,
        )
    }

    /// A twin with no row in a batch still takes its optimizer step, with a zero gradient
    /// (issue 21, item 4): batches of one row leave one twin empty at every step. Over two
    /// steps in which the same twin is empty, its parameters must follow the hand-computed
    /// zero-gradient updates: SGD `b₁ = wd·p₀`, `b₂ = μ·b₁ + wd·p₁`, `pₜ = pₜ₋₁ − lr·bₜ`
    /// (the kernel's f32 operations, so bit for bit); Adam with L2 decay `gₜ = wd·pₜ₋₁`
    /// through the moments and bias corrections of steps 1 and 2 (in f64, to 1e-6 of a step).
    #[test]
    fn a_twin_with_no_rows_in_a_batch_takes_a_zero_gradient_step() {
        let ds = interpretable(&InterpretableConfig {
            n: 24,
            d: 6,
            ..Default::default()
        })
        .unwrap();
        let spec = ModelSpec::linear(true);
        // A seed whose first two one-row batches both belong to the same twin.
        let (seed, empty, p0) = (0..100u64)
            .find_map(|seed| {
                let (twins, assignment, batches) = replay(&ds, &spec, seed, 1, 2);
                let (t0, t1) = (assignment[batches[0][0]], assignment[batches[1][0]]);
                (t0 == t1).then(|| {
                    let empty = 1 - t0 as usize;
                    (seed, empty, twins[empty].clone())
                })
            })
            .expect("some seed puts both first rows in one twin");
        let (lr, wd, mu) = (0.1f32, 0.05f32, 0.9f32);
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let momentum = if kind == OptimizerKind::Sgd { mu } else { 0.0 };
            let cfg = XrmConfig {
                steps: 2,
                batch_size: 1,
                optimizer: OptimizerSpec::new(kind, lr, momentum, wd).unwrap(),
                loss: XrmLoss::ClassBalanced,
                seed,
                device: Device::Cpu,
                log_every: 1,
            };
            let (_, twins) = run_xrm_with_twins(&ds, &spec, &cfg).unwrap();
            let twin = if empty == 0 { &twins.a } else { &twins.b };
            for (param, p0) in twin.parameters().iter().zip(&p0) {
                let got = param.to_vec().unwrap();
                let want: Vec<f32> = match kind {
                    OptimizerKind::Sgd => p0
                        .iter()
                        .map(|&p| {
                            let b1 = 0.0 + wd * p;
                            let p1 = p - lr * b1;
                            let b2 = mu * b1 + 1.0 * (0.0 + wd * p1);
                            p1 - lr * b2
                        })
                        .collect(),
                    _ => p0
                        .iter()
                        .map(|&p| {
                            let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
                            let (lr, wd) = (lr as f64, wd as f64);
                            let (mut p, mut m, mut v) = (p as f64, 0.0, 0.0);
                            for t in 1..=2 {
                                let g = wd * p;
                                m = b1 * m + (1.0 - b1) * g;
                                v = b2 * v + (1.0 - b2) * g * g;
                                let bc1 = 1.0 - b1.powi(t);
                                let bc2 = 1.0 - b2.powi(t);
                                p -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps);
                            }
                            p as f32
                        })
                        .collect(),
                };
                if kind == OptimizerKind::Sgd {
                    assert_eq!(got, want, "SGD: the empty twin's zero-gradient steps");
                } else {
                    for (g, w) in got.iter().zip(&want) {
                        // Steps of about lr: f32 rounding is relative to them, not to p.
                        let tol = 1e-6 * (w.abs() + lr);
                        assert!((g - w).abs() <= tol, "Adam: {g} vs {w}");
                    }
                }
                assert_ne!(&got, p0, "{kind}: the empty twin moved");
            }
        }
    }

    #[test]
    fn flip_probability_endpoints_and_midpoint() {
        for k in [2usize, 3, 10] {
            assert_eq!(flip_probability(1.0 / k as f64, k), 0.0);
            assert!((flip_probability(1.0, k) - 1.0).abs() < 1e-15);
        }
        assert!((flip_probability(0.75, 2) - 0.5).abs() < 1e-15);
        assert_eq!(flip_probability(0.9, 1), 0.0);
    }
}
