//! The `memaware` binary end to end on a small Figure-1 data set: `xrm`, then `train` with MAT
//! and ERM; the files each writes and their JSON fields; the errors a user can cause (missing
//! or truncated XRM output, XRM output of another data set, MAT without `--xrm`, a bad
//! `--method` or `--data`), each a message and a non-zero exit without a panic; `--help`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{assert_ok, memaware, path_str, scratch, text};
use serde_json::Value;

const DATA: &str = "interpretable:n=200,d=300";
const DATA_LABEL: &str = "interpretable-n200-d300";

/// Removes a test's folder once the test has passed.
fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Asserts a clean failure: non-zero exit, no panic, stderr containing every `needle`.
fn assert_fails(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got success");
    assert!(
        !stderr.contains("panicked"),
        "the binary panicked:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks `{needle}`:\n{stderr}"
        );
    }
}

/// Runs `memaware xrm` once for the whole test binary and returns its output folder.
fn xrm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("xrm");
        let run = memaware(&[
            "xrm",
            "--data",
            DATA,
            "--steps",
            "60",
            "--out",
            path_str(&out),
        ]);
        assert_ok(&run, "memaware xrm");
        let dir = out.join(format!("xrm-{DATA_LABEL}-seed0"));
        let stdout = text(&run.stdout);
        assert!(
            stdout.contains(path_str(&dir)),
            "xrm should say where it saved:\n{stdout}"
        );
        for needle in ["flip rate", "held-out accuracy", "inferred groups"] {
            assert!(
                stdout.contains(needle),
                "xrm output lacks {needle}:\n{stdout}"
            );
        }
        dir
    })
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn train(method: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--method",
        method,
        "--data",
        DATA,
        "--steps",
        "30",
        "--checkpoint-freq",
        "10",
        "--out",
        path_str(out),
    ];
    args.extend_from_slice(extra);
    memaware(&args)
}

/// Checks a finished training folder and returns its summary.
fn check_run_folder(dir: &Path, steps: usize, freq: usize, with_inferred: bool) -> Value {
    let jsonl = std::fs::read_to_string(dir.join("checkpoints.jsonl")).expect("checkpoints.jsonl");
    let records: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON record"))
        .collect();
    let expected_steps: Vec<u64> = (0..steps)
        .filter(|s| s % freq == 0 || s + 1 == steps)
        .map(|s| s as u64)
        .collect();
    let steps_seen: Vec<u64> = records
        .iter()
        .map(|r| r["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps_seen, expected_steps);
    for r in &records {
        for split in ["va", "te"] {
            let acc = r[split]["avg_acc"].as_f64().expect("avg_acc");
            assert!((0.0..=1.0).contains(&acc));
            assert_eq!(r[split]["group_count"].as_array().map(Vec::len), Some(4));
        }
        assert_eq!(r["va_gi"].is_object(), with_inferred);
    }

    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["complete"], Value::Bool(true));
    assert_eq!(
        summary["n_checkpoints"].as_u64(),
        Some(records.len() as u64)
    );
    assert_eq!(summary["config"]["steps"].as_u64(), Some(steps as u64));
    assert_eq!(summary["config"]["data"], Value::from(DATA));
    let selected = summary["selected"].as_object().expect("selected");
    let mut criteria: Vec<&str> = selected.keys().map(String::as_str).collect();
    criteria.sort_unstable();
    let mut expected = vec!["va_avg", "va_wga"];
    if with_inferred {
        expected.push("va_gi_wga");
    }
    expected.sort_unstable();
    assert_eq!(criteria, expected);
    for (name, s) in selected {
        let index = s["checkpoint_index"].as_u64().expect("index") as usize;
        // The selected record is one of the recorded checkpoints, verbatim.
        assert_eq!(s["checkpoint"], records[index], "{name}");
        let value = s["value"].as_f64().expect("value");
        let key = match name.as_str() {
            "va_wga" => &records[index]["va"]["worst_group_acc"],
            "va_gi_wga" => &records[index]["va_gi"]["worst_group_acc"],
            _ => &records[index]["va"]["avg_acc"],
        };
        assert_eq!(key.as_f64(), Some(value), "{name}");
        // The last checkpoint after step 0 (the official rule drops step 0) that reaches the
        // best value.
        let values: Vec<f64> = records
            .iter()
            .map(|r| match name.as_str() {
                _ if r["step"].as_u64() == Some(0) => f64::NEG_INFINITY,
                "va_wga" => r["va"]["worst_group_acc"].as_f64().unwrap(),
                "va_gi_wga" => r["va_gi"]["worst_group_acc"].as_f64().unwrap(),
                _ => r["va"]["avg_acc"].as_f64().unwrap(),
            })
            .collect();
        let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(value, best, "{name}");
        assert!(values[index + 1..].iter().all(|&v| v < best), "{name}");
    }
    summary
}

#[test]
fn xrm_writes_its_files() {
    let dir = xrm_dir();
    assert!(dir.join("xrm.safetensors").is_file());
    let record = read_json(&dir.join("xrm.json"));
    assert!(record["final_flip_rate"].as_f64().is_some());
    assert_eq!(
        record["inferred_group_counts_tr"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_u64().unwrap()).sum::<u64>()),
        Some(200)
    );
    assert_eq!(record["config"]["steps"].as_u64(), Some(60));
    // The Figure-1 recipe: plain mean loss, full batch, SGD lr 1e-2.
    assert_eq!(record["config"]["loss"], Value::from("mean"));
    assert_eq!(record["config"]["batch_size"].as_u64(), Some(200));
    assert_eq!(record["model_spec"]["linear"]["bias"], Value::Bool(false));
}

