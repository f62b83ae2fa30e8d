//! Helpers shared by the integration tests (each test file includes this module and uses a
//! part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use memaware::Tensor;

/// A fresh, empty folder under cargo's per-target scratch directory, unique to this test
/// process: whatever a failed test leaves stays out of the system's temp folder.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("memaware-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Every file under `dir`, in its subfolders too, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("a readable folder") {
            let p = e.expect("a folder entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A JSON value without the fields that measure time (`seconds`, `steps_per_s`), which
/// differ from run to run.
pub fn untimed(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "seconds" | "steps_per_s"))
                .map(|(k, v)| (k, untimed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(untimed).collect()),
        other => other,
    }
}

/// The bits of every value of a tensor, for exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec()
        .expect("tensor values")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The bits of named parameters.
pub fn param_bits(params: &[(String, Tensor)]) -> Vec<(String, Vec<u32>)> {
    params.iter().map(|(n, t)| (n.clone(), bits(t))).collect()
}

/// Runs the `memaware` binary with `args`.
pub fn memaware(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memaware"))
        .args(args)
        .output()
        .expect("the memaware binary runs")
}

/// Process output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path as text (the scratch folders are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Fails the test with both outputs unless the command succeeded.
#[track_caller]
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
