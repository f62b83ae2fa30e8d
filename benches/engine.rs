//! Engine benchmarks (criterion): `cargo bench --bench engine`.
//!
//! - `sgemm/*`: one product `C = op(A)·op(B)` into a fresh output. Throughput is declared as
//!   `2·m·n·k` elements, so criterion's printed "elem/s" is FLOP/s (Gelem/s = GFLOP/s). Ids are
//!   `m×k×n`: `1024` and `2048` are square `A·B`; the model shapes are the forward product
//!   of a linear layer, `x·Wᵀ` with `W` stored out × in (`matmul_t`, as `nn::Linear` runs it),
//!   and `2x1000x1800` is the 1800→2 layer's weight gradient `dZᵀ·X` (`t_matmul`).
//! - `train_step/*`: one full step — forward, loss, backward, optimizer update — on a fixed
//!   batch, as benches/pytorch_reference.py times PyTorch.
//! - `xent/{fused,composite}/*`: the shifted softmax-cross-entropy `mean CE(z + s, y)`
//!   forward and backward (gradient w.r.t. `z`), fused versus composed from primitives
//!   (`broadcast_add → log_softmax → gather → mean → backward`). Throughput is the minimum
//!   memory traffic, read `z` and `s` (4 B per element each), read the u32 labels (4 B per
//!   row), write `dz` (4 B per element): `12·N·C + 4·N` bytes, printed in decimal GB/s.
//!
//! scripts/bench-table.py reads criterion's results and PyTorch's JSON into one table.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memaware::nn::{Activation, Init, Linear, Mlp, Module};
use memaware::optim::{Adam, Optimizer, Sgd};
use memaware::{no_grad, Device, Indices, Reduction, Result, Rng, Tensor};

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn randn(rng: &mut Rng, shape: (usize, usize)) -> Tensor {
    Tensor::randn(rng, shape, 1.0, &Device::Cpu).expect("benchmark input")
}

fn random_labels(rng: &mut Rng, n: usize, classes: usize) -> Indices {
    Indices::new(
        (0..n).map(|_| rng.below(classes as u64) as u32).collect(),
        &Device::Cpu,
    )
    .expect("benchmark labels")
}

fn sgemm(c: &mut Criterion) {
    let mut rng = Rng::new(0);
    let mut group = c.benchmark_group("sgemm");
    let flops = |m: usize, k: usize, n: usize| Throughput::Elements(2 * (m * k * n) as u64);
    for size in [1024, 2048] {
        let a = randn(&mut rng, (size, size));
        let b = randn(&mut rng, (size, size));
        group.throughput(flops(size, size, size));
        group.bench_function(size.to_string(), |bench| {
            bench.iter(|| no_grad(|| black_box(a.matmul(&b).expect("sgemm"))))
        });
    }
    // Linear-layer forward products x (m×k) · Wᵀ with W stored n×k.
    for (m, k, n) in [
        (1000, 1800, 2),
        (1000, 1800, 64),
        (1024, 392, 390),
        (1024, 390, 390),
        (20, 31, 300),
        (20, 300, 300),
    ] {
        let x = randn(&mut rng, (m, k));
        let w = randn(&mut rng, (n, k));
        group.throughput(flops(m, k, n));
        group.bench_function(format!("{m}x{k}x{n}"), |bench| {
            bench.iter(|| no_grad(|| black_box(x.matmul_t(&w).expect("sgemm"))))
        });
    }
    // The 1800→2 layer's weight gradient dZᵀ·X: m = 2, k = 1000 (batch), n = 1800.
    let dz = randn(&mut rng, (1000, 2));
    let x = randn(&mut rng, (1000, 1800));
    group.throughput(flops(2, 1000, 1800));
    group.bench_function("2x1000x1800", |bench| {
        bench.iter(|| no_grad(|| black_box(dz.t_matmul(&x).expect("sgemm"))))
    });
    group.finish();
}

/// One optimizer step: forward, loss, backward, update.
fn step(loss: impl Fn() -> Result<Tensor>, opt: &mut dyn Optimizer) {
    let loss = loss().expect("loss");
    let grads = loss.backward().expect("backward");
    opt.step(&grads).expect("optimizer step");
    black_box(loss);
}

