//! The fused shifted softmax-cross-entropy against the composite it replaces
//! (`z + s → log_softmax → gather → weighting → reduction`), against an f64 reference at
//! logits of ±1e4, and on bad input.
//!
//! Both paths evaluate the same f32 formula per row (`lse = max + ln Σ exp(u - max)`), with
//! sums that may associate differently. Losses are sums of non-negative terms, so they must
//! agree to 1e-5 relative to the largest compared value (a few f32 roundings over up to 1000
//! classes). A gradient entry is `scale·w_i·(p_ij - [j = y_i])` with `p` a probability
//! computed to a few ulps of 1, and `p_y - 1` cancels: its error is absolute, so gradients
//! must agree to `8·ε_f32·scale·max w·max proj` (ε_f32 = 2^-23).

use memaware::{Device, Error, Indices, Reduction, Result, Rng, Tensor};

/// Losses: `|a - b| ≤ REL · max|b|`.
const REL: f32 = 1e-5;

fn tensor(values: Vec<f32>, shape: impl Into<memaware::Shape>) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).expect("test tensor: values match the shape")
}

fn labels(values: Vec<u32>) -> Indices {
    Indices::new(values, &Device::Cpu).expect("indices on the CPU")
}

/// Reference: composed from primitive ops, each with its own backward rule.
fn composite(
    z: &Tensor,
    y: &Indices,
    shift: Option<&Tensor>,
    weights: Option<&Tensor>,
    reduction: Reduction,
) -> Result<Tensor> {
    let u = match shift {
        Some(s) => z.broadcast_add(s)?,
        None => z.clone(),
    };
    let picked = u.log_softmax()?.gather(y)?;
    let per_row = match weights {
        Some(w) => picked.mul(w)?,
        None => picked,
    }
    .neg()?;
    match reduction {
        Reduction::None => Ok(per_row),
        Reduction::Mean => per_row.mean_all(),
        Reduction::Sum => per_row.sum_all(),
        Reduction::WeightedMean => {
            let w = weights.expect("WeightedMean is only exercised with weights");
            per_row.sum_all()?.div(&w.sum_all()?)
        }
    }
}

