//! Checkpoint records, model selection, hyperparameter draws and seed aggregation (PAPER.md §4, §6).
//!
//! - A run evaluates a [`Checkpoint`] every `checkpoint_freq` steps. The selected checkpoint is
//!   the **last** one whose criterion value equals the best value (exact float comparison), so a
//!   plateau picks its latest, most trained point.
//! - The step-0 checkpoint (after the first update) takes no part by default, as in the
//!   official reader (`XRM/utils.py:38`, `read_results_file` keeps records with `step > 0`);
//!   [`StepZero::Keep`] lets it compete ([`select_checkpoint_with`]).
//! - Criteria: validation WGA with true groups (`va_wga`), validation WGA over XRM-inferred
//!   groups (`va_gi_wga`), validation average accuracy (`va_avg`), and validation worst-**class**
//!   accuracy (`va_wca`), the official "no group labels" setting: with `--group_labels no` the
//!   official code sets every attribute to 0 on training and validation
//!   (`XRM/datasets.py:141-142`, `219-220`), so its `va_wga`, the minimum over the groups
//!   `2y + 0` present (`XRM/utils.py:109-114`), is the worst accuracy over the classes present.
//! - Across hyperparameter draws the highest selected value wins; ties go to the higher
//!   validation average accuracy, then to the lowest draw index.
//! - Seeds are aggregated as mean ± **sample** standard deviation (denominator `n − 1`), not the
//!   standard error; a [`TableCell`] holds one (method, data set) entry of a results table
//!   (the report layer renders it). The official tables print NumPy's default
//!   `np.std`, the **population** standard deviation (denominator `n`; `XRM/read_results.py:126`,
//!   `aggregate_in_table`); [`MeanStd::spread`] and [`MeanStd::with_spread`] give either
//!   ([`Spread`]), [`mean_std_with`] computes either.
//!
//! Checkpoints are stored as JSON lines ([`crate::io::JsonlWriter`], [`crate::io::read_jsonl`]),
//! one record per line, flushed as written, so a run that stops early leaves every finished
//! record readable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::metrics::SplitMetrics;
use crate::rng::Rng;

/// Metrics of one evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: usize,
    pub train_loss: f64,
    /// Validation metrics with the true groups; `None` when the run did not evaluate on
    /// validation (`TrainConfig::eval_valid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub va: Option<SplitMetrics>,
    /// Test metrics with the true groups.
    pub te: SplitMetrics,
    /// Validation metrics over XRM-inferred groups `(y, m)`, when inferred groups exist.
    pub va_gi: Option<SplitMetrics>,
    /// Training-set metrics with the true groups, when the run evaluates on training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tr: Option<SplitMetrics>,
}

impl Checkpoint {
    /// The validation metrics; an error naming the step when the run did not evaluate on
    /// validation.
    pub fn valid(&self) -> Result<&SplitMetrics> {
        self.va.as_ref().ok_or_else(|| {
            Error::Data(format!(
                "the checkpoint at step {} has no validation metrics (the run was configured \
                 without validation)",
                self.step
            ))
        })
    }
}

/// What selects a checkpoint (and a hyperparameter draw).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Validation worst-group accuracy with validation group annotations.
    VaWga,
    /// Validation worst-group accuracy over XRM-inferred groups (no group annotations).
    VaGiWga,
    /// Validation average accuracy.
    VaAvg,
    /// Validation worst-class accuracy: the minimum over the classes present of the class
    /// accuracy (no annotation at all; the official `--group_labels no` setting).
    VaWca,
}

impl Criterion {
    /// Every criterion, in a fixed order.
    pub const ALL: [Criterion; 4] = [
        Criterion::VaWga,
        Criterion::VaGiWga,
        Criterion::VaAvg,
        Criterion::VaWca,
    ];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Criterion::VaWga => "va_wga",
            Criterion::VaGiWga => "va_gi_wga",
            Criterion::VaAvg => "va_avg",
            Criterion::VaWca => "va_wca",
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Criterion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Criterion::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "criterion",
                    format!(
                        "unknown criterion `{s}`; expected va_wga, va_gi_wga, va_avg or va_wca"
                    ),
                )
            })
    }
}

/// The criterion's value at a checkpoint; `None` when the checkpoint lacks the metrics the
/// criterion reads (validation, or inferred-group validation for `va_gi_wga`), or the value
/// is NaN.
pub fn criterion_value(c: Criterion, cp: &Checkpoint) -> Option<f64> {
    let v = match c {
        Criterion::VaWga => cp.va.as_ref()?.worst_group_acc,
        Criterion::VaGiWga => cp.va_gi.as_ref()?.worst_group_acc,
        Criterion::VaAvg => cp.va.as_ref()?.avg_acc,
        Criterion::VaWca => cp.va.as_ref()?.worst_class_acc,
    };
    (!v.is_nan()).then_some(v)
}

