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
//! - `roofline` (a table, not a criterion benchmark): this machine's limits measured in the
//!   same run — copy bandwidth with 1 and 2 threads (read + write bytes, a 32 MiB working set
//!   and a 1 GiB one that no cache holds), the bandwidth of `g = z + s` over
//!   2^21 elements (the fused CE's memory traffic without its arithmetic, printed beside the
//!   limits for reference), read bandwidth of an 8 MiB working set (the linear step's input)
//!   and peak FMA throughput (1 and 2 threads, the widest FMA the CPU has) — and each
//!   kernel's speed as a fraction of the limit that binds it: fused CE rows (C = 2, 3, 10,
//!   100, 1000, `N·C ≥ 2^20`) against the 2-thread copy bandwidth of a working set of the
//!   row's own size (16–100 MB: in L3, in DRAM or across both, depending on the machine), the
//!   fused linear + CE step (the bytes of `x` it reads once) against the read bandwidth of an
//!   8 MiB working set and its FLOPs against the FMA peak, GEMM against the FMA peak. The CE
//!   rows and the linear step are timed twice: called from outside rayon's pool (each
//!   parallel op is handed to the pool and back) and from a pool thread, as the CLI runs and
//!   as the copy and read limits are measured. With
//!   `PYTORCH_REFERENCE=path.json` (benches/pytorch_reference.py's output, default
//!   `results/pytorch_reference.json`) PyTorch's figures for the same workloads are printed
//!   beside ours. `cargo bench --bench engine -- roofline` runs the table alone;
//!   `MEMAWARE_SIMD=avx2` or `portable` measures the narrower kernels on a wider CPU.
//!
//! scripts/bench-table.py reads criterion's results and PyTorch's JSON into one table.

use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// One SGD step of a bias-free linear model with mean CE, through the fused linear + CE op.
fn fused_linear_step(x: &Tensor, model: &Linear, y: &Indices, opt: &mut impl Optimizer) {
    step(
        || {
            x.linear_shifted_cross_entropy(&model.weight, None, y, None, None, Reduction::Mean)
                .map(|(loss, _)| loss)
        },
        opt,
    )
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
            bench.iter(|| fused_linear_step(&x, &model, &y, &mut opt))
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

/// Fused CE shapes `(N, C)`: the paper's class counts (2: Waterbirds, CelebA, CivilComments,
/// Figure 1; 3: MultiNLI) at `N = 2^20`, and 10, 100, 1000 classes at `N·C ≥ 2^20` (65536 × 10
/// as in earlier runs).
const XENT_SHAPES: [(usize, usize); 6] = [
    (1 << 20, 2),
    (1 << 20, 3),
    (65536, 10),
    (131072, 10),
    (16384, 100),
    (8192, 1000),
];

fn xent(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("xent");
    for (n, classes) in XENT_SHAPES {
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

/// Seconds per call of `f`: median, min and max over 7 batches of about 0.15 s each, after a
/// warm-up.
fn time_calls(mut f: impl FnMut()) -> [f64; 3] {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(300) || calls < 3 {
        f();
        calls += 1;
    }
    let per_batch = ((0.15 / (start.elapsed().as_secs_f64() / calls as f64)) as u32).max(1);
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            s.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    [t[3], t[0], t[6]]
}

/// Copy bandwidth in decimal GB/s (read + write bytes) over `bytes` of source, on `threads`
/// threads (contiguous halves; `memcpy` within each).
fn copy_bandwidth(bytes: usize, threads: usize) -> [f64; 3] {
    use rayon::prelude::*;
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    let part = n.div_ceil(threads);
    let t = on_threads(threads, || {
        dst.par_chunks_mut(part)
            .zip(src.par_chunks(part))
            .for_each(|(d, s)| d.copy_from_slice(s));
        black_box(&mut dst);
    });
    let gbs = |s: f64| 2.0 * bytes as f64 / s / 1e9;
    [gbs(t[0]), gbs(t[2]), gbs(t[1])]
}

/// Seconds per call of `f` ([`time_calls`]) on a pool of `threads` threads.
fn on_threads(threads: usize, f: impl FnMut() + Send) -> [f64; 3] {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| time_calls(f))
}

/// Bandwidth of `g = z + s` over `elems` floats each (the fused CE's traffic without its
/// arithmetic: two streams read, one written, counted 12 bytes per element as the CE rows
/// count theirs), on `threads` threads in contiguous parts: median, min, max in GB/s.
fn add_stream_bandwidth(elems: usize, threads: usize) -> [f64; 3] {
    use rayon::prelude::*;
    let z: Vec<f32> = (0..elems).map(|i| i as f32).collect();
    let s: Vec<f32> = (0..elems).map(|i| (i % 7) as f32).collect();
    let mut g = vec![0.0f32; elems];
    let part = elems.div_ceil(threads);
    let t = on_threads(threads, || {
        g.par_chunks_mut(part)
            .zip(z.par_chunks(part).zip(s.par_chunks(part)))
            .for_each(|(g, (z, s))| {
                for ((g, &z), &s) in g.iter_mut().zip(z).zip(s) {
                    *g = z + s;
                }
            });
        black_box(&mut g);
    });
    let gbs = |t: f64| 12.0 * elems as f64 / t / 1e9;
    [gbs(t[0]), gbs(t[2]), gbs(t[1])]
}

/// Read-only bandwidth of one pass over `bytes` (a sum with 64 independent partial sums per
/// thread), in GB/s: median, min, max.
fn read_bandwidth(bytes: usize, threads: usize) -> [f64; 3] {
    use rayon::prelude::*;
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let part = n.div_ceil(threads);
    let t = on_threads(threads, || {
        let sums: Vec<f32> = src
            .par_chunks(part)
            .map(|s| {
                let mut acc = [0.0f32; 64];
                for c in s.chunks_exact(64) {
                    for (a, &v) in acc.iter_mut().zip(c) {
                        *a += v;
                    }
                }
                acc.iter().sum()
            })
            .collect();
        black_box(sums);
    });
    let gbs = |s: f64| bytes as f64 / s / 1e9;
    [gbs(t[0]), gbs(t[2]), gbs(t[1])]
}

/// Independent FMA chains per thread: enough to cover the FMA latency on two ports.
const FMA_CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_9);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); FMA_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_9);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); FMA_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let mut total = 0.0;
    for v in acc {
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        total += out.iter().sum::<f32>();
    }
    total
}

