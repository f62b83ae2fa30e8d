//! GPU benchmarks of the CUDA backend (harness-less; `cargo bench --features cuda --bench
//! cuda -- --json PATH`).
//!
//! Timing: warm-up calls, then `calls` back-to-back calls between two device synchronizations
//! (wall clock), repeated; the median per call is reported. Memory-bound numbers are decimal
//! GB/s of bytes read + written, next to the device-to-device copy bandwidth of the same run:
//!
//! - `copy`: a 1 GiB device-to-device copy (2 GiB moved per call);
//! - `xent`: the fused shifted softmax-cross-entropy forward + backward at N·C = 2^26
//!   (N=2^22 C=16; N=2^16 C=1024; N=2048 C=32768) and at MAT's shapes (N ∈ {64, 256},
//!   C ∈ {2, 10}, and N=256 C=10 as PyTorch's script has it), counting `12·N·C + 8·N` bytes
//!   (read z, s; write dz; read y; write the row loss), as benches/pytorch_gpu.py does:
//!   - `fused_kernel`: one call of the backend's fused primitive (loss rows and dz), with
//!     the kernel the plan picks (`fused_kernel_name`),
//!   - `fallback_kernel`: the same call on the scalar fallback kernels (`xent.rs`)
//!     (`xent_small_c`, `xent_warp_row`, `xent_block_row`), for comparison,
//!   - `fused_autograd`: `z.shifted_cross_entropy(y, s, Mean)` and `backward()` through the
//!     tensor API (adds the mean and the upstream-gradient product),
//!   - `composite`: `(z + s).log_softmax().gather(y).mean().neg()` and `backward()`;
//! - training steps: the ColorMNIST MLP 392→390→390→2 (ReLU, batch 1024, Adam 1e-3, weight
//!   decay 1e-4) and the Figure-1 linear model 1800→2 (no bias, full batch 1000, SGD 1e-2),
//!   forward + fused CE + backward + update, in ms per step;
//! - `sgemm_4096`: a 4096³ product, GFLOP/s.
//!
//! Prints a table and, with `--json PATH`, writes the numbers. Without a GPU it prints
//! `SKIP: <reason>` and writes `{"skipped": reason}`. `--emulator` runs the same code on the
//! backend's host emulator with tiny sizes (a smoke test of this program; numbers meaningless).

use std::path::PathBuf;
use std::time::Instant;

use memaware::backend::cuda::CudaDevice;
use memaware::backend::{IndexStorage, Storage, XentArgs};
use memaware::nn::{Activation, Init, Linear, Mlp, Module};
use memaware::optim::{Adam, Optimizer, Sgd};
use memaware::{Device, Indices, Reduction, Result, Rng, Tensor};
use serde_json::{json, Map, Value};

/// The fused cross-entropy kernels (kernels/README.md), to name the one a call ran.
const XENT_KERNELS: [&str; 8] = [
    "xent_group_vec_f32",
    "xent_warp_vec_f32",
    "xent_warp_vec8_f32",
    "xent_block_vec_f32",
    "xent_block_scalar_f32",
    "xent_small_c_f32",
    "xent_warp_row_f32",
    "xent_block_row_f32",
];

struct Options {
    json: Option<PathBuf>,
    emulator: bool,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        json: None,
        emulator: false,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => o.json = args.next().map(PathBuf::from),
            "--emulator" => o.emulator = true,
            // `cargo bench` passes `--bench`; other harness flags are ignored too.
            _ => {}
        }
    }
    o
}

