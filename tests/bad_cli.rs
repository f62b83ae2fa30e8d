//! The `memaware` binary under bad input: every numeric flag of every subcommand given a
//! negative, zero, NaN, infinite, huge or non-numeric value; bad `--data interpretable:…`
//! options; a run that fails before its first checkpoint; features files with the same stem;
//! damaged phase-1 outputs (`xrm.json`, `xrm.safetensors`); damaged run records and
//! `checkpoints.jsonl` fed to `memaware report`.
//!
//! Each case asserts its exact outcome: a non-zero exit with an error that names the flag (or
//! file) and what is allowed, no panic, and no files left that could pass for a result; or an
//! accepted input whose run completes with finite numbers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{assert_ok, memaware, scratch, text};
use serde_json::Value;

/// A tiny data set: every run on it takes a fraction of a second.
const TINY: &str = "interpretable:n=40,d=8";

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Every file and folder under `dir`, relative to it.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A clean failure: non-zero exit, no panic, stderr containing every one of `words`.
#[track_caller]
fn assert_fails(out: &Output, what: &str, words: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: expected a failure, got success:\n{}",
        text(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked:\n{stderr}");
    assert!(
        !stderr.contains("unexpected argument"),
        "{what}: the value never reached the flag:\n{stderr}"
    );
    for w in words {
        assert!(stderr.contains(w), "{what}: stderr lacks `{w}`:\n{stderr}");
    }
    stderr
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// numeric flags

/// What a flag accepts, and so which values are bad and what the error must say.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A whole number from 1 to 1e9.
    Count,
    /// A whole number from 0 to 2^64 − 1.
    Seed,
    /// A float above 0, at most 1e4.
    Positive,
    /// A float from 0 to 1e4.
    NonNegative,
    /// A float in [0, 1).
    Momentum,
    /// A float in (0, 1).
    Share,
    /// A whole number >= 1 or `full`.
    BatchSize,
    /// A whole number >= 0.
    Size,
}

impl Kind {
    /// Bad values, each with a word the error must contain.
    fn bad_values(self) -> Vec<(&'static str, &'static str)> {
        let whole = "whole number";
        let number = "number";
        match self {
            Kind::Count => vec![
                ("-1", whole),
                ("-5", whole),
                ("0", whole),
                ("1.5", "not a whole number"),
                ("1e3", "not a whole number"),
                ("nan", "not a whole number"),
                ("inf", "not a whole number"),
                ("-inf", "not a whole number"),
                ("1000000001", "too large"),
                ("99999999999999999999999999999999999999999999", "too large"),
                ("abc", "not a whole number"),
                ("", "not a whole number"),
            ],
            Kind::Seed => vec![
                ("-1", whole),
                ("1.5", "not a whole number"),
                ("nan", "not a whole number"),
                ("inf", "not a whole number"),
                ("18446744073709551616", "too large"),
                ("abc", "not a whole number"),
            ],
            Kind::Positive => vec![
                ("-1", "above 0"),
                ("-0.5", "above 0"),
                ("0", "above 0"),
                ("nan", "NaN"),
                ("NaN", "NaN"),
                ("inf", "infinite"),
                ("-inf", "infinite"),
                ("1e40", "infinite"),
                ("1e5", "at most 10000"),
                ("abc", "not a number"),
                ("", "not a number"),
            ],
            Kind::NonNegative => vec![
                ("-1", "from 0 to 10000"),
                ("-1e-9", "from 0 to 10000"),
                ("nan", "NaN"),
                ("inf", "infinite"),
                ("1e40", "infinite"),
                ("1e5", "from 0 to 10000"),
                ("abc", "not a number"),
            ],
            Kind::Momentum => vec![
                ("-0.1", "not including, 1"),
                ("1", "not including, 1"),
                ("1.5", "not including, 1"),
                ("nan", "NaN"),
                ("inf", "infinite"),
                ("abc", "not a number"),
            ],
            Kind::Share => vec![
                ("0", "strictly between 0 and 1"),
                ("1", "strictly between 0 and 1"),
                ("-0.5", "strictly between 0 and 1"),
                ("nan", "NaN"),
                ("inf", "infinite"),
                ("1e400", "infinite"),
                ("abc", number),
            ],
            Kind::BatchSize => vec![
                ("-5", "or `full`"),
                ("0", "or `full`"),
                ("1.5", "or `full`"),
                ("nan", "or `full`"),
                ("inf", "or `full`"),
                ("abc", "or `full`"),
            ],
            Kind::Size => vec![
                ("-1", whole),
                ("1.5", "not a whole number"),
                ("nan", "not a whole number"),
                ("abc", "not a whole number"),
            ],
        }
    }
}

/// Runs every bad value of every flag of one subcommand: `base` is a valid command line
/// (subcommand first, `--out` last, given as OUT) and `flags` the numeric flags to break. Each
/// must fail at the flag, naming it, and leave the output folder empty. Returns the number
/// of cases.
fn break_flags(tag: &str, base: &[&str], flags: &[(&str, Kind)]) -> usize {
    let out = scratch(tag);
    let mut cases = 0;
    for &(flag, kind) in flags {
        for (value, word) in kind.bad_values() {
            for joined in [false, true] {
                // `--flag value` and `--flag=value`; the empty value only joined.
                if value.is_empty() && !joined {
                    continue;
                }
                let mut args: Vec<String> = Vec::new();
                let mut i = 0;
                while i < base.len() {
                    // Drop the base's own value of this flag.
                    if base[i] == flag {
                        i += 2;
                        continue;
                    }
                    args.push(if base[i] == "OUT" {
                        s(&out).to_string()
                    } else {
                        base[i].to_string()
                    });
                    i += 1;
                }
                if joined {
                    args.push(format!("{flag}={value}"));
                } else {
                    args.push(flag.to_string());
                    args.push(value.to_string());
                }
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let what = format!("{tag} {flag} {value:?}");
                let r = memaware(&argv);
                let err = assert_fails(&r, &what, &[&format!("'{flag}"), word]);
                assert!(err.contains("invalid value"), "{what}:\n{err}");
                assert_eq!(r.status.code(), Some(2), "{what}: clap's usage exit code");
                cases += 1;
            }
        }
    }
    assert_eq!(listing(&out), Vec::<String>::new(), "{tag} left files");
    let _ = std::fs::remove_dir_all(&out);
    cases
}

const RUN_FLAGS: [(&str, Kind); 7] = [
    ("--steps", Kind::Count),
    ("--batch-size", Kind::BatchSize),
    ("--lr", Kind::Positive),
    ("--momentum", Kind::Momentum),
    ("--weight-decay", Kind::NonNegative),
    ("--seed", Kind::Seed),
    ("--data-seed", Kind::Seed),
];

#[test]
fn train_flags() {
    let mut flags = RUN_FLAGS.to_vec();
    flags.extend([
        ("--tau", Kind::Positive),
        ("--eta", Kind::NonNegative),
        ("--jtt-steps", Kind::Count),
        ("--jtt-lambda", Kind::Positive),
        ("--checkpoint-freq", Kind::Count),
    ]);
    let base = [
        "train", "--method", "erm", "--data", TINY, "--steps", "5", "--out", "OUT",
    ];
    assert!(break_flags("train", &base, &flags) > 150);
}

#[test]
fn xrm_flags() {
    let mut flags = RUN_FLAGS.to_vec();
    flags.push(("--log-every", Kind::Count));
    let base = ["xrm", "--data", TINY, "--steps", "5", "--out", "OUT"];
    assert!(break_flags("xrm", &base, &flags) > 100);
}

#[test]
fn sweep_flags() {
    let flags = [
        ("--draws", Kind::Count),
        ("--seeds", Kind::Count),
        ("--steps", Kind::Count),
        ("--checkpoint-freq", Kind::Count),
        ("--xrm-draws", Kind::Count),
        ("--xrm-steps", Kind::Count),
        ("--seed", Kind::Seed),
        ("--data-seed", Kind::Seed),
    ];
    let base = [
        "sweep", "--data", TINY, "--method", "erm", "--draws", "1", "--seeds", "1", "--steps", "5",
        "--out", "OUT",
    ];
    assert!(break_flags("sweep", &base, &flags) > 100);
}

#[test]
fn table1_flags() {
    let flags = [
        ("--draws", Kind::Count),
        ("--seeds", Kind::Count),
        ("--steps", Kind::Count),
        ("--seed", Kind::Seed),
        ("--data-seed", Kind::Seed),
    ];
    let base = [
        "table1",
        "--no-builtin",
        "--data",
        TINY,
        "--methods",
        "erm",
        "--draws",
        "1",
        "--seeds",
        "1",
        "--steps",
        "5",
        "--out",
        "OUT",
    ];
    assert!(break_flags("table1", &base, &flags) > 60);
}

#[test]
fn memscore_flags() {
    let flags = [
        ("--models", Kind::Count),
        ("--share", Kind::Share),
        ("--steps", Kind::Count),
        ("--batch", Kind::Size),
        ("--lr", Kind::Positive),
        ("--tau", Kind::Positive),
        ("--seed", Kind::Seed),
        ("--bin-width", Kind::Positive),
    ];
    let base = [
        "memscore", "--data", TINY, "--models", "2", "--steps", "5", "--out", "OUT",
    ];
    assert!(break_flags("memscore", &base, &flags) > 100);
}

#[test]
fn reproduce_flags() {
    let flags = [
        ("--seeds", Kind::Count),
        ("--epochs", Kind::Count),
        ("--max-steps", Kind::Count),
    ];
    let base = [
        "reproduce",
        "--only",
        "fig1",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--out",
        "OUT",
    ];
    assert!(break_flags("reproduce", &base, &flags) > 60);
}

/// Boundary values that are allowed: the run completes and its numbers are finite.
#[test]
fn edge_values_are_accepted_with_finite_results() {
    let out = scratch("edges");
    let cases: [&[&str]; 6] = [
        &["--momentum", "0", "--weight-decay", "0"],
        &["--batch-size", "99999999999999999999999"],
        &["--batch-size", "full", "--lr", "10000"],
        &["--seed", "18446744073709551615"],
        &["--data-seed", "0", "--seed", "3"],
        &["--optimizer", "sgd", "--momentum", "0.999", "--lr", "1e-30"],
    ];
    for extra in cases {
        let dir = out.join("o");
        let mut args = vec![
            "train",
            "--method",
            "erm",
            "--data",
            TINY,
            "--steps",
            "4",
            "--checkpoint-freq",
            "2",
            "--out",
            s(&dir),
        ];
        args.extend_from_slice(extra);
        let r = memaware(&args);
        assert_ok(&r, &format!("train {extra:?}"));
        let runs = listing(&dir);
        assert_eq!(
            runs.len(),
            3,
            "{extra:?}: one run folder with 2 files: {runs:?}"
        );
        let run = dir.join(&runs[0]);
        let summary = read_json(&run.join("summary.json"));
        assert_eq!(summary["status"], "complete", "{extra:?}");
        let te = &summary["selected"]["va_wga"]["checkpoint"]["te"];
        let acc = te["avg_acc"].as_f64().expect("a test accuracy");
        assert!((0.0..=1.0).contains(&acc), "{extra:?}: {acc}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // A sweep whose last seed is the largest one fits; one past it does not.
    let r = memaware(&[
        "sweep",
        "--data",
        TINY,
        "--method",
        "erm",
        "--draws",
        "1",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--seed",
        "18446744073709551615",
        "--out",
        s(&out.join("sweep")),
    ]);
    assert_fails(&r, "sweep past the last seed", &["`seed`", "largest seed"]);
    assert!(!out.join("sweep").exists());
    let _ = std::fs::remove_dir_all(&out);
}

// ---------------------------------------------------------------------------------------------
// --data interpretable:… options

#[test]
fn interpretable_options_are_checked() {
    let out = scratch("spec");
    let cases: [(&str, &[&str]); 14] = [
        ("n=1.5", &["`n=1.5`", "`n` must be a whole number >= 0"]),
        ("n=-5", &["`n=-5`", "`n` must be a whole number >= 0"]),
        ("n=nan", &["`n=nan`", "`n` must be a whole number >= 0"]),
        ("n=inf", &["`n=inf`", "`n` must be a whole number >= 0"]),
        ("n=1e3", &["`n=1e3`", "`n` must be a whole number >= 0"]),
        ("d=2.5", &["`d=2.5`", "`d` must be a whole number >= 0"]),
        ("d=-1", &["`d=-1`", "`d` must be a whole number >= 0"]),
        (
            "d=99999999999999999999999",
            &["`d` must be a whole number >= 0"],
        ),
        ("n=abc", &["`n=abc`", "`n` must be a whole number >= 0"]),
        (
            "sigma=nan",
            &["`sigma=nan`", "`sigma` must be a finite number"],
        ),
        (
            "sigma=inf",
            &["`sigma=inf`", "`sigma` must be a finite number"],
        ),
        (
            "majority=x",
            &["`majority=x`", "`majority` is not a number"],
        ),
        ("n", &["`n`: expected key=value"]),
        ("bogus=1", &["unknown interpretable option `bogus`"]),
    ];
    for (opts, words) in cases {
        let spec = format!("interpretable:{opts}");
        let r = memaware(&[
            "train",
            "--method",
            "erm",
            "--data",
            &spec,
            "--steps",
            "3",
            "--out",
            s(&out),
        ]);
        let mut all = vec!["invalid argument `data`"];
        all.extend_from_slice(words);
        assert_fails(&r, &spec, &all);
    }
    // Sizes the generator refuses before allocating.
    let r = memaware(&[
        "xrm",
        "--data",
        "interpretable:n=100000000000,d=1800",
        "--out",
        s(&out),
    ]);
    assert_fails(&r, "huge n", &["invalid argument `n`", "more than"]);
    assert_eq!(listing(&out), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&out);
}

// ---------------------------------------------------------------------------------------------
// a failed run leaves nothing that looks like a result

#[test]
fn a_run_that_fails_before_its_first_checkpoint_leaves_no_folder() {
    let out = scratch("failed");
    let r = memaware(&[
        "train",
        "--method",
        "erm",
        "--data",
        "interpretable:n=1,d=2",
        "--steps",
        "3",
        "--out",
        s(&out),
    ]);
    assert_fails(&r, "n=1", &["validation"]);
    assert_eq!(listing(&out), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&out);
}

// ---------------------------------------------------------------------------------------------
// run folder names of features files

#[test]
fn features_files_with_one_stem_get_separate_run_folders() {
    use memaware::data::features::{save_features_npy, save_features_safetensors};
    use memaware::data::synthetic::{interpretable, InterpretableConfig};
    let root = scratch("stems");
    let ds = interpretable(&InterpretableConfig {
        n: 40,
        d: 6,
        ..Default::default()
    })
    .unwrap();
    let a = root.join("a").join("data.safetensors");
    let b = root.join("b").join("data.safetensors");
    let c = root.join("b").join("data");
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(&c).unwrap();
    save_features_safetensors(&ds, &a).unwrap();
    save_features_safetensors(&ds, &b).unwrap();
    save_features_npy(&ds, &c).unwrap();
    let out = root.join("runs");
    let mut labels = Vec::new();
    for file in [&a, &b, &c] {
        let r = memaware(&[
            "train",
            "--method",
            "erm",
            "--data",
            s(file),
            "--steps",
            "3",
            "--out",
            s(&out),
        ]);
        assert_ok(&r, &file.display().to_string());
        let stdout = text(&r.stdout);
        assert!(stdout.contains("digest of its full path"), "{stdout}");
        labels = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    }
    labels.sort();
    assert_eq!(labels.len(), 3, "three runs, three folders: {labels:?}");
    for l in &labels {
        assert!(l.starts_with("erm-data-") && l.ends_with("-seed0"), "{l}");
        assert_eq!(l.len(), "erm-data-12345678-seed0".len(), "{l}");
    }
    // The same file by another path keeps its folder.
    let again = root.join("a").join(".").join("data.safetensors");
    let r = memaware(&[
        "train",
        "--method",
        "erm",
        "--data",
        s(&again),
        "--steps",
        "3",
        "--out",
        s(&out),
    ]);
    assert_ok(&r, "same file, other path");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
    // table1 refuses two columns with one label.
    let t = root.join("t1");
    let r = memaware(&[
        "table1",
        "--no-builtin",
        "--data",
        s(&a),
        "--data",
        s(&b),
        "--quick",
        "--out",
        s(&t),
    ]);
    assert_fails(
        &r,
        "table1 with two data.safetensors",
        &["invalid argument `data`", "would share", "`data`"],
    );
    assert!(!t.exists());
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// damaged phase-1 outputs

/// One XRM output folder for the whole test binary.
fn xrm_output() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("xrm");
        let r = memaware(&["xrm", "--data", TINY, "--steps", "20", "--out", s(&out)]);
        assert_ok(&r, "memaware xrm");
        out.join("xrm-interpretable-n40-d8-seed0")
    })
}

#[test]
fn damaged_xrm_outputs_are_named() {
    let good = xrm_output();
    let root = scratch("xrm-damaged");
    let json = std::fs::read(good.join("xrm.json")).unwrap();
    let tensors = std::fs::read(good.join("xrm.safetensors")).unwrap();
    type Damage = fn(&[u8]) -> Vec<u8>;
    let damages: [(&str, Damage); 5] = [
        ("empty", |_| Vec::new()),
        ("truncated", |b| b[..b.len() / 2].to_vec()),
        ("garbage", |_| b"\x00\xffnot this at all".to_vec()),
        ("one byte", |b| b[..1].to_vec()),
        ("doubled", |b| [b, b].concat()),
    ];
    let mut n = 0;
    for file in ["xrm.json", "xrm.safetensors"] {
        for (name, damage) in damages {
            n += 1;
            let dir = root.join(format!("case{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("xrm.json"), &json).unwrap();
            std::fs::write(dir.join("xrm.safetensors"), &tensors).unwrap();
            let orig = std::fs::read(dir.join(file)).unwrap();
            std::fs::write(dir.join(file), damage(&orig)).unwrap();
            let out = root.join(format!("out{n}"));
            let r = memaware(&[
                "train",
                "--method",
                "mat",
                "--data",
                TINY,
                "--steps",
                "3",
                "--xrm",
                s(&dir),
                "--out",
                s(&out),
            ]);
            assert_fails(&r, &format!("{file} {name}"), &[file]);
            assert!(!out.exists(), "{file} {name}: a run folder was left");
        }
    }
    // A missing file, and a JSON record of the wrong shape.
    for (file, bytes) in [
        ("xrm.json", None),
        ("xrm.safetensors", None),
        ("xrm.json", Some(b"{}".to_vec())),
        ("xrm.json", Some(b"[1, 2, 3]".to_vec())),
    ] {
        n += 1;
        let dir = root.join(format!("case{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("xrm.json"), &json).unwrap();
        std::fs::write(dir.join("xrm.safetensors"), &tensors).unwrap();
        match bytes {
            None => std::fs::remove_file(dir.join(file)).unwrap(),
            Some(b) => std::fs::write(dir.join(file), b).unwrap(),
        }
        let out = root.join(format!("out{n}"));
        let r = memaware(&[
            "train",
            "--method",
            "mat",
            "--data",
            TINY,
            "--steps",
            "3",
            "--xrm",
            s(&dir),
            "--out",
            s(&out),
        ]);
        assert_fails(&r, &format!("{file} missing or reshaped"), &[file]);
        assert!(!out.exists());
    }
    // XRM output of other data.
    let r = memaware(&[
        "train",
        "--method",
        "mat",
        "--data",
        "interpretable:n=50,d=8",
        "--steps",
        "3",
        "--xrm",
        s(good),
        "--out",
        s(&root.join("other")),
    ]);
    assert_fails(&r, "other data", &["xrm"]);
    assert!(!root.join("other").exists());
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// damaged run records fed to `memaware report`

/// One finished `train` run folder for the whole test binary.
fn finished_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("run");
        let r = memaware(&[
            "train",
            "--method",
            "erm",
            "--data",
            TINY,
            "--steps",
            "6",
            "--checkpoint-freq",
            "2",
            "--out",
            s(&out),
        ]);
        assert_ok(&r, "memaware train");
        out.join("erm-interpretable-n40-d8-seed0")
    })
}

/// Copies the finished run into `root/name/run`, applies `damage` to its `file`, runs
/// `memaware report` on `root/name` and returns the output and the report folder.
fn report_on(root: &Path, name: &str, file: &str, damage: &dyn Fn(&[u8]) -> Vec<u8>) -> Output {
    let good = finished_run();
    let dir = root.join(name).join("run");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(good).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let orig = std::fs::read(dir.join(file)).unwrap_or_default();
    std::fs::write(dir.join(file), damage(&orig)).unwrap();
    memaware(&["report", s(&root.join(name))])
}

/// Asserts the report of a damaged run: it succeeds, lists the run as left out for `why`,
/// names the damaged file (and line), and puts no row in the table.
#[track_caller]
fn assert_left_out(r: &Output, root: &Path, case: &str, why: &str, damaged: Option<&str>) {
    assert_ok(r, case);
    let stdout = text(&r.stdout);
    let run = root.join(case).join("run");
    let listed = format!("- {}: ", run.display());
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&listed))
        .unwrap_or_else(|| panic!("{case}: the run is not listed:\n{stdout}"));
    assert!(line.contains(why), "{case}: `{line}` should say `{why}`");
    assert!(line.ends_with("(left out)"), "{case}: `{line}`");
    match damaged {
        Some(d) => assert!(
            stdout.contains(&format!("Damaged files:\n- {}{d}", run.display())),
            "{case}: `{d}` not listed as damaged:\n{stdout}"
        ),
        None => assert!(!stdout.contains("Damaged files"), "{case}:\n{stdout}"),
    }
    // The table has its header and no row.
    let report = std::fs::read_to_string(root.join(case).join("report.md")).unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows, ["| Method |", "|---|"], "{case}: {report}");
}

