//! MAT's logit shift (PAPER.md §2, steps 1–5), computed once over the whole training set.
//!
//! Inputs: held-out logits `h_i ∈ R^K` for each of the `n` training examples (from a model that
//! never trained on example `i`), labels `y_i ∈ 0..K`, temperature `tau > 0`.
//!
//! 1. `p(yho | x_i) = softmax(h_i / tau)`, max-subtracted so that no `exp` overflows;
//! 2. joint `P[yho, y] = (1/n) Σ_{i : y_i = y} p(yho | x_i)`, a full `K × K` matrix even when a
//!    class is absent from the labels or never predicted;
//! 3. `p(y | yho) = P[yho, y] / Σ_y' P[yho, y']`. A row of `P` that sums to zero means
//!    `p(yho | x_i) = 0` for *every* example (softmax underflow at tiny `tau`), so that row's
//!    value is multiplied by zero everywhere in step 4 and never matters; it is set to the
//!    uniform `1/K` so that every row of the conditional is a distribution;
//! 4. `p_ho(y | x_i) = Σ_yho p(yho | x_i) p(y | yho)` (an `n × K` by `K × K` product);
//! 5. `shift_i = ln(p_ho(· | x_i) + 1e-6)`.
//!
//! Everything is computed in f64 and rounded to f32 at the end. The statistics of steps 2–3 are
//! global, not per minibatch (the reference recomputes them per batch over the classes present,
//! which breaks when a class is missing from a batch).
//!
//! Memory: one `n × K` f64 buffer for step 1, two `K × K` f64 matrices, and the `n × K` f32
//! output; two passes over the logits.

use crate::error::{Error, Result};

/// Added to `p_ho` before the logarithm so that a zero probability gives a finite shift.
pub const SHIFT_EPS: f64 = 1e-6;

/// The global statistics of steps 2–3, row-major `K × K`, rows indexed by `yho`, columns by `y`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftStats {
    /// `P[yho, y]`; all entries sum to 1.
    pub joint: Vec<f64>,
    /// `p(y | yho)`; every row sums to 1 (uniform for a row of `joint` that is all zero).
    pub conditional: Vec<f64>,
}

/// MAT's shift, `n × K` row-major: `ln(p_ho(y | x_i) + 1e-6)`. See the module docs.
///
/// `heldout_logits` is `n × K` row-major with `n = labels.len()`.
///
/// ```
/// use memaware::algo::shift::mat_shift;
///
/// # fn main() -> memaware::Result<()> {
/// // Two classes; the held-out model is right on rows 0–2 and wrong on row 3.
/// let logits = [4.0, -4.0, 4.0, -4.0, -4.0, 4.0, -4.0, 4.0];
/// let labels = [0, 0, 1, 0];
/// let s = mat_shift(&logits, &labels, 2, 1.0)?;
/// // Row 3's label is unlikely under its held-out prediction: a low shift on it, so the
/// // model must fit it itself instead of leaning on the held-out explanation.
/// assert!(s[3 * 2] < s[0]);
/// # Ok(())
/// # }
/// ```
pub fn mat_shift(
    heldout_logits: &[f32],
    labels: &[u32],
    classes: usize,
    tau: f32,
) -> Result<Vec<f32>> {
    mat_shift_with_stats(heldout_logits, labels, classes, tau).map(|(shift, _)| shift)
}

/// [`mat_shift`] and the joint and conditional matrices it was built from.
pub fn mat_shift_with_stats(
    heldout_logits: &[f32],
    labels: &[u32],
    classes: usize,
    tau: f32,
) -> Result<(Vec<f32>, ShiftStats)> {
    validate(heldout_logits, labels, classes, tau)?;
    let k = classes;
    let n = labels.len();
    let tau = tau as f64;

    // Step 1: tempered softmax per row, in f64.
    let mut p_yho = vec![0.0f64; n * k];
    for (logits, probs) in heldout_logits
        .chunks_exact(k)
        .zip(p_yho.chunks_exact_mut(k))
    {
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64 / tau));
        let mut sum = 0.0;
        for (p, &h) in probs.iter_mut().zip(logits) {
            *p = (h as f64 / tau - max).exp();
            sum += *p;
        }
        // sum >= 1: the maximum contributes exp(0) = 1.
        for p in probs.iter_mut() {
            *p /= sum;
        }
    }

    // Step 2: joint over (yho, y).
    let mut joint = vec![0.0f64; k * k];
    for (probs, &y) in p_yho.chunks_exact(k).zip(labels) {
        for (yho, &p) in probs.iter().enumerate() {
            joint[yho * k + y as usize] += p;
        }
    }
    let inv_n = 1.0 / n as f64;
    for v in joint.iter_mut() {
        *v *= inv_n;
    }

    // Step 3: condition on yho, with the zero-row guard.
    let mut conditional = vec![0.0f64; k * k];
    for (row_joint, row_cond) in joint.chunks_exact(k).zip(conditional.chunks_exact_mut(k)) {
        let total: f64 = row_joint.iter().sum();
        if total > 0.0 {
            for (c, &j) in row_cond.iter_mut().zip(row_joint) {
                *c = j / total;
            }
        } else {
            row_cond.fill(1.0 / k as f64);
        }
    }

    // Steps 4–5: mix the conditional rows by p(yho | x_i), then take the log.
    let mut shift = vec![0.0f32; n * k];
    let mut p_ho = vec![0.0f64; k];
    for (probs, out) in p_yho.chunks_exact(k).zip(shift.chunks_exact_mut(k)) {
        p_ho.fill(0.0);
        for (&p, row_cond) in probs.iter().zip(conditional.chunks_exact(k)) {
            if p == 0.0 {
                continue;
            }
            for (acc, &c) in p_ho.iter_mut().zip(row_cond) {
                *acc += p * c;
            }
        }
        for (o, &p) in out.iter_mut().zip(&p_ho) {
            *o = (p + SHIFT_EPS).ln() as f32;
        }
    }

    Ok((shift, ShiftStats { joint, conditional }))
}

