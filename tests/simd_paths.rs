//! Same seed → bitwise-identical results, whatever instruction set the crate's kernels use.
//!
//! `MEMAWARE_SIMD` caps the kernels at AVX2 or at the portable code for a whole process; a
//! linear model trained on the Figure-1 data (fused linear + cross-entropy, the dot-product
//! GEMM paths, checkpoint evaluation) must give the same checkpoints and summary on every
//! path the CPU has. (MLPs use the small-dimension FMA kernels, whose bits are documented to
//! differ from the portable code's, so they are not part of this promise.)

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_ok, path_str, scratch, untimed};
use serde_json::Value;

/// `memaware train` (ERM, linear, the Figure-1 data) for `steps` steps under
/// `MEMAWARE_SIMD=simd`, into `out`.
fn run(simd: &str, out: &Path, steps: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memaware"))
        .env("MEMAWARE_SIMD", simd)
        .args([
            "train",
            "--method",
            "erm",
            "--data",
            "interpretable:sigma=0.5",
            "--model",
            "linear",
            "--steps",
            steps,
            "--checkpoint-freq",
            "10",
            "--out",
            path_str(out),
        ])
        .output()
        .expect("the memaware binary runs")
}

/// Trains under `MEMAWARE_SIMD=simd` into `out` and returns checkpoints and summary.
fn train(simd: &str, out: &Path) -> (Vec<Value>, Value) {
    let run = run(simd, out, "40");
    assert_ok(&run, &format!("train with MEMAWARE_SIMD={simd}"));
    let dir = out.join("erm-interpretable-sigma0.5-seed0");
    let jsonl = std::fs::read_to_string(dir.join("checkpoints.jsonl")).expect("checkpoints");
    let checkpoints = jsonl
        .lines()
        .map(|l| untimed(serde_json::from_str(l).expect("one JSON record a line")))
        .collect();
    let summary = std::fs::read(dir.join("summary.json")).expect("summary");
    let summary = untimed(serde_json::from_slice(&summary).expect("summary JSON"));
    (checkpoints, summary)
}

#[test]
fn linear_training_is_bitwise_identical_on_every_simd_path() {
    let tmp = scratch("simd-paths");
    let best = train("avx512", &tmp.join("avx512"));
    for simd in ["avx2", "portable"] {
        let capped = train(simd, &tmp.join(simd));
        assert_eq!(capped.0, best.0, "checkpoints under MEMAWARE_SIMD={simd}");
        assert_eq!(capped.1, best.1, "summary under MEMAWARE_SIMD={simd}");
    }
}

#[test]
fn an_unknown_simd_cap_is_reported_and_ignored() {
    let tmp = scratch("simd-cap-unknown");
    let run = run("sse9", &tmp, "2");
    assert_ok(&run, "train with MEMAWARE_SIMD=sse9");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("MEMAWARE_SIMD=\"sse9\" is not one of avx512, avx2, portable"),
        "{stderr}"
    );
}
