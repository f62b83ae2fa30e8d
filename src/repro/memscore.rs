//! The paper's Figure 2: per-example memorization scores (Feldman), per group, ERM against
//! MAT, and a cheap proxy from one XRM run.
//!
//! # The estimator
//!
//! For a method (ERM, or MAT with a fixed shift), `M` models are trained, model `m` on the
//! training rows of the random subset `S_m` ([`subset_masks`]: `round(share · n)` rows each),
//! and each is evaluated on the **whole** training set: correctness `c_m(i) = 1[argmax f_m(x_i)
//! = y_i]` and true-label probability `p_m(i) = softmax(f_m(x_i))_{y_i}` (MAT's models are
//! evaluated without the shift, as MAT predicts). Then ([`crate::eval::memscore`])
//!
//! ```text
//! mem_acc(i)  = mean_{m : i ∈ S_m} c_m(i) − mean_{m : i ∉ S_m} c_m(i)
//! mem_prob(i) = mean_{m : i ∈ S_m} p_m(i) − mean_{m : i ∉ S_m} p_m(i)
//! ```
//!
//! Each example is left out by `M (1 − share)` models in expectation; the spread of the
//! estimate is measured by scoring with the first and the second half of the models
//! separately ([`split_half`]).
//!
//! ERM and MAT share the subsets and the per-model initialization and batch seeds, so their
//! scores differ only by the objective and compare example by example. MAT's shift
//! `s_i = ln p_ho(· | x_i)` comes from **one** XRM run on the full training set and is the same
//! for every subset model: each trains on `mean_{i ∈ S_m} CE(f(x_i) + s_i, y_i)` through
//! [`fn@train`] with `TrainSetup::rows = S_m` and `Objective::Shifted`.
//!
//! # The proxies
//!
//! XRM's twins A and B each train on half the data (example `i` on its held-in twin
//! `assignment[i]`), which is one in/out split for free. With `p_in(i)` and `p_out(i)` the
//! true-label probability of `i` under the twin that trained on it and under the one that did
//! not:
//!
//! - `held_in_minus_held_out(i) = p_in(i) − p_out(i)`, the estimator with two complementary
//!   subsets;
//! - `held_out_error(i) = 1 − p_out(i)`, the same with the held-in fit taken as perfect.
//!
//! Their agreement with the full estimator is the Spearman rank correlation over the examples
//! it scores. The twins train on XRM's *dynamic* labels: once XRM flips an example's label (it
//! does so for the examples the held-out twin confidently mispredicts, i.e. the minority), its
//! held-in twin is fitted towards the flipped label, so `p_in` of the true label collapses to
//! `p_out` and the first proxy reads zero exactly where memorization lives. The second proxy
//! does not use the held-in twin and survives flipping.
//!
//! # Cost
//!
//! Each subset model is a full training run on `share · n` rows plus one forward pass over the
//! `n` training rows. The `M` models are independent and run in parallel across the rayon pool
//! (one model per task; each model's own ops then find the pool busy and mostly stay on their
//! thread), on the CPU only. Results do not depend on the schedule: each model's seeds are fixed
//! by its index and every op is deterministic, so parallel and sequential runs agree bitwise.
//!
//! # Outputs ([`write_memscore`])
//!
//! `memscore.json` (configuration, every score of every example, summaries, spreads, proxy,
//! timings), `memscore_summary.md` (per-group table), and per-group histograms ERM vs MAT for
//! each score, `memscore_acc.{png,svg}` and `memscore_prob.{png,svg}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::algo::model::{ModelSpec, OptimizerSpec};
use crate::algo::shift::mat_shift;
use crate::algo::xrm::{run_xrm_with_twins, XrmConfig, XrmLoss, XrmOutput};
use crate::algo::{train, Objective, TrainConfig, TrainSetup};
use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::memscore::{
    group_summary, mem_scores, spearman, split_half, subset_masks, GroupSummary, MemScores,
    ModelRecord, SplitHalfSpread,
};
use crate::eval::metrics::argmax_rows;
use crate::io::{write_json, write_text};
use crate::nn::Module;
use crate::progress::{Progress, ProgressFn};
use crate::recipes::Family;
use crate::report::plot::{save_histograms, HistPanel, Histogram};
use crate::report::table::markdown_table;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Sub-streams of `Rng::new(seed)`.
const STREAM_MASKS: u64 = 1;
const STREAM_MODELS: u64 = 2;
const STREAM_XRM: u64 = 3;

/// File names written by [`write_memscore`].
pub const JSON_FILE: &str = "memscore.json";
pub const SUMMARY_FILE: &str = "memscore_summary.md";
pub const HIST_ACC_STEM: &str = "memscore_acc";
pub const HIST_PROB_STEM: &str = "memscore_prob";

/// Palette indices of the two methods in the histograms (blue, vermillion).
const ERM_COLOUR: usize = 0;
const MAT_COLOUR: usize = 3;

/// The method whose memorization is estimated.
#[derive(Clone, Debug)]
pub enum ScoredMethod {
    /// Mean cross-entropy.
    Erm,
    /// MAT at temperature `tau`, with the shift from one XRM run on the full training set.
    Mat { tau: f32, xrm: Arc<XrmOutput> },
}

