//! Same seed → bitwise-identical results, whatever the number of threads.
//!
//! Training runs inside rayon pools of 1, 2 and 3 threads (what `RAYON_NUM_THREADS` sets for
//! the global pool). The sizes are chosen so that the parallel paths run: elementwise work
//! and reductions on ≥ 2^15 elements (`PAR_MIN_ELEMS`), general GEMMs above 2^21
//! multiply-adds (256×128×128 ≈ 4.2M), the thin GEMM paths of an 1800→2 layer at batch 1000
//! (3.6M), and the fused cross-entropy on ≥ 2^15 logits.

use memaware::nn::{Activation, Init, Linear, Mlp, Module};
use memaware::optim::{Adam, Optimizer, Sgd};
use memaware::{Device, Indices, Reduction, Result, Rng, Tensor};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Runs `f` on a fresh rayon pool of `threads` threads.
fn with_threads<T: Send>(
    threads: usize,
    f: impl FnOnce() -> T + Send,
) -> std::result::Result<T, rayon::ThreadPoolBuildError> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?
        .install(f))
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.to_vec()?.iter().map(|v| v.to_bits()).collect())
}

fn all_bits(params: &[(String, Tensor)]) -> Result<Vec<(String, Vec<u32>)>> {
    params
        .iter()
        .map(|(n, t)| Ok((n.clone(), bits(t)?)))
        .collect()
}

