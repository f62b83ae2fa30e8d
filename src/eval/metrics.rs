//! Accuracy per group and per class, worst-group accuracy (PAPER.md §4).
//!
//! For predictions `ŷ_i`, labels `y_i` and group ids `g_i` over a split of `n` examples:
//! - `avg_acc = (1/n) Σ_i 1[ŷ_i = y_i]`, the plain accuracy over the split (groups are **not**
//!   weighted by their training share);
//! - `group_acc[g] = mean of 1[ŷ_i = y_i] over {i : g_i = g}`, `None` for a group with no
//!   example in the split;
//! - `worst_group_acc = min over groups present of group_acc[g]`;
//! - `class_acc` and `worst_class_acc` likewise with the label as the group.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Correct predictions and example counts per group id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    pub correct: Vec<usize>,
    pub count: Vec<usize>,
}

impl GroupAccuracy {
    /// Tallies `correct[k]` and `count[k]` for `k = keys[i]`; `keys` must be in `0..size`.
    fn tally(hits: &[bool], keys: &[u32], size: usize, op: &'static str) -> Result<Self> {
        let mut correct = vec![0usize; size];
        let mut count = vec![0usize; size];
        for (position, (&hit, &key)) in hits.iter().zip(keys).enumerate() {
            let k = key as usize;
            if k >= size {
                return Err(Error::IndexOutOfRange {
                    op,
                    position,
                    index: k,
                    size,
                });
            }
            count[k] += 1;
            correct[k] += hit as usize;
        }
        Ok(GroupAccuracy { correct, count })
    }

    /// Accuracy of group `g`, `None` when the group is empty or out of range.
    pub fn accuracy(&self, g: usize) -> Option<f64> {
        match (self.correct.get(g), self.count.get(g)) {
            (Some(&c), Some(&n)) if n > 0 => Some(c as f64 / n as f64),
            _ => None,
        }
    }

    /// Accuracy of every group, `None` for empty ones.
    pub fn accuracies(&self) -> Vec<Option<f64>> {
        (0..self.count.len()).map(|g| self.accuracy(g)).collect()
    }
}

/// Everything model selection and the tables need about one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Plain accuracy over the split.
    pub avg_acc: f64,
    /// Accuracy per group id, `None` for groups absent from the split.
    pub group_acc: Vec<Option<f64>>,
    /// Examples per group id.
    pub group_count: Vec<usize>,
    /// Minimum of `group_acc` over the groups present.
    pub worst_group_acc: f64,
    /// Minimum of `class_acc` over the classes present.
    pub worst_class_acc: f64,
    /// Accuracy per class, `None` for classes absent from the split.
    pub class_acc: Vec<Option<f64>>,
}

fn min_present(values: &[Option<f64>]) -> Option<f64> {
    values.iter().flatten().copied().reduce(f64::min)
}

/// Metrics of predictions `pred` against labels `y` with group ids `groups` in `0..n_groups`.
///
/// Errors: lengths differ, empty split, `n_groups` or `classes` zero, a group id, label or
/// prediction out of range.
pub fn split_metrics(
    pred: &[u32],
    y: &[u32],
    groups: &[u32],
    n_groups: usize,
    classes: usize,
) -> Result<SplitMetrics> {
    if pred.len() != y.len() || groups.len() != y.len() {
        return Err(Error::shape_detail(
            "split_metrics",
            &[pred.len(), y.len()],
            &[groups.len()],
            format!(
                "{} predictions, {} labels and {} group ids must agree",
                pred.len(),
                y.len(),
                groups.len()
            ),
        ));
    }
    if y.is_empty() {
        return Err(Error::Data("split_metrics: the split is empty".into()));
    }
    if n_groups == 0 {
        return Err(Error::arg("n_groups", "must be at least 1"));
    }
    if classes == 0 {
        return Err(Error::arg("classes", "must be at least 1"));
    }
    for (name, values) in [
        ("split_metrics: label", y),
        ("split_metrics: prediction", pred),
    ] {
        if let Some((row, &label)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| v as usize >= classes)
        {
            return Err(Error::LabelOutOfRange {
                op: name,
                row,
                label,
                classes,
            });
        }
    }

    let hits: Vec<bool> = pred.iter().zip(y).map(|(p, t)| p == t).collect();
    let by_group = GroupAccuracy::tally(&hits, groups, n_groups, "split_metrics: group id")?;
    let by_class = GroupAccuracy::tally(&hits, y, classes, "split_metrics: label")?;
    let group_acc = by_group.accuracies();
    let class_acc = by_class.accuracies();
    let n_correct = hits.iter().filter(|&&h| h).count();
    Ok(SplitMetrics {
        avg_acc: n_correct as f64 / y.len() as f64,
        // The split is non-empty, so at least one group and one class are present.
        worst_group_acc: min_present(&group_acc).expect("a non-empty split has a group present"),
        worst_class_acc: min_present(&class_acc).expect("a non-empty split has a class present"),
        group_acc,
        group_count: by_group.count,
        class_acc,
    })
}