impl ScoredMethod {
    /// `erm` or `mat`.
    pub fn name(&self) -> &'static str {
        match self {
            ScoredMethod::Erm => "erm",
            ScoredMethod::Mat { .. } => "mat",
        }
    }
}

/// How the `M` subset models are trained.
#[derive(Clone, Debug, Serialize)]
pub struct MemscoreConfig {
    pub model: ModelSpec,
    /// `M`, the number of subset models (at least 2, for the split-half spread).
    pub models: usize,
    /// Share of the training set each model trains on, in `(0, 1)`.
    pub share: f64,
    /// Optimizer steps per model.
    pub steps: usize,
    /// Examples per batch; at least the subset size means full batch.
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    /// Seeds the subsets and every model's initialization and batch order.
    pub seed: u64,
    #[serde(skip)]
    pub device: Device,
    /// Train the models in parallel across the rayon pool (CPU only; ignored on a GPU).
    pub parallel: bool,
}

impl MemscoreConfig {
    fn validate(&self) -> Result<()> {
        if self.models < 2 {
            return Err(Error::arg(
                "models",
                format!(
                    "the estimator needs at least 2 subset models (split-half spread), got {}",
                    self.models
                ),
            ));
        }
        if !(self.share > 0.0 && self.share < 1.0) {
            return Err(Error::arg(
                "share",
                format!(
                    "each model must leave some examples out and keep some: share must be in \
                     (0, 1), got {}",
                    self.share
                ),
            ));
        }
        if self.steps == 0 {
            return Err(Error::arg("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// How often the examples are left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeftOutCounts {
    /// Fewest models that leave an example out.
    pub min: usize,
    /// Mean over examples of the number of models that leave each out.
    pub mean: f64,
    pub max: usize,
    /// Examples that no model leaves out, or that every model leaves out (no score).
    pub unscored: usize,
}

/// Pooled over all (model, example) pairs of a group: how the models do on the examples they
/// trained on and on those they did not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupInOut {
    pub acc_in: Option<f64>,
    pub acc_out: Option<f64>,
    pub prob_in: Option<f64>,
    pub prob_out: Option<f64>,
}

/// The estimate for one method.
#[derive(Clone, Debug, Serialize)]
pub struct MethodScores {
    /// `erm` or `mat`.
    pub method: String,
    pub scores: MemScores,
    pub left_out: LeftOutCounts,
    pub split_half: SplitHalfSpread,
    /// Per group `n_attr · y + a`: summary of `mem_acc`.
    pub summary_acc: Vec<GroupSummary>,
    /// Per group: summary of `mem_prob`.
    pub summary_prob: Vec<GroupSummary>,
    /// Per group: accuracy and true-label probability on held-in and held-out examples.
    pub in_out: Vec<GroupInOut>,
    /// Wall time of the `M` trainings and evaluations.
    pub wall_s: f64,
    /// Whether the models ran in parallel.
    pub parallel: bool,
    /// What each model contributed (not written to JSON: the scores summarise it).
    #[serde(skip)]
    pub records: Vec<ModelRecord>,
}

/// The subset masks and the per-model training seeds of a configuration: a pure function of
/// `(n, cfg)`, shared by every method so that their scores pair up.
pub fn subset_plan(n: usize, cfg: &MemscoreConfig) -> Result<(Vec<Vec<bool>>, Vec<u64>)> {
    let root = Rng::new(cfg.seed);
    let masks = subset_masks(n, cfg.models, cfg.share, &mut root.fork(STREAM_MASKS))?;
    let seeds_root = root.fork(STREAM_MODELS);
    let seeds = (0..cfg.models as u64)
        .map(|m| seeds_root.fork(m).next_u64())
        .collect();
    Ok((masks, seeds))
}

/// True-label probability and correctness of every row of `logits` (`n × K`), the softmax in
/// f64 with the maximum subtracted.
fn true_label_results(logits: &[f32], labels: &[u32], k: usize) -> (Vec<bool>, Vec<f32>) {
    let pred = argmax_rows(logits, k);
    let prob = logits
        .chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            ((row[y as usize] as f64 - max).exp() / total) as f32
        })
        .collect();
    let correct = pred.iter().zip(labels).map(|(p, y)| p == y).collect();
    (correct, prob)
}

/// Logits of `model` on `x`, to the host, without recording a graph.
fn logits_of(model: &dyn Module, x: &Tensor) -> Result<Vec<f32>> {
    no_grad(|| model.forward(x)?.to_vec())
}

/// Trains `M` subset models of `method` on `ds` and scores every training example (see the
/// module docs). Reports [`Progress::Done`]`(1)` per finished model (from worker threads when
/// parallel).
///
/// Errors: an invalid configuration (fewer than 2 models, share outside `(0, 1)`, zero steps
/// or batch), MAT with XRM outputs that do not fit `ds`, a subset model whose probabilities
/// are not finite (training diverged), and whatever [`fn@train`] rejects.
pub fn estimate(
    ds: &Dataset,
    method: &ScoredMethod,
    cfg: &MemscoreConfig,
    progress: ProgressFn<'_>,
) -> Result<MethodScores> {
    ds.validate()?;
    cfg.validate()?;
    let (n, d, k) = (ds.train.n, ds.d(), ds.classes);
    let device = &cfg.device;
    let objective = match method {
        ScoredMethod::Erm => Objective::Mean,
        ScoredMethod::Mat { tau, xrm } => {
            xrm.check_matches(ds)?;
            let shift = mat_shift(&xrm.heldout_logits, &ds.train.y, k, *tau)?;
            Objective::Shifted(Tensor::from_vec(shift, (n, k), device)?)
        }
    };
    let (masks, seeds) = subset_plan(n, cfg)?;
    let x_tr = Tensor::from_buffer(ds.train.x.clone(), (n, d), device)?;
    let train_one = |m: usize| -> Result<ModelRecord> {
        let rows: Vec<usize> = (0..n).filter(|&i| masks[m][i]).collect();
        let train_cfg = TrainConfig {
            seed: seeds[m],
            device: device.clone(),
            ..TrainConfig::minibatch(cfg.steps, cfg.batch_size, cfg.optimizer.clone(), cfg.steps)
        };
        let setup = TrainSetup {
            objective: objective.clone(),
            rows: Some(rows),
            va_inferred_groups: None,
            evaluate: false,
        };
        let outcome = train(ds, &cfg.model, &train_cfg, &setup, &mut |_| Ok(()))?;
        let logits = logits_of(outcome.model.as_ref(), &x_tr)?;
        let (correct, true_prob) = true_label_results(&logits, &ds.train.y, k);
        if let Some(i) = true_prob.iter().position(|p| !p.is_finite()) {
            return Err(Error::NonFinite {
                op: "memscore",
                what: format!(
                    "{} subset model {m}: true-label probability of training example {i} \
                     (training diverged; lower the learning rate)",
                    method.name()
                ),
            });
        }
        progress(Progress::Done(1));
        Ok(ModelRecord {
            member: masks[m].clone(),
            correct,
            true_prob,
        })
    };
    let parallel = cfg.parallel && *device == Device::Cpu;
    let start = Instant::now();
    let records: Vec<ModelRecord> = if parallel {
        (0..cfg.models)
            .into_par_iter()
            .map(train_one)
            .collect::<Result<_>>()?
    } else {
        (0..cfg.models).map(train_one).collect::<Result<_>>()?
    };
    let wall_s = start.elapsed().as_secs_f64();

    let scores = mem_scores(&records)?;
    let spread = split_half(&records)?;
    let groups = ds.train.groups(ds.n_attr);
    let n_groups = ds.n_groups();
    Ok(MethodScores {
        method: method.name().to_string(),
        left_out: left_out_counts(&scores),
        split_half: spread,
        summary_acc: group_summary(&scores.mem_acc, &groups, n_groups)?,
        summary_prob: group_summary(&scores.mem_prob, &groups, n_groups)?,
        in_out: in_out_by_group(&records, &groups, n_groups),
        scores,
        wall_s,
        parallel,
        records,
    })
}

fn left_out_counts(scores: &MemScores) -> LeftOutCounts {
    let n = scores.n_out.len();
    LeftOutCounts {
        min: scores.n_out.iter().copied().min().unwrap_or(0),
        mean: scores.n_out.iter().sum::<usize>() as f64 / n.max(1) as f64,
        max: scores.n_out.iter().copied().max().unwrap_or(0),
        unscored: scores.mem_acc.iter().filter(|s| s.is_none()).count(),
    }
}

fn in_out_by_group(records: &[ModelRecord], groups: &[u32], n_groups: usize) -> Vec<GroupInOut> {
    // Per group and side (0 = in, 1 = out): pairs, correct, probability sum.
    let mut count = vec![[0usize; 2]; n_groups];
    let mut correct = vec![[0usize; 2]; n_groups];
    let mut prob = vec![[0.0f64; 2]; n_groups];
    for rec in records {
        for (i, &g) in groups.iter().enumerate() {
            let (g, side) = (g as usize, usize::from(!rec.member[i]));
            count[g][side] += 1;
            correct[g][side] += usize::from(rec.correct[i]);
            prob[g][side] += rec.true_prob[i] as f64;
        }
    }
    (0..n_groups)
        .map(|g| {
            let mean =
                |sum: f64, side: usize| (count[g][side] > 0).then(|| sum / count[g][side] as f64);
            GroupInOut {
                acc_in: mean(correct[g][0] as f64, 0),
                acc_out: mean(correct[g][1] as f64, 1),
                prob_in: mean(prob[g][0], 0),
                prob_out: mean(prob[g][1], 1),
            }
        })
        .collect()
}

/// Cheap proxies from one XRM run, and their agreement with the full estimator.
#[derive(Clone, Debug, Serialize)]
pub struct XrmProxy {
    /// `p_held-in(i) − p_held-out(i)` per training example.
    pub held_in_minus_held_out: Vec<f64>,
    /// `1 − p_held-out(i)`: the proxy when the held-in model is taken to fit `y_i` perfectly,
    /// which is what ERM's subset models do on their own rows.
    pub held_out_error: Vec<f64>,
    pub held_in_prob: Vec<f64>,
    pub held_out_prob: Vec<f64>,
    /// Whether XRM's final dynamic label differs from `y` (the held-in twin was fitted towards
    /// another label).
    pub flipped: Vec<bool>,
    /// Per group: summary of `held_in_minus_held_out`.
    pub summary: Vec<GroupSummary>,
    /// Per group: summary of `held_out_error`.
    pub summary_held_out_error: Vec<GroupSummary>,
    /// Per group: share of examples whose dynamic label XRM flipped.
    pub flipped_share: Vec<Option<f64>>,
    /// Spearman correlations of both proxies with the full estimator.
    pub agreement: Vec<ProxyAgreement>,
}

/// One proxy's Spearman rank correlation with one full score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyAgreement {
    /// `held_in_minus_held_out` or `held_out_error`.
    pub proxy: String,
    /// `erm` or `mat`.
    pub method: String,
    /// `mem_acc` or `mem_prob`.
    pub score: String,
    /// Examples compared (those the full estimator scores).
    pub n_compared: usize,
    /// `None` when undefined (a constant input, fewer than two examples).
    pub spearman: Option<f64>,
    /// Pearson correlation of the values, `None` when undefined. Beside Spearman because a
    /// score that is exactly 0 on most examples (ERM's `mem_acc` on the majority) ties them
    /// all, which caps Spearman (at `sqrt(3 p (1 − p))` for a perfectly separated share `p`).
    pub pearson: Option<f64>,
}