#[test]
fn mat_trains_from_the_xrm_folder() {
    let out = scratch("mat");
    let run = train("mat", &out, &["--xrm", path_str(xrm_dir()), "--tau", "0.1"]);
    assert_ok(&run, "train --method mat");
    let stdout = text(&run.stdout);
    for needle in ["selected by va_wga", "worst-group", "validation", "test"] {
        assert!(stdout.contains(needle), "table lacks `{needle}`:\n{stdout}");
    }
    let dir = out.join(format!("mat-{DATA_LABEL}-seed0"));
    let summary = check_run_folder(&dir, 30, 10, true);
    let tau = summary["config"]["method_spec"]["mat"]["tau"].as_f64();
    assert_eq!(tau.map(|t| t as f32), Some(0.1f32));

    // Passing the xrm command's --out folder instead of its subfolder finds the same output.
    let out2 = scratch("mat-parent");
    let parent = xrm_dir().parent().expect("xrm folder has a parent");
    let run = train("mat", &out2, &["--xrm", path_str(parent)]);
    assert_ok(&run, "train --method mat --xrm <xrm --out>");
    let again =
        std::fs::read_to_string(out2.join(format!("mat-{DATA_LABEL}-seed0/checkpoints.jsonl")))
            .expect("checkpoints");
    let first = std::fs::read_to_string(dir.join("checkpoints.jsonl")).expect("checkpoints");
    assert_eq!(again, first, "same seed, same records");
    clean(&out);
    clean(&out2);
}

#[test]
fn erm_trains_without_xrm() {
    let out = scratch("erm");
    let run = train("erm", &out, &["--select", "va_avg"]);
    assert_ok(&run, "train --method erm");
    assert!(text(&run.stdout).contains("selected by va_avg"));
    let summary = check_run_folder(&out.join(format!("erm-{DATA_LABEL}-seed0")), 30, 10, false);
    assert_eq!(summary["config"]["method"], Value::from("erm"));
    assert_eq!(summary["config"]["xrm"], Value::Null);
    clean(&out);
}

#[test]
fn a_missing_xrm_folder_is_named() {
    let out = scratch("missing");
    let missing = out.join("no-such-xrm");
    let run = train("mat", &out, &["--xrm", path_str(&missing)]);
    assert_fails(&run, &["no-such-xrm", "not a folder"]);
    // A folder without the files.
    let empty = out.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = train("mat", &out, &["--xrm", path_str(&empty)]);
    assert_fails(&run, &["xrm.json", "run XRM first"]);
    clean(&out);
}

#[test]
fn a_truncated_xrm_file_is_named() {
    let out = scratch("truncated");
    let copy = out.join("xrm-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["xrm.json", "xrm.safetensors"] {
        std::fs::copy(xrm_dir().join(name), copy.join(name)).unwrap();
    }
    let tensors = copy.join("xrm.safetensors");
    let len = std::fs::metadata(&tensors).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&tensors)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let run = train("mat", &out, &["--xrm", path_str(&copy)]);
    assert_fails(&run, &["xrm.safetensors", "truncated"]);
    clean(&out);
}

#[test]
fn xrm_output_of_other_data_is_rejected() {
    let out = scratch("other-data");
    // Same sizes, another draw of the data: the stored labels differ.
    let run = train(
        "mat",
        &out,
        &["--xrm", path_str(xrm_dir()), "--data-seed", "7"],
    );
    assert_fails(&run, &["y_tr", "another data set"]);
    // Other sizes.
    let run = memaware(&[
        "train",
        "--method",
        "xrm-groupdro",
        "--data",
        "interpretable:n=100,d=300",
        "--steps",
        "5",
        "--xrm",
        path_str(xrm_dir()),
        "--out",
        path_str(&out),
    ]);
    assert_fails(&run, &["xrm.json", "100 training"]);
    clean(&out);
}

#[test]
fn mat_without_xrm_is_an_error() {
    let out = scratch("no-xrm");
    assert_fails(&train("mat", &out, &[]), &["--xrm"]);
    assert_fails(&train("xrm-groupdro", &out, &[]), &["--xrm"]);
    assert_fails(
        &train("erm", &out, &["--select", "va_gi_wga"]),
        &["va_gi_wga", "--xrm"],
    );
    // Nothing ran, so nothing was written.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    clean(&out);
}