/// Index of the largest value in each row of the row-major `logits` with `k` columns.
///
/// Ties go to the lowest index; NaN counts as `-inf` (a row of NaN predicts class 0). A trailing
/// partial row (when `logits.len()` is not a multiple of `k`) is ignored; `k = 0` gives no rows.
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    logits
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0usize;
            let mut best_value = f32::NEG_INFINITY;
            for (j, &v) in row.iter().enumerate() {
                let v = if v.is_nan() { f32::NEG_INFINITY } else { v };
                // Strict: an equal later value does not replace the earlier index.
                if v > best_value {
                    best = j;
                    best_value = v;
                }
            }
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_group_and_worst_group_accuracy() {
        // Groups 0..4; group 2 has no example.
        let y = [0u32, 0, 0, 1, 1, 1, 1];
        let groups = [0u32, 0, 1, 3, 3, 3, 3];
        let pred = [0u32, 0, 1, 1, 1, 1, 0];
        let m = split_metrics(&pred, &y, &groups, 4, 2).unwrap();
        assert_eq!(m.avg_acc, 5.0 / 7.0);
        assert_eq!(m.group_acc, vec![Some(1.0), Some(0.0), None, Some(0.75)]);
        assert_eq!(m.group_count, vec![2, 1, 0, 4]);
        // The empty group does not count as 0 or as anything else.
        assert_eq!(m.worst_group_acc, 0.0);
        assert_eq!(m.class_acc, vec![Some(2.0 / 3.0), Some(0.75)]);
        assert_eq!(m.worst_class_acc, 2.0 / 3.0);
    }

    #[test]
    fn worst_group_is_the_min_over_present_groups_only() {
        let y = [0u32, 1, 1, 0];
        let groups = [1u32, 1, 2, 2];
        let pred = [0u32, 0, 1, 0];
        let m = split_metrics(&pred, &y, &groups, 4, 3).unwrap();
        assert_eq!(m.group_acc, vec![None, Some(0.5), Some(1.0), None]);
        assert_eq!(m.worst_group_acc, 0.5);
        // Class 2 is absent: None, and it does not pull the worst class to 0.
        assert_eq!(m.class_acc, vec![Some(1.0), Some(0.5), None]);
        assert_eq!(m.worst_class_acc, 0.5);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            split_metrics(&[0, 1], &[0], &[0], 1, 2),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            split_metrics(&[0], &[0], &[0, 0], 1, 2),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            split_metrics(&[], &[], &[], 1, 2),
            Err(Error::Data(_))
        ));
        assert!(matches!(
            split_metrics(&[0, 1], &[0, 1], &[0, 4], 4, 2),
            Err(Error::IndexOutOfRange {
                position: 1,
                index: 4,
                size: 4,
                ..
            })
        ));
        assert!(matches!(
            split_metrics(&[0, 1], &[0, 2], &[0, 0], 1, 2),
            Err(Error::LabelOutOfRange {
                row: 1,
                label: 2,
                ..
            })
        ));
        assert!(matches!(
            split_metrics(&[3, 1], &[0, 1], &[0, 0], 1, 2),
            Err(Error::LabelOutOfRange {
                op: "split_metrics: prediction",
                ..
            })
        ));
        assert!(split_metrics(&[0], &[0], &[0], 0, 2).is_err());
    }

    #[test]
    fn metrics_round_trip_through_json() {
        let m = split_metrics(&[0, 1, 1], &[0, 1, 0], &[0, 3, 1], 4, 2).unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let back: SplitMetrics = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn argmax_ties_and_nan() {
        let logits = [
            1.0f32,
            3.0,
            3.0, // tie between 1 and 2 -> 1
            f32::NAN,
            -5.0,
            -6.0, // NaN is -inf -> 1
            f32::NAN,
            f32::NAN,
            f32::NAN, // all NaN -> 0
            2.0,
            2.0,
            2.0, // all equal -> 0
            -1.0,
            -2.0,
            f32::INFINITY, // inf wins
            0.5,           // partial trailing row, ignored
        ];
        assert_eq!(argmax_rows(&logits, 3), vec![1, 1, 0, 0, 2]);
        assert!(argmax_rows(&logits, 0).is_empty());
        assert_eq!(argmax_rows(&[0.1, 0.9, 0.4, 0.2], 2), vec![1, 0]);
    }
}