/// Pearson correlation; NaN when the lengths differ, there are fewer than two values, or
/// either input is constant.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 {
        return f64::NAN;
    }
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

/// The proxies from `xrm` and its twins: true-label probabilities of every training example
/// under both twins (see the module docs).
pub fn xrm_proxy(
    ds: &Dataset,
    xrm: &XrmOutput,
    twin_a: &dyn Module,
    twin_b: &dyn Module,
    device: &Device,
) -> Result<XrmProxy> {
    xrm.check_matches(ds)?;
    let (n, d, k) = (ds.train.n, ds.d(), ds.classes);
    let x = Tensor::from_buffer(ds.train.x.clone(), (n, d), device)?;
    let (_, prob_a) = true_label_results(&logits_of(twin_a, &x)?, &ds.train.y, k);
    let (_, prob_b) = true_label_results(&logits_of(twin_b, &x)?, &ds.train.y, k);
    let (held_in_prob, held_out_prob): (Vec<f64>, Vec<f64>) = (0..n)
        .map(|i| {
            let (a, b) = (prob_a[i] as f64, prob_b[i] as f64);
            if xrm.assignment[i] == 0 {
                (a, b)
            } else {
                (b, a)
            }
        })
        .unzip();
    let held_in_minus_held_out: Vec<f64> = held_in_prob
        .iter()
        .zip(&held_out_prob)
        .map(|(i, o)| i - o)
        .collect();
    let held_out_error: Vec<f64> = held_out_prob.iter().map(|p| 1.0 - p).collect();
    let flipped: Vec<bool> = xrm
        .y_dyn
        .iter()
        .zip(&ds.train.y)
        .map(|(a, b)| a != b)
        .collect();
    let groups = ds.train.groups(ds.n_attr);
    let n_groups = ds.n_groups();
    let some = |v: &[f64]| -> Vec<Option<f64>> { v.iter().map(|&v| Some(v)).collect() };
    let flipped_values: Vec<Option<f64>> = flipped
        .iter()
        .map(|&f| Some(f64::from(u8::from(f))))
        .collect();
    let flipped_share = group_summary(&flipped_values, &groups, n_groups)?
        .into_iter()
        .map(|s| s.mean)
        .collect();
    Ok(XrmProxy {
        summary: group_summary(&some(&held_in_minus_held_out), &groups, n_groups)?,
        summary_held_out_error: group_summary(&some(&held_out_error), &groups, n_groups)?,
        held_in_minus_held_out,
        held_out_error,
        held_in_prob,
        held_out_prob,
        flipped,
        flipped_share,
        agreement: Vec::new(),
    })
}