#[test]
fn damaged_run_records_are_reported() {
    let root = scratch("report");
    type Damage = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let unknown = "summary.json is damaged: cannot tell whether it finished";
    let cases: Vec<(&str, &str, Damage, &str, Option<&str>)> = vec![
        (
            "summary-empty",
            "summary.json",
            Box::new(|_| Vec::new()),
            unknown,
            Some("/summary.json: invalid JSON: EOF while parsing a value"),
        ),
        (
            "summary-truncated",
            "summary.json",
            Box::new(|b| b[..b.len() / 2].to_vec()),
            unknown,
            Some("/summary.json: invalid JSON: EOF while parsing"),
        ),
        (
            "summary-garbage",
            "summary.json",
            Box::new(|_| b"\xff\xfe garbage".to_vec()),
            unknown,
            Some("/summary.json: stream did not contain valid UTF-8"),
        ),
        (
            "summary-failed",
            "summary.json",
            Box::new(|b| {
                String::from_utf8_lossy(b)
                    .replacen("\"complete\": true", "\"complete\": false", 1)
                    .replacen("\"error\": null", "\"error\": \"out of memory\"", 1)
                    .into_bytes()
            }),
            "failed: out of memory",
            None,
        ),
        (
            "checkpoints-empty",
            "checkpoints.jsonl",
            Box::new(|_| Vec::new()),
            "0 of the 4 checkpoints recorded read back from checkpoints.jsonl",
            None,
        ),
        (
            "checkpoints-cut",
            "checkpoints.jsonl",
            Box::new(|b| b[..b.len() - 30].to_vec()),
            "1 damaged line(s) in checkpoints.jsonl; 3 of the 4 checkpoints recorded read back",
            Some("/checkpoints.jsonl, line 4: EOF while parsing"),
        ),
        (
            "checkpoints-garbage-line",
            "checkpoints.jsonl",
            Box::new(|b| [b"not json\n".as_slice(), b].concat()),
            "1 damaged line(s) in checkpoints.jsonl",
            Some("/checkpoints.jsonl, line 1: "),
        ),
        (
            "checkpoints-nan",
            "checkpoints.jsonl",
            Box::new(|b| {
                String::from_utf8_lossy(b)
                    .replacen("\"avg_acc\":", "\"avg_acc\":NaN,\"x\":", 1)
                    .into_bytes()
            }),
            "1 damaged line(s) in checkpoints.jsonl; 3 of the 4 checkpoints recorded read back",
            Some("/checkpoints.jsonl, line 1: "),
        ),
    ];
    for (case, file, damage, why, damaged) in &cases {
        let r = report_on(&root, case, file, damage);
        assert_left_out(&r, &root, case, why, *damaged);
    }
    // A damaged run next to a good one: the good one alone fills the table.
    let r = report_on(&root, "mixed", "checkpoints.jsonl", &|b: &[u8]| b.to_vec());
    assert_ok(&r, "good run");
    let report = std::fs::read_to_string(root.join("mixed/report.md")).unwrap();
    assert!(
        report.lines().filter(|l| l.starts_with('|')).count() == 3,
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
