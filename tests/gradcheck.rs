//! Every op's backward rule against central finite differences.
//!
//! Each check differentiates `Σ r ⊙ f(inputs)` (a fixed random projection `r`, see
//! `autograd::check`) at random inputs, by `backward` and by `(L(x+ε) - L(x-ε)) / 2ε`.
//!
//! Tolerances: the forward pass is f32 (unit roundoff u ≈ 6e-8), the difference is taken in
//! f64. With ε = 1e-3 on O(1) inputs the truncation error is O(ε²·|f'''|) ≈ 1e-6 and the
//! roundoff error is O(u·|f|/ε) ≈ 6e-5 per output element that the probe moves (a few times
//! that for the small reductions here, whose f32 partial sums re-round when one term moves).
//! A pass needs `|analytic - numeric| ≤ 1e-3 + 1e-2·|numeric|`: about 10× above that noise,
//! while a wrong rule (missing term, wrong sign or factor, wrong broadcast reduction) is off
//! by O(|gradient|). Inputs stay away from the kinks of relu/step/eq/max/maximum by more than
//! 50·ε, so no probe crosses one.
//!
//! `every_op_has_a_gradient_check` runs all checks and fails if a name in
//! [`memaware::autograd::OP_NAMES`] never appeared in a checked graph.

use std::collections::BTreeSet;

use memaware::autograd::check::check_gradients;
use memaware::autograd::OP_NAMES;
use memaware::{Device, Indices, Reduction, Result, Rng, Shape, Tensor};

const EPS: f32 = 1e-3;
const ATOL: f64 = 1e-3;
const RTOL: f64 = 1e-2;

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).expect("test tensor: values match the shape")
}

/// Standard normal entries.
fn randn(rng: &mut Rng, shape: impl Into<Shape>) -> Tensor {
    let shape = shape.into();
    tensor(rng.normal_vec(shape.elem_count()), shape)
}

/// Entries in `[0.5, 2)`: domain of log, sqrt and fractional powers.
fn positive(rng: &mut Rng, shape: impl Into<Shape>) -> Tensor {
    let shape = shape.into();
    tensor(rng.uniform_vec(shape.elem_count(), 0.5, 2.0), shape)
}