impl XrmProxy {
    /// Both proxies' rank agreement with `scores` (one method's `mem_acc` or `mem_prob`), over
    /// the examples `scores` defines.
    pub fn agreement_with(
        &self,
        method: &str,
        score: &str,
        scores: &[Option<f64>],
    ) -> Vec<ProxyAgreement> {
        [
            ("held_in_minus_held_out", &self.held_in_minus_held_out),
            ("held_out_error", &self.held_out_error),
        ]
        .into_iter()
        .map(|(proxy, values)| {
            let (a, b): (Vec<f64>, Vec<f64>) = scores
                .iter()
                .zip(values.iter())
                .filter_map(|(s, &p)| Some((p, (*s)?)))
                .unzip();
            let defined = |r: f64| (!r.is_nan()).then_some(r);
            ProxyAgreement {
                proxy: proxy.to_string(),
                method: method.to_string(),
                score: score.to_string(),
                n_compared: a.len(),
                spearman: defined(spearman(&a, &b)),
                pearson: defined(pearson(&a, &b)),
            }
        })
        .collect()
    }
}

/// Which methods to score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Methods {
    Erm,
    Mat,
    Both,
}

impl Methods {
    pub fn includes_erm(self) -> bool {
        matches!(self, Methods::Erm | Methods::Both)
    }
    pub fn includes_mat(self) -> bool {
        matches!(self, Methods::Mat | Methods::Both)
    }
}

