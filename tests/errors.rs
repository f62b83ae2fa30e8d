//! Bad input is a typed error that names the problem, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use memaware::nn::{Activation, Init, Linear, Mlp};
use memaware::optim::{Adam, Sgd};
use memaware::{Device, Error, Indices, Reduction, Tensor};

fn t(values: &[f32], shape: impl Into<memaware::Shape>) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).expect("test tensor matches its shape")
}

fn zeros(shape: impl Into<memaware::Shape>) -> Tensor {
    Tensor::zeros(shape, &Device::Cpu).expect("zeros")
}

fn idx(values: &[u32]) -> Indices {
    Indices::new(values.to_vec(), &Device::Cpu).expect("indices")
}

/// Runs `f`, failing the test if it panics or succeeds; returns the error.
fn expect_err<T: std::fmt::Debug>(what: &str, f: impl FnOnce() -> memaware::Result<T>) -> Error {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => panic!("{what}: expected an error, got {v:?}"),
        Ok(Err(e)) => e,
        Err(_) => panic!("{what}: panicked instead of returning an error"),
    }
}

/// A `ShapeMismatch` from `op` between `lhs` and `rhs`, all three named in the message.
fn assert_shape_mismatch(e: &Error, op: &str, lhs: &[usize], rhs: &[usize]) {
    match e {
        Error::ShapeMismatch {
            op: o,
            lhs: l,
            rhs: r,
            ..
        } => {
            assert_eq!((*o, l.as_slice(), r.as_slice()), (op, lhs, rhs), "{e}");
        }
        other => panic!("expected ShapeMismatch from {op}, got {other:?}"),
    }
    let msg = e.to_string();
    for needle in [op.to_string(), format!("{lhs:?}"), format!("{rhs:?}")] {
        assert!(msg.contains(&needle), "`{msg}` should contain `{needle}`");
    }
}

fn assert_bad_shape(e: &Error, op: &str) {
    assert!(
        matches!(e, Error::BadShape { op: o, .. } if *o == op),
        "expected BadShape from {op}, got {e:?}"
    );
    assert!(e.to_string().starts_with(op), "{e}");
}

#[test]
fn shape_mismatch_names_the_op_and_both_shapes() {
    let a = zeros((3, 4));
    let b = zeros((4, 3));
    for (op, e) in [
        ("add", expect_err("add", || a.add(&b))),
        ("sub", expect_err("sub", || a.sub(&b))),
        ("mul", expect_err("mul", || a.mul(&b))),
        ("div", expect_err("div", || a.div(&b))),
    ] {
        assert_shape_mismatch(&e, op, &[3, 4], &[4, 3]);
    }
    let e = expect_err("broadcast_add", || a.broadcast_add(&zeros((2, 4))));
    assert_shape_mismatch(&e, "broadcast_add", &[3, 4], &[2, 4]);
    let e = expect_err("broadcast_mul", || {
        zeros((2, 3, 4)).broadcast_mul(&zeros((3, 3)))
    });
    assert_shape_mismatch(&e, "broadcast_mul", &[2, 3, 4], &[3, 3]);
    // Inner dimensions of every product variant.
    let e = expect_err("matmul", || a.matmul(&zeros((3, 5))));
    assert_shape_mismatch(&e, "matmul", &[3, 4], &[3, 5]);
    assert!(e.to_string().contains("inner dimensions 4 and 3"), "{e}");
    let e = expect_err("matmul_t", || a.matmul_t(&zeros((5, 3))));
    assert_shape_mismatch(&e, "matmul_t", &[3, 4], &[5, 3]);
    let e = expect_err("t_matmul", || a.t_matmul(&zeros((4, 2))));
    assert_shape_mismatch(&e, "t_matmul", &[3, 4], &[4, 2]);
    let e = expect_err("t_matmul_t", || a.t_matmul_t(&zeros((2, 4))));
    assert_shape_mismatch(&e, "t_matmul_t", &[3, 4], &[2, 4]);
    let e = expect_err("where_cond", || zeros((3, 4)).where_cond(&a, &b));
    assert_shape_mismatch(&e, "where_cond", &[3, 4], &[4, 3]);
    let e = expect_err("broadcast_as", || zeros(3).broadcast_as((3, 4)));
    assert_shape_mismatch(&e, "broadcast_as", &[3], &[3, 4]);
    let e = expect_err("assign", || a.assign(&b));
    assert_shape_mismatch(&e, "assign", &[3, 4], &[4, 3]);
    // Losses name themselves, not the primitive that would have failed inside them.
    let e = expect_err("mse", || a.mse(&b));
    assert_shape_mismatch(&e, "mse", &[3, 4], &[4, 3]);
    let e = expect_err("cross_entropy", || a.cross_entropy(&idx(&[0, 1])));
    assert_shape_mismatch(&e, "cross_entropy", &[3, 4], &[2]);
    let op = "shifted_cross_entropy";
    let y = idx(&[0, 1, 2]);
    let e = expect_err("shift", || {
        a.shifted_cross_entropy(&y, Some(&b), None, Reduction::Mean)
    });
    assert_shape_mismatch(&e, op, &[3, 4], &[4, 3]);
    let e = expect_err("weights", || {
        a.shifted_cross_entropy(&y, None, Some(&zeros(4)), Reduction::Mean)
    });
    assert_shape_mismatch(&e, op, &[3, 4], &[4]);
    let e = expect_err("labels", || {
        a.shifted_cross_entropy(&idx(&[0]), None, None, Reduction::Mean)
    });
    assert_shape_mismatch(&e, op, &[3, 4], &[1]);
    let e = expect_err("gather", || a.gather(&idx(&[0, 1])));
    assert_shape_mismatch(&e, "gather", &[3, 4], &[2]);
}