fn train_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("train_step");

    // (a) The paper's Figure 1 model: linear 1800→2, no bias, full batch 1000, mean CE, SGD.
    {
        let x = randn(&mut rng, (1000, 1800));
        let y = random_labels(&mut rng, 1000, 2);
        let model =
            Linear::new(1800, 2, false, Init::PyTorchDefault, &mut rng, &dev).expect("model");
        let mut opt = Sgd::new(model.parameters(), 1e-2).expect("optimizer");
        group.bench_function("linear_1800x2_sgd", |bench| {
            bench.iter(|| {
                step(
                    || {
                        model
                            .forward(&x)?
                            .shifted_cross_entropy(&y, None, None, Reduction::Mean)
                    },
                    &mut opt,
                )
            })
        });
        // The same step through the fused linear + cross-entropy op (one pass over x).
        group.bench_function("linear_1800x2_sgd_fused", |bench| {
            bench.iter(|| {
                step(
                    || {
                        x.linear_shifted_cross_entropy(
                            &model.weight,
                            None,
                            &y,
                            None,
                            None,
                            Reduction::Mean,
                        )
                        .map(|(loss, _)| loss)
                    },
                    &mut opt,
                )
            })
        });
    }

    // (b) MLP 392→390→390→2, ReLU, Xavier init, Adam (lr 1e-3, L2 weight decay 1e-4), CE.
    for batch in [64, 1024] {
        let x = randn(&mut rng, (batch, 392));
        let y = random_labels(&mut rng, batch, 2);
        let model = Mlp::new(
            &[392, 390, 390, 2],
            Activation::Relu,
            true,
            Init::XavierUniform,
            &mut rng,
            &dev,
        )
        .expect("model");
        let mut opt = Adam::new(model.parameters(), 1e-3, 1e-4).expect("optimizer");
        group.bench_function(format!("mlp_392_390_390_2_adam_b{batch}"), |bench| {
            bench.iter(|| {
                step(
                    || {
                        model
                            .forward(&x)?
                            .shifted_cross_entropy(&y, None, None, Reduction::Mean)
                    },
                    &mut opt,
                )
            })
        });
    }

    // (c) MLP 31→300→300→1, tanh, Adam (lr 1e-3), MSE, batch 20.
    {
        let x = randn(&mut rng, (20, 31));
        let target = randn(&mut rng, (20, 1));
        let model = Mlp::new(
            &[31, 300, 300, 1],
            Activation::Tanh,
            true,
            Init::PyTorchDefault,
            &mut rng,
            &dev,
        )
        .expect("model");
        let mut opt = Adam::new(model.parameters(), 1e-3, 0.0).expect("optimizer");
        group.bench_function("mlp_31_300_300_1_tanh_adam_b20", |bench| {
            bench.iter(|| step(|| model.forward(&x)?.mse(&target), &mut opt))
        });
    }
    group.finish();
}

fn xent(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("xent");
    for (n, classes) in [(65536, 10), (8192, 1000)] {
        let z = randn(&mut rng, (n, classes)).variable();
        let s = randn(&mut rng, (n, classes));
        let y = random_labels(&mut rng, n, classes);
        group.throughput(Throughput::BytesDecimal((12 * n * classes + 4 * n) as u64));
        let id = format!("N{n}_C{classes}");
        group.bench_function(format!("fused/{id}"), |bench| {
            bench.iter(|| {
                let loss = z
                    .shifted_cross_entropy(&y, Some(&s), None, Reduction::Mean)
                    .expect("fused loss");
                black_box(loss.backward().expect("backward"))
            })
        });
        group.bench_function(format!("composite/{id}"), |bench| {
            bench.iter(|| {
                let loss = z
                    .broadcast_add(&s)
                    .and_then(|u| u.log_softmax())
                    .and_then(|l| l.gather(&y))
                    .and_then(|p| p.mean_all())
                    .and_then(|m| m.neg())
                    .expect("composite loss");
                black_box(loss.backward().expect("backward"))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = sgemm, train_step, xent
}
criterion_main!(benches);