/// Whether the step-0 checkpoint may be selected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepZero {
    /// The official rule: checkpoints at step 0 take no part (`XRM/utils.py:38`,
    /// `read_results_file`: `res['step'] > 0`).
    #[default]
    Drop,
    /// Every checkpoint competes, step 0 included (this crate's rule before it followed the
    /// official one).
    Keep,
}

impl StepZero {
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StepZero::Drop => "drop",
            StepZero::Keep => "keep",
        }
    }
}

impl fmt::Display for StepZero {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StepZero {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [StepZero::Drop, StepZero::Keep]
            .into_iter()
            .find(|z| z.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "step_zero",
                    format!("unknown step-0 rule `{s}`; expected drop or keep"),
                )
            })
    }
}

/// Index (into `cps`) and value of the selected checkpoint under the official rule
/// ([`StepZero::Drop`]): the last checkpoint after step 0 reaching the best value.
///
/// Errors as [`select_checkpoint_with`].
pub fn select_checkpoint(cps: &[Checkpoint], c: Criterion) -> Result<(usize, f64)> {
    select_checkpoint_with(cps, c, StepZero::default())
}

/// Index (into `cps`) and value of the selected checkpoint: the last one reaching the best
/// value, among all checkpoints ([`StepZero::Keep`]) or those after step 0 ([`StepZero::Drop`]).
///
/// Errors when no checkpoint is left to select from (none at all, or, dropping step 0, none
/// after it: the official reader skips such a run) or when any candidate lacks the criterion's
/// value (selecting among a subset would silently change the rule).
pub fn select_checkpoint_with(
    cps: &[Checkpoint],
    c: Criterion,
    step_zero: StepZero,
) -> Result<(usize, f64)> {
    let candidate = |cp: &Checkpoint| step_zero == StepZero::Keep || cp.step > 0;
    if !cps.iter().any(candidate) {
        return Err(Error::Data(if cps.is_empty() {
            format!("select_checkpoint: no checkpoints to select from by {c}")
        } else {
            format!(
                "select_checkpoint: no checkpoint after step 0 to select from by {c} (the \
                 official rule drops step 0; run more steps or keep step 0)"
            )
        }));
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, cp) in cps.iter().enumerate().filter(|(_, cp)| candidate(cp)) {
        let v = criterion_value(c, cp).ok_or_else(|| {
            Error::Data(format!(
                "select_checkpoint: checkpoint {i} (step {}) has no value for {c}{}",
                cp.step,
                if cp.va.is_none() {
                    " (the run did not evaluate on validation)"
                } else if c == Criterion::VaGiWga && cp.va_gi.is_none() {
                    " (no inferred-group validation metrics)"
                } else {
                    ""
                }
            ))
        })?;
        // `>=`: a later checkpoint that equals the best replaces it.
        let replaces = match best {
            None => true,
            Some((_, b)) => v >= b,
        };
        if replaces {
            best = Some((i, v));
        }
    }
    Ok(best.expect("cps is non-empty and every value was checked"))
}

/// Where hyperparameters are drawn from. Ranges are `[lo, hi)` of the exponent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HparamSpace {
    /// Learning rate `10^U(lo, hi)`.
    pub lr_log10: (f64, f64),
    /// Batch size `floor(2^U(lo, hi))`.
    pub batch_log2: (f64, f64),
    /// Weight decay `10^U(lo, hi)`.
    pub weight_decay_log10: (f64, f64),
    /// MAT temperatures, one drawn uniformly.
    pub taus: Vec<f32>,
    /// GroupDRO step size `10^U(lo, hi)`.
    pub eta_log10: (f64, f64),
    /// JTT: length of the identification run as a fraction of the training steps.
    pub jtt_t_fracs: Vec<f64>,
    /// JTT: upweighting factor of the identification run's errors.
    pub jtt_lambdas: Vec<f64>,
}