/// The loss value and `∂(Σ proj ⊙ loss)/∂z` (a projection makes a per-row loss scalar).
fn value_and_grad(
    z: &Tensor,
    proj: &Tensor,
    loss_fn: impl Fn(&Tensor) -> Result<Tensor>,
) -> (Vec<f32>, Vec<f32>) {
    let zv = z.copy().unwrap().variable();
    let loss = loss_fn(&zv).unwrap();
    let value = loss.to_vec().unwrap();
    let scalar = if loss.rank() == 0 {
        loss
    } else {
        loss.mul(proj).unwrap().sum_all().unwrap()
    };
    let grads = scalar.backward().unwrap();
    let g = grads.require(&zv).unwrap().to_vec().unwrap();
    (value, g)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        assert!(
            (g - w).abs() <= atol,
            "{what}: element {i}: fused {g} vs reference {w} (allowed {atol})"
        );
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn reductions(weighted: bool) -> Vec<Reduction> {
    let mut r = vec![Reduction::None, Reduction::Mean, Reduction::Sum];
    if weighted {
        r.push(Reduction::WeightedMean);
    }
    r
}

/// Every combination of shift, weights and reduction at `n × c`.
fn compare_with_composite(n: usize, c: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let z = tensor(
        rng.normal_vec(n * c).iter().map(|v| 3.0 * v).collect(),
        (n, c),
    );
    let s = tensor(rng.normal_vec(n * c), (n, c));
    let w_host = rng.uniform_vec(n, 0.1, 2.0);
    let w = tensor(w_host.clone(), n);
    let y = labels((0..n).map(|_| rng.below(c as u64) as u32).collect());
    let proj_host = rng.uniform_vec(n, 0.5, 1.5);
    let proj = tensor(proj_host.clone(), n);
    for shift in [None, Some(&s)] {
        for weights in [None, Some(&w)] {
            for r in reductions(weights.is_some()) {
                let what = format!(
                    "N={n} C={c} shift={} weights={} {r:?}",
                    shift.is_some(),
                    weights.is_some()
                );
                let (fv, fg) = value_and_grad(&z, &proj, |z| {
                    z.shifted_cross_entropy(&y, shift, weights, r)
                });
                let (cv, cg) = value_and_grad(&z, &proj, |z| composite(z, &y, shift, weights, r));
                assert_close(&format!("{what}: value"), &fv, &cv, REL * max_abs(&cv));
                let w_max = weights.map_or(1.0, |_| max_abs(&w_host));
                let scale = match r {
                    Reduction::None | Reduction::Sum => 1.0,
                    Reduction::Mean => 1.0 / n as f32,
                    Reduction::WeightedMean => 1.0 / w_host.iter().sum::<f32>(),
                };
                let grad_tol = 8.0 * f32::EPSILON * scale * w_max * max_abs(&proj_host);
                assert_close(&format!("{what}: gradient"), &fg, &cg, grad_tol);
            }
        }
    }
}

#[test]
fn fused_equals_composite_c2() {
    // 16384 × 2 = 2^15 elements: the row-parallel path.
    for (i, n) in [1, 7, 64, 16384].into_iter().enumerate() {
        compare_with_composite(n, 2, 100 + i as u64);
    }
}

#[test]
fn fused_equals_composite_c3() {
    for (i, n) in [1, 5, 64, 12000].into_iter().enumerate() {
        compare_with_composite(n, 3, 200 + i as u64);
    }
}

#[test]
fn fused_equals_composite_c10() {
    // 4096 × 10 ≥ 2^15: parallel.
    for (i, n) in [1, 9, 64, 4096].into_iter().enumerate() {
        compare_with_composite(n, 10, 300 + i as u64);
    }
}

#[test]
fn fused_equals_composite_c1000() {
    // 40 × 1000 ≥ 2^15: parallel.
    for (i, n) in [1, 3, 40].into_iter().enumerate() {
        compare_with_composite(n, 1000, 400 + i as u64);
    }
}

/// Per-row loss `w·(lse(u) - u_y)` and gradient `scale·w·(softmax(u) - onehot(y))` in f64.
fn reference_f64(u: &[f64], y: &[u32], w: &[f64], c: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let mut losses = Vec::new();
    let mut grad = Vec::new();
    for (i, row) in u.chunks(c).enumerate() {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let yi = y[i] as usize;
        losses.push(w[i] * (lse - row[yi]));
        for (j, v) in row.iter().enumerate() {
            let onehot = if j == yi { 1.0 } else { 0.0 };
            grad.push(scale * w[i] * ((v - lse).exp() - onehot));
        }
    }
    (losses, grad)
}

#[test]
fn finite_and_correct_at_logits_of_1e4() {
    let (n, c) = (6, 5);
    // Rows mix ±1e4 with near-ties (so some probabilities are far from 0 and 1) and labels on
    // the largest, a middling and the smallest logit.
    #[rustfmt::skip]
    let z: Vec<f32> = vec![
        1e4, 1e4 - 1.0, -1e4, 0.0, -1e4 + 2.0,
        -1e4, -1e4, -1e4 + 0.5, -1e4 + 3.0, -1e4,
        1e4, -1e4, 1e4, 1e4 - 2.0, 0.0,
        -1e4, 1e4, -1e4, 1e4, -1e4,
        1e4, 1e4, 1e4, 1e4, 1e4,
        -1e4, -1e4 + 1.0, 1e4 - 0.5, 1e4, 5.0,
    ];
    let y: Vec<u32> = vec![0, 3, 1, 4, 2, 2];
    let mut rng = Rng::new(7);
    let s: Vec<f32> = rng.normal_vec(n * c).iter().map(|v| 2.0 * v).collect();
    let w: Vec<f32> = rng.uniform_vec(n, 0.5, 2.0);
    let zt = tensor(z.clone(), (n, c));
    let st = tensor(s.clone(), (n, c));
    let wt = tensor(w.clone(), n);
    let yt = labels(y.clone());
    let proj = tensor(vec![1.0; n], n);
    for with_shift in [false, true] {
        for with_weights in [false, true] {
            for r in reductions(with_weights) {
                let what = format!("±1e4 shift={with_shift} weights={with_weights} {r:?}");
                let shift = with_shift.then_some(&st);
                let weights = with_weights.then_some(&wt);
                let (value, grad) = value_and_grad(&zt, &proj, |z| {
                    z.shifted_cross_entropy(&yt, shift, weights, r)
                });
                let u: Vec<f64> = z
                    .iter()
                    .zip(&s)
                    .map(|(&a, &b)| a as f64 + if with_shift { b as f64 } else { 0.0 })
                    .collect();
                let w64: Vec<f64> = if with_weights {
                    w.iter().map(|&v| v as f64).collect()
                } else {
                    vec![1.0; n]
                };
                let scale = match r {
                    Reduction::None | Reduction::Sum => 1.0,
                    Reduction::Mean => 1.0 / n as f64,
                    Reduction::WeightedMean => 1.0 / w64.iter().sum::<f64>(),
                };
                let (ref_losses, ref_grad) = reference_f64(&u, &y, &w64, c, scale);
                // f32 represents numbers near 1e4 to ±ε·1e4 ≈ 1.2e-3: u = z + s, the max and
                // lse each round once, so the loss is good to a few of those, and
                // exp(u - lse) to a relative few times 1e-3.
                let ulp_1e4 = (f32::EPSILON * 1e4) as f64;
                let w_max = w64.iter().copied().fold(0.0, f64::max);
                let want_value: Vec<f64> = match r {
                    Reduction::None => ref_losses.clone(),
                    _ => vec![ref_losses.iter().sum::<f64>() * scale],
                };
                let value_tol = match r {
                    Reduction::None => 4.0 * ulp_1e4 * w_max,
                    _ => 4.0 * ulp_1e4 * w_max * n as f64 * scale,
                };
                for (got, want) in value.iter().zip(&want_value) {
                    assert!(got.is_finite(), "{what}: loss {got}");
                    let err = (*got as f64 - want).abs();
                    // Plus f32 rounding of a total up to ~2e4.
                    let tol = value_tol + 4.0 * f32::EPSILON as f64 * want.abs();
                    assert!(
                        err <= tol,
                        "{what}: loss {got} vs f64 {want} (error {err}, allowed {tol})"
                    );
                }
                let grad_tol = 4.0 * ulp_1e4 * w_max * scale;
                for (i, (got, want)) in grad.iter().zip(&ref_grad).enumerate() {
                    assert!(got.is_finite(), "{what}: gradient element {i} is {got}");
                    let err = (*got as f64 - want).abs();
                    assert!(
                        err <= grad_tol,
                        "{what}: gradient element {i}: {got} vs f64 {want} (allowed {grad_tol})"
                    );
                }
            }
        }
    }
}

#[test]
fn gradient_rows_sum_to_zero() {
    // Σ_j scale·w_i·(p_ij - [j = y_i]) = scale·w_i·(1 - 1) = 0 for every row.
    let (n, c) = (4096, 10);
    let mut rng = Rng::new(11);
    let z = tensor(
        rng.normal_vec(n * c).iter().map(|v| 4.0 * v).collect(),
        (n, c),
    );
    let s = tensor(rng.normal_vec(n * c), (n, c));
    let w: Vec<f32> = rng.uniform_vec(n, 0.1, 3.0);
    let wt = tensor(w.clone(), n);
    let y = labels((0..n).map(|_| rng.below(c as u64) as u32).collect());
    let proj = tensor(vec![1.0; n], n);
    for r in reductions(true) {
        let (_, g) = value_and_grad(&z, &proj, |z| {
            z.shifted_cross_entropy(&y, Some(&s), Some(&wt), r)
        });
        let scale = match r {
            Reduction::None | Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / n as f32,
            Reduction::WeightedMean => 1.0 / w.iter().sum::<f32>(),
        };
        for (i, row) in g.chunks(c).enumerate() {
            let sum: f32 = row.iter().sum();
            // C terms of magnitude ≤ scale·w_i, each rounded once, then summed.
            let tol = 4.0 * c as f32 * f32::EPSILON * scale * w[i];
            assert!(
                sum.abs() <= tol,
                "{r:?}: row {i} sums to {sum} (allowed {tol})"
            );
            // The label's entry carries the -scale·w_i·(1 - p_y) that balances the rest.
            let yi = y.to_vec().unwrap()[i] as usize;
            assert!(
                row[yi] < 0.0 && row[yi] >= -scale * w[i] * (1.0 + 1e-6),
                "{r:?}: row {i}"
            );
        }
    }
}

#[test]
fn label_out_of_range_is_an_error() {
    let z = tensor(vec![0.0; 6], (2, 3));
    for bad in [3u32, 7, u32::MAX] {
        let y = labels(vec![0, bad]);
        for r in reductions(false) {
            match z.shifted_cross_entropy(&y, None, None, r) {
                Err(Error::LabelOutOfRange {
                    op,
                    row,
                    label,
                    classes,
                }) => {
                    assert_eq!(op, "shifted_cross_entropy");
                    assert_eq!((row, label, classes), (1, bad, 3));
                }
                other => panic!("label {bad}, {r:?}: expected LabelOutOfRange, got {other:?}"),
            }
        }
    }
    // The first bad row is named, at the paper's class counts and past the first block.
    for c in [2usize, 3, 17] {
        let z = tensor(vec![0.5; 100 * c], (100, c));
        let mut y: Vec<u32> = (0..100).map(|i| (i % c) as u32).collect();
        y[70] = c as u32;
        y[40] = 99;
        match z
            .variable()
            .shifted_cross_entropy(&labels(y), None, None, Reduction::Mean)
        {
            Err(Error::LabelOutOfRange { row, label, .. }) => assert_eq!((row, label), (40, 99)),
            other => panic!("C={c}: expected LabelOutOfRange, got {other:?}"),
        }
    }
    // The same with gradients being recorded.
    let zv = z.variable();
    let err = zv
        .shifted_cross_entropy(&labels(vec![3, 0]), None, None, Reduction::Mean)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                row: 0,
                label: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn non_finite_inputs_are_an_error_naming_the_op() {
    let y = labels(vec![0, 1]);
    let finite = tensor(vec![0.5, -1.0, 2.0, 0.0, 1.0, -2.0], (2, 3));
    let poisoned = |v: f32| tensor(vec![0.5, -1.0, 2.0, 0.0, v, -2.0], (2, 3));
    let cases = [
        ("NaN logit", poisoned(f32::NAN), None),
        ("+inf logit", poisoned(f32::INFINITY), None),
        ("NaN shift", finite.clone(), Some(poisoned(f32::NAN))),
    ];
    for (what, z, shift) in cases {
        for r in reductions(false) {
            for track in [false, true] {
                let z = if track { z.variable() } else { z.clone() };
                let err = z
                    .shifted_cross_entropy(&y, shift.as_ref(), None, r)
                    .expect_err(what);
                assert!(
                    matches!(
                        err,
                        Error::NonFinite {
                            op: "shifted_cross_entropy",
                            ..
                        }
                    ),
                    "{what} {r:?}: {err:?}"
                );
                assert!(err.to_string().contains("shifted_cross_entropy"), "{err}");
            }
        }
    }
}

#[test]
fn weighted_mean_needs_weights() {
    let z = tensor(vec![0.0; 4], (2, 2));
    let err = z
        .shifted_cross_entropy(&labels(vec![0, 1]), None, None, Reduction::WeightedMean)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

/// The fused linear + cross-entropy op equals `x·Wᵀ + b → shifted_cross_entropy` in loss,
/// logits and the gradients of W and b, at sizes that take its parallel path.
#[test]
fn logits_beside_the_fused_loss_are_those_of_a_separate_product() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(32);
    // Up to 4 extra rows, or d ≥ 512: where the separate product takes the dot-product path.
    for &(n, d, c, e) in &[
        (5usize, 7usize, 2usize, 2usize),
        (1000, 1800, 2, 2),
        (333, 129, 3, 4),
        (65, 600, 2, 9),
    ] {
        let x = Tensor::randn(&mut rng, (n, d), 1.0, &dev).unwrap();
        let w = Tensor::randn(&mut rng, (c, d), 0.05, &dev)
            .unwrap()
            .variable();
        let other = Tensor::randn(&mut rng, (e, d), 0.05, &dev).unwrap();
        let other_b = Tensor::randn(&mut rng, e, 0.1, &dev).unwrap();
        let y = Indices::new((0..n).map(|i| (i * 5 % c) as u32).collect(), &dev).unwrap();
        let wt = Tensor::from_vec(rng.uniform_vec(n, 0.2, 2.0), n, &dev).unwrap();
        for other_bias in [None, Some(&other_b)] {
            let (loss, logits, also) = x
                .linear_shifted_cross_entropy_beside(
                    &w,
                    None,
                    &y,
                    None,
                    Some(&wt),
                    Reduction::Sum,
                    &other,
                    other_bias,
                )
                .unwrap();
            let (alone, alone_logits) = x
                .linear_shifted_cross_entropy(&w, None, &y, None, Some(&wt), Reduction::Sum)
                .unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            assert_eq!(bits(&loss), bits(&alone));
            assert_eq!(bits(&logits), bits(&alone_logits));
            let g = loss.backward().unwrap().get(&w).unwrap().to_vec().unwrap();
            let g_alone = alone.backward().unwrap().get(&w).unwrap().to_vec().unwrap();
            assert_eq!(g, g_alone);
            let mut want = x.matmul_t(&other).unwrap();
            if let Some(b) = other_bias {
                want = want.broadcast_add(b).unwrap();
            }
            assert_eq!(also.dims(), [n, e]);
            let differ = bits(&also)
                .iter()
                .zip(bits(&want))
                .filter(|(a, b)| **a != *b)
                .count();
            assert_eq!(differ, 0, "n {n}, d {d}, c {c}, e {e}: values that differ");
        }
    }
    let x = Tensor::zeros((3, 4), &dev).unwrap();
    let w = Tensor::zeros((2, 4), &dev).unwrap().variable();
    let y = Indices::new(vec![0, 1, 1], &dev).unwrap();
    let wrong = Tensor::zeros((2, 5), &dev).unwrap();
    assert!(matches!(
        x.linear_shifted_cross_entropy_beside(
            &w,
            None,
            &y,
            None,
            None,
            Reduction::Mean,
            &wrong,
            None
        ),
        Err(memaware::Error::ShapeMismatch { .. })
    ));
}

#[test]
fn fused_linear_cross_entropy_equals_the_composite() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(31);
    for &(n, d, c) in &[(5usize, 7usize, 2usize), (1000, 1800, 2), (333, 129, 4)] {
        let x = Tensor::randn(&mut rng, (n, d), 1.0, &dev).unwrap();
        let w = Tensor::randn(&mut rng, (c, d), 0.05, &dev)
            .unwrap()
            .variable();
        let b = Tensor::randn(&mut rng, c, 0.1, &dev).unwrap().variable();
        let y = Indices::new((0..n).map(|i| (i * 7 % c) as u32).collect(), &dev).unwrap();
        let s = Tensor::randn(&mut rng, (n, c), 1.0, &dev).unwrap();
        let wt = Tensor::from_vec(rng.uniform_vec(n, 0.2, 2.0), n, &dev).unwrap();
        for (shift, weights, r) in [
            (Some(&s), None, Reduction::Mean),
            (None, Some(&wt), Reduction::Mean),
            (Some(&s), Some(&wt), Reduction::Sum),
            (None, Some(&wt), Reduction::WeightedMean),
        ] {
            let (loss, logits) = x
                .linear_shifted_cross_entropy(&w, Some(&b), &y, shift, weights, r)
                .unwrap();
            let g = loss.backward().unwrap();
            let z = x.matmul_t(&w).unwrap().broadcast_add(&b).unwrap();
            let reference = z.shifted_cross_entropy(&y, shift, weights, r).unwrap();
            let gr = reference.backward().unwrap();
            let close = |a: &[f32], b: &[f32], what: &str| {
                let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let den: f64 = b
                    .iter()
                    .map(|y| (*y as f64).powi(2))
                    .sum::<f64>()
                    .max(1e-30);
                assert!(
                    (num / den).sqrt() < 1e-5,
                    "{what} (n {n}, d {d}, c {c}, {r:?}, weights {}): {}",
                    weights.is_some(),
                    (num / den).sqrt()
                );
            };
            close(
                &[loss.to_scalar().unwrap()],
                &[reference.to_scalar().unwrap()],
                "loss",
            );
            close(&logits.to_vec().unwrap(), &z.to_vec().unwrap(), "logits");
            close(
                &g.get(&w).unwrap().to_vec().unwrap(),
                &gr.get(&w).unwrap().to_vec().unwrap(),
                "dW",
            );
            close(
                &g.get(&b).unwrap().to_vec().unwrap(),
                &gr.get(&b).unwrap().to_vec().unwrap(),
                "db",
            );
        }
    }
    // A label out of range is a typed error on the fused path too.
    let x = Tensor::zeros((3, 4), &dev).unwrap();
    let w = Tensor::zeros((2, 4), &dev).unwrap().variable();
    let y = Indices::new(vec![0, 2, 1], &dev).unwrap();
    let err = x
        .linear_shifted_cross_entropy(&w, None, &y, None, None, Reduction::Mean)
        .unwrap_err();
    assert!(
        matches!(err, memaware::Error::LabelOutOfRange { .. }),
        "{err}"
    );
}

#[test]
fn fused_linear_op_above_the_fused_kernel_has_the_bits_of_autograd() {
    // More classes than the CPU's fused kernel takes: the backend composes the op from its
    // primitives in autograd's order, so every bit matches the graph's.
    let dev = Device::Cpu;
    let mut rng = Rng::new(33);
    for &(n, d, c) in &[(70usize, 40usize, 6usize), (300, 600, 10)] {
        let x = Tensor::randn(&mut rng, (n, d), 1.0, &dev).unwrap();
        let w = Tensor::randn(&mut rng, (c, d), 0.05, &dev)
            .unwrap()
            .variable();
        let b = Tensor::randn(&mut rng, c, 0.1, &dev).unwrap().variable();
        let other = Tensor::randn(&mut rng, (3, d), 0.05, &dev).unwrap();
        let y = Indices::new((0..n).map(|i| (i * 7 % c) as u32).collect(), &dev).unwrap();
        let s = Tensor::randn(&mut rng, (n, c), 1.0, &dev).unwrap();
        let wt = Tensor::from_vec(rng.uniform_vec(n, 0.2, 2.0), n, &dev).unwrap();
        let bits =
            |t: &Tensor| -> Vec<u32> { t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect() };
        for (shift, weights, r) in [
            (Some(&s), None, Reduction::Mean),
            (None, Some(&wt), Reduction::Sum),
            (Some(&s), Some(&wt), Reduction::WeightedMean),
        ] {
            let (loss, logits, also) = x
                .linear_shifted_cross_entropy_beside(
                    &w,
                    Some(&b),
                    &y,
                    shift,
                    weights,
                    r,
                    &other,
                    None,
                )
                .unwrap();
            let g = loss.backward().unwrap();
            let z = x.matmul_t(&w).unwrap().broadcast_add(&b).unwrap();
            let reference = z.shifted_cross_entropy(&y, shift, weights, r).unwrap();
            let gr = reference.backward().unwrap();
            assert_eq!(bits(&loss), bits(&reference), "loss, c {c}, {r:?}");
            assert_eq!(bits(&logits), bits(&z), "logits, c {c}");
            assert_eq!(bits(&also), bits(&x.matmul_t(&other).unwrap()), "beside");
            for p in [&w, &b] {
                assert_eq!(
                    bits(g.get(p).unwrap()),
                    bits(gr.get(p).unwrap()),
                    "gradient, c {c}, {r:?}"
                );
            }
        }
    }
}

#[test]
fn linear_predictions_have_the_bits_of_each_map_alone() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(34);
    // d = 600 stacks up to 64 columns per product, d = 100 up to 4.
    for &(n, d) in &[(257usize, 600usize), (90, 100)] {
        let x = Tensor::randn(&mut rng, (n, d), 1.0, &dev).unwrap();
        for k in [2usize, 3] {
            for with_bias in [false, true] {
                // Weights near zero make near-ties, where any change of rounding would show.
                let maps: Vec<(Vec<f32>, Option<Vec<f32>>)> = (0..40)
                    .map(|_| {
                        let w = rng.uniform_vec(k * d, -1e-3, 1e-3);
                        (w, with_bias.then(|| rng.uniform_vec(k, -1e-3, 1e-3)))
                    })
                    .collect();
                let refs: Vec<(&[f32], Option<&[f32]>)> =
                    maps.iter().map(|(w, b)| (&w[..], b.as_deref())).collect();
                let all = x.linear_predictions(&refs, k).unwrap();
                assert_eq!(all.len(), maps.len());
                for ((w, b), got) in maps.iter().zip(&all) {
                    let w = Tensor::from_vec(w.clone(), (k, d), &dev).unwrap();
                    let mut z = x.matmul_t(&w).unwrap();
                    if let Some(b) = b {
                        z = z
                            .broadcast_add(&Tensor::from_vec(b.clone(), k, &dev).unwrap())
                            .unwrap();
                    }
                    assert_eq!(
                        got,
                        &z.argmax_rows().unwrap().to_vec().unwrap(),
                        "d {d}, k {k}"
                    );
                }
            }
        }
    }
    let x = Tensor::zeros((3, 4), &dev).unwrap();
    let w = [0.0f32; 8];
    let b = [0.0f32; 2];
    // Maps of another depth, or biases on some maps only, are shape errors.
    assert!(x.linear_predictions(&[(&w[..6], None)], 2).is_err());
    assert!(x
        .linear_predictions(&[(&w[..], Some(&b[..])), (&w[..], None)], 2)
        .is_err());
}