/// The widest FMA this CPU has: its name and `f(iters, seed)`, which runs `iters` rounds of
/// `FMA_CHAINS` vector FMAs and returns the FLOPs per round.
fn fma_kernel() -> (&'static str, fn(usize, f32) -> f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return ("AVX-512 FMA", |i, s| unsafe { fma_avx512(i, s) }, 16);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected.
            return ("AVX2 FMA", |i, s| unsafe { fma_avx2(i, s) }, 8);
        }
    }
    (
        "scalar mul+add",
        |i, s| {
            let mut acc = [s; FMA_CHAINS];
            for _ in 0..i {
                for v in acc.iter_mut() {
                    *v = black_box(*v) * 0.999_9 + 1e-7;
                }
            }
            acc.iter().sum()
        },
        1,
    )
}

/// Peak FMA throughput in GFLOP/s on `threads` threads (2 FLOPs per lane per FMA).
fn fma_peak(threads: usize) -> [f64; 3] {
    use rayon::prelude::*;
    let (_, f, lanes) = fma_kernel();
    let iters = 200_000;
    let t = on_threads(threads, || {
        let s: f32 = (0..threads)
            .into_par_iter()
            .map(|i| f(iters, i as f32))
            .sum();
        black_box(s);
    });
    let flops = (threads * iters * FMA_CHAINS * lanes * 2) as f64;
    [flops / t[0] / 1e9, flops / t[2] / 1e9, flops / t[1] / 1e9]
}

/// PyTorch's milliseconds per step for `name`, and its bytes per call when it reports them.
fn pytorch(reference: &Option<serde_json::Value>, name: &str) -> Option<(f64, Option<f64>)> {
    let w = reference.as_ref()?.get("workloads")?.get(name)?;
    let ms = w.get("ms_per_step")?.as_f64()?;
    let bytes = w
        .get("detail")
        .and_then(|d| d.get("bytes_per_call")?.as_f64());
    Some((ms, bytes))
}