impl HparamSpace {
    /// The paper's space (PAPER.md §6): lr `10^U(-5,-3)`, batch `int(2^U(5,7))`, weight decay
    /// `10^U(-6,-3)`, `tau ∈ {0.001, 0.01, 0.1}`, `eta = 10^U(-3,-1)`.
    ///
    /// JTT is not specified there; following Liu et al. (2021): `lambda_up ∈ {5, 20, 50, 100}`
    /// (their image grid {20, 50, 100} plus their text value 5), and `T` as a fraction of the
    /// run's steps in `{0.02, 0.1, 0.2, 0.4}` (their CelebA 1/50 and Waterbirds 60/300 epochs,
    /// with two points between and beyond).
    pub fn paper() -> Self {
        HparamSpace {
            lr_log10: (-5.0, -3.0),
            batch_log2: (5.0, 7.0),
            weight_decay_log10: (-6.0, -3.0),
            taus: vec![0.001, 0.01, 0.1],
            eta_log10: (-3.0, -1.0),
            jtt_t_fracs: vec![0.02, 0.1, 0.2, 0.4],
            jtt_lambdas: vec![5.0, 20.0, 50.0, 100.0],
        }
    }

    /// Checks that ranges are finite and ordered and that choice lists are non-empty.
    pub fn validate(&self) -> Result<()> {
        for (name, (lo, hi)) in [
            ("lr_log10", self.lr_log10),
            ("batch_log2", self.batch_log2),
            ("weight_decay_log10", self.weight_decay_log10),
            ("eta_log10", self.eta_log10),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::arg(
                    "hparam_space",
                    format!("range {name} = ({lo}, {hi}) must be finite with lo <= hi"),
                ));
            }
        }
        if self.batch_log2.0 < 0.0 {
            return Err(Error::arg(
                "hparam_space",
                format!(
                    "batch_log2 starts at {} < 0: batch sizes below 1",
                    self.batch_log2.0
                ),
            ));
        }
        if self.batch_log2.1 >= 63.0 {
            return Err(Error::arg(
                "hparam_space",
                format!("batch_log2 ends at {} >= 63", self.batch_log2.1),
            ));
        }
        if self.taus.is_empty() || self.taus.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(Error::arg(
                "hparam_space",
                format!(
                    "taus {:?} must be non-empty, positive and finite",
                    self.taus
                ),
            ));
        }
        if self.jtt_t_fracs.is_empty()
            || self
                .jtt_t_fracs
                .iter()
                .any(|t| !(t.is_finite() && *t > 0.0 && *t <= 1.0))
        {
            return Err(Error::arg(
                "hparam_space",
                format!(
                    "jtt_t_fracs {:?} must be non-empty, in (0, 1]",
                    self.jtt_t_fracs
                ),
            ));
        }
        if self.jtt_lambdas.is_empty()
            || self
                .jtt_lambdas
                .iter()
                .any(|l| !(l.is_finite() && *l >= 1.0))
        {
            return Err(Error::arg(
                "hparam_space",
                format!("jtt_lambdas {:?} must be non-empty, >= 1", self.jtt_lambdas),
            ));
        }
        Ok(())
    }
}

/// One hyperparameter draw. Every method reads the fields it needs and ignores the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hparams {
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    /// MAT temperature.
    pub tau: f32,
    /// GroupDRO step size.
    pub eta: f64,
    /// JTT identification length as a fraction of the run's steps; see [`Hparams::jtt_steps`].
    pub jtt_t: f64,
    /// JTT upweighting factor `lambda_up`.
    pub jtt_lambda: f64,
}

impl Hparams {
    /// JTT identification steps for a run of `total_steps`: `round(jtt_t * total_steps)`, at
    /// least 1 and at most `total_steps`.
    pub fn jtt_steps(&self, total_steps: usize) -> usize {
        ((self.jtt_t * total_steps as f64).round() as usize).clamp(1, total_steps.max(1))
    }
}

fn log_uniform(rng: &mut Rng, base: f64, (lo, hi): (f64, f64)) -> f64 {
    base.powf(lo + (hi - lo) * rng.uniform_f64())
}

fn pick<T: Copy>(rng: &mut Rng, choices: &[T]) -> T {
    choices[rng.below(choices.len() as u64) as usize]
}

/// A random draw from `space`. Every field is drawn, always in the same order (lr, batch, weight
/// decay, tau, eta, jtt_t, jtt_lambda), so a generator seeded per draw index gives every method
/// the same lr, batch size and weight decay. There is no fixed default point: all draws are random.
pub fn draw(space: &HparamSpace, rng: &mut Rng) -> Result<Hparams> {
    space.validate()?;
    let lr = log_uniform(rng, 10.0, space.lr_log10);
    // floor, as Python's int() on a positive float; at least 1.
    let batch_size = (log_uniform(rng, 2.0, space.batch_log2) as usize).max(1);
    let weight_decay = log_uniform(rng, 10.0, space.weight_decay_log10);
    let tau = pick(rng, &space.taus);
    let eta = log_uniform(rng, 10.0, space.eta_log10);
    let jtt_t = pick(rng, &space.jtt_t_fracs);
    let jtt_lambda = pick(rng, &space.jtt_lambdas);
    Ok(Hparams {
        lr,
        batch_size,
        weight_decay,
        tau,
        eta,
        jtt_t,
        jtt_lambda,
    })
}