#[test]
fn bad_method_and_data_are_errors() {
    let out = scratch("bad-args");
    assert_fails(&train("bogus", &out, &[]), &["bogus", "erm"]);
    let run = memaware(&[
        "train",
        "--method",
        "erm",
        "--data",
        "no-such-data-set",
        "--out",
        path_str(&out),
    ]);
    assert_fails(&run, &["no-such-data-set", "data"]);
    let run = memaware(&[
        "xrm",
        "--data",
        "interpretable:q=1",
        "--out",
        path_str(&out),
    ]);
    assert_fails(&run, &["unknown interpretable option `q`"]);
    let run = memaware(&[
        "xrm",
        "--data",
        DATA,
        "--model",
        "mlp:4:gelu",
        "--out",
        path_str(&out),
    ]);
    assert_fails(&run, &["model", "gelu"]);
    clean(&out);
}

#[test]
fn help_mentions_every_flag() {
    let common = [
        "--data",
        "--data-seed",
        "--model",
        "--steps",
        "--batch-size",
        "--optimizer",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--seed",
        "--device",
        "--out",
    ];
    let xrm_help = text(&memaware(&["xrm", "--help"]).stdout);
    for flag in common.iter().chain(&["--loss", "--log-every"]) {
        assert!(xrm_help.contains(flag), "xrm --help lacks {flag}");
    }
    assert!(xrm_help.contains("Defaults per data set"));
    let train_help = text(&memaware(&["train", "--help"]).stdout);
    for flag in common.iter().chain(&[
        "--method",
        "--xrm",
        "--tau",
        "--eta",
        "--jtt-steps",
        "--jtt-lambda",
        "--checkpoint-freq",
        "--select",
        "--eval-train",
    ]) {
        assert!(train_help.contains(flag), "train --help lacks {flag}");
    }
    for method in [
        "erm",
        "groupdro",
        "jtt",
        "mat",
        "rwg",
        "subg",
        "xrm-groupdro",
    ] {
        assert!(train_help.contains(method), "train --help lacks {method}");
    }
}

#[test]
fn step_zero_keep_lets_step_zero_compete_and_is_recorded() {
    let out = scratch("stepzero");
    let run = train("erm", &out, &["--step-zero", "keep"]);
    assert_ok(&run, "train --step-zero keep");
    let dir = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .expect("a run folder");
    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["step_zero"], Value::from("keep"));
    let jsonl = std::fs::read_to_string(dir.join("checkpoints.jsonl")).unwrap();
    let records: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every checkpoint, step 0 included, competes; the last one reaching the best wins.
    let values: Vec<f64> = records
        .iter()
        .map(|r| r["va"]["worst_group_acc"].as_f64().unwrap())
        .collect();
    let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s = &summary["selected"]["va_wga"];
    assert_eq!(s["value"].as_f64(), Some(best));
    let index = s["checkpoint_index"].as_u64().unwrap() as usize;
    assert!(values[index + 1..].iter().all(|&v| v < best));
    clean(&out);

    // The default is the official rule, and the summary keeps its earlier shape.
    let out = scratch("stepzero-default");
    assert_ok(&train("erm", &out, &[]), "train");
    let dir = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .expect("a run folder");
    assert!(read_json(&dir.join("summary.json"))
        .get("step_zero")
        .is_none());
    clean(&out);
}

#[test]
fn selection_and_estimator_flags_are_offered_and_checked() {
    for (cmd, flags) in [
        ("train", &["--step-zero"][..]),
        ("sweep", &["--step-zero", "--spread", "--estimator"][..]),
        ("table1", &["--step-zero", "--spread", "--estimator"][..]),
        ("report", &["--step-zero", "--spread"][..]),
    ] {
        let help = text(&memaware(&[cmd, "--help"]).stdout);
        for flag in flags {
            assert!(help.contains(flag), "{cmd} --help lacks {flag}");
        }
    }
    let out = scratch("badflags");
    let o = path_str(&out);
    assert_fails(
        &memaware(&["train", "--data", DATA, "--step-zero", "maybe", "--out", o]),
        &["maybe"],
    );
    assert_fails(
        &memaware(&[
            "sweep",
            "--data",
            DATA,
            "--method",
            "mat",
            "--estimator",
            "kfold:1",
            "--out",
            o,
        ]),
        &["kfold:1"],
    );
    assert_fails(
        &memaware(&["table1", "--quick", "--spread", "wide", "--out", o]),
        &["wide"],
    );
    assert_fails(&memaware(&["report", o, "--spread", "wide"]), &["wide"]);
    clean(&out);
}

#[test]
fn a_builtin_name_wins_over_a_folder_of_that_name() {
    let dir = common::scratch("builtin-name");
    // `table1 --out .` creates `waterbirds-like/` itself; a rerun must not read it as features.
    std::fs::create_dir_all(dir.join("waterbirds-like")).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_memaware"))
        .current_dir(&dir)
        .args([
            "table1",
            "--no-builtin",
            "--data",
            "waterbirds-like",
            "--methods",
            "erm",
            "--steps",
            "11",
            "--draws",
            "1",
            "--seeds",
            "1",
            "--out",
            "out",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = std::fs::read_to_string(dir.join("out/table1.json")).unwrap();
    assert!(table.contains("\"d\": 2048"), "the built-in 2048-d set");
    std::fs::remove_dir_all(&dir).unwrap();
}