/// Entries with `|x|` in `[0.1, 1.5)` and a random sign: away from the kink at 0.
fn away_from_zero(rng: &mut Rng, shape: impl Into<Shape>) -> Tensor {
    let shape = shape.into();
    let v = (0..shape.elem_count())
        .map(|_| {
            let m = rng.uniform_range(0.1, 1.5);
            if rng.bernoulli(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    tensor(v, shape)
}

/// Distinct entries at least 0.08 apart (a shuffled grid plus jitter), so a max never ties.
fn distinct(rng: &mut Rng, shape: impl Into<Shape>) -> Tensor {
    let shape = shape.into();
    let n = shape.elem_count();
    let v = rng
        .permutation(n)
        .into_iter()
        .map(|k| (k as f32 - n as f32 / 2.0) * 0.1 + rng.uniform_range(-0.01, 0.01))
        .collect();
    tensor(v, shape)
}

/// Values on the grid `offset + 0.3·k` (small `k`, jittered by ±0.01): two such tensors with
/// offsets 0.05 and 0.2 differ everywhere by at least 0.13, so `maximum` never ties.
fn grid(rng: &mut Rng, shape: impl Into<Shape>, offset: f32) -> Tensor {
    let shape = shape.into();
    let v = (0..shape.elem_count())
        .map(|_| offset + 0.3 * (rng.below(9) as f32 - 4.0) + rng.uniform_range(-0.01, 0.01))
        .collect();
    tensor(v, shape)
}

fn indices(values: Vec<u32>) -> Indices {
    Indices::new(values, &Device::Cpu).expect("indices on the CPU")
}

fn labels(rng: &mut Rng, rows: usize, classes: usize) -> Indices {
    indices(
        (0..rows)
            .map(|_| rng.below(classes as u64) as u32)
            .collect(),
    )
}

/// Runs one check, asserts it passed, and returns the op names it covered.
fn check(
    what: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> Vec<&'static str> {
    let r = check_gradients(f, inputs, EPS, ATOL, RTOL)
        .unwrap_or_else(|e| panic!("{what}: the check itself failed: {e}"));
    assert!(
        r.passed(),
        "{what}: gradient disagrees with finite differences: worst ratio {} at \
         (input, element, analytic, numeric) = {:?}",
        r.worst_ratio,
        r.worst_at
    );
    r.ops
}

/// Each check becomes a function returning the op names it covered, a `#[test]` of its own,
/// and a part of `all_checks`, so that no check can be left out of the coverage test.
macro_rules! gradient_checks {
    ($($name:ident => $body:block)*) => {
        $(
            fn $name() -> Vec<&'static str> $body
        )*

        mod each {
            $(
                #[test]
                fn $name() {
                    super::$name();
                }
            )*
        }

        /// The union of the op names covered by every check.
        fn all_checks() -> BTreeSet<&'static str> {
            let mut ops = BTreeSet::new();
            $( ops.extend($name()); )*
            ops
        }
    };
}

gradient_checks! {
    unary_maps => {
        let mut rng = Rng::new(1);
        let mut ops = Vec::new();
        let x = randn(&mut rng, (3, 4));
        ops.extend(check("neg", |v| v[0].neg(), std::slice::from_ref(&x)));
        ops.extend(check("exp", |v| v[0].exp(), std::slice::from_ref(&x)));
        ops.extend(check("tanh", |v| v[0].tanh(), std::slice::from_ref(&x)));
        ops.extend(check("sigmoid", |v| v[0].sigmoid(), std::slice::from_ref(&x)));
        ops.extend(check("square", |v| v[0].square(), std::slice::from_ref(&x)));
        ops.extend(check("affine", |v| v[0].affine(-1.7, 0.3), std::slice::from_ref(&x)));
        ops.extend(check("scale", |v| v[0].scale(2.5), std::slice::from_ref(&x)));
        let p = positive(&mut rng, (3, 4));
        ops.extend(check("log", |v| v[0].log(), std::slice::from_ref(&p)));
        ops.extend(check("sqrt", |v| v[0].sqrt(), std::slice::from_ref(&p)));
        let k = away_from_zero(&mut rng, (3, 4));
        ops.extend(check("relu", |v| v[0].relu(), std::slice::from_ref(&k)));
        // |x| ≥ 0.6 keeps 1/x's gradient O(1), so the absolute tolerance stays meaningful.
        let r = tensor(
            k.to_vec().unwrap().iter().map(|&v| v.signum() * (0.5 + v.abs())).collect(),
            (3, 4),
        );
        ops.extend(check("recip", |v| v[0].recip(), std::slice::from_ref(&r)));
        ops
    }

    powf => {
        let mut rng = Rng::new(2);
        let p = positive(&mut rng, (2, 5));
        let mut ops = Vec::new();
        for e in [2.5f32, -0.7, 3.0, 0.5] {
            ops.extend(check(&format!("powf({e})"), |v| v[0].powf(e), std::slice::from_ref(&p)));
        }
        ops
    }

    step_has_no_gradient => {
        // d/dx [step(x)·x²] = step(x)·2x away from 0: the mask contributes nothing.
        let mut rng = Rng::new(3);
        let x = away_from_zero(&mut rng, (4, 3));
        check("step", |v| v[0].step()?.mul(&v[0].square()?), &[x])
    }

    eq_has_no_gradient => {
        // eq(step(x), c) is a 0/1 mask that no probe of x changes; the product's gradient
        // w.r.t. y is that mask, and w.r.t. x exactly zero.
        let mut rng = Rng::new(4);
        let x = away_from_zero(&mut rng, (4, 3));
        let y = randn(&mut rng, (4, 3));
        let c_full = tensor(vec![1., 0., 1., 0., 0., 1., 1., 1., 0., 1., 0., 0.], (4, 3));
        let c_row = tensor(vec![1., 0., 1.], 3);
        let mut ops = check(
            "eq",
            |v| v[0].step()?.broadcast_eq(&c_full)?.mul(&v[1]),
            &[x.clone(), y.clone()],
        );
        ops.extend(check(
            "eq, row broadcast",
            |v| v[0].step()?.broadcast_eq(&c_row)?.mul(&v[1]),
            &[x, y],
        ));
        ops
    }

    binary_equal_shapes => {
        let mut rng = Rng::new(5);
        let a = randn(&mut rng, (3, 4));
        let b = randn(&mut rng, (3, 4));
        let d = away_from_zero(&mut rng, (3, 4));
        let ab = [a.clone(), b.clone()];
        let mut ops = Vec::new();
        ops.extend(check("add", |v| v[0].add(&v[1]), &ab));
        ops.extend(check("sub", |v| v[0].sub(&v[1]), &ab));
        ops.extend(check("mul", |v| v[0].mul(&v[1]), &ab));
        ops.extend(check("div", |v| v[0].div(&v[1]), &[a.clone(), d]));
        ops.extend(check("x * x (one input twice)", |v| v[0].mul(&v[0]), &[a]));
        ops
    }

    binary_broadcasting => {
        let mut rng = Rng::new(6);
        // (lhs, rhs) shapes: row vector, 1×C row, column, scalar, small operand on the left,
        // leading-dim broadcast, both operands broadcast, a middle axis of size 1.
        let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
            (vec![4, 3], vec![3]),
            (vec![4, 3], vec![1, 3]),
            (vec![4, 3], vec![4, 1]),
            (vec![4, 3], vec![]),
            (vec![], vec![4, 3]),
            (vec![3], vec![4, 3]),
            (vec![4, 1], vec![4, 3]),
            (vec![2, 4, 3], vec![4, 3]),
            (vec![4, 3], vec![2, 4, 3]),
            (vec![4, 1], vec![1, 3]),
            (vec![2, 1, 3], vec![2, 4, 3]),
            (vec![2, 4, 3], vec![2, 4, 1]),
        ];
        let mut ops = Vec::new();
        for (ls, rs) in cases {
            let what = |op: &str| format!("{op} {ls:?} with {rs:?}");
            let a = randn(&mut rng, ls.clone());
            let b = randn(&mut rng, rs.clone());
            let d = away_from_zero(&mut rng, rs.clone());
            let ab = [a.clone(), b.clone()];
            ops.extend(check(&what("broadcast_add"), |v| v[0].broadcast_add(&v[1]), &ab));
            ops.extend(check(&what("broadcast_sub"), |v| v[0].broadcast_sub(&v[1]), &ab));
            ops.extend(check(&what("broadcast_mul"), |v| v[0].broadcast_mul(&v[1]), &ab));
            ops.extend(check(&what("broadcast_div"), |v| v[0].broadcast_div(&v[1]), &[a, d]));
            let ga = grid(&mut rng, ls.clone(), 0.05);
            let gb = grid(&mut rng, rs.clone(), 0.2);
            ops.extend(check(
                &what("broadcast_maximum"),
                |v| v[0].broadcast_maximum(&v[1]),
                &[ga, gb],
            ));
        }
        ops
    }

    broadcast_as => {
        let mut rng = Rng::new(7);
        let mut ops = Vec::new();
        for (from, to) in [(vec![3], vec![4, 3]), (vec![4, 1], vec![4, 3]), (vec![], vec![2, 3])] {
            let x = randn(&mut rng, from.clone());
            let target = Shape::from(to.clone());
            ops.extend(check(
                &format!("broadcast_as {from:?} to {to:?}"),
                |v| v[0].broadcast_as(&target),
                &[x],
            ));
        }
        ops
    }

    reductions_rank2 => {
        let mut rng = Rng::new(8);
        let x = randn(&mut rng, (4, 5));
        let m = distinct(&mut rng, (4, 5));
        let mut ops = Vec::new();
        for axis in 0..2 {
            let a = format!("axis {axis} of [4, 5]");
            ops.extend(check(&format!("sum {a}"), |v| v[0].sum(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("sum_keepdim {a}"), |v| v[0].sum_keepdim(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("mean {a}"), |v| v[0].mean(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("mean_keepdim {a}"), |v| v[0].mean_keepdim(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("max {a}"), |v| v[0].max(axis), std::slice::from_ref(&m)));
            ops.extend(check(&format!("max_keepdim {a}"), |v| v[0].max_keepdim(axis), std::slice::from_ref(&m)));
        }
        ops
    }

    reductions_rank3 => {
        let mut rng = Rng::new(9);
        let x = randn(&mut rng, (2, 3, 4));
        let m = distinct(&mut rng, (2, 3, 4));
        let mut ops = Vec::new();
        for axis in 0..3 {
            let a = format!("axis {axis} of [2, 3, 4]");
            ops.extend(check(&format!("sum {a}"), |v| v[0].sum(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("mean {a}"), |v| v[0].mean_keepdim(axis), std::slice::from_ref(&x)));
            ops.extend(check(&format!("max {a}"), |v| v[0].max(axis), std::slice::from_ref(&m)));
        }
        ops
    }

    reductions_overall => {
        let mut rng = Rng::new(10);
        let x = randn(&mut rng, (3, 4));
        let m = distinct(&mut rng, (2, 3, 2));
        let mut ops = Vec::new();
        ops.extend(check("sum_all", |v| v[0].sum_all(), std::slice::from_ref(&x)));
        ops.extend(check("mean_all", |v| v[0].mean_all(), std::slice::from_ref(&x)));
        ops.extend(check("max_all", |v| v[0].max_all(), &[m]));
        ops
    }

    matmul_variants => {
        let mut rng = Rng::new(11);
        let mut ops = Vec::new();
        // (m, k, n) reaching the thin-output path (n ≤ 4), the thin-left path (m ≤ 4), the
        // general GEMM path, and 1×1 outputs.
        for (m, k, n) in [(3, 4, 5), (6, 5, 2), (2, 5, 7), (6, 5, 7), (1, 3, 1)] {
            let what = |op: &str| format!("{op} m{m} k{k} n{n}");
            let a = randn(&mut rng, (m, k));
            let a_t = randn(&mut rng, (k, m));
            let b = randn(&mut rng, (k, n));
            let b_t = randn(&mut rng, (n, k));
            ops.extend(check(&what("matmul"), |v| v[0].matmul(&v[1]), &[a.clone(), b.clone()]));
            ops.extend(check(&what("matmul_t"), |v| v[0].matmul_t(&v[1]), &[a, b_t.clone()]));
            ops.extend(check(&what("t_matmul"), |v| v[0].t_matmul(&v[1]), &[a_t.clone(), b]));
            ops.extend(check(&what("t_matmul_t"), |v| v[0].t_matmul_t(&v[1]), &[a_t, b_t]));
        }
        ops
    }

    transpose_and_reshape => {
        let mut rng = Rng::new(12);
        let x = randn(&mut rng, (3, 4));
        let y = randn(&mut rng, (3, 2));
        let mut ops = Vec::new();
        ops.extend(check("t", |v| v[0].t(), std::slice::from_ref(&x)));
        ops.extend(check("t then matmul", |v| v[0].t()?.matmul(&v[1]), &[x.clone(), y]));
        ops.extend(check("reshape", |v| v[0].reshape((2, 6))?.tanh(), std::slice::from_ref(&x)));
        ops.extend(check("flatten", |v| v[0].flatten()?.exp(), std::slice::from_ref(&x)));
        ops.extend(check("reshape to rank 3", |v| v[0].reshape((2, 3, 2))?.sum(1), &[x]));
        ops
    }

    index_select_repeated => {
        let mut rng = Rng::new(13);
        let x = randn(&mut rng, (4, 3));
        // Row 2 three times, row 3 never: its gradient is zero, row 2's the sum of three.
        let idx = indices(vec![2, 0, 2, 2, 1]);
        let mut ops = check("index_select (4, 3)", |v| v[0].index_select(&idx), &[x]);
        let x3 = randn(&mut rng, (3, 2, 2));
        let idx3 = indices(vec![1, 1, 0]);
        ops.extend(check("index_select (3, 2, 2)", |v| v[0].index_select(&idx3), &[x3]));
        let x1 = randn(&mut rng, 5);
        let idx1 = indices(vec![4, 4, 0, 3]);
        ops.extend(check("index_select (5)", |v| v[0].index_select(&idx1), &[x1]));
        ops
    }

    gather_columns => {
        let mut rng = Rng::new(14);
        let x = randn(&mut rng, (5, 4));
        let idx = labels(&mut rng, 5, 4);
        check("gather", |v| v[0].gather(&idx), &[x])
    }

    concat => {
        let mut rng = Rng::new(15);
        let a = randn(&mut rng, (2, 3));
        let b = randn(&mut rng, (1, 3));
        let c = randn(&mut rng, (3, 3));
        let mut ops = check("cat axis 0", |v| Tensor::cat(&[&v[0], &v[1], &v[2]], 0), &[a.clone(), b, c]);
        let d = randn(&mut rng, (2, 1));
        let e = randn(&mut rng, (2, 4));
        ops.extend(check("cat axis 1", |v| Tensor::cat(&[&v[0], &v[1], &v[2]], 1), &[a.clone(), d, e]));
        ops.extend(check("cat of one tensor with itself", |v| Tensor::cat(&[&v[0], &v[0]], 1), &[a]));
        let f = randn(&mut rng, (2, 3, 2));
        let g = randn(&mut rng, (2, 3, 1));
        ops.extend(check("cat axis 2 of rank 3", |v| Tensor::cat(&[&v[0], &v[1]], 2), &[f, g]));
        ops
    }

    narrow => {
        let mut rng = Rng::new(16);
        let x = randn(&mut rng, (4, 5));
        let mut ops = check("narrow axis 0", |v| v[0].narrow(0, 1, 2), std::slice::from_ref(&x));
        ops.extend(check("narrow axis 1", |v| v[0].narrow(1, 2, 3), std::slice::from_ref(&x)));
        let y = randn(&mut rng, (2, 4, 3));
        ops.extend(check("narrow axis 1 of rank 3", |v| v[0].narrow(1, 1, 2), &[y]));
        ops
    }

    where_cond => {
        let mut rng = Rng::new(17);
        let a = randn(&mut rng, (3, 4));
        let b = randn(&mut rng, (3, 4));
        let mask = tensor((0..12).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect(), (3, 4));
        check("where_cond", |v| mask.where_cond(&v[0], &v[1]), &[a, b])
    }

    softmaxes => {
        let mut rng = Rng::new(18);
        let mut ops = Vec::new();
        for shape in [vec![4, 5], vec![2, 3, 4], vec![6]] {
            let x = randn(&mut rng, shape.clone());
            ops.extend(check(&format!("softmax {shape:?}"), |v| v[0].softmax(), std::slice::from_ref(&x)));
            ops.extend(check(&format!("log_softmax {shape:?}"), |v| v[0].log_softmax(), &[x]));
        }
        ops
    }

    losses_composed => {
        let mut rng = Rng::new(19);
        let p = randn(&mut rng, (4, 3));
        let t = randn(&mut rng, (4, 3));
        let mut ops = check("mse", |v| v[0].mse(&v[1]), &[p, t]);
        let z = randn(&mut rng, (5, 4));
        let y = labels(&mut rng, 5, 4);
        ops.extend(check("cross_entropy", |v| v[0].cross_entropy(&y), &[z]));
        ops
    }

    shifted_cross_entropy => {
        let mut rng = Rng::new(20);
        let (n, c) = (6, 4);
        let z = randn(&mut rng, (n, c));
        let y = labels(&mut rng, n, c);
        let shift = randn(&mut rng, (n, c));
        let w = tensor(rng.uniform_vec(n, 0.2, 2.0), n);
        let mut ops = Vec::new();
        for s in [None, Some(&shift)] {
            for wt in [None, Some(&w)] {
                let mut reductions = vec![Reduction::None, Reduction::Mean, Reduction::Sum];
                if wt.is_some() {
                    reductions.push(Reduction::WeightedMean);
                }
                for r in reductions {
                    let what = format!(
                        "shifted_cross_entropy shift={} weights={} {r:?}",
                        s.is_some(),
                        wt.is_some()
                    );
                    ops.extend(check(
                        &what,
                        |v| v[0].shifted_cross_entropy(&y, s, wt, r),
                        std::slice::from_ref(&z),
                    ));
                }
            }
        }
        ops
    }

    linear_shifted_cross_entropy => {
        // Gradients of the weight and bias through the fused linear + CE op (the input is a
        // constant, as a data batch is; then the fused kernel runs).
        let mut rng = Rng::new(22);
        let (n, d, c) = (8, 6, 3);
        let x = randn(&mut rng, (n, d));
        let w = randn(&mut rng, (c, d));
        let b = randn(&mut rng, c);
        let y = labels(&mut rng, n, c);
        let s = randn(&mut rng, (n, c));
        let wt = tensor(rng.uniform_vec(n, 0.2, 2.0), n);
        let mut ops = Vec::new();
        for (shift, weights, r) in [
            (None, None, Reduction::Mean),
            (Some(&s), None, Reduction::Mean),
            (Some(&s), Some(&wt), Reduction::Sum),
            (None, Some(&wt), Reduction::WeightedMean),
        ] {
            ops.extend(check(
                "linear_shifted_cross_entropy",
                |v| {
                    x.linear_shifted_cross_entropy(&v[0], Some(&v[1]), &y, shift, weights, r)
                        .map(|(loss, _)| loss)
                },
                &[w.clone(), b.clone()],
            ));
        }
        ops
    }

    small_network => {
        // Everything together: tanh(x·W1ᵀ + b1)·W2ᵀ + b2 under the fused loss, gradients of
        // all four parameters and of the input.
        let mut rng = Rng::new(21);
        let x = randn(&mut rng, (5, 3));
        let w1 = randn(&mut rng, (4, 3));
        let b1 = randn(&mut rng, 4);
        let w2 = randn(&mut rng, (3, 4));
        let b2 = randn(&mut rng, 3);
        let y = labels(&mut rng, 5, 3);
        let s = randn(&mut rng, (5, 3));
        check(
            "two-layer network",
            |v| {
                let h = v[0].matmul_t(&v[1])?.broadcast_add(&v[2])?.tanh()?;
                let z = h.matmul_t(&v[3])?.broadcast_add(&v[4])?;
                z.shifted_cross_entropy(&y, Some(&s), None, Reduction::Mean)
            },
            &[x, w1, b1, w2, b2],
        )
    }
}

#[test]
fn every_op_has_a_gradient_check() {
    let covered = all_checks();
    let missing: Vec<&str> = OP_NAMES
        .iter()
        .copied()
        .filter(|name| !covered.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "ops without a gradient check: {missing:?} (covered: {covered:?})"
    );
    // A name reported by a graph but absent from OP_NAMES would mean the list is stale.
    let unknown: Vec<&str> = covered
        .iter()
        .copied()
        .filter(|name| !OP_NAMES.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "op names missing from OP_NAMES: {unknown:?}"
    );
}