/// The roofline table (see the module docs).
fn roofline(_c: &mut Criterion) {
    // Criterion's filter is the first free argument: run the table when there is none or when it
    // names this table.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && a != "--bench");
    if filter.is_some_and(|f| !"roofline".contains(f.as_str())) {
        return;
    }
    let path = std::env::var("PYTORCH_REFERENCE")
        .unwrap_or_else(|_| "results/pytorch_reference.json".to_string());
    let reference: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let (fma_name, _, _) = fma_kernel();
    #[cfg(target_arch = "x86_64")]
    let isa = if is_x86_feature_detected!("avx512f") {
        "AVX-512 used"
    } else if is_x86_feature_detected!("avx2") {
        "AVX2 (no AVX-512)"
    } else {
        "portable"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let isa = "portable";
    let isa = match std::env::var("MEMAWARE_SIMD").as_deref() {
        Ok(cap @ ("avx2" | "portable")) => {
            format!("{isa}, kernels capped at {cap} by MEMAWARE_SIMD")
        }
        _ => isa.to_string(),
    };
    println!(
        "\nroofline on {cpu} ({isa}), rayon {} threads; PyTorch from {}",
        rayon::current_num_threads(),
        if reference.is_some() {
            path.as_str()
        } else {
            "(none)"
        }
    );
    let range = |v: [f64; 3]| format!("{:.1} ({:.1}–{:.1})", v[0], v[1], v[2]);
    let copy_l3 = [1, 2].map(|t| copy_bandwidth(16 << 20, t));
    let copy_dram = [1, 2].map(|t| copy_bandwidth(512 << 20, t));
    let stream = [1, 2].map(|t| add_stream_bandwidth(1 << 21, t));
    let read_x = [1, 2].map(|t| read_bandwidth(8 << 20, t));
    let fma = [1, 2].map(fma_peak);
    println!("limits (median (min–max) of 7 batches):");
    println!(
        "  copy, 32 MiB working set   1 thread {} GB/s, 2 threads {} GB/s",
        range(copy_l3[0]),
        range(copy_l3[1])
    );
    println!(
        "  copy, 1 GiB working set    1 thread {} GB/s, 2 threads {} GB/s",
        range(copy_dram[0]),
        range(copy_dram[1])
    );
    println!(
        "  z + s → g, 24 MiB (12 B/element, the CE's traffic without its arithmetic) 1 thread {} \
         GB/s, 2 threads {} GB/s",
        range(stream[0]),
        range(stream[1])
    );
    println!(
        "  read, 8 MiB working set    1 thread {} GB/s, 2 threads {} GB/s",
        range(read_x[0]),
        range(read_x[1])
    );
    println!(
        "  {fma_name:<26} 1 thread {} GFLOP/s, 2 threads {} GFLOP/s",
        range(fma[0]),
        range(fma[1])
    );
    // Each CE row is held against a 2-thread copy of a working set of its own size: the rows'
    // 16–100 MB sit in L3, in DRAM or across the two depending on the machine's L3 (a fixed
    // 32 MiB copy on a 32 MiB L3 moved 50–91 GB/s between runs), and a kernel moving B bytes
    // cannot beat a copy moving B bytes from the same level.
    let peak = fma[1][0];
    println!(
        "| workload | ours ms | GB/s or GFLOP/s | of limit | PyTorch ms | PyTorch of limit | ours vs PyTorch |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row = |name: String,
               t: [f64; 3],
               amount: f64,
               unit: &str,
               limit: f64,
               torch: Option<(f64, f64)>| {
        let rate = amount / t[0] / 1e9;
        let (tm, tf, ratio) = match torch {
            Some((ms, torch_amount)) => (
                format!("{ms:.3}"),
                format!("{:.0}%", 100.0 * torch_amount / (ms / 1e3) / 1e9 / limit),
                format!("{:.2}×", ms / (t[0] * 1e3)),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        println!(
            "| {name} | {:.3} ({:.3}–{:.3}) | {rate:.1} {unit} | {:.0}% | {tm} | {tf} | {ratio} |",
            t[0] * 1e3,
            t[1] * 1e3,
            t[2] * 1e3,
            100.0 * rate / limit
        );
    };
    let mut rng = Rng::new(3);
    let mut ce_limits = Vec::new();
    for (n, classes) in XENT_SHAPES {
        let z = randn(&mut rng, (n, classes)).variable();
        let s = randn(&mut rng, (n, classes));
        let y = random_labels(&mut rng, n, classes);
        let mut call = || {
            let loss = z
                .shifted_cross_entropy(&y, Some(&s), None, Reduction::Mean)
                .expect("fused loss");
            black_box(loss.backward().expect("backward"));
        };
        let t = time_calls(&mut call);
        // On a pool thread, as the copy above and the CLI run (no hand-over per parallel op).
        let t_pool = rayon::scope(|_| time_calls(&mut call));
        let moved = 12 * n * classes + 4 * n;
        let bytes = moved as f64;
        // Half read, half written, as a copy of `moved / 2` bytes moves.
        let bw = copy_bandwidth(moved / 2, 2)[0];
        ce_limits.push(format!("{:.0} MB {bw:.1} GB/s", bytes / 1e6));
        let torch = pytorch(&reference, &format!("xent_fwd_bwd_N{n}_C{classes}"))
            .map(|(ms, b)| (ms, b.unwrap_or((12 * n * classes + 8 * n) as f64)));
        for (t, caller) in [(t, "outside the pool"), (t_pool, "on a pool thread")] {
            row(
                format!("fused CE fwd+bwd N={n} C={classes}, caller {caller}"),
                t,
                bytes,
                "GB/s",
                bw,
                torch,
            );
        }
    }
    for size in [1024, 2048] {
        let a = randn(&mut rng, (size, size));
        let b = randn(&mut rng, (size, size));
        let t = time_calls(|| {
            no_grad(|| black_box(a.matmul(&b).expect("sgemm")));
        });
        let flops = 2.0 * (size as f64).powi(3);
        let torch = pytorch(&reference, &format!("sgemm_{size}")).map(|(ms, _)| (ms, flops));
        row(format!("sgemm {size}³"), t, flops, "GFLOP/s", peak, torch);
    }
    // The Figure 1 step: linear 1800→2 without bias, batch 1000, mean CE, SGD, through the fused
    // linear + CE op. FLOPs: logits and dW, 2·(2·N·D·C).
    {
        let dev = Device::Cpu;
        let x = randn(&mut rng, (1000, 1800));
        let y = random_labels(&mut rng, 1000, 2);
        let model =
            Linear::new(1800, 2, false, Init::PyTorchDefault, &mut rng, &dev).expect("model");
        let mut opt = Sgd::new(model.parameters(), 1e-2).expect("optimizer");
        let mut one_step = || fused_linear_step(&x, &model, &y, &mut opt);
        let t = time_calls(&mut one_step);
        // On a thread of rayon's pool, as the CLI runs: no hand-over to the pool per op.
        let t_pool = rayon::scope(|_| time_calls(&mut one_step));
        // Two limits: one pass over x (7.2 MB, from L3 or memory) at the read bandwidth of an
        // 8 MiB working set, the time if the arithmetic were free; and its 14.4 MFLOP (logits
        // and dW, multiplies and adds apart as the bits require) at the FMA peak, which the
        // loop's arithmetic reaches first on some CPUs (docs/performance.md).
        let bytes = 4.0 * 1000.0 * 1800.0;
        let flops = 2.0 * (2.0 * 1000.0 * 1800.0 * 2.0);
        let torch = pytorch(&reference, "linear_1800x2_sgd").map(|(ms, _)| (ms, bytes));
        for (t, caller) in [
            (t, "caller outside the pool"),
            (t_pool, "caller on a pool thread"),
        ] {
            row(
                format!("linear 1800→2 SGD step, fused (N=1000), {caller}"),
                t,
                bytes,
                "GB/s",
                read_x[1][0],
                torch,
            );
        }
        row(
            "the same step on a pool thread, its FLOPs against the FMA peak".into(),
            t_pool,
            flops,
            "GFLOP/s",
            peak,
            torch.map(|(ms, _)| (ms, flops)),
        );
    }
    println!(
        "limits: CE rows against a 2-thread copy of their own working set ({}), the linear \
         step (bytes of x) against {:.1} GB/s (2-thread read of 8 MiB) and its FLOPs, and \
         GEMM, against {peak:.1} GFLOP/s (2-thread {fma_name}); PyTorch's CE bytes count \
         int64 labels (8 B/row)",
        ce_limits.join(", "),
        read_x[1][0]
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = sgemm, train_step, xent, roofline
}
criterion_main!(benches);