/// A random classification set: `n` examples of `d` features, labels from a random linear
/// teacher over `classes` classes.
fn dataset(rng: &mut Rng, n: usize, d: usize, classes: usize) -> Result<(Tensor, Vec<u32>)> {
    let x = rng.normal_vec(n * d);
    let teacher = rng.normal_vec(d * classes);
    let y = x
        .chunks(d)
        .map(|row| {
            let scores: Vec<f32> = (0..classes)
                .map(|c| {
                    row.iter()
                        .zip(&teacher[c * d..(c + 1) * d])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            (0..classes)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .expect("at least one class") as u32
        })
        .collect();
    Ok((Tensor::from_vec(x, (n, d), &Device::Cpu)?, y))
}

/// 50 Adam steps of a 20→128→128→3 ReLU MLP on minibatches of 256 drawn from 4096 examples.
fn train_mlp(seed: u64) -> Result<Vec<(String, Vec<u32>)>> {
    let mut rng = Rng::new(seed);
    let (x, y) = dataset(&mut rng, 4096, 20, 3)?;
    let mlp = Mlp::new(
        &[20, 128, 128, 3],
        Activation::Relu,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &Device::Cpu,
    )?;
    let mut opt = Adam::new(mlp.parameters(), 1e-3, 1e-4)?;
    let mut last_loss = f32::NAN;
    for _ in 0..50 {
        let rows = rng.choice(4096, 256);
        let batch = Indices::from_usize(&rows, &Device::Cpu)?;
        let labels = Indices::new(rows.iter().map(|&r| y[r]).collect(), &Device::Cpu)?;
        let loss = mlp
            .forward(&x.index_select(&batch)?)?
            .shifted_cross_entropy(&labels, None, None, Reduction::Mean)?;
        last_loss = loss.to_scalar()?;
        opt.step(&loss.backward()?)?;
    }
    assert!(
        last_loss.is_finite() && last_loss < 1.0986,
        "training made progress: {last_loss}"
    );
    all_bits(&mlp.named_parameters())
}

/// 10 SGD steps of the paper's 1800→2 linear model, full batch of 1000.
fn train_thin_linear(seed: u64) -> Result<Vec<(String, Vec<u32>)>> {
    let mut rng = Rng::new(seed);
    let (x, y) = dataset(&mut rng, 1000, 1800, 2)?;
    let labels = Indices::new(y, &Device::Cpu)?;
    let shift = Tensor::randn(&mut rng, (1000, 2), 0.5, &Device::Cpu)?;
    let lin = Linear::new(1800, 2, false, Init::PyTorchDefault, &mut rng, &Device::Cpu)?;
    let mut opt = Sgd::with_options(lin.parameters(), 1e-2, 0.9, 0.0, 1e-3, false)?;
    for _ in 0..10 {
        let loss =
            lin.forward(&x)?
                .shifted_cross_entropy(&labels, Some(&shift), None, Reduction::Mean)?;
        opt.step(&loss.backward()?)?;
    }
    all_bits(&lin.named_parameters())
}

#[test]
fn mlp_training_is_bitwise_identical_across_thread_counts() -> TestResult {
    let one = with_threads(1, || train_mlp(42))??;
    for threads in [2, 3] {
        let many = with_threads(threads, || train_mlp(42))??;
        assert!(
            one == many,
            "parameters differ between 1 and {threads} threads"
        );
    }
    Ok(())
}

#[test]
fn thin_linear_training_is_bitwise_identical_across_thread_counts() -> TestResult {
    let one = with_threads(1, || train_thin_linear(5))??;
    for threads in [2, 3] {
        let many = with_threads(threads, || train_thin_linear(5))??;
        assert!(
            one == many,
            "parameters differ between 1 and {threads} threads"
        );
    }
    Ok(())
}

#[test]
fn same_seed_same_result_other_seed_other_result() -> TestResult {
    let a = with_threads(2, || train_mlp(7))??;
    let b = with_threads(2, || train_mlp(7))??;
    assert!(a == b, "the same seed gave different parameters");
    let c = with_threads(2, || train_mlp(8))??;
    for ((name, pa), (_, pc)) in a.iter().zip(&c) {
        assert!(pa != pc, "{name} is identical under seeds 7 and 8");
    }
    Ok(())
}

/// Every parallel kernel on its own, forward and backward, outputs compared bit for bit.
fn kernel_outputs() -> Result<Vec<Vec<u32>>> {
    let mut rng = Rng::new(99);
    let dev = Device::Cpu;
    let mut out = Vec::new();
    // Fused cross-entropy: 4096 × 10 rows in parallel, with shift and weights.
    let z = Tensor::randn(&mut rng, (4096, 10), 2.0, &dev)?.variable();
    let s = Tensor::randn(&mut rng, (4096, 10), 1.0, &dev)?;
    let w = Tensor::rand_uniform(&mut rng, 4096, 0.1, 2.0, &dev)?;
    let y = Indices::new((0..4096).map(|_| rng.below(10) as u32).collect(), &dev)?;
    let loss = z.shifted_cross_entropy(&y, Some(&s), Some(&w), Reduction::WeightedMean)?;
    out.push(bits(&loss)?);
    out.push(bits(loss.backward()?.require(&z)?)?);
    // Softmax, log-softmax, elementwise maps and reductions on 3 × 10^5 elements, whose
    // fixed-order total spans several chunks.
    let big = Tensor::randn(&mut rng, (300, 1000), 1.0, &dev)?.variable();
    let loss = big
        .log_softmax()?
        .broadcast_mul(&big.softmax()?)?
        .tanh()?
        .sum_keepdim(0)?
        .sum_all()?;
    out.push(bits(&loss)?);
    out.push(bits(loss.backward()?.require(&big)?)?);
    let cube = Tensor::randn(&mut rng, (8, 64, 128), 1.0, &dev)?;
    for axis in 0..3 {
        out.push(bits(&cube.sum(axis)?)?);
        out.push(bits(&cube.max(axis)?)?);
    }
    out.push(bits(&cube.sum_all()?)?);
    // Every GEMM path just above the parallel threshold (2^21 ≈ 2.1M multiply-adds), in
    // every transpose variant: general (m > 64 rows), thin output, thin left.
    for (m, k, n) in [
        (200, 128, 100),
        (1200, 900, 2),
        (2, 1100, 1000),
        (800, 900, 3),
    ] {
        let a = Tensor::randn(&mut rng, (m, k), 1.0, &dev)?;
        let at = Tensor::randn(&mut rng, (k, m), 1.0, &dev)?;
        let b = Tensor::randn(&mut rng, (k, n), 1.0, &dev)?;
        let bt = Tensor::randn(&mut rng, (n, k), 1.0, &dev)?;
        out.push(bits(&a.matmul(&b)?)?);
        out.push(bits(&a.matmul_t(&bt)?)?);
        out.push(bits(&at.t_matmul(&b)?)?);
        out.push(bits(&at.t_matmul_t(&bt)?)?);
    }
    Ok(out)
}

#[test]
fn parallel_kernels_do_not_depend_on_the_thread_count() -> TestResult {
    let one = with_threads(1, kernel_outputs)??;
    for threads in [2, 3] {
        let many = with_threads(threads, kernel_outputs)??;
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(
                a == b,
                "kernel output {i} differs between 1 and {threads} threads"
            );
        }
    }
    Ok(())
}
