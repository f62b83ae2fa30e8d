//! The crate's layers point down: cli → repro → recipes → {algo, report} → {eval, nn, optim,
//! data} → ops → {autograd, tensor} → backend, with the leaf modules (rng, shape, io, buffer,
//! progress, and error below them) usable from anywhere. This test reads `src/` and fails on
//! any `crate::` path that points up or across, on CPU or CUDA backend internals used outside
//! `backend/`, on a `Storage::` match outside `backend/` and `tensor.rs`, and on progress bars
//! outside `cli/`.

use std::path::{Path, PathBuf};

/// The level of each top-level module: a module may name modules of a lower level only (and
/// `tensor` ↔ `autograd`, which are one layer split in two files).
fn level(module: &str) -> Option<u32> {
    Some(match module {
        "error" => 0,
        "rng" | "shape" | "io" | "progress" | "buffer" => 1,
        "backend" => 2,
        "tensor" | "autograd" => 3,
        "ops" => 4,
        "nn" | "optim" | "data" | "eval" => 5,
        "algo" | "report" => 6,
        "recipes" => 7,
        "repro" => 8,
        "cli" => 9,
        "lib" | "main" => 10,
        _ => return None,
    })
}

/// The source with comments removed (line comments and doc comments), so that doc links to
/// other layers do not count.
fn code_of(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a source names through `crate::` paths (grouped imports included).
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// Every rule the file `relative` (a path under `src/`, with `/`) breaks.
fn violations(relative: &str, source: &str) -> Vec<String> {
    let module = relative
        .split('/')
        .next()
        .unwrap_or(relative)
        .trim_end_matches(".rs");
    let code = code_of(source);
    let mut found = Vec::new();
    let Some(own) = level(module) else {
        return vec![format!(
            "{relative}: module `{module}` has no layer in this test"
        )];
    };
    for named in named_modules(&code) {
        let Some(theirs) = level(&named) else {
            continue;
        };
        let same_layer = matches!(
            (module, named.as_str()),
            ("tensor", "autograd") | ("autograd", "tensor")
        );
        if named != module && theirs >= own && !same_layer {
            found.push(format!("{relative}: `crate::{named}` points up or across"));
        }
    }
    if module != "backend" {
        for internal in ["backend::cpu", "backend::cuda"] {
            if code.contains(&format!("crate::{internal}")) {
                found.push(format!("{relative}: uses `{internal}` internals"));
            }
        }
    }
    if module != "backend" && module != "tensor" && code.contains("Storage::") {
        found.push(format!(
            "{relative}: matches on `Storage::` outside the backend"
        ));
    }
    if module != "cli" && code.contains("indicatif") {
        found.push(format!("{relative}: draws progress bars outside `cli`"));
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut found = Vec::new();
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        let source = std::fs::read_to_string(path).expect("a readable source file");
        found.extend(violations(&relative, &source));
    }
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_checker_catches_each_kind_of_breach() {
    let cases = [
        ("repro/figure1.rs", "use crate::cli::common::write_json;"),
        (
            "algo/train.rs",
            "use crate::backend::cpu::argmax_first_max;",
        ),
        ("algo/sweep.rs", "use crate::report::table::TableCell;"),
        (
            "algo/xrm.rs",
            "if let crate::backend::Storage::Cuda(s) = x {}",
        ),
        ("ops/mod.rs", "use crate::{nn::Linear, error::Result};"),
        ("eval/metrics.rs", "use crate::algo::train::predict;"),
        (
            "repro/figure3.rs",
            "let bar = indicatif::ProgressBar::new(3);",
        ),
    ];
    for (file, line) in cases {
        assert!(
            !violations(file, line).is_empty(),
            "{file}: `{line}` was not caught"
        );
    }
    // Downward paths and doc links are fine.
    assert!(violations(
        "algo/train.rs",
        "use crate::{backend::Device, ops::Reduction};"
    )
    .is_empty());
    assert!(violations(
        "eval/selection.rs",
        "//! rendered by [`crate::report::table`]"
    )
    .is_empty());
}