/// The winning draw from `(selection value, validation average accuracy)` per draw: highest
/// selection value, ties broken by higher average accuracy, then by the lowest index. Draws with a
/// NaN selection value are skipped (a NaN average counts as lowest); `None` when none is left.
pub fn pick_best_draw(draw_values: &[(f64, f64)]) -> Option<usize> {
    let avg = |a: f64| if a.is_nan() { f64::NEG_INFINITY } else { a };
    let mut best: Option<(usize, f64, f64)> = None;
    for (i, &(sel, va_avg)) in draw_values.iter().enumerate() {
        if sel.is_nan() {
            continue;
        }
        let better = match best {
            None => true,
            // Strict comparisons keep the lowest index on a full tie.
            Some((_, bs, ba)) => sel > bs || (sel == bs && avg(va_avg) > ba),
        };
        if better {
            best = Some((i, sel, avg(va_avg)));
        }
    }
    best.map(|(i, _, _)| i)
}

/// Which standard deviation a [`MeanStd`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// Sample standard deviation, denominator `n − 1` (this crate's tables).
    #[default]
    Sample,
    /// Population standard deviation, denominator `n` (NumPy's `np.std`, the official tables).
    Population,
}

impl Spread {
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Spread::Sample => "sample",
            Spread::Population => "population",
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Spread {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [Spread::Sample, Spread::Population]
            .into_iter()
            .find(|z| z.name() == s)
            .ok_or_else(|| {
                Error::arg(
                    "spread",
                    format!("unknown standard deviation `{s}`; expected sample or population"),
                )
            })
    }
}

/// Mean and spread of a sample (over seeds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    /// Sample standard deviation, denominator `n − 1`, unless made by [`mean_std_with`] or
    /// [`MeanStd::with_spread`] with [`Spread::Population`]; 0 when `n < 2`.
    pub std: f64,
    /// Sample size; 0 marks an empty sample (mean and std are then 0).
    pub n: usize,
}

impl MeanStd {
    /// The standard deviation of kind `spread`, from a `MeanStd` holding the **sample**
    /// standard deviation (as [`mean_std`] makes it): the population one is
    /// `std · √((n − 1) / n)`. 0 when `n < 2`.
    pub fn spread(&self, spread: Spread) -> f64 {
        match spread {
            Spread::Sample => self.std,
            Spread::Population if self.n < 2 => 0.0,
            Spread::Population => self.std * ((self.n - 1) as f64 / self.n as f64).sqrt(),
        }
    }

    /// The same mean and size with `std` of kind `spread` (see [`MeanStd::spread`]), for a
    /// table that should print the other standard deviation.
    pub fn with_spread(&self, spread: Spread) -> MeanStd {
        MeanStd {
            std: self.spread(spread),
            ..*self
        }
    }
}

/// Mean and sample standard deviation (`n − 1`) of `values`; see [`MeanStd`] for `n < 2`.
pub fn mean_std(values: &[f64]) -> MeanStd {
    mean_std_with(values, Spread::Sample)
}

/// Mean and standard deviation of kind `spread` of `values`; see [`MeanStd`] for `n < 2`.
pub fn mean_std_with(values: &[f64], spread: Spread) -> MeanStd {
    let n = values.len();
    if n == 0 {
        return MeanStd {
            mean: 0.0,
            std: 0.0,
            n: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let denominator = match spread {
        Spread::Sample => n - 1,
        Spread::Population => n,
    };
    let std = if n < 2 {
        0.0
    } else {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / denominator as f64).sqrt()
    };
    MeanStd { mean, std, n }
}

/// One (method, data set) entry, aggregated over seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableCell {
    /// Average accuracy over seeds.
    pub avg: MeanStd,
    /// Worst-group accuracy over seeds.
    pub wga: MeanStd,
    /// Per seed, accuracy per group (`None` for a group absent from the split).
    pub per_group: Vec<Vec<Option<f64>>>,
    /// Examples per group in the evaluated split.
    pub group_counts: Vec<usize>,
}