/// The whole Figure-2 experiment: one XRM run on the full training set (MAT's shift and the
/// proxy), then the estimator for ERM and/or MAT.
#[derive(Clone, Debug, Serialize)]
pub struct MemscoreExperiment {
    pub estimator: MemscoreConfig,
    pub methods: Methods,
    /// MAT's temperature.
    pub tau: f32,
    /// The XRM run (its seed is derived from `estimator.seed`; the model is `estimator.model`).
    pub xrm: XrmConfig,
    /// Width of the histogram bins; bins are centred on multiples of it, so that a score of
    /// exactly 0 or 1 sits mid-bin.
    pub bin_width: f32,
}

impl MemscoreExperiment {
    /// The Figure-1 recipe (PAPER.md §6): linear `d → 2` without bias, full batch, plain SGD at
    /// lr 1e-2 for 1000 steps, for the subset models and for XRM (plain mean held-in loss);
    /// `tau = 0.1`.
    pub fn interpretable(seed: u64) -> Self {
        let optimizer = OptimizerSpec::plain_sgd(1e-2);
        MemscoreExperiment {
            estimator: MemscoreConfig {
                model: Family::Interpretable.model(),
                models: 20,
                share: 0.5,
                steps: 1000,
                batch_size: usize::MAX,
                optimizer: optimizer.clone(),
                seed,
                device: Device::Cpu,
                parallel: true,
            },
            methods: Methods::Both,
            tau: 0.1,
            xrm: XrmConfig {
                steps: 1000,
                batch_size: usize::MAX,
                optimizer,
                loss: XrmLoss::Mean,
                seed,
                device: Device::Cpu,
                log_every: 100,
            },
            bin_width: 0.05,
        }
    }

    /// The ColorMNIST recipe (issue 7's model): MLP 392 → 390 → 390 → 2, ReLU, Xavier-uniform
    /// weights and zero biases, Adam lr 1e-3 with L2 weight decay 1e-4, batch 128, 600 steps
    /// (about 60 epochs of a 1250-example subset, enough to fit its noisy labels); XRM with the
    /// class-balanced held-in loss and the same optimizer, batch and steps; `tau = 0.1`.
    pub fn colormnist(seed: u64) -> Self {
        let optimizer = OptimizerSpec::Adam {
            lr: 1e-3,
            weight_decay: 1e-4,
        };
        MemscoreExperiment {
            estimator: MemscoreConfig {
                model: Family::ColorMnist.model(),
                models: 20,
                share: 0.5,
                steps: 600,
                batch_size: 128,
                optimizer: optimizer.clone(),
                seed,
                device: Device::Cpu,
                parallel: true,
            },
            methods: Methods::Both,
            tau: 0.1,
            xrm: XrmConfig {
                steps: 600,
                batch_size: 128,
                optimizer,
                loss: XrmLoss::ClassBalanced,
                seed,
                device: Device::Cpu,
                log_every: 50,
            },
            bin_width: 0.05,
        }
    }

    /// A linear head with bias on feature files (the Waterbirds-shaped set, user features):
    /// SGD lr 1e-2, momentum 0.9, batch 64, 1000 steps, for the subset models and XRM
    /// (class-balanced); `tau = 0.1`.
    pub fn linear_head(seed: u64) -> Self {
        let optimizer = OptimizerSpec::Sgd {
            lr: 1e-2,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let mut exp = Self::interpretable(seed);
        exp.estimator.model = Family::Features.model();
        exp.estimator.optimizer = optimizer.clone();
        exp.estimator.batch_size = 64;
        exp.xrm.optimizer = optimizer;
        exp.xrm.batch_size = 64;
        exp.xrm.loss = XrmLoss::ClassBalanced;
        exp
    }

    /// Sets the device of the subset models and of XRM.
    pub fn on_device(mut self, device: Device) -> Self {
        self.estimator.device = device.clone();
        self.xrm.device = device;
        self
    }
}

/// Summary of the XRM run behind MAT's shift and the proxy.
#[derive(Clone, Debug, Serialize)]
pub struct XrmSummary {
    pub final_flip_rate: f64,
    pub degenerate: Option<String>,
    pub heldout_acc_by_group: Vec<Option<f64>>,
    pub wall_s: f64,
}

/// Everything [`run_memscore`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct MemscoreReport {
    pub dataset: String,
    pub n_train: usize,
    pub classes: usize,
    pub n_attr: usize,
    /// One readable name per group `n_attr · y + a`.
    pub group_labels: Vec<String>,
    /// Training examples per group.
    pub group_counts: Vec<usize>,
    pub ids: Vec<u64>,
    pub y: Vec<u32>,
    pub a: Vec<u32>,
    pub experiment: MemscoreExperiment,
    pub xrm: XrmSummary,
    pub erm: Option<MethodScores>,
    pub mat: Option<MethodScores>,
    pub proxy: XrmProxy,
    /// Whole experiment, XRM included.
    pub wall_s: f64,
}