#[test]
fn labels_out_of_range() {
    let z = zeros((2, 3));
    let y = idx(&[1, 3]);
    let e = expect_err("cross_entropy", || z.cross_entropy(&y));
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                op: "cross_entropy",
                row: 1,
                label: 3,
                classes: 3
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "cross_entropy: label 3 at row 1 is out of range for 3 classes"
    );
    let e = expect_err("fused", || {
        z.shifted_cross_entropy(&y, None, None, Reduction::Mean)
    });
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange {
                op: "shifted_cross_entropy",
                row: 1,
                label: 3,
                classes: 3
            }
        ),
        "{e:?}"
    );
}

#[test]
fn non_finite_losses_name_the_op() {
    // NaN produced inside the loss: inf - inf, and an overflowing square.
    let inf = t(&[f32::INFINITY, 1.0], 2);
    let e = expect_err("mse inf - inf", || inf.mse(&inf));
    assert!(matches!(e, Error::NonFinite { op: "mse", .. }), "{e:?}");
    assert!(e.to_string().starts_with("mse: non-finite"), "{e}");
    let big = t(&[1e30, 0.0], 2);
    let e = expect_err("mse overflow", || big.mse(&zeros(2)));
    assert!(matches!(e, Error::NonFinite { op: "mse", .. }), "{e:?}");
    let nan = t(&[0.0, f32::NAN, 1.0, 2.0], (2, 2));
    let y = idx(&[0, 1]);
    let e = expect_err("cross_entropy", || nan.cross_entropy(&y));
    assert!(
        matches!(
            e,
            Error::NonFinite {
                op: "cross_entropy",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with("cross_entropy: non-finite"),
        "{e}"
    );
    for r in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let e = expect_err("fused", || nan.shifted_cross_entropy(&y, None, None, r));
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    op: "shifted_cross_entropy",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("shifted_cross_entropy: non-finite"),
            "{e}"
        );
    }
    // Weights that sum to zero cannot be a weighted mean.
    let e = expect_err("zero weights", || {
        zeros((2, 2)).shifted_cross_entropy(&y, None, Some(&zeros(2)), Reduction::WeightedMean)
    });
    assert!(
        matches!(
            e,
            Error::NonFinite {
                op: "shifted_cross_entropy",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_reshape_and_shapes() {
    let a = zeros((3, 4));
    let e = expect_err("reshape", || a.reshape((5, 2)));
    assert_shape_mismatch(&e, "reshape", &[3, 4], &[5, 2]);
    let e = expect_err("from_vec", || {
        Tensor::from_vec(vec![1.0; 5], (2, 3), &Device::Cpu)
    });
    assert_bad_shape(&e, "from_vec");
    assert_bad_shape(&expect_err("t", || zeros((2, 3, 4)).t()), "transpose");
    assert_bad_shape(
        &expect_err("matmul rank 1", || zeros(3).matmul(&zeros((3, 1)))),
        "matmul",
    );
    assert_bad_shape(&expect_err("dims2", || zeros(3).dims2()), "dims2");
    assert_bad_shape(&expect_err("to_scalar", || a.to_scalar()), "to_scalar");
    assert_bad_shape(&expect_err("sum axis", || a.sum(2)), "sum");
    assert_bad_shape(&expect_err("max axis", || a.max_keepdim(5)), "max");
    assert_bad_shape(&expect_err("mean axis", || a.mean(2)), "mean");
    assert_bad_shape(
        &expect_err("max over empty", || zeros((0, 3)).max(0)),
        "max",
    );
    assert_bad_shape(
        &expect_err("mean_all empty", || zeros((0, 3)).mean_all()),
        "mean_all",
    );
    let scalar = Tensor::scalar(1.0, &Device::Cpu).unwrap();
    assert_bad_shape(
        &expect_err("softmax rank 0", || scalar.softmax()),
        "softmax",
    );
    assert_bad_shape(
        &expect_err("log_softmax rank 0", || scalar.log_softmax()),
        "log_softmax",
    );
    assert_bad_shape(
        &expect_err("index_select rank 0", || scalar.index_select(&idx(&[0]))),
        "index_select",
    );
    assert_bad_shape(
        &expect_err("argmax", || zeros((2, 0)).argmax_rows()),
        "argmax_rows",
    );
    assert_bad_shape(
        &expect_err("empty logits", || {
            zeros((0, 3)).shifted_cross_entropy(&idx(&[]), None, None, Reduction::Mean)
        }),
        "shifted_cross_entropy",
    );
}

#[test]
fn index_out_of_range() {
    let a = zeros((4, 3));
    let e = expect_err("index_select", || a.index_select(&idx(&[0, 3, 4, 1])));
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                op: "index_select",
                position: 2,
                index: 4,
                size: 4
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "index_select: index 4 at position 2 is out of range (size 4)"
    );
    let e = expect_err("gather", || a.gather(&idx(&[0, 3, 1, 2])));
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                op: "gather",
                position: 1,
                index: 3,
                size: 3
            }
        ),
        "{e:?}"
    );
    let e = expect_err("from_usize", || {
        Indices::from_usize(&[1, u32::MAX as usize + 1], &Device::Cpu)
    });
    assert!(
        matches!(e, Error::IndexOutOfRange { position: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn backward_misuse() {
    let x = zeros((2, 3)).variable();
    let y = x.tanh().unwrap();
    let e = expect_err("non-scalar", || y.backward().map(|g| g.len()));
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    assert!(
        e.to_string().contains("scalar") && e.to_string().contains("[2, 3]"),
        "{e}"
    );
    let e = expect_err("untracked", || zeros(()).backward().map(|g| g.len()));
    assert!(matches!(e, Error::Autograd(_)), "{e:?}");
    let loss = x.sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let other = zeros(2).variable();
    assert!(matches!(grads.require(&other), Err(Error::Autograd(_))));
}

#[test]
fn cat_errors() {
    let a = zeros((2, 3));
    let e = expect_err("cat axis 0", || Tensor::cat(&[&a, &zeros((2, 4))], 0));
    assert_shape_mismatch(&e, "cat", &[2, 3], &[2, 4]);
    let e = expect_err("cat axis 1", || Tensor::cat(&[&a, &zeros((3, 3))], 1));
    assert_shape_mismatch(&e, "cat", &[2, 3], &[3, 3]);
    let e = expect_err("cat rank", || Tensor::cat(&[&a, &zeros((2, 3, 1))], 0));
    assert_shape_mismatch(&e, "cat", &[2, 3], &[2, 3, 1]);
    assert_bad_shape(&expect_err("cat axis", || Tensor::cat(&[&a, &a], 2)), "cat");
    let e = expect_err("cat nothing", || Tensor::cat(&[], 0));
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                name: "tensors",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn narrow_out_of_range() {
    let a = zeros((4, 5));
    for (axis, start, len) in [
        (0, 3, 2),
        (1, 0, 6),
        (1, 5, 1),
        (0, usize::MAX, 2),
        (0, 1, usize::MAX),
    ] {
        let e = expect_err(&format!("narrow({axis}, {start}, {len})"), || {
            a.narrow(axis, start, len)
        });
        assert_bad_shape(&e, "narrow");
    }
    assert_bad_shape(&expect_err("narrow axis", || a.narrow(2, 0, 1)), "narrow");
    // The edges of the valid range are fine.
    assert_eq!(a.narrow(1, 5, 0).unwrap().dims(), &[4, 0]);
    assert_eq!(a.narrow(0, 0, 4).unwrap().dims(), &[4, 5]);
}

#[test]
fn invalid_optimizer_hyperparameters() {
    let p = || vec![zeros(3).variable()];
    let sgd = |lr, momentum, dampening, wd, nesterov| {
        expect_err("sgd", || {
            Sgd::with_options(p(), lr, momentum, dampening, wd, nesterov).map(|_| ())
        })
    };
    for (e, name) in [
        (sgd(-0.1, 0.0, 0.0, 0.0, false), "lr"),
        (sgd(f32::NAN, 0.0, 0.0, 0.0, false), "lr"),
        (sgd(f32::INFINITY, 0.0, 0.0, 0.0, false), "lr"),
        (sgd(0.1, -0.9, 0.0, 0.0, false), "momentum"),
        (sgd(0.1, 0.9, 0.0, -1e-4, false), "weight_decay"),
        (sgd(0.1, 0.0, 0.0, 0.0, true), "nesterov"),
        (sgd(0.1, 0.9, 0.1, 0.0, true), "nesterov"),
    ] {
        assert!(
            matches!(e, Error::InvalidArgument { name: n, .. } if n == name),
            "{name}: {e:?}"
        );
        assert!(e.to_string().contains(name), "{e}");
    }
    let adam = |lr, betas, eps, wd| {
        expect_err("adam", || {
            Adam::with_options(p(), lr, betas, eps, wd, false).map(|_| ())
        })
    };
    for (e, name) in [
        (adam(-1e-3, (0.9, 0.999), 1e-8, 0.0), "lr"),
        (adam(f32::NAN, (0.9, 0.999), 1e-8, 0.0), "lr"),
        (adam(1e-3, (1.0, 0.999), 1e-8, 0.0), "beta1"),
        (adam(1e-3, (-0.1, 0.999), 1e-8, 0.0), "beta1"),
        (adam(1e-3, (0.9, 1.5), 1e-8, 0.0), "beta2"),
        (adam(1e-3, (0.9, f32::NAN), 1e-8, 0.0), "beta2"),
        (adam(1e-3, (0.9, 0.999), -1e-8, 0.0), "eps"),
        (adam(1e-3, (0.9, 0.999), 1e-8, -0.1), "weight_decay"),
    ] {
        assert!(
            matches!(e, Error::InvalidArgument { name: n, .. } if n == name),
            "{name}: {e:?}"
        );
    }
    let e = expect_err("adamw", || Adam::adamw(p(), -1.0, 0.0).map(|_| ()));
    assert!(
        matches!(e, Error::InvalidArgument { name: "lr", .. }),
        "{e:?}"
    );
}

#[test]
fn invalid_layers_and_devices() {
    let mut rng = memaware::Rng::new(0);
    let e = expect_err("linear 0", || {
        Linear::new(0, 2, true, Init::PyTorchDefault, &mut rng, &Device::Cpu)
    });
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = expect_err("mlp widths", || {
        Mlp::new(
            &[3],
            Activation::Relu,
            true,
            Init::PyTorchDefault,
            &mut rng,
            &Device::Cpu,
        )
    });
    assert!(
        matches!(e, Error::InvalidArgument { name: "widths", .. }),
        "{e:?}"
    );
    let e = expect_err("device name", || Device::parse("gpu"));
    assert!(
        matches!(e, Error::InvalidArgument { name: "device", .. }),
        "{e:?}"
    );
    #[cfg(not(feature = "cuda"))]
    {
        let e = expect_err("cuda", || Device::parse("cuda:0"));
        assert!(matches!(e, Error::Device(_)), "{e:?}");
    }
}

/// Tensors with a zero-length dimension: every op returns (an empty result or an error),
/// none panics.
#[test]
fn zero_size_tensors_never_panic() {
    let empty_cols = zeros((3, 0));
    let empty_rows = zeros((0, 3));
    let col = zeros((3, 1));
    let row = zeros((1, 0));
    type Probe<'a> = Box<dyn Fn() -> memaware::Result<Tensor> + 'a>;
    let probes: Vec<(&str, Probe)> = vec![
        ("sum axis 0 of [3, 0]", Box::new(|| empty_cols.sum(0))),
        ("sum axis 1 of [0, 3]", Box::new(|| empty_rows.sum(1))),
        ("max axis 0 of [3, 0]", Box::new(|| empty_cols.max(0))),
        ("sum_all of [3, 0]", Box::new(|| empty_cols.sum_all())),
        (
            "[3, 0] + [3, 1]",
            Box::new(|| empty_cols.broadcast_add(&col)),
        ),
        ("[3, 1] * [1, 0]", Box::new(|| col.broadcast_mul(&row))),
        (
            "[3, 0] + [0]",
            Box::new(|| empty_cols.broadcast_add(&zeros(0))),
        ),
        ("softmax of [3, 0]", Box::new(|| empty_cols.softmax())),
        (
            "log_softmax of [0, 3]",
            Box::new(|| empty_rows.log_softmax()),
        ),
        (
            "matmul [3, 0]·[0, 2]",
            Box::new(|| empty_cols.matmul(&zeros((0, 2)))),
        ),
        (
            "matmul [0, 3]·[3, 2]",
            Box::new(|| empty_rows.matmul(&zeros((3, 2)))),
        ),
        ("t of [3, 0]", Box::new(|| empty_cols.t())),
        (
            "index_select of [3, 0]",
            Box::new(|| empty_cols.index_select(&idx(&[2, 0]))),
        ),
        (
            "index_select of [0, 3]",
            Box::new(|| empty_rows.index_select(&idx(&[]))),
        ),
        (
            "cat [3, 0] with [3, 1]",
            Box::new(|| Tensor::cat(&[&empty_cols, &col], 1)),
        ),
        ("narrow of [0, 3]", Box::new(|| empty_rows.narrow(1, 1, 2))),
        ("tanh of [0, 3]", Box::new(|| empty_rows.tanh())),
    ];
    for (what, probe) in probes {
        if catch_unwind(AssertUnwindSafe(probe)).is_err() {
            panic!("{what} panicked");
        }
    }
    // Backward through zero-size intermediates.
    let x = zeros((3, 0)).variable();
    let r = catch_unwind(AssertUnwindSafe(|| -> memaware::Result<()> {
        let loss = x
            .broadcast_add(&zeros((3, 1)).variable())?
            .sum(1)?
            .sum_all()?;
        loss.backward()?;
        Ok(())
    }));
    assert!(r.is_ok(), "backward through a zero-size tensor panicked");
}
