//! Feldman's per-example memorization score, estimated from models trained on random subsets
//! (PAPER.md §6, Figure 2).
//!
//! `M` models are trained, model `m` on the training examples where `member[m][i]` is true.
//! Each model is then evaluated on the **whole** training set: correctness `c_m(i)` and
//! true-label probability `p_m(i)`. For example `i`, with `IN_i = {m : member[m][i]}` and
//! `OUT_i` its complement,
//!
//! - `mem_acc(i)  = mean_{m ∈ IN_i} c_m(i) − mean_{m ∈ OUT_i} c_m(i)`,
//! - `mem_prob(i) = mean_{m ∈ IN_i} p_m(i) − mean_{m ∈ OUT_i} p_m(i)`,
//!
//! undefined (`None`) when `IN_i` or `OUT_i` is empty.
//!
//! With [`subset_masks`], every model keeps `k = round(share · n)` examples drawn uniformly
//! without replacement, so an example is left out by each model with probability `(n − k) / n ≈
//! 1 − share`, and by `M (n − k) / n ≈ M (1 − share)` models in expectation; it is never left out
//! (or never included) with probability about `share^M` (or `(1 − share)^M`).
//!
//! Reliability: the split-half check computes the scores from models `0..M/2` and `M/2..M`
//! separately and compares them over the examples both halves score: mean absolute difference
//! and Spearman rank correlation.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// What one subset model contributes: its training subset and its results on the full training
/// set, all of length `n`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRecord {
    /// `member[i]`: example `i` was in this model's training subset.
    pub member: Vec<bool>,
    /// `correct[i]`: the model predicts example `i`'s label.
    pub correct: Vec<bool>,
    /// `true_prob[i]`: the model's probability of example `i`'s label, in `[0, 1]`.
    pub true_prob: Vec<f32>,
}

/// Per-example scores and the number of models on each side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemScores {
    pub mem_acc: Vec<Option<f64>>,
    pub mem_prob: Vec<Option<f64>>,
    /// Models that trained on the example.
    pub n_in: Vec<usize>,
    /// Models that did not.
    pub n_out: Vec<usize>,
}

/// Agreement of the scores from two disjoint halves of the models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitHalf {
    /// Examples that both halves score.
    pub n_compared: usize,
    /// Mean `|score_first − score_second|`; `None` when nothing is compared.
    pub mean_abs_diff: Option<f64>,
    /// Spearman correlation of the two halves; `None` when undefined (fewer than two examples
    /// compared, or a half whose scores are all equal).
    pub spearman: Option<f64>,
}

/// The split-half check for both scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitHalfSpread {
    pub acc: SplitHalf,
    pub prob: SplitHalf,
}

/// Distribution of the scores within one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Examples of the group that have a score.
    pub count: usize,
    /// Examples of the group without a score (never in or never out).
    pub missing: usize,
    pub mean: Option<f64>,
    /// Median (mean of the two middle values for an even count).
    pub median: Option<f64>,
    /// Share of scored examples with a score strictly above 0.5.
    pub share_above_half: Option<f64>,
}

fn validate(models: &[ModelRecord]) -> Result<usize> {
    let first = models
        .first()
        .ok_or_else(|| Error::Data("mem_scores: no models".into()))?;
    let n = first.member.len();
    for (m, rec) in models.iter().enumerate() {
        for (what, len) in [
            ("membership mask", rec.member.len()),
            ("correctness", rec.correct.len()),
            ("true-label probabilities", rec.true_prob.len()),
        ] {
            if len != n {
                return Err(Error::Data(format!(
                    "mem_scores: model {m} has {len} {what} for {n} training examples"
                )));
            }
        }
        if let Some(i) = rec
            .true_prob
            .iter()
            .position(|p| !(p.is_finite() && (0.0..=1.0).contains(p)))
        {
            return Err(Error::Data(format!(
                "mem_scores: model {m}, example {i}: true-label probability {} is not in [0, 1]",
                rec.true_prob[i]
            )));
        }
    }
    Ok(n)
}

