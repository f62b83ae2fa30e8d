//! Resuming: a training run stopped at a checkpoint continues from its saved state to the
//! bits of an uninterrupted run; a sweep rerun on its folder keeps finished runs, redoes the
//! others, and refuses another configuration unless told to overwrite; the report lists
//! interrupted runs and damaged lines instead of failing.

mod common;

use std::path::{Path, PathBuf};

use common::files_under;
use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::sweep::{
    run_label, run_sweeps, Estimator, MethodKind, MethodPlan, RunRecord, RunStatus,
    CHECKPOINTS_FILE, RUN_FILE, SWEEP_FILE,
};
use memaware::algo::{run_method_with, Method, TrainConfig};
use memaware::data::batch::Batcher;
use memaware::data::synthetic::{interpretable, InterpretableConfig};
use memaware::data::Dataset;
use memaware::eval::selection::{Criterion, StepZero};
use memaware::io::{read_json, read_jsonl_lenient, write_json, Digest};
use memaware::recipes::{preset_sweep, Family, Sizes};
use memaware::{cli, Error};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memaware-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data() -> Dataset {
    interpretable(&InterpretableConfig {
        n: 120,
        d: 30,
        sigma_eps: 0.5,
        seed: 3,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn batcher_state_rebuilds_the_same_batches() {
    let mut b = Batcher::new(23, 5, 9).unwrap();
    for _ in 0..13 {
        b.next_batch();
    }
    let mut again = Batcher::from_state(&b.state()).unwrap();
    for _ in 0..20 {
        assert_eq!(b.next_batch().to_vec(), again.next_batch().to_vec());
    }
    let mut bad = b.state();
    bad.permutations = 0;
    assert!(Batcher::from_state(&bad).is_err());
}

#[test]
fn digests_and_lenient_lines() {
    let mut a = Digest::new();
    a.str("ab").str("c");
    let mut b = Digest::new();
    b.str("a").str("bc");
    assert_ne!(a.hex(), b.hex());
    let dir = temp_dir("lines");
    let p = dir.join("x.jsonl");
    std::fs::write(&p, "{\"a\": 1}\n{\"a\": \n\n{\"a\": 3}\n").unwrap();
    let (ok, bad) = read_jsonl_lenient::<serde_json::Value>(&p).unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].line, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run stopped by an error at its 4th checkpoint (after which more lines were written than
/// the state counts) continues from the state of the 3rd, and ends with the checkpoints and
/// final loss of an uninterrupted run, for SGD with momentum under GroupDRO and for Adam.
#[test]
fn a_stopped_run_continues_to_the_same_bits() {
    let ds = data();
    let dir = temp_dir("train");
    for (name, optimizer, method) in [
        (
            "sgd",
            OptimizerSpec::Sgd {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-3,
            },
            Method::GroupDro { eta: 0.05 },
        ),
        (
            "adam",
            OptimizerSpec::Adam {
                lr: 1e-2,
                weight_decay: 1e-4,
            },
            Method::Erm,
        ),
    ] {
        let cfg = |sub: &str| {
            let run = dir.join(name).join(sub);
            std::fs::create_dir_all(&run).unwrap();
            TrainConfig {
                steps: 97,
                batch_size: 16,
                optimizer: optimizer.clone(),
                checkpoint_freq: 10,
                seed: 5,
                checkpoints_path: Some(run.join(CHECKPOINTS_FILE)),
                state_dir: Some(run),
                ..Default::default()
            }
        };
        let spec = ModelSpec::linear_no_bias();
        let whole =
            run_method_with(&ds, &method, &spec, &cfg("whole"), None, &mut |_| Ok(())).unwrap();
        let stopped = cfg("stopped");
        let mut seen = 0;
        let err = run_method_with(&ds, &method, &spec, &stopped, None, &mut |_| {
            seen += 1;
            if seen == 4 {
                Err(Error::Data("stop".into()))
            } else {
                Ok(())
            }
        });
        assert!(err.is_err());
        let state_dir = stopped.state_dir.clone().unwrap();
        assert!(
            state_dir.join("state.safetensors").is_file(),
            "{name}: a state was saved"
        );
        let resumed =
            run_method_with(&ds, &method, &spec, &stopped, None, &mut |_| Ok(())).unwrap();
        assert_eq!(
            resumed.outcome.checkpoints, whole.outcome.checkpoints,
            "{name}"
        );
        assert_eq!(
            resumed.outcome.final_train_loss.to_bits(),
            whole.outcome.final_train_loss.to_bits(),
            "{name}"
        );
        assert_eq!(
            resumed.outcome.group_dro_q, whole.outcome.group_dro_q,
            "{name}"
        );
        let a = std::fs::read(cfg("whole").checkpoints_path.unwrap()).unwrap();
        let b = std::fs::read(stopped.checkpoints_path.unwrap()).unwrap();
        assert_eq!(a, b, "{name}: the checkpoint files are the same bytes");
        assert!(
            !state_dir.join("state.safetensors").exists(),
            "the state is removed at the end"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sweep_files(dir: &Path) -> Vec<(PathBuf, String)> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl" || x == "json"))
        .map(|p| {
            // Timings differ from run to run.
            let text = std::fs::read_to_string(&p).unwrap();
            let kept: String = text
                .lines()
                .filter(|l| !l.contains("steps_per_s"))
                .collect::<Vec<_>>()
                .join("\n");
            (p.strip_prefix(dir).unwrap().to_path_buf(), kept)
        })
        .collect()
}

#[test]
fn a_sweep_rerun_keeps_finished_runs_and_refuses_another_configuration() {
    let ds = data();
    let out = temp_dir("sweep");
    let mut cfg = preset_sweep(
        Family::Features,
        Sizes {
            steps: 30,
            draws: 2,
            seeds: 2,
        },
        0,
    );
    cfg.checkpoint_freq = 10;
    cfg.space.lr_log10 = (-3.0, -1.0);
    let plans: Vec<MethodPlan> = [MethodKind::Erm, MethodKind::Mat]
        .into_iter()
        .map(|kind| MethodPlan {
            kind,
            criteria: vec![Criterion::VaWga, Criterion::VaGiWga],
        })
        .collect();
    run_sweeps(&ds, &plans, &cfg, &out, false, &|_| {}).unwrap();
    let reference = sweep_files(&out);
    let run = |label: &str| out.join("mat").join(label);

    // Interrupt by hand: one run back to `running` with a truncated file, one run gone, the
    // sweep files gone.
    let r0 = run(&run_label(0, 0));
    let mut rec: RunRecord = read_json(&r0.join(RUN_FILE)).unwrap();
    assert_eq!(rec.status, RunStatus::Complete);
    assert_eq!(rec.checkpoints, 4, "final counters are written");
    rec.status = RunStatus::Running;
    write_json(&r0.join(RUN_FILE), &rec).unwrap();
    let cps = std::fs::read_to_string(r0.join(CHECKPOINTS_FILE)).unwrap();
    let first = cps.lines().next().unwrap();
    std::fs::write(r0.join(CHECKPOINTS_FILE), format!("{first}\n{{\"step\": 1")).unwrap();
    std::fs::remove_dir_all(out.join("erm").join(run_label(1, 0))).unwrap();
    std::fs::remove_file(out.join("mat").join(SWEEP_FILE)).unwrap();

    // The report lists what is wrong instead of failing.
    let report = cli::report::build_report(std::slice::from_ref(&out), &[], false).unwrap();
    assert!(report.excluded.iter().any(|e| e.source == r0 && e.excluded));
    assert!(report
        .damaged
        .iter()
        .any(|d| d.path == r0.join(CHECKPOINTS_FILE) && d.line.is_some()));
    assert!(report
        .table
        .rows
        .iter()
        .any(|(r, _)| r.starts_with("MAT (va_wga) [")));

    run_sweeps(&ds, &plans, &cfg, &out, false, &|_| {}).unwrap();
    assert_eq!(
        sweep_files(&out),
        reference,
        "the rerun ends as the first run did"
    );

    let mut other = cfg.clone();
    other.steps = 31;
    let err = run_sweeps(&ds, &plans, &other, &out, false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("config.steps"), "{err}");
    run_sweeps(&ds, &plans, &other, &out, true, &|_| {}).unwrap();
    let rec: RunRecord = read_json(&run(&run_label(0, 0)).join(RUN_FILE)).unwrap();
    assert_eq!(rec.steps, 31);
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--estimator kfold:K` runs phase 1 with K-fold cross-fitting: its outputs are saved and
/// loaded like XRM's, a rerun keeps them, and the estimator (like the step-0 rule) is part
/// of the configuration a rerun must match.
#[test]
fn a_kfold_sweep_resumes_and_its_estimator_is_in_the_digest() {
    let ds = data();
    let out = temp_dir("kfold");
    let mut cfg = preset_sweep(
        Family::Features,
        Sizes {
            steps: 20,
            draws: 2,
            seeds: 2,
        },
        0,
    );
    cfg.checkpoint_freq = 10;
    cfg.space.lr_log10 = (-3.0, -1.0);
    cfg.xrm.estimator = "kfold:3".parse().unwrap();
    assert_eq!(cfg.xrm.estimator, Estimator::Kfold { folds: 3 });
    assert_eq!(cfg.xrm.estimator.to_string(), "kfold:3");
    let plans = vec![MethodPlan {
        kind: MethodKind::Mat,
        criteria: vec![Criterion::VaWga, Criterion::VaGiWga],
    }];
    let set = run_sweeps(&ds, &plans, &cfg, &out, false, &|_| {}).unwrap();
    let phase = set.xrm.as_ref().expect("MAT needs phase 1");
    assert_eq!(phase.outputs.len(), 2);
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("kfold"), "{manifest}");
    let reference = sweep_files(&out);

    // A rerun loads every phase-1 output and run instead of training them again.
    let xrm_run = out.join("xrm").join(run_label(0, 0));
    let before = std::fs::metadata(xrm_run.join(RUN_FILE))
        .unwrap()
        .modified()
        .unwrap();
    run_sweeps(&ds, &plans, &cfg, &out, false, &|_| {}).unwrap();
    assert_eq!(sweep_files(&out), reference);
    let after = std::fs::metadata(xrm_run.join(RUN_FILE))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the finished phase-1 run is kept");

    // Another estimator, or another step-0 rule, is another configuration.
    let mut xrm = cfg.clone();
    xrm.xrm.estimator = Estimator::Xrm;
    let err = run_sweeps(&ds, &plans, &xrm, &out, false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("estimator"), "{err}");
    let mut keep = cfg.clone();
    keep.step_zero = StepZero::Keep;
    let err = run_sweeps(&ds, &plans, &keep, &out, false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("step_zero"), "{err}");
    for bad in ["kfold", "kfold:1", "kfold:x", "xrm:2", "cv:3"] {
        assert!(bad.parse::<Estimator>().is_err(), "{bad}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