/// `y=c, a=v (n=…)`, with `a≠y` marked when the attribute and the label share their values
/// (on the Figure-1 data and ColorMNIST by colour, those are the minority groups).
fn group_labels(ds: &Dataset, counts: &[usize]) -> Vec<String> {
    (0..ds.n_groups())
        .map(|g| {
            let (y, a) = (g / ds.n_attr, g % ds.n_attr);
            let mark = if ds.n_attr == ds.classes && y != a {
                ", a≠y"
            } else {
                ""
            };
            format!("y={y}, a={a}{mark} (n={})", counts[g])
        })
        .collect()
}

/// Runs the experiment on `ds`: XRM once on the full training set (seeded from
/// `estimator.seed`), then the estimator for each method in `exp.methods`, then the proxy's
/// agreement with each. Queues every subset model with `progress`, then reports each one
/// done.
pub fn run_memscore(
    ds: &Dataset,
    exp: &MemscoreExperiment,
    progress: ProgressFn<'_>,
) -> Result<MemscoreReport> {
    ds.validate()?;
    exp.estimator.validate()?;
    if !(exp.bin_width.is_finite() && exp.bin_width > 0.0 && exp.bin_width <= 1.0) {
        return Err(Error::arg(
            "bin_width",
            format!("must be in (0, 1], got {}", exp.bin_width),
        ));
    }
    let methods = usize::from(exp.methods.includes_erm()) + usize::from(exp.methods.includes_mat());
    progress(Progress::Queued((exp.estimator.models * methods) as u64));
    let start = Instant::now();
    let xrm_cfg = XrmConfig {
        seed: Rng::new(exp.estimator.seed).fork(STREAM_XRM).next_u64(),
        ..exp.xrm.clone()
    };
    let xrm_start = Instant::now();
    let (xrm, twins) = run_xrm_with_twins(ds, &exp.estimator.model, &xrm_cfg)?;
    let xrm_wall = xrm_start.elapsed().as_secs_f64();
    let mut proxy = xrm_proxy(
        ds,
        &xrm,
        twins.a.as_ref(),
        twins.b.as_ref(),
        &exp.estimator.device,
    )?;
    let xrm = Arc::new(xrm);

    let erm = exp
        .methods
        .includes_erm()
        .then(|| estimate(ds, &ScoredMethod::Erm, &exp.estimator, progress))
        .transpose()?;
    let mat_method = ScoredMethod::Mat {
        tau: exp.tau,
        xrm: xrm.clone(),
    };
    let mat = exp
        .methods
        .includes_mat()
        .then(|| estimate(ds, &mat_method, &exp.estimator, progress))
        .transpose()?;
    for scores in erm.iter().chain(&mat) {
        for (name, values) in [
            ("mem_acc", &scores.scores.mem_acc),
            ("mem_prob", &scores.scores.mem_prob),
        ] {
            let rows = proxy.agreement_with(&scores.method, name, values);
            proxy.agreement.extend(rows);
        }
    }
    let counts = crate::data::Split::counts(&ds.train.groups(ds.n_attr), ds.n_groups());
    Ok(MemscoreReport {
        dataset: ds.name.clone(),
        n_train: ds.train.n,
        classes: ds.classes,
        n_attr: ds.n_attr,
        group_labels: group_labels(ds, &counts),
        group_counts: counts,
        ids: ds.train.ids.clone(),
        y: ds.train.y.clone(),
        a: ds.train.a.clone(),
        experiment: MemscoreExperiment {
            xrm: xrm_cfg,
            ..exp.clone()
        },
        xrm: XrmSummary {
            final_flip_rate: xrm.final_flip_rate,
            degenerate: xrm.degenerate.clone(),
            heldout_acc_by_group: xrm.heldout_acc_by_group.clone(),
            wall_s: xrm_wall,
        },
        erm,
        mat,
        proxy,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// Bins of `width` centred on its multiples, from the one nearest `min` (clamped to −1, and at
/// most −`width`) to the one holding 1: `(bin count, range)`.
fn centred_bins(min: f64, width: f32) -> (usize, (f32, f32)) {
    let w = f64::from(width);
    let first_centre = (min.max(-1.0) / w).round().min(-1.0);
    let last_centre = (1.0 / w).round();
    let bins = (last_centre - first_centre) as usize + 1;
    (
        bins,
        (
            ((first_centre - 0.5) * w) as f32,
            ((last_centre + 0.5) * w) as f32,
        ),
    )
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

impl MemscoreReport {
    fn methods(&self) -> Vec<&MethodScores> {
        self.erm.iter().chain(&self.mat).collect()
    }

    /// The per-group table of one score (`acc` or `prob`) as Markdown: for each method the
    /// mean, median and share above 0.5, and the pooled held-in / held-out accuracy.
    fn score_table(&self, score: &str) -> String {
        let methods = self.methods();
        let mut header = vec!["group".to_string()];
        for m in &methods {
            let name = m.method.to_uppercase();
            header
                .extend(["mean", "median", ">0.5", "acc in / out"].map(|c| format!("{name} {c}")));
        }
        let mut rows = Vec::new();
        for (g, label) in self.group_labels.iter().enumerate() {
            let mut row = vec![label.clone()];
            for m in &methods {
                let s = if score == "acc" {
                    &m.summary_acc[g]
                } else {
                    &m.summary_prob[g]
                };
                let io = &m.in_out[g];
                row.extend([
                    fmt_opt(s.mean),
                    fmt_opt(s.median),
                    fmt_opt(s.share_above_half),
                    format!("{} / {}", fmt_opt(io.acc_in), fmt_opt(io.acc_out)),
                ]);
            }
            rows.push(row);
        }
        let align = format!("l{}", "rrrr".repeat(methods.len()));
        markdown_table(&header, &align, &rows)
    }

    /// The summary as Markdown: per-group tables for both scores, how often examples are left
    /// out, the split-half spread, the proxy's agreement, XRM's flip rate and the timings.
    pub fn summary_markdown(&self) -> String {
        let est = &self.experiment.estimator;
        let mut out = format!(
            "# Memorization scores: `{}`\n\n{} training examples, M = {} subset models, share {}, \
             {} steps per model, seed {}; MAT tau = {}.\n\n",
            self.dataset,
            self.n_train,
            est.models,
            est.share,
            est.steps,
            est.seed,
            self.experiment.tau
        );
        for (score, title) in [
            ("acc", "mem_acc (correctness in − out)"),
            ("prob", "mem_prob (true-label probability in − out)"),
        ] {
            out.push_str(&format!("## {title}\n\n{}\n", self.score_table(score)));
        }
        let rows: Vec<Vec<String>> = self
            .methods()
            .iter()
            .map(|m| {
                let mode = if m.parallel { "parallel" } else { "sequential" };
                vec![
                    m.method.to_uppercase(),
                    format!(
                        "{} / {:.1} / {}",
                        m.left_out.min, m.left_out.mean, m.left_out.max
                    ),
                    m.left_out.unscored.to_string(),
                    fmt_opt(m.split_half.acc.mean_abs_diff),
                    fmt_opt(m.split_half.acc.spearman),
                    fmt_opt(m.split_half.prob.mean_abs_diff),
                    fmt_opt(m.split_half.prob.spearman),
                    format!("{:.2} ({mode})", m.wall_s),
                ]
            })
            .collect();
        out.push_str("## Estimator\n\n");
        out.push_str(&markdown_table(
            &[
                "method",
                "left out (min / mean / max)",
                "unscored",
                "split-half |Δ| acc",
                "split-half ρ acc",
                "split-half |Δ| prob",
                "split-half ρ prob",
                "wall s",
            ],
            "llrrrrrr",
            &rows,
        ));
        out.push_str(&format!(
            "\n## Proxies from one XRM run\n\nXRM: final flip rate {:.3}, {:.2} s{}. \
             `in − out`: held-in minus held-out true-label probability; `1 − out`: held-out \
             error.\n\n",
            self.xrm.final_flip_rate,
            self.xrm.wall_s,
            self.xrm
                .degenerate
                .as_ref()
                .map(|d| format!(", degenerate: {d}"))
                .unwrap_or_default()
        ));
        let rows: Vec<Vec<String>> = self
            .group_labels
            .iter()
            .enumerate()
            .map(|(g, label)| {
                let (a, b) = (
                    &self.proxy.summary[g],
                    &self.proxy.summary_held_out_error[g],
                );
                vec![
                    label.clone(),
                    fmt_opt(a.mean),
                    fmt_opt(a.median),
                    fmt_opt(b.mean),
                    fmt_opt(b.median),
                    fmt_opt(self.proxy.flipped_share[g]),
                ]
            })
            .collect();
        out.push_str(&markdown_table(
            &[
                "group",
                "in − out mean",
                "median",
                "1 − out mean",
                "median",
                "flipped by XRM",
            ],
            "lrrrrr",
            &rows,
        ));
        let rows: Vec<Vec<String>> = self
            .proxy
            .agreement
            .chunks(2)
            .map(|pair| {
                let second = pair.get(1);
                vec![
                    format!("{} {}", pair[0].method.to_uppercase(), pair[0].score),
                    fmt_opt(pair[0].spearman),
                    fmt_opt(second.and_then(|a| a.spearman)),
                    fmt_opt(pair[0].pearson),
                    fmt_opt(second.and_then(|a| a.pearson)),
                    pair[0].n_compared.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&markdown_table(
            &[
                "full score",
                "Spearman (in − out)",
                "Spearman (1 − out)",
                "Pearson (in − out)",
                "Pearson (1 − out)",
                "n",
            ],
            "lrrrrr",
            &rows,
        ));
        out.push_str(&format!("\nTotal wall time {:.2} s.\n", self.wall_s));
        out
    }

    /// One histogram panel per group, ERM and MAT overlaid, for `mem_acc` (`acc`) or
    /// `mem_prob` (`prob`). Bins of `bin_width` are centred on its multiples, from the one
    /// holding the lowest score (at most −`bin_width`) to the one holding 1, the largest
    /// possible score, so that no score falls outside.
    pub fn histogram_panels(&self, score: &str) -> Vec<HistPanel> {
        let values_of = |m: &MethodScores, g: usize| -> Vec<f32> {
            let s = if score == "acc" {
                &m.scores.mem_acc
            } else {
                &m.scores.mem_prob
            };
            s.iter()
                .zip(self.y.iter().zip(&self.a))
                .filter(|(_, (&y, &a))| (y as usize * self.n_attr + a as usize) == g)
                .filter_map(|(v, _)| v.map(|v| v as f32))
                .collect()
        };
        let all_min = self
            .methods()
            .iter()
            .flat_map(|m| {
                let s = if score == "acc" {
                    &m.scores.mem_acc
                } else {
                    &m.scores.mem_prob
                };
                s.iter().flatten().copied().collect::<Vec<_>>()
            })
            .fold(f64::INFINITY, f64::min);
        let (bins, range) = centred_bins(all_min, self.experiment.bin_width);
        let x_label = if score == "acc" {
            "memorization score (correctness)"
        } else {
            "memorization score (true-label probability)"
        };
        (0..self.group_labels.len())
            .map(|g| HistPanel {
                title: self.group_labels[g].clone(),
                x_label: x_label.into(),
                bins,
                range,
                series: self
                    .methods()
                    .iter()
                    .map(|m| Histogram {
                        label: m.method.to_uppercase(),
                        values: values_of(m, g),
                        colour: if m.method == "erm" {
                            ERM_COLOUR
                        } else {
                            MAT_COLOUR
                        },
                    })
                    .collect(),
                density: false,
            })
            .collect()
    }
}

/// Writes the report into `dir` (created if needed): JSON, Markdown summary, and both
/// histogram figures as PNG and SVG. Returns the paths written.
pub fn write_memscore(report: &MemscoreReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = dir.join(JSON_FILE);
    write_json(&json, report)?;
    let md = dir.join(SUMMARY_FILE);
    write_text(&md, &report.summary_markdown())?;
    let mut paths = vec![json, md];
    let columns = report.group_labels.len().clamp(1, 2);
    for (score, stem, what) in [
        ("acc", HIST_ACC_STEM, "correctness"),
        ("prob", HIST_PROB_STEM, "true-label probability"),
    ] {
        let title = format!(
            "Memorization per group ({what}), {}, M = {}",
            report.dataset, report.experiment.estimator.models
        );
        paths.extend(save_histograms(
            Some(&title),
            &report.histogram_panels(score),
            columns,
            &dir.join(stem),
        )?);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_label_probability_is_the_softmax_entry() {
        // Row 0: logits (0, ln 3) → p = (1/4, 3/4), label 1; row 1: a tie, label 0 → 1/2 and
        // argmax takes the first class.
        let logits = [0.0f32, 3f32.ln(), 2.0, 2.0];
        let (correct, prob) = true_label_results(&logits, &[1, 0], 2);
        assert_eq!(correct, vec![true, true]);
        assert!((prob[0] - 0.75).abs() < 1e-6);
        assert!((prob[1] - 0.5).abs() < 1e-6);
        // Large logits do not overflow.
        let (_, prob) = true_label_results(&[1000.0, 0.0], &[1], 2);
        assert!(prob[0] >= 0.0 && prob[0] < 1e-30);
    }

    #[test]
    fn pearson_known_values() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // x = (0, 1, 2, 3), y = (0, 1, 0, 1): cov = 1, var_x = 5, var_y = 1 → 1 / sqrt(5).
        let r = pearson(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 0.0, 1.0]);
        assert!((r - 1.0 / 5f64.sqrt()).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert!(pearson(&[1.0], &[1.0]).is_nan());
    }

    #[test]
    fn histogram_bins_are_centred_and_cover_the_scores() {
        // Minimum −0.23 with width 0.05: centres −0.25, …, 1.0 → 26 bins over [−0.275, 1.025].
        let (bins, (lo, hi)) = centred_bins(-0.23, 0.05);
        assert_eq!(bins, 26);
        assert!((lo + 0.275).abs() < 1e-6 && (hi - 1.025).abs() < 1e-6);
        // A non-negative minimum still gets one bin below zero; no score at all likewise.
        for min in [0.3, f64::INFINITY] {
            let (bins, (lo, _)) = centred_bins(min, 0.1);
            assert_eq!(bins, 12);
            assert!((lo + 0.15).abs() < 1e-6);
        }
        // Scores never go below −1.
        assert_eq!(centred_bins(-5.0, 0.5).0, 5);
    }
}