fn validate(heldout_logits: &[f32], labels: &[u32], classes: usize, tau: f32) -> Result<()> {
    if classes < 2 {
        return Err(Error::arg(
            "classes",
            format!("mat_shift needs at least 2 classes, got {classes}"),
        ));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(Error::arg(
            "tau",
            format!("the temperature must be positive and finite, got {tau}"),
        ));
    }
    let n = labels.len();
    if n == 0 {
        return Err(Error::Data(
            "mat_shift: the training set is empty (no labels)".into(),
        ));
    }
    if heldout_logits.len() != n * classes {
        return Err(Error::shape_detail(
            "mat_shift",
            &[heldout_logits.len()],
            &[n, classes],
            format!(
                "{} held-out logits for {n} labels × {classes} classes",
                heldout_logits.len()
            ),
        ));
    }
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= classes)
    {
        return Err(Error::LabelOutOfRange {
            op: "mat_shift",
            row,
            label,
            classes,
        });
    }
    if let Some(i) = heldout_logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            op: "mat_shift",
            what: format!(
                "held-out logit {} at row {}, class {}",
                heldout_logits[i],
                i / classes,
                i % classes
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits that make `softmax(h / tau)` exactly one-hot in f64 (exp(-1000) underflows to 0).
    fn one_hot_logits(predicted: &[u32], k: usize) -> Vec<f32> {
        let mut h = vec![-50.0f32; predicted.len() * k];
        for (i, &p) in predicted.iter().enumerate() {
            h[i * k + p as usize] = 50.0;
        }
        h
    }

    fn assert_close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tolerance {tol})");
    }

    #[test]
    fn one_hot_predictions_give_log_of_the_confusion_conditional() {
        // Held-out predictions and labels, K = 3:
        //   yho = 0 on labels 0, 0, 1  -> p(y | yho=0) = (2/3, 1/3, 0)
        //   yho = 1 on labels 1, 1     -> p(y | yho=1) = (0, 1, 0)
        //   yho = 2 on label 2         -> p(y | yho=2) = (0, 0, 1)
        let predicted = [0u32, 0, 0, 1, 1, 2];
        let labels = [0u32, 0, 1, 1, 1, 2];
        let k = 3;
        let by_hand = [
            [2.0 / 3.0, 1.0 / 3.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ];
        let (shift, stats) =
            mat_shift_with_stats(&one_hot_logits(&predicted, k), &labels, k, 0.1).unwrap();
        for (i, &p) in predicted.iter().enumerate() {
            for y in 0..k {
                let expected = (by_hand[p as usize][y] + 1e-6f64).ln();
                assert_close(shift[i * k + y] as f64, expected, 1e-6);
            }
        }
        // The joint is the normalised confusion count table.
        let counts = [[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]];
        for yho in 0..k {
            for y in 0..k {
                assert_close(stats.joint[yho * k + y], counts[yho][y] / 6.0, 1e-15);
                assert_close(stats.conditional[yho * k + y], by_hand[yho][y], 1e-15);
            }
        }
    }

    #[test]
    fn tiny_tau_with_moderate_logits_stays_finite() {
        let logits = [
            0.3f32, -2.0, 2.5, 1.0, 1.2, -0.7, -3.0, 0.0, 0.1, 2.9, 2.8, -1.0,
        ];
        let labels = [0u32, 1, 1, 2];
        let shift = mat_shift(&logits, &labels, 3, 0.001).unwrap();
        assert_eq!(shift.len(), 12);
        assert!(shift.iter().all(|v| v.is_finite()), "{shift:?}");
        // Nothing is below ln(1e-6) and nothing above ln(1 + 1e-6).
        for &v in &shift {
            assert!(v as f64 >= (1e-6f64).ln() - 1e-5 && v as f64 <= 1e-5);
        }
    }

    #[test]
    fn class_never_predicted_keeps_a_full_square_with_a_uniform_row() {
        // Class 2 exists in the labels but is never the held-out prediction.
        let predicted = [0u32, 1, 0, 1, 1];
        let labels = [0u32, 1, 2, 2, 1];
        let k = 3;
        let (shift, stats) =
            mat_shift_with_stats(&one_hot_logits(&predicted, k), &labels, k, 0.01).unwrap();
        assert_eq!(stats.joint.len(), k * k);
        assert_eq!(stats.conditional.len(), k * k);
        assert!(stats.joint[2 * k..3 * k].iter().all(|&v| v == 0.0));
        assert!(stats.conditional[2 * k..3 * k]
            .iter()
            .all(|&v| v == 1.0 / 3.0));
        // Row yho = 0 saw labels 0 and 2: p(y | yho=0) = (1/2, 0, 1/2).
        assert_close(shift[0] as f64, (0.5f64 + 1e-6).ln(), 1e-6);
        assert_close(shift[1] as f64, (1e-6f64).ln(), 1e-5);
        assert_close(shift[2] as f64, (0.5f64 + 1e-6).ln(), 1e-6);
    }

    #[test]
    fn class_absent_from_labels_gets_the_floor() {
        let predicted = [0u32, 1, 1, 0];
        let labels = [0u32, 1, 1, 0];
        let k = 3;
        let (shift, stats) =
            mat_shift_with_stats(&one_hot_logits(&predicted, k), &labels, k, 0.1).unwrap();
        assert!((0..k).all(|yho| stats.joint[yho * k + 2] == 0.0));
        for i in 0..4 {
            assert_close(shift[i * k + 2] as f64, (1e-6f64).ln(), 1e-5);
        }
    }

    #[test]
    fn rows_are_distributions_after_removing_the_floor() {
        let logits = [
            0.2f32, -1.0, 0.4, 1.5, 0.0, 0.3, -0.2, 2.0, 0.9, 0.1, 0.1, 0.1, 3.0, -3.0, 0.5,
        ];
        let labels = [0u32, 2, 1, 0, 2];
        let (shift, stats) = mat_shift_with_stats(&logits, &labels, 3, 0.5).unwrap();
        for row in shift.chunks_exact(3) {
            let total: f64 = row.iter().map(|&s| (s as f64).exp() - 1e-6).sum();
            assert_close(total, 1.0, 1e-6);
        }
        assert_close(stats.joint.iter().sum::<f64>(), 1.0, 1e-12);
        for row in stats.conditional.chunks_exact(3) {
            assert_close(row.iter().sum::<f64>(), 1.0, 1e-12);
        }
    }

    #[test]
    fn flat_held_out_predictions_give_the_class_prior() {
        // With tau huge, p(yho | x) is uniform, so p_ho(y | x) = n_y / n for every example.
        let logits = [1.0f32, -1.0, 0.5, 0.0, 2.0, -2.0, 0.3, 0.7];
        let labels = [0u32, 1, 1, 1];
        let shift = mat_shift(&logits, &labels, 2, 1e9).unwrap();
        for row in shift.chunks_exact(2) {
            assert_close(row[0] as f64, (0.25f64 + 1e-6).ln(), 1e-6);
            assert_close(row[1] as f64, (0.75f64 + 1e-6).ln(), 1e-6);
        }
    }

    #[test]
    fn invariant_to_a_constant_added_to_a_row() {
        let logits = [0.5f32, -0.5, 1.0, 0.0, -1.0, 2.0];
        let labels = [0u32, 1, 1];
        let mut moved = logits;
        moved[2] += 1000.0;
        moved[3] += 1000.0;
        let a = mat_shift(&logits, &labels, 2, 0.1).unwrap();
        let b = mat_shift(&moved, &labels, 2, 0.1).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_close(*x as f64, *y as f64, 1e-5);
        }
    }

    #[test]
    fn bad_inputs_are_rejected_with_named_errors() {
        let logits = [0.0f32; 6];
        let labels = [0u32, 1, 0];
        assert!(matches!(
            mat_shift(&logits[..5], &labels, 2, 0.1),
            Err(Error::ShapeMismatch {
                op: "mat_shift",
                ..
            })
        ));
        assert!(matches!(
            mat_shift(&logits[..3], &labels, 1, 0.1),
            Err(Error::InvalidArgument {
                name: "classes",
                ..
            })
        ));
        assert!(matches!(
            mat_shift(&logits, &[0, 2, 0], 2, 0.1),
            Err(Error::LabelOutOfRange {
                row: 1,
                label: 2,
                ..
            })
        ));
        for tau in [0.0f32, -0.1, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                mat_shift(&logits, &labels, 2, tau),
                Err(Error::InvalidArgument { name: "tau", .. })
            ));
        }
        let mut bad = logits;
        bad[3] = f32::NAN;
        match mat_shift(&bad, &labels, 2, 0.1) {
            Err(Error::NonFinite { op, what }) => {
                assert_eq!(op, "mat_shift");
                assert!(what.contains("row 1"), "{what}");
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(matches!(mat_shift(&[], &[], 2, 0.1), Err(Error::Data(_))));
    }
}