impl TableCell {
    /// The same cell with its spreads ([`MeanStd::with_spread`]) per `spread`.
    pub fn with_spread(&self, spread: Spread) -> TableCell {
        TableCell {
            avg: self.avg.with_spread(spread),
            wga: self.wga.with_spread(spread),
            ..self.clone()
        }
    }

    /// A cell from the selected checkpoint's test metrics of each seed. Errors when there is no
    /// seed or when the seeds disagree on the group counts (they must share one test split).
    pub fn from_seeds(per_seed: &[SplitMetrics]) -> Result<TableCell> {
        let first = per_seed
            .first()
            .ok_or_else(|| Error::Data("table cell: no seed results".into()))?;
        if let Some((s, m)) = per_seed
            .iter()
            .enumerate()
            .find(|(_, m)| m.group_count != first.group_count)
        {
            return Err(Error::Data(format!(
                "table cell: seed {s} has group counts {:?}, seed 0 has {:?}",
                m.group_count, first.group_count
            )));
        }
        let avgs: Vec<f64> = per_seed.iter().map(|m| m.avg_acc).collect();
        let wgas: Vec<f64> = per_seed.iter().map(|m| m.worst_group_acc).collect();
        Ok(TableCell {
            avg: mean_std(&avgs),
            wga: mean_std(&wgas),
            per_group: per_seed.iter().map(|m| m.group_acc.clone()).collect(),
            group_counts: first.group_count.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(avg: f64, wga: f64) -> SplitMetrics {
        SplitMetrics {
            avg_acc: avg,
            group_acc: vec![Some(wga), None, Some(1.0)],
            group_count: vec![3, 0, 5],
            worst_group_acc: wga,
            worst_class_acc: wga,
            class_acc: vec![Some(wga), Some(1.0)],
        }
    }

    fn cp(step: usize, va_avg: f64, va_wga: f64, gi_wga: Option<f64>) -> Checkpoint {
        Checkpoint {
            step,
            train_loss: 1.0 / (step + 1) as f64,
            va: Some(metrics(va_avg, va_wga)),
            te: metrics(0.5, 0.25),
            va_gi: gi_wga.map(|w| metrics(va_avg, w)),
            tr: None,
        }
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("memaware-selection-{}-{name}", std::process::id()))
    }

    #[test]
    fn selection_picks_the_last_checkpoint_at_the_best_value() {
        let cps = vec![
            cp(0, 0.5, 0.2, Some(0.1)),
            cp(50, 0.9, 0.7, Some(0.6)),
            cp(100, 0.8, 0.6, Some(0.6)),
            cp(150, 0.7, 0.7, Some(0.5)),
            cp(200, 0.95, 0.65, Some(0.4)),
        ];
        assert_eq!(select_checkpoint(&cps, Criterion::VaWga).unwrap(), (3, 0.7));
        assert_eq!(
            select_checkpoint(&cps, Criterion::VaGiWga).unwrap(),
            (2, 0.6)
        );
        assert_eq!(
            select_checkpoint(&cps, Criterion::VaAvg).unwrap(),
            (4, 0.95)
        );
    }

    #[test]
    fn selection_uses_exact_equality_and_handles_one_checkpoint() {
        let almost = 0.7 - 1e-15;
        let cps = vec![cp(1, 0.5, 0.7, None), cp(2, 0.5, almost, None)];
        assert_eq!(select_checkpoint(&cps, Criterion::VaWga).unwrap(), (0, 0.7));
        let all_equal = vec![cp(5, 0.5, 0.3, None); 4];
        assert_eq!(
            select_checkpoint(&all_equal, Criterion::VaWga).unwrap().0,
            3
        );
        assert_eq!(
            select_checkpoint(&all_equal[..1], Criterion::VaAvg).unwrap(),
            (0, 0.5)
        );
    }

    #[test]
    fn step_zero_is_dropped_by_default_and_kept_on_request() {
        // The step-0 checkpoint is the best: the official rule passes over it.
        let cps = vec![
            cp(0, 0.9, 0.8, Some(0.8)),
            cp(50, 0.8, 0.6, Some(0.5)),
            cp(100, 0.7, 0.7, Some(0.4)),
        ];
        assert_eq!(StepZero::default(), StepZero::Drop);
        assert_eq!(select_checkpoint(&cps, Criterion::VaWga).unwrap(), (2, 0.7));
        assert_eq!(
            select_checkpoint_with(&cps, Criterion::VaWga, StepZero::Drop).unwrap(),
            (2, 0.7)
        );
        assert_eq!(
            select_checkpoint_with(&cps, Criterion::VaWga, StepZero::Keep).unwrap(),
            (0, 0.8)
        );
        assert_eq!(
            select_checkpoint(&cps, Criterion::VaGiWga).unwrap(),
            (1, 0.5)
        );
        // A step-0 checkpoint without the criterion's value no longer matters when dropped.
        let mut no_va = cps.clone();
        no_va[0].va = None;
        assert_eq!(
            select_checkpoint(&no_va, Criterion::VaAvg).unwrap(),
            (1, 0.8)
        );
        assert!(select_checkpoint_with(&no_va, Criterion::VaAvg, StepZero::Keep).is_err());
        // A run with only step 0 has nothing to select from under the official rule.
        match select_checkpoint(&cps[..1], Criterion::VaWga) {
            Err(Error::Data(msg)) => assert!(msg.contains("after step 0"), "{msg}"),
            other => panic!("expected a Data error, got {other:?}"),
        }
        assert_eq!(
            select_checkpoint_with(&cps[..1], Criterion::VaWga, StepZero::Keep).unwrap(),
            (0, 0.8)
        );
        for z in [StepZero::Drop, StepZero::Keep] {
            assert_eq!(z.to_string().parse::<StepZero>().unwrap(), z);
            let json = serde_json::to_string(&z).unwrap();
            assert_eq!(json, format!("\"{z}\""));
        }
        assert!(matches!(
            "maybe".parse::<StepZero>(),
            Err(Error::InvalidArgument {
                name: "step_zero",
                ..
            })
        ));
    }

    #[test]
    fn missing_inferred_groups_give_none_and_a_selection_error() {
        let with = cp(0, 0.5, 0.3, Some(0.2));
        let without = cp(50, 0.6, 0.4, None);
        assert_eq!(criterion_value(Criterion::VaGiWga, &with), Some(0.2));
        assert_eq!(criterion_value(Criterion::VaGiWga, &without), None);
        assert_eq!(criterion_value(Criterion::VaWga, &without), Some(0.4));
        assert_eq!(criterion_value(Criterion::VaAvg, &without), Some(0.6));
        match select_checkpoint(&[with.clone(), without], Criterion::VaGiWga) {
            Err(Error::Data(msg)) => assert!(msg.contains("step 50"), "{msg}"),
            other => panic!("expected a Data error, got {other:?}"),
        }
        assert!(matches!(
            select_checkpoint(&[], Criterion::VaWga),
            Err(Error::Data(_))
        ));
        let mut nan = with;
        nan.va
            .as_mut()
            .expect("cp() sets validation metrics")
            .worst_group_acc = f64::NAN;
        assert_eq!(criterion_value(Criterion::VaWga, &nan), None);
    }

    #[test]
    fn worst_class_selection_reads_the_validation_class_accuracies() {
        // Worst-class accuracy moves independently of worst-group and average accuracy.
        let with_wca = |step: usize, wga: f64, wca: f64| {
            let mut c = cp(step, 0.8, wga, None);
            let va = c.va.as_mut().expect("cp() sets validation metrics");
            va.worst_class_acc = wca;
            va.class_acc = vec![Some(wca), Some(0.9)];
            c
        };
        let cps = vec![
            with_wca(0, 0.9, 0.95),
            with_wca(50, 0.6, 0.7),
            with_wca(100, 0.7, 0.5),
            with_wca(150, 0.5, 0.7),
        ];
        assert_eq!(criterion_value(Criterion::VaWca, &cps[2]), Some(0.5));
        // The last checkpoint after step 0 at the best worst-class value; va_wga picks another.
        assert_eq!(select_checkpoint(&cps, Criterion::VaWca).unwrap(), (3, 0.7));
        assert_eq!(select_checkpoint(&cps, Criterion::VaWga).unwrap(), (2, 0.7));
        assert_eq!(
            select_checkpoint_with(&cps, Criterion::VaWca, StepZero::Keep).unwrap(),
            (0, 0.95)
        );
        // No validation metrics: no value, and selection names the cause.
        let mut blind = cps[1].clone();
        blind.va = None;
        assert_eq!(criterion_value(Criterion::VaWca, &blind), None);
        match select_checkpoint(&[cps[1].clone(), blind], Criterion::VaWca) {
            Err(Error::Data(msg)) => assert!(msg.contains("did not evaluate"), "{msg}"),
            other => panic!("expected a Data error, got {other:?}"),
        }
        assert_eq!("va_wca".parse::<Criterion>().unwrap(), Criterion::VaWca);
        assert!(Criterion::ALL.contains(&Criterion::VaWca));
    }

    #[test]
    fn worst_class_equals_the_official_no_group_labels_wga() {
        // The official `--group_labels no` sets a = 0, so `get_metrics` takes the minimum over
        // the groups `2y` present (`XRM/utils.py:109-114`): the worst class. Ours, from the
        // same predictions: `split_metrics(...).worst_class_acc`.
        use crate::eval::metrics::split_metrics;
        let y = [0u32, 0, 0, 1, 1, 2, 2, 2, 2];
        let pred = [0u32, 1, 0, 1, 1, 2, 0, 0, 2];
        let a = [1u32, 0, 1, 0, 1, 1, 0, 0, 1];
        let ours = split_metrics(&pred, &y, &y.map(|c| 2 * c), 6, 3)
            .unwrap()
            .worst_class_acc;
        let official = (0..3u32)
            .filter_map(|c| {
                let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
                (!rows.is_empty()).then(|| {
                    rows.iter().filter(|&&i| pred[i] == y[i]).count() as f64 / rows.len() as f64
                })
            })
            .fold(f64::INFINITY, f64::min);
        assert_eq!(ours, official);
        assert_eq!(ours, 0.5);
        // With the true attributes, worst-group accuracy is another number.
        let groups: Vec<u32> = y.iter().zip(&a).map(|(&c, &m)| 2 * c + m).collect();
        let with_groups = split_metrics(&pred, &y, &groups, 6, 3).unwrap();
        assert_eq!(with_groups.worst_class_acc, official);
        assert_eq!(with_groups.worst_group_acc, 0.0);
    }

    #[test]
    fn criterion_names_round_trip() {
        for c in Criterion::ALL {
            assert_eq!(c.to_string().parse::<Criterion>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Criterion>(&json).unwrap(), c);
        }
        assert_eq!(
            "va_gi_wga".parse::<Criterion>().unwrap(),
            Criterion::VaGiWga
        );
        assert!(matches!(
            "wga".parse::<Criterion>(),
            Err(Error::InvalidArgument {
                name: "criterion",
                ..
            })
        ));
    }

    #[test]
    fn jsonl_round_trip_and_append() {
        use crate::io::{read_jsonl, write_jsonl, JsonlWriter};
        let path = temp_path("roundtrip.jsonl");
        let cps = vec![cp(0, 0.5, 0.2, None), cp(50, 0.75, 0.5, Some(0.25))];
        write_jsonl(&path, &cps).unwrap();
        assert_eq!(read_jsonl::<Checkpoint>(&path).unwrap(), cps);
        let mut w = JsonlWriter::append(&path).unwrap();
        w.write(&cp(100, 0.8, 0.6, None)).unwrap();
        drop(w);
        let back: Vec<Checkpoint> = read_jsonl(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].step, 100);
        assert_eq!(&back[..2], &cps[..]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn truncated_line_is_an_error_naming_path_and_line() {
        use crate::io::{read_jsonl, write_jsonl};
        let path = temp_path("truncated.jsonl");
        let cps = vec![cp(0, 0.5, 0.2, None), cp(50, 0.75, 0.5, None)];
        write_jsonl(&path, &cps).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Cut the second record in half, as a killed writer would.
        let cut = text.len() - text.lines().nth(1).unwrap().len() / 2;
        std::fs::write(&path, &text[..cut]).unwrap();
        match read_jsonl::<Checkpoint>(&path) {
            Err(e @ Error::Json { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("line 2"), "{msg}");
                assert!(msg.contains("truncated.jsonl"), "{msg}");
            }
            other => panic!("expected a Json error, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_jsonl::<Checkpoint>(&path),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn draws_are_in_range_and_seeded() {
        let space = HparamSpace::paper();
        let mut rng = Rng::new(11);
        let draws: Vec<Hparams> = (0..500).map(|_| draw(&space, &mut rng).unwrap()).collect();
        for h in &draws {
            assert!((1e-5..1e-3).contains(&h.lr), "{h:?}");
            assert!((32..128).contains(&h.batch_size), "{h:?}");
            assert!((1e-6..1e-3).contains(&h.weight_decay), "{h:?}");
            assert!(space.taus.contains(&h.tau));
            assert!((1e-3..1e-1).contains(&h.eta), "{h:?}");
            assert!(space.jtt_t_fracs.contains(&h.jtt_t));
            assert!(space.jtt_lambdas.contains(&h.jtt_lambda));
        }
        // Every choice gets drawn, and the log-uniform lr straddles its geometric midpoint.
        for tau in &space.taus {
            assert!(draws.iter().any(|h| h.tau == *tau));
        }
        let below_mid = draws.iter().filter(|h| h.lr < 1e-4).count();
        assert!((150..350).contains(&below_mid), "{below_mid}");
        let mut again = Rng::new(11);
        assert_eq!(draw(&space, &mut again).unwrap(), draws[0]);
    }

    #[test]
    fn invalid_spaces_are_rejected() {
        let mut s = HparamSpace::paper();
        s.taus.clear();
        assert!(draw(&s, &mut Rng::new(0)).is_err());
        let mut s = HparamSpace::paper();
        s.lr_log10 = (-3.0, -5.0);
        assert!(s.validate().is_err());
        let mut s = HparamSpace::paper();
        s.jtt_t_fracs = vec![1.5];
        assert!(s.validate().is_err());
        assert!(HparamSpace::paper().validate().is_ok());
    }

    #[test]
    fn jtt_steps_round_and_clamp() {
        let mut h = draw(&HparamSpace::paper(), &mut Rng::new(1)).unwrap();
        h.jtt_t = 0.2;
        assert_eq!(h.jtt_steps(1001), 200);
        h.jtt_t = 0.0001;
        assert_eq!(h.jtt_steps(1001), 1);
        h.jtt_t = 1.0;
        assert_eq!(h.jtt_steps(10), 10);
    }

    #[test]
    fn best_draw_breaks_ties_by_average_then_index() {
        assert_eq!(pick_best_draw(&[]), None);
        assert_eq!(pick_best_draw(&[(f64::NAN, 0.9)]), None);
        assert_eq!(
            pick_best_draw(&[(0.5, 0.9), (0.7, 0.1), (0.6, 1.0)]),
            Some(1)
        );
        assert_eq!(
            pick_best_draw(&[(0.7, 0.8), (0.7, 0.9), (0.7, 0.85)]),
            Some(1)
        );
        assert_eq!(
            pick_best_draw(&[(0.7, 0.9), (0.6, 1.0), (0.7, 0.9)]),
            Some(0)
        );
        assert_eq!(
            pick_best_draw(&[(f64::NAN, 1.0), (0.1, f64::NAN), (0.1, 0.0)]),
            Some(2)
        );
    }

    #[test]
    fn mean_std_known_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squares 32, sample variance 32/7.
        let m = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m.n, 8);
        assert!((m.mean - 5.0).abs() < 1e-15);
        assert!((m.std - (32.0f64 / 7.0).sqrt()).abs() < 1e-15);
        assert_eq!(
            mean_std(&[0.3]),
            MeanStd {
                mean: 0.3,
                std: 0.0,
                n: 1
            }
        );
        assert_eq!(mean_std(&[]).n, 0);
        let two = mean_std(&[1.0, 2.0]);
        assert!((two.std - 0.5f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn population_std_matches_numpy_and_the_default_stays_sample() {
        let values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        // np.std(values) == 2.0 (population); the sample std is √(32/7).
        let pop = mean_std_with(&values, Spread::Population);
        assert_eq!((pop.mean, pop.n), (5.0, 8));
        assert!((pop.std - 2.0).abs() < 1e-15);
        assert_eq!(Spread::default(), Spread::Sample);
        let sample = mean_std(&values);
        assert_eq!(sample, mean_std_with(&values, Spread::Sample));
        assert_eq!(sample.spread(Spread::Sample), sample.std);
        assert!((sample.spread(Spread::Population) - 2.0).abs() < 1e-15);
        assert!((sample.with_spread(Spread::Population).std - 2.0).abs() < 1e-15);
        assert_eq!(sample.with_spread(Spread::Population).mean, 5.0);
        // Two seeds, as the quick table: population = sample / √2.
        let two = mean_std(&[0.5, 0.7]);
        assert!((two.spread(Spread::Population) - 0.1).abs() < 1e-12);
        for small in [&[][..], &[0.3][..]] {
            assert_eq!(mean_std_with(small, Spread::Population).std, 0.0);
            assert_eq!(mean_std(small).spread(Spread::Population), 0.0);
        }
        for z in [Spread::Sample, Spread::Population] {
            assert_eq!(z.to_string().parse::<Spread>().unwrap(), z);
            assert_eq!(serde_json::to_string(&z).unwrap(), format!("\"{z}\""));
        }
        assert!("n-1".parse::<Spread>().is_err());
    }
}