/// Rows with no features (`d = 0`): the fused path gives the composite's loss and gradients
/// (logits are the bias alone, `dW` is empty) instead of failing on its empty partials.
#[test]
fn fused_linear_cross_entropy_of_rows_without_features() {
    let dev = Device::Cpu;
    for n in [1usize, 3, 200] {
        let x = Tensor::zeros((n, 0), &dev).unwrap();
        let w = Tensor::zeros((2, 0), &dev).unwrap().variable();
        let b = Tensor::from_vec(vec![0.5, -0.25], 2, &dev)
            .unwrap()
            .variable();
        let y = Indices::new((0..n).map(|i| (i % 2) as u32).collect(), &dev).unwrap();
        let (loss, logits) = x
            .linear_shifted_cross_entropy(&w, Some(&b), &y, None, None, Reduction::Mean)
            .unwrap();
        let z = x.matmul_t(&w).unwrap().broadcast_add(&b).unwrap();
        let reference = z
            .shifted_cross_entropy(&y, None, None, Reduction::Mean)
            .unwrap();
        assert_eq!(logits.to_vec().unwrap(), z.to_vec().unwrap(), "n {n}");
        let (l, r) = (loss.to_scalar().unwrap(), reference.to_scalar().unwrap());
        assert!((l - r).abs() <= 1e-6 * r.abs(), "n {n}: {l} against {r}");
        let (g, gr) = (loss.backward().unwrap(), reference.backward().unwrap());
        assert_eq!(g.get(&w).unwrap().dims(), [2, 0]);
        let (db, db_ref) = (
            g.get(&b).unwrap().to_vec().unwrap(),
            gr.get(&b).unwrap().to_vec().unwrap(),
        );
        for (a, r) in db.iter().zip(&db_ref) {
            assert!((a - r).abs() <= 1e-6, "n {n}: db {db:?} against {db_ref:?}");
        }
    }
}