fn scores_of(models: &[ModelRecord], n: usize) -> MemScores {
    let mut n_in = vec![0usize; n];
    let mut acc_in = vec![0.0f64; n];
    let mut acc_out = vec![0.0f64; n];
    let mut prob_in = vec![0.0f64; n];
    let mut prob_out = vec![0.0f64; n];
    for rec in models {
        for i in 0..n {
            let (acc, prob) = if rec.member[i] {
                n_in[i] += 1;
                (&mut acc_in[i], &mut prob_in[i])
            } else {
                (&mut acc_out[i], &mut prob_out[i])
            };
            *acc += rec.correct[i] as u8 as f64;
            *prob += rec.true_prob[i] as f64;
        }
    }
    let n_out: Vec<usize> = n_in.iter().map(|&k| models.len() - k).collect();
    let diff = |sum_in: &[f64], sum_out: &[f64]| -> Vec<Option<f64>> {
        (0..n)
            .map(|i| {
                (n_in[i] > 0 && n_out[i] > 0)
                    .then(|| sum_in[i] / n_in[i] as f64 - sum_out[i] / n_out[i] as f64)
            })
            .collect()
    };
    MemScores {
        mem_acc: diff(&acc_in, &acc_out),
        mem_prob: diff(&prob_in, &prob_out),
        n_in,
        n_out,
    }
}

/// Memorization scores of every training example from `models` (see the module docs).
pub fn mem_scores(models: &[ModelRecord]) -> Result<MemScores> {
    let n = validate(models)?;
    Ok(scores_of(models, n))
}

fn compare_halves(a: &[Option<f64>], b: &[Option<f64>]) -> SplitHalf {
    let (xs, ys): (Vec<f64>, Vec<f64>) = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
        .unzip();
    let n = xs.len();
    let mean_abs_diff =
        (n > 0).then(|| xs.iter().zip(&ys).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64);
    let rho = spearman(&xs, &ys);
    SplitHalf {
        n_compared: n,
        mean_abs_diff,
        spearman: (!rho.is_nan()).then_some(rho),
    }
}

/// Scores from models `0..M/2` against scores from `M/2..M`. Needs at least two models.
pub fn split_half(models: &[ModelRecord]) -> Result<SplitHalfSpread> {
    let n = validate(models)?;
    if models.len() < 2 {
        return Err(Error::Data(format!(
            "split_half: needs at least 2 models, got {}",
            models.len()
        )));
    }
    let (first, second) = models.split_at(models.len() / 2);
    let a = scores_of(first, n);
    let b = scores_of(second, n);
    Ok(SplitHalfSpread {
        acc: compare_halves(&a.mem_acc, &b.mem_acc),
        prob: compare_halves(&a.mem_prob, &b.mem_prob),
    })
}

/// Ranks 1..=n, tied values sharing the average of their ranks.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: the Pearson correlation of the ranks, tied values taking the
/// average of their ranks. NaN when the lengths differ, there are fewer than two values, either
/// input holds a NaN, or either input is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let ra = average_ranks(a);
    let rb = average_ranks(b);
    let n = a.len() as f64;
    let mean = (n + 1.0) / 2.0; // the mean of any average-rank vector
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

/// Summary of `scores` per group id `0..n_groups`. Errors when the lengths differ or a group
/// id is out of range.
pub fn group_summary(
    scores: &[Option<f64>],
    groups: &[u32],
    n_groups: usize,
) -> Result<Vec<GroupSummary>> {
    if scores.len() != groups.len() {
        return Err(Error::Data(format!(
            "group_summary: {} scores for {} group ids",
            scores.len(),
            groups.len()
        )));
    }
    let mut per_group: Vec<Vec<f64>> = vec![Vec::new(); n_groups];
    let mut missing = vec![0usize; n_groups];
    for (position, (score, &g)) in scores.iter().zip(groups).enumerate() {
        let g = g as usize;
        if g >= n_groups {
            return Err(Error::IndexOutOfRange {
                op: "group_summary: group id",
                position,
                index: g,
                size: n_groups,
            });
        }
        match score {
            Some(s) => per_group[g].push(*s),
            None => missing[g] += 1,
        }
    }
    Ok(per_group
        .into_iter()
        .zip(missing)
        .map(|(mut values, missing)| {
            values.sort_by(f64::total_cmp);
            let count = values.len();
            let median = (count > 0).then(|| {
                if count % 2 == 1 {
                    values[count / 2]
                } else {
                    (values[count / 2 - 1] + values[count / 2]) / 2.0
                }
            });
            GroupSummary {
                count,
                missing,
                mean: (count > 0).then(|| values.iter().sum::<f64>() / count as f64),
                median,
                share_above_half: (count > 0)
                    .then(|| values.iter().filter(|&&v| v > 0.5).count() as f64 / count as f64),
            }
        })
        .collect())
}