fn write_json(path: &Option<PathBuf>, value: &Value) {
    let Some(path) = path else { return };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    match std::fs::write(path, text + "\n") {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

/// Median milliseconds per call of `f`: `warmup` calls, then `repeats` samples of `calls`
/// back-to-back calls between device synchronizations.
fn time_ms(
    dev: &CudaDevice,
    calls: usize,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        dev.synchronize()?;
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        dev.synchronize()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3 / calls as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

struct Sizes {
    copy_elems: usize,
    big_xent: Vec<(usize, usize)>,
    small_xent: Vec<(usize, usize)>,
    mlp_batch: usize,
    linear_batch: usize,
    sgemm: usize,
    calls_big: usize,
    calls_small: usize,
    repeats: usize,
}

impl Sizes {
    fn gpu() -> Sizes {
        Sizes {
            copy_elems: 1 << 28,
            big_xent: vec![(1 << 22, 16), (1 << 16, 1024), (2048, 32768)],
            small_xent: vec![(64, 2), (64, 10), (256, 2), (256, 10)],
            mlp_batch: 1024,
            linear_batch: 1000,
            sgemm: 4096,
            calls_big: 20,
            calls_small: 1000,
            repeats: 11,
        }
    }

    fn emulator() -> Sizes {
        Sizes {
            copy_elems: 1 << 16,
            big_xent: vec![(1 << 10, 16), (64, 1024), (2, 32768)],
            small_xent: vec![(64, 2), (256, 10)],
            mlp_batch: 16,
            linear_batch: 20,
            sgemm: 64,
            calls_big: 2,
            calls_small: 3,
            repeats: 3,
        }
    }
}

fn run(dev: &CudaDevice, sizes: &Sizes) -> Result<Value> {
    let device = Device::Cuda(dev.clone());
    let mut out = Map::new();
    out.insert("card".into(), json!(dev.name()));
    out.insert("emulated".into(), json!(dev.is_emulated()));
    let mut rng = Rng::new(0);

    // ------------------------------------------------------------------ copy bandwidth
    let n = sizes.copy_elems;
    let src = dev.full(n, 1.0)?;
    let mut dst = dev.zeros(n)?;
    let copy_bytes = 2.0 * 4.0 * n as f64;
    let copy_ms = time_ms(dev, 1, 2 * sizes.repeats, || dev.copy(&src, &mut dst))?;
    let copy_gbs = copy_bytes / (copy_ms * 1e-3) / 1e9;
    drop((src, dst));
    dev.release_pool();
    out.insert(
        "copy".into(),
        json!({"bytes_per_call": copy_bytes, "ms": copy_ms, "GB_per_s": copy_gbs}),
    );
    println!(
        "device-to-device copy {:.0} MiB: {copy_ms:.3} ms, {copy_gbs:.1} GB/s (read + write)",
        4.0 * n as f64 / (1 << 20) as f64
    );

    // ------------------------------------------------------------------ cross-entropy
    let mut xent = Map::new();
    let shapes: Vec<(usize, usize, bool)> = sizes
        .big_xent
        .iter()
        .map(|&(r, c)| (r, c, true))
        .chain(sizes.small_xent.iter().map(|&(r, c)| (r, c, false)))
        .collect();
    for (rows, cols, big) in shapes {
        let calls = if big {
            sizes.calls_big
        } else {
            sizes.calls_small
        };
        let numel = rows * cols;
        let z_host: Vec<f32> = (0..numel).map(|_| rng.normal()).collect();
        let s_host: Vec<f32> = (0..numel).map(|_| rng.normal()).collect();
        let y_host: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
        let bytes = 12.0 * numel as f64 + 8.0 * rows as f64;
        let entry_key = format!("N{rows}_C{cols}");

        // The fused primitive itself.
        let z = Storage::Cuda(dev.storage_from_host(&z_host)?);
        let s = Storage::Cuda(dev.storage_from_host(&s_host)?);
        let y = IndexStorage::Cuda(dev.index_from_host(&y_host)?);
        let scale = 1.0 / rows as f32;
        let counts = || XENT_KERNELS.map(|k| dev.kernel_launches(k).unwrap_or(0));
        let before = counts();
        let kernel_ms = time_ms(dev, calls, sizes.repeats, || {
            z.xent(XentArgs {
                shift: Some(&s),
                labels: &y,
                weights: None,
                rows,
                cols,
                grad_scale: scale,
                write_grad: true,
            })
            .map(drop)
        })?;
        let kernel_name = XENT_KERNELS
            .iter()
            .zip(before.iter().zip(counts()))
            .find(|(_, (b, a))| a > *b)
            .map_or("?", |(k, _)| *k);
        dev.set_xent_fallback_kernels(true);
        let fallback = time_ms(dev, calls, sizes.repeats, || {
            z.xent(XentArgs {
                shift: Some(&s),
                labels: &y,
                weights: None,
                rows,
                cols,
                grad_scale: scale,
                write_grad: true,
            })
            .map(drop)
        });
        dev.set_xent_fallback_kernels(false);
        let fallback_ms = fallback?;
        drop((z, s, y));

        // Through the tensor API: fused, then composite.
        let zt = Tensor::from_slice(&z_host, (rows, cols), &device)?.variable();
        let st = Tensor::from_slice(&s_host, (rows, cols), &device)?;
        let yt = Indices::new(y_host, &device)?;
        let autograd_ms = time_ms(dev, calls, sizes.repeats, || {
            let loss = zt.shifted_cross_entropy(&yt, Some(&st), None, Reduction::Mean)?;
            loss.backward().map(drop)
        })?;
        let composite_ms = time_ms(dev, calls, sizes.repeats, || {
            let loss = zt.add(&st)?.log_softmax()?.gather(&yt)?.mean_all()?.neg()?;
            loss.backward().map(drop)
        })?;
        drop((zt, st, yt));
        dev.release_pool();

        let gbs = |ms: f64| bytes / (ms * 1e-3) / 1e9;
        let entry = json!({
            "N": rows,
            "C": cols,
            "bytes_per_call": bytes,
            "fused_kernel_us": kernel_ms * 1e3,
            "fused_kernel_GB_per_s": gbs(kernel_ms),
            "fused_kernel_pct_of_copy": 100.0 * gbs(kernel_ms) / copy_gbs,
            "fused_kernel_name": kernel_name,
            "fallback_kernel_us": fallback_ms * 1e3,
            "fallback_kernel_GB_per_s": gbs(fallback_ms),
            "fallback_kernel_pct_of_copy": 100.0 * gbs(fallback_ms) / copy_gbs,
            "fused_autograd_us": autograd_ms * 1e3,
            "fused_autograd_GB_per_s": gbs(autograd_ms),
            "composite_us": composite_ms * 1e3,
            "composite_GB_per_s": gbs(composite_ms),
            "calls_per_sample": calls,
        });
        println!(
            "xent {entry_key}: fused kernel {:.2} us ({:.1} GB/s, {:.0}% of copy, {kernel_name}), fallback kernels {:.2} us ({:.0}% of copy), fused via autograd {:.2} us, composite {:.2} us",
            kernel_ms * 1e3,
            gbs(kernel_ms),
            100.0 * gbs(kernel_ms) / copy_gbs,
            fallback_ms * 1e3,
            100.0 * gbs(fallback_ms) / copy_gbs,
            autograd_ms * 1e3,
            composite_ms * 1e3
        );
        xent.insert(entry_key, entry);
    }
    out.insert("xent".into(), Value::Object(xent));

    // ------------------------------------------------------------------ training steps
    let batch = sizes.mlp_batch;
    let x = Tensor::from_vec(
        rng.uniform_vec(batch * 392, 0.0, 1.0),
        (batch, 392),
        &device,
    )?;
    let y = Indices::new((0..batch).map(|_| rng.below(2) as u32).collect(), &device)?;
    let mlp = Mlp::new(
        &[392, 390, 390, 2],
        Activation::Relu,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &device,
    )?;
    let mut adam = Adam::new(mlp.parameters(), 1e-3, 1e-4)?;
    let before = dev.allocations();
    let mlp_ms = time_ms(dev, 20, sizes.repeats, || {
        let loss = mlp
            .forward(&x)?
            .shifted_cross_entropy(&y, None, None, Reduction::Mean)?;
        let grads = loss.backward()?;
        adam.step(&grads)
    })?;
    let steady_allocations = dev.allocations() - before;
    println!("MLP 392-390-390-2 Adam, batch {batch}: {mlp_ms:.4} ms/step");

    let batch = sizes.linear_batch;
    let x = Tensor::from_vec(
        rng.uniform_vec(batch * 1800, -1.0, 1.0),
        (batch, 1800),
        &device,
    )?;
    let y = Indices::new((0..batch).map(|_| rng.below(2) as u32).collect(), &device)?;
    let linear = Linear::new(1800, 2, false, Init::PyTorchDefault, &mut rng, &device)?;
    let mut sgd = Sgd::new(linear.parameters(), 1e-2)?;
    let linear_ms = time_ms(dev, 20, sizes.repeats, || {
        let loss = linear
            .forward(&x)?
            .shifted_cross_entropy(&y, None, None, Reduction::Mean)?;
        let grads = loss.backward()?;
        sgd.step(&grads)
    })?;
    println!("linear 1800->2 SGD, full batch {batch}: {linear_ms:.4} ms/step");
    out.insert(
        "mlp_392_390_390_2_adam_b1024".into(),
        json!({"ms_per_step": mlp_ms, "steps_per_s": 1e3 / mlp_ms, "batch": sizes.mlp_batch,
               "device_allocations_after_warmup": steady_allocations}),
    );
    out.insert(
        "linear_1800x2_sgd".into(),
        json!({"ms_per_step": linear_ms, "steps_per_s": 1e3 / linear_ms, "batch": sizes.linear_batch}),
    );
    drop((x, y, mlp, adam, linear, sgd));
    dev.release_pool();

    // ------------------------------------------------------------------ SGEMM
    let m = sizes.sgemm;
    let a = Storage::Cuda(dev.storage_from_host(&rng.uniform_vec(m * m, -1.0, 1.0))?);
    let b = Storage::Cuda(dev.storage_from_host(&rng.uniform_vec(m * m, -1.0, 1.0))?);
    let gemm_ms = time_ms(dev, 5, sizes.repeats, || {
        a.matmul(&b, (m, m, m), false, false).map(drop)
    })?;
    let gflops = 2.0 * (m as f64).powi(3) / (gemm_ms * 1e-3) / 1e9;
    println!("sgemm {m}^3: {gemm_ms:.3} ms, {gflops:.0} GFLOP/s");
    out.insert(
        "sgemm_4096".into(),
        json!({"M": m, "ms": gemm_ms, "GFLOP_per_s": gflops}),
    );
    drop((a, b));
    dev.release_pool();
    Ok(Value::Object(out))
}

/// The summary table, from the JSON record.
fn print_table(v: &Value) {
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "benchmark", "time", "GB/s", "% copy"
    );
    println!("{}", "-".repeat(71));
    let copy = &v["copy"];
    println!(
        "{:<34} {:>9.3} ms {:>12.1} {:>10}",
        "device-to-device copy",
        f(&copy["ms"]),
        f(&copy["GB_per_s"]),
        "100"
    );
    if let Some(xent) = v["xent"].as_object() {
        for (key, e) in xent {
            for (label, us, gbs) in [
                ("fused", "fused_kernel_us", "fused_kernel_GB_per_s"),
                (
                    "fused, fallback",
                    "fallback_kernel_us",
                    "fallback_kernel_GB_per_s",
                ),
                (
                    "fused+autograd",
                    "fused_autograd_us",
                    "fused_autograd_GB_per_s",
                ),
                ("composite", "composite_us", "composite_GB_per_s"),
            ] {
                let pct = 100.0 * f(&e[gbs]) / f(&copy["GB_per_s"]);
                println!(
                    "{:<34} {:>9.2} us {:>12.1} {:>10.0}",
                    format!("xent {key} {label}"),
                    f(&e[us]),
                    f(&e[gbs]),
                    pct
                );
            }
        }
    }
    for key in ["mlp_392_390_390_2_adam_b1024", "linear_1800x2_sgd"] {
        println!(
            "{:<34} {:>9.4} ms {:>12} {:>10}",
            key,
            f(&v[key]["ms_per_step"]),
            "",
            ""
        );
    }
    println!(
        "{:<34} {:>9.3} ms {:>9.0} GFLOP/s",
        "sgemm 4096^3",
        f(&v["sgemm_4096"]["ms"]),
        f(&v["sgemm_4096"]["GFLOP_per_s"])
    );
}

fn main() {
    let opts = options();
    let opened = if opts.emulator {
        CudaDevice::emulated()
    } else {
        CudaDevice::new(0)
    };
    let dev = match opened {
        Ok(d) => d,
        Err(e) => {
            let reason = e.to_string();
            println!("SKIP: {reason}");
            write_json(&opts.json, &json!({ "skipped": reason }));
            return;
        }
    };
    let sizes = if dev.is_emulated() {
        Sizes::emulator()
    } else {
        Sizes::gpu()
    };
    println!("memaware CUDA benchmarks on {}", dev.name());
    match run(&dev, &sizes) {
        Ok(v) => {
            print_table(&v);
            write_json(&opts.json, &v)
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            write_json(
                &opts.json,
                &json!({ "error": e.to_string(), "card": dev.name() }),
            );
            std::process::exit(1);
        }
    }
}
