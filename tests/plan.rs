//! Sweeps planned as jobs (`--plan`, `memaware job`): every job of every phase, run as
//! separate processes in any order inside a phase, ends with the files of a local run; jobs
//! refuse to run before their inputs exist and name what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{files_under, memaware, scratch, text, untimed};
use serde_json::Value;

/// Every file under `dir`, JSON with its timings removed, as (relative path, content).
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let content = match p.extension().and_then(|x| x.to_str()) {
                Some("json") => {
                    untimed(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
                        .to_string()
                }
                Some("safetensors") => format!("{:?}", std::fs::read(&p).unwrap()),
                _ => std::fs::read_to_string(&p).unwrap(),
            };
            (p.strip_prefix(dir).unwrap().to_path_buf(), content)
        })
        .collect()
}

fn ok(args: &[&str]) -> String {
    let o = memaware(args);
    assert!(
        o.status.success(),
        "memaware {args:?} failed:\n{}",
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn fails(args: &[&str]) -> String {
    let o = memaware(args);
    assert!(!o.status.success(), "memaware {args:?} succeeded");
    text(&o.stderr)
}

/// The plan's phases and their job counts.
fn phases(plan: &Path) -> Vec<(String, usize)> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(plan.join("plan.json")).unwrap()).unwrap();
    v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["jobs"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

const SWEEP: [&str; 14] = [
    "sweep",
    "--data",
    "interpretable:n=300,d=30",
    "--method",
    "erm,mat,group_dro",
    "--steps",
    "30",
    "--checkpoint-freq",
    "10",
    "--draws",
    "3",
    "--seeds",
    "3",
    "--seed=4",
];

#[test]
fn a_planned_sweep_run_job_by_job_writes_what_a_local_sweep_writes() {
    let dir = scratch("plan-sweep");
    let (local, planned, plan) = (dir.join("local"), dir.join("planned"), dir.join("plan"));
    let local_s = local.to_str().unwrap();
    let planned_s = planned.to_str().unwrap();
    let plan_s = plan.to_str().unwrap();
    ok(&[&SWEEP[..], &["--out", local_s]].concat());
    let printed = ok(&[&SWEEP[..], &["--out", planned_s, "--plan", plan_s]].concat());
    assert!(printed.contains("submit.sh"), "{printed}");
    let script = std::fs::read_to_string(plan.join("submit.sh")).unwrap();
    assert!(script.contains("--dependency=\"afterok:$id\""), "{script}");
    let phases = phases(&plan);
    let names: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["xrm-draws", "xrm-seeds", "draws", "reruns", "finish"]
    );
    // 3 methods × 3 draws; reruns: at most one winner per criterion (2) per method, 2 seeds.
    assert_eq!(phases[2].1, 9);
    assert_eq!(phases[3].1, 3 * 2 * 2);

    // A job whose inputs are missing says which phase must run first.
    let err = fails(&["job", "--plan", plan_s, "--phase", "draws", "--index", "0"]);
    assert!(
        err.contains("xrm-draws") && err.contains("must finish first"),
        "{err}"
    );
    let err = fails(&["job", "--plan", plan_s, "--phase", "finish"]);
    assert!(err.contains("must finish first"), "{err}");

    for (name, jobs) in &phases {
        if name == "finish" {
            continue;
        }
        // Last index first: a job depends on nothing but earlier phases.
        for i in (0..*jobs).rev() {
            ok(&[
                "job",
                "--plan",
                plan_s,
                "--phase",
                name,
                "--index",
                &i.to_string(),
            ]);
        }
        // A job run twice changes nothing.
        ok(&["job", "--plan", plan_s, "--phase", name, "--index", "0"]);
    }
    assert!(
        !planned
            .join("interpretable")
            .join("erm")
            .join("sweep.json")
            .exists(),
        "only finish writes the summaries"
    );
    ok(&["job", "--plan", plan_s, "--phase", "finish"]);
    assert_eq!(files(&local), files(&planned));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_planned_table_run_as_array_tasks_writes_the_local_table() {
    let dir = scratch("plan-table1");
    let (local, planned, plan) = (dir.join("local"), dir.join("planned"), dir.join("plan"));
    let table = |out: &Path| -> Vec<String> {
        [
            "table1",
            "--no-builtin",
            "--data",
            "interpretable:n=200,d=20",
            "--data",
            "interpretable:n=240,d=20,sigma=0.5",
            "--methods",
            "erm,mat",
            "--steps",
            "21",
            "--draws",
            "2",
            "--seeds",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let args = |v: &[String]| -> Vec<String> { v.to_vec() };
    let local_args = args(&table(&local));
    ok(&local_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut plan_args = table(&planned);
    plan_args.extend(["--plan".to_string(), plan.to_str().unwrap().to_string()]);
    ok(&plan_args.iter().map(String::as_str).collect::<Vec<_>>());
    for (name, jobs) in phases(&plan) {
        for i in 0..jobs {
            // As a Slurm array task: the index comes from the environment.
            let o = Command::new(env!("CARGO_BIN_EXE_memaware"))
                .args(["job", "--plan", plan.to_str().unwrap(), "--phase", &name])
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .output()
                .unwrap();
            assert!(o.status.success(), "{name} {i}: {}", text(&o.stderr));
        }
    }
    assert_eq!(files(&local), files(&planned));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn job_arguments_are_checked() {
    let dir = scratch("plan-errors");
    let plan = dir.join("plan");
    let plan_s = plan.to_str().unwrap();
    let out = dir.join("out");
    ok(&[
        &SWEEP[..],
        &["--out", out.to_str().unwrap(), "--plan", plan_s],
    ]
    .concat());
    let err = fails(&["job", "--plan", plan_s, "--phase", "draws", "--index", "9"]);
    assert!(
        err.contains("has 9 jobs") && err.contains("past the end"),
        "{err}"
    );
    let err = fails(&["job", "--plan", plan_s, "--phase", "draws"]);
    assert!(err.contains("SLURM_ARRAY_TASK_ID"), "{err}");
    let err = fails(&[
        "job",
        "--plan",
        plan_s,
        "--phase",
        "selection",
        "--index",
        "0",
    ]);
    assert!(err.contains("no phase `selection`"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_memaware"))
        .args(["job", "--plan", plan_s, "--phase", "draws"])
        .env("SLURM_ARRAY_TASK_ID", "x1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("`x1`"), "{}", text(&o.stderr));
    let err = fails(&["job", "--plan", dir.to_str().unwrap(), "--phase", "draws"]);
    assert!(err.contains("plan.json"), "{err}");
    // A plan from another version is refused, not half-used.
    let path = plan.join("plan.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["crate_version"] = Value::from("0.0.0-other");
    std::fs::write(&path, v.to_string()).unwrap();
    let first_job = [
        "job",
        "--plan",
        plan_s,
        "--phase",
        "xrm-draws",
        "--index",
        "0",
    ];
    let err = fails(&first_job);
    assert!(err.contains("0.0.0-other"), "{err}");
    std::fs::write(&path, "{\"format\": ").unwrap();
    let err = fails(&first_job);
    assert!(err.contains("plan.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn first_xrm_output_feeds_every_seed_and_skips_xrm_reruns() {
    let dir = scratch("plan-xrm-first");
    let (out, plan) = (dir.join("out"), dir.join("plan"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "sweep",
            "--data",
            "interpretable:n=300,d=30",
            "--method",
            "mat",
            "--steps",
            "30",
            "--checkpoint-freq",
            "10",
            "--draws",
            "2",
            "--seeds",
            "3",
            "--xrm-output",
            "first",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let plan_args = args(&["--plan", plan.to_str().unwrap()]);
    ok(&plan_args.iter().map(String::as_str).collect::<Vec<_>>());
    let names: Vec<String> = phases(&plan).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["xrm-draws", "draws", "reruns", "finish"]);
    let local = args(&[]);
    ok(&local.iter().map(String::as_str).collect::<Vec<_>>());
    let root = out.join("interpretable");
    let mut xrm_runs: Vec<String> = std::fs::read_dir(root.join("xrm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("draw"))
        .collect();
    xrm_runs.sort();
    assert_eq!(
        xrm_runs,
        ["draw00_seed0", "draw01_seed0"],
        "XRM ran at seed 0 only"
    );
    let mut reruns = 0;
    for e in std::fs::read_dir(root.join("mat")).unwrap() {
        let p = e.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let run: Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("run.json")).unwrap()).unwrap();
        assert_eq!(run["xrm_seed"], 0, "{}", p.display());
        reruns += usize::from(run["seed"] != 0);
    }
    assert_eq!(reruns, 2, "the winner ran at seeds 1 and 2");
    // The per-seed default reruns XRM: another configuration for the same folder.
    let per_seed: Vec<String> = local
        .iter()
        .map(|a| {
            if a == "first" {
                "per-seed".into()
            } else {
                a.clone()
            }
        })
        .collect();
    let err = fails(&per_seed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("another configuration"), "{err}");

    // Beside a method that reads its own seed's output (as officially), XRM is rerun, and
    // MAT still reads seed 0's.
    let mixed: Vec<String> = local
        .iter()
        .map(|a| match a.as_str() {
            "mat" => "mat,xrm_group_dro".to_string(),
            _ if a == out.to_str().unwrap() => dir.join("mixed").to_str().unwrap().to_string(),
            _ => a.clone(),
        })
        .collect();
    ok(&mixed.iter().map(String::as_str).collect::<Vec<_>>());
    let root = dir.join("mixed").join("interpretable");
    assert!(
        root.join("xrm").join("draw00_seed1").exists()
            || root.join("xrm").join("draw01_seed1").exists()
    );
    for (method, own_seed) in [("mat", false), ("xrm_group_dro", true)] {
        for e in std::fs::read_dir(root.join(method)).unwrap() {
            let p = e.unwrap().path();
            if !p.is_dir() {
                continue;
            }
            let run: Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("run.json")).unwrap())
                    .unwrap();
            let expected = if own_seed {
                run["seed"].clone()
            } else {
                Value::from(0)
            };
            assert_eq!(run["xrm_seed"], expected, "{}", p.display());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