/// `m` membership masks over `n` examples, each keeping `round(share · n)` examples drawn
/// uniformly without replacement (masks drawn one after another from `rng`). See the module docs
/// for how often an example is left out.
pub fn subset_masks(n: usize, m: usize, share: f64, rng: &mut Rng) -> Result<Vec<Vec<bool>>> {
    if !(0.0..=1.0).contains(&share) {
        return Err(Error::arg(
            "share",
            format!("the kept share of examples must be in [0, 1], got {share}"),
        ));
    }
    let keep = (share * n as f64).round() as usize;
    Ok((0..m)
        .map(|_| {
            let mut mask = vec![false; n];
            for i in rng.choice(n, keep) {
                mask[i] = true;
            }
            mask
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    /// Four examples, four models; each example's in/out pattern and results are set by hand.
    fn constructed() -> Vec<ModelRecord> {
        // Example 0: memorized — right whenever trained on, wrong otherwise.
        // Example 1: easy — right in every model.
        // Example 2: in every model (never left out).
        // Example 3: right in 1 of 2 "in" models, 0 of 2 "out" models.
        let member = [
            [true, false, true, true],
            [true, true, true, false],
            [false, true, true, true],
            [false, false, true, false],
        ];
        let correct = [
            [true, true, true, true],
            [true, true, true, false],
            [false, true, true, false],
            [false, true, true, false],
        ];
        let prob = [
            [0.9f32, 0.8, 0.7, 0.6],
            [0.8, 0.9, 0.9, 0.2],
            [0.1, 0.7, 0.8, 0.4],
            [0.3, 0.9, 0.6, 0.2],
        ];
        (0..4)
            .map(|m| ModelRecord {
                member: member[m].to_vec(),
                correct: correct[m].to_vec(),
                true_prob: prob[m].to_vec(),
            })
            .collect()
    }

    #[test]
    fn constructed_case_matches_hand_computation() {
        // Probabilities are stored as f32; the scores average them in f64.
        let f = |p: f32| p as f64;
        let s = mem_scores(&constructed()).unwrap();
        assert_eq!(s.n_in, vec![2, 2, 4, 2]);
        assert_eq!(s.n_out, vec![2, 2, 0, 2]);
        // Example 0: in = models 0, 1 (correct, correct); out = models 2, 3 (wrong, wrong).
        assert_close(s.mem_acc[0].unwrap(), 1.0);
        assert_close(
            s.mem_prob[0].unwrap(),
            (f(0.9) + f(0.8)) / 2.0 - (f(0.1) + f(0.3)) / 2.0,
        );
        // Example 1: in = models 1, 2, out = models 0, 3; correct everywhere, so zero accuracy
        // memorization, and a lower probability when trained on.
        assert_close(s.mem_acc[1].unwrap(), 0.0);
        assert_close(
            s.mem_prob[1].unwrap(),
            (f(0.9) + f(0.7)) / 2.0 - (f(0.8) + f(0.9)) / 2.0,
        );
        // Example 2: never left out.
        assert_eq!(s.mem_acc[2], None);
        assert_eq!(s.mem_prob[2], None);
        // Example 3: in = models 0, 2 (true, false), out = models 1, 3 (false, false).
        assert_close(s.mem_acc[3].unwrap(), 0.5);
        assert_close(
            s.mem_prob[3].unwrap(),
            (f(0.6) + f(0.4)) / 2.0 - (f(0.2) + f(0.2)) / 2.0,
        );
    }

    #[test]
    fn never_included_example_has_no_score() {
        let models = vec![
            ModelRecord {
                member: vec![false, true],
                correct: vec![true, true],
                true_prob: vec![0.5, 0.5],
            };
            3
        ];
        let s = mem_scores(&models).unwrap();
        assert_eq!(s.mem_acc, vec![None, None]);
        assert_eq!((s.n_in[0], s.n_out[0]), (0, 3));
    }

    #[test]
    fn bad_records_are_rejected() {
        assert!(mem_scores(&[]).is_err());
        let mut models = constructed();
        models[2].correct.pop();
        assert!(matches!(mem_scores(&models), Err(Error::Data(m)) if m.contains("model 2")));
        let mut models = constructed();
        models[1].true_prob[3] = 1.5;
        assert!(mem_scores(&models).is_err());
        models[1].true_prob[3] = f32::NAN;
        assert!(mem_scores(&models).is_err());
        assert!(split_half(&constructed()[..1]).is_err());
    }

    #[test]
    fn split_half_on_identical_halves_agrees_perfectly() {
        // Models 0..3 and 3..6 are copies, so the halves give identical scores.
        let half = vec![
            ModelRecord {
                member: vec![true, false, true, false, true],
                correct: vec![true, false, true, true, false],
                true_prob: vec![0.9, 0.2, 0.8, 0.7, 0.3],
            },
            ModelRecord {
                member: vec![false, true, true, false, false],
                correct: vec![false, true, true, true, false],
                true_prob: vec![0.2, 0.6, 0.9, 0.8, 0.1],
            },
            ModelRecord {
                member: vec![false, false, true, true, true],
                correct: vec![false, false, true, true, true],
                true_prob: vec![0.1, 0.3, 0.7, 0.9, 0.95],
            },
        ];
        let models: Vec<ModelRecord> = half.iter().chain(&half).cloned().collect();
        let spread = split_half(&models).unwrap();
        // Example 2 is in every model: 4 examples compared.
        assert_eq!(spread.prob.n_compared, 4);
        assert_eq!(spread.prob.mean_abs_diff, Some(0.0));
        assert_close(spread.prob.spearman.unwrap(), 1.0);
        assert_eq!(spread.acc.n_compared, 4);
        assert_eq!(spread.acc.mean_abs_diff, Some(0.0));
    }

    #[test]
    fn spearman_known_values() {
        assert_close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]),
            1.0,
        );
        assert_close(spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]), -1.0);
        // Monotone but nonlinear: still 1.
        assert_close(spearman(&[1.0, 2.0, 3.0], &[1.0, 100.0, 1e6]), 1.0);
        // No ties, d = (0, 2, -1, -1): 1 - 6·6 / (4·15) = 0.4.
        assert_close(spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 4.0, 2.0, 3.0]), 0.4);
        // Ties: a = (1, 2, 2, 3) -> ranks (1, 2.5, 2.5, 4); b ranks (1, 2, 3, 4).
        // Pearson of the ranks: cov = 4.5, var_a = 4.5, var_b = 5 -> 4.5 / sqrt(22.5).
        assert_close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]),
            4.5 / 22.5f64.sqrt(),
        );
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
        assert!(spearman(&[1.0], &[1.0]).is_nan());
        assert!(spearman(&[1.0, 2.0], &[1.0]).is_nan());
        assert!(spearman(&[1.0, f64::NAN], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]),
            vec![4.0, 1.0, 4.0, 2.0, 4.0]
        );
    }

    #[test]
    fn group_summary_known_values() {
        let scores = [
            Some(0.9),
            Some(0.1),
            None,
            Some(0.6),
            Some(0.5),
            Some(0.0),
            Some(1.0),
        ];
        let groups = [1u32, 1, 1, 1, 0, 0, 0];
        let s = group_summary(&scores, &groups, 3).unwrap();
        assert_eq!(s[0].count, 3);
        assert_eq!(s[0].missing, 0);
        assert_close(s[0].mean.unwrap(), 0.5);
        assert_close(s[0].median.unwrap(), 0.5);
        assert_close(s[0].share_above_half.unwrap(), 1.0 / 3.0);
        assert_eq!(s[1].count, 3);
        assert_eq!(s[1].missing, 1);
        assert_close(s[1].median.unwrap(), 0.6);
        assert_close(s[1].share_above_half.unwrap(), 2.0 / 3.0);
        assert_eq!(
            s[2],
            GroupSummary {
                count: 0,
                missing: 0,
                mean: None,
                median: None,
                share_above_half: None
            }
        );
        // Even count: mean of the middle two.
        let even =
            group_summary(&[Some(0.2), Some(0.8), Some(0.4), Some(0.6)], &[0; 4], 1).unwrap();
        assert_close(even[0].median.unwrap(), 0.5);
        assert!(group_summary(&[Some(0.1)], &[3], 3).is_err());
        assert!(group_summary(&[Some(0.1)], &[], 3).is_err());
    }

    #[test]
    fn subset_masks_keep_the_share_and_are_seeded() {
        let (n, m, share) = (301, 40, 0.5);
        let masks = subset_masks(n, m, share, &mut Rng::new(5)).unwrap();
        assert_eq!(masks.len(), m);
        // round(0.5 · 301) = 151 (half away from zero).
        assert!(masks.iter().all(|mask| mask.len() == n));
        assert!(masks
            .iter()
            .all(|mask| mask.iter().filter(|&&b| b).count() == 151));
        assert_eq!(masks, subset_masks(n, m, share, &mut Rng::new(5)).unwrap());
        assert_ne!(masks, subset_masks(n, m, share, &mut Rng::new(6)).unwrap());
        // Left out 40 · 150/301 ≈ 19.9 times on average; the exact mean over examples is fixed.
        let out_total: usize = (0..n)
            .map(|i| masks.iter().filter(|mask| !mask[i]).count())
            .sum();
        assert_eq!(out_total, m * (n - 151));
        // Masks differ from one another.
        assert_ne!(masks[0], masks[1]);
        for share in [-0.1, 1.1, f64::NAN] {
            assert!(subset_masks(n, m, share, &mut Rng::new(0)).is_err());
        }
        let all = subset_masks(10, 2, 1.0, &mut Rng::new(0)).unwrap();
        assert!(all.iter().flatten().all(|&b| b));
    }
}
