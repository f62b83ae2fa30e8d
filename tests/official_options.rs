//! The official code's settings that issue 21 (item 5) makes reachable, each beside the
//! existing default:
//! - worst-class selection (`va_wca`), the official "no group labels" setting, in `train`,
//!   `sweep` and `report`;
//! - RWG and SUBG on XRM's inferred training groups (`xrm_rwg`, `xrm_subg`), which equal RWG
//!   and SUBG bit for bit when the inferred bits are the true attributes;
//! - class-balanced batches drawn with replacement ([`Sampler::ClassBalanced`], the official
//!   `balanced_batch`): the batch structure, the class frequencies, the same bits for the same
//!   seed whatever the thread count, resuming, and the default left as it was.

mod common;

use std::path::Path;

use common::{assert_ok, memaware, path_str, scratch, text};
use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::sweep::MethodKind;
use memaware::algo::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput};
use memaware::algo::{run_method, run_method_with, Method, MethodOutcome, TrainConfig};
use memaware::data::batch::{
    class_weights_balanced, group_weights_balanced, Sampler, WeightedBatcher,
};
use memaware::data::synthetic::{interpretable, InterpretableConfig};
use memaware::data::{Dataset, Split};
use memaware::eval::selection::{draw, Criterion, HparamSpace};
use memaware::nn::Module;
use memaware::{Device, Error, Rng};
use serde_json::Value;

fn data(n: usize, d: usize, seed: u64) -> Dataset {
    interpretable(&InterpretableConfig {
        n,
        d,
        sigma_eps: 0.5,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn cfg(steps: usize, batch_size: usize, checkpoint_freq: usize) -> TrainConfig {
    TrainConfig {
        seed: 3,
        ..TrainConfig::minibatch(
            steps,
            batch_size,
            OptimizerSpec::Sgd {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-4,
            },
            checkpoint_freq,
        )
    }
}

fn model_bits(model: &dyn Module) -> Vec<(String, Vec<u32>)> {
    common::param_bits(&model.named_parameters())
}

/// Checkpoints (with metrics as bits), final loss and parameters of a run.
fn fingerprint(o: &MethodOutcome) -> (String, u64, Vec<(String, Vec<u32>)>) {
    (
        serde_json::to_string(&o.outcome.checkpoints).unwrap(),
        o.outcome.final_train_loss.to_bits(),
        model_bits(o.outcome.model.as_ref()),
    )
}

fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn balanced(m: Method) -> Method {
    m.with_sampler(Sampler::ClassBalanced)
}

// ---------------------------------------------------------------------------------------------
// Class-balanced sampling

#[test]
fn class_weights_are_the_official_n_over_class_size() {
    let y = [0u32, 0, 0, 1, 2, 2];
    let w = class_weights_balanced(&y, 3).unwrap();
    assert_eq!(w, vec![2.0, 2.0, 2.0, 6.0, 3.0, 3.0]);
    // Every class present carries the same total weight, n.
    for c in 0..3 {
        let total: f32 = y
            .iter()
            .zip(&w)
            .filter(|(&yc, _)| yc == c)
            .map(|(_, w)| w)
            .sum();
        assert_eq!(total, 6.0);
    }
    assert!(class_weights_balanced(&[], 2).is_err());
    assert!(matches!(
        class_weights_balanced(&[0, 2], 2),
        Err(Error::IndexOutOfRange { .. })
    ));
}

#[test]
fn weighted_batches_follow_the_official_epochs_and_balance_classes() {
    // 23 examples, batches of 5: each epoch of 23 draws gives 5, 5, 5, 5 and 3.
    let y: Vec<u32> = (0..23).map(|i| u32::from(i >= 20)).collect();
    let w = class_weights_balanced(&y, 2).unwrap();
    let mut b = WeightedBatcher::new(&w, 5, 9).unwrap();
    assert_eq!(b.batches_per_epoch(), 5);
    let sizes: Vec<usize> = (0..12).map(|_| b.next_batch().len()).collect();
    assert_eq!(sizes, [5, 5, 5, 5, 3, 5, 5, 5, 5, 3, 5, 5]);
    assert_eq!(b.epoch(), 3);
    // A batch at least the set's size is one epoch of n draws with replacement.
    let mut full = WeightedBatcher::new(&w, 1000, 9).unwrap();
    let first = full.next_batch().to_vec();
    assert_eq!(first.len(), 23);
    assert!(first.iter().all(|&i| i < 23));
    let mut sorted = first.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert!(sorted.len() < 23, "draws with replacement repeat examples");

    // 20 examples of class 0, 3 of class 1: each class comes up half the time.
    let mut b = WeightedBatcher::new(&w, 7, 1).unwrap();
    let (mut ones, mut total) = (0usize, 0usize);
    for _ in 0..20_000 {
        for &i in b.next_batch() {
            ones += y[i] as usize;
            total += 1;
        }
    }
    let share = ones as f64 / total as f64;
    let sd = (0.25 / total as f64).sqrt();
    assert!((share - 0.5).abs() < 5.0 * sd, "class 1 share {share}");

    // Same seed, same batches; skipping k batches stands where drawing them does.
    let mut a = WeightedBatcher::new(&w, 5, 4).unwrap();
    let drawn: Vec<Vec<usize>> = (0..9).map(|_| a.next_batch().to_vec()).collect();
    let mut again = WeightedBatcher::new(&w, 5, 4).unwrap();
    for batch in &drawn {
        assert_eq!(again.next_batch(), &batch[..]);
    }
    let mut skipped = WeightedBatcher::new(&w, 5, 4).unwrap();
    skipped.skip(6);
    assert_eq!(skipped.next_batch(), &drawn[6][..]);
    assert_eq!((skipped.epoch(), a.epoch()), (2, 2));
    let mut other = WeightedBatcher::new(&w, 5, 5).unwrap();
    assert_ne!(other.next_batch(), &drawn[0][..]);
    assert!(WeightedBatcher::new(&w, 0, 0).is_err());
    assert!(WeightedBatcher::new(&[], 4, 0).is_err());
}

#[test]
fn sampler_names_parse_and_serialize() {
    for s in [Sampler::Shuffle, Sampler::ClassBalanced] {
        assert_eq!(s.to_string().parse::<Sampler>().unwrap(), s);
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
    assert_eq!(Sampler::default(), Sampler::Shuffle);
    assert_eq!(
        "class-balanced".parse::<Sampler>().unwrap(),
        Sampler::ClassBalanced
    );
    assert!(matches!(
        "balanced".parse::<Sampler>(),
        Err(Error::InvalidArgument {
            name: "sampler",
            ..
        })
    ));
}

#[test]
fn the_default_sampler_changes_nothing_and_rwg_keeps_its_own_balancing() {
    // Shuffled batches need no wrapper: the method, its file form and its bits are as before.
    for m in [Method::Erm, Method::GroupDro { eta: 0.1 }, Method::Subg] {
        assert_eq!(m.clone().with_sampler(Sampler::Shuffle), m);
        assert_eq!(balanced(m.clone()).with_sampler(Sampler::Shuffle), m);
        assert_eq!(m.sampler(), Sampler::Shuffle);
    }
    assert_eq!(serde_json::to_string(&Method::Erm).unwrap(), "\"erm\"");
    let cb = balanced(Method::GroupDro { eta: 0.5 });
    assert_eq!(cb.sampler(), Sampler::ClassBalanced);
    assert_eq!(cb.name(), "group_dro");
    assert!(cb.uses_training_groups());
    assert!(!cb.needs_xrm());
    assert!(balanced(Method::Mat { tau: 0.1 }).needs_xrm());
    let json = serde_json::to_string(&cb).unwrap();
    assert_eq!(
        json,
        r#"{"sampled":{"sampler":"class_balanced","method":{"group_dro":{"eta":0.5}}}}"#
    );
    assert_eq!(serde_json::from_str::<Method>(&json).unwrap(), cb);
    // The official loader ignores balanced_batch for RWG (its group sampler wins).
    assert_eq!(balanced(Method::Rwg), Method::Rwg);
    assert_eq!(balanced(Method::XrmRwg), Method::XrmRwg);
    // Built by hand, the combination is refused, as is a sampler around a sampler.
    let ds = data(60, 10, 1);
    let spec = ModelSpec::linear_no_bias();
    for bad in [
        Method::Sampled {
            sampler: Sampler::ClassBalanced,
            method: Box::new(Method::Rwg),
        },
        Method::Sampled {
            sampler: Sampler::ClassBalanced,
            method: Box::new(balanced(Method::Erm)),
        },
    ] {
        assert!(matches!(
            run_method(&ds, &bad, &spec, &cfg(2, 8, 1), None),
            Err(Error::InvalidArgument {
                name: "sampler",
                ..
            })
        ));
    }
}

/// Same seed, same bits, on pools of 1, 2 and 3 threads, at sizes where the gather and the
/// fused cross-entropy take their parallel paths (1024 × 400 features per batch); another
/// seed or the shuffled batches give other bits.
#[test]
fn class_balanced_training_is_bitwise_identical_across_thread_counts() {
    let ds = data(1200, 400, 2);
    let spec = ModelSpec::linear(true);
    let run = |threads: usize, method: &Method, seed: u64| {
        let c = TrainConfig {
            seed,
            ..cfg(6, 1024, 2)
        };
        with_threads(threads, || {
            fingerprint(&run_method(&ds, method, &spec, &c, None).unwrap())
        })
    };
    for method in [
        balanced(Method::Erm),
        balanced(Method::GroupDro { eta: 0.1 }),
    ] {
        let one = run(1, &method, 3);
        for threads in [2, 3] {
            assert!(
                run(threads, &method, 3) == one,
                "{method:?} on {threads} threads"
            );
        }
        assert!(run(2, &method, 4) != one, "{method:?}: another seed");
    }
    let shuffled = run(2, &Method::Erm, 3);
    assert!(shuffled != run(2, &balanced(Method::Erm), 3));
    // Full batches too: class-balanced draws of n with replacement, not the whole set.
    let full =
        |m: &Method| fingerprint(&run_method(&ds, m, &spec, &cfg(3, usize::MAX, 1), None).unwrap());
    let cb_full = full(&balanced(Method::Erm));
    assert!(cb_full != full(&Method::Erm));
    assert!(with_threads(3, || full(&balanced(Method::Erm))) == cb_full);
}

/// Every method that trains through the loop accepts the sampler, JTT's two stages and SUBG's
/// subset included, deterministically.
#[test]
fn class_balanced_batches_work_for_every_method() {
    let ds = data(120, 30, 4);
    let spec = ModelSpec::linear_no_bias();
    let xrm = run_xrm(&ds, &spec, &xrm_cfg()).unwrap();
    for m in [
        Method::Erm,
        Method::GroupDro { eta: 0.1 },
        Method::Jtt {
            first_stage_steps: 5,
            lambda_up: 5.0,
        },
        Method::Mat { tau: 0.1 },
        Method::Subg,
        Method::XrmGroupDro { eta: 0.1 },
        Method::XrmSubg,
    ] {
        let cb = balanced(m.clone());
        let a = run_method(&ds, &cb, &spec, &cfg(12, 16, 4), Some(&xrm)).unwrap();
        let b = run_method(&ds, &cb, &spec, &cfg(12, 16, 4), Some(&xrm)).unwrap();
        assert!(fingerprint(&a) == fingerprint(&b), "{m:?}");
        assert_eq!(a.method, cb);
        let plain = run_method(&ds, &m, &spec, &cfg(12, 16, 4), Some(&xrm)).unwrap();
        assert!(fingerprint(&a) != fingerprint(&plain), "{m:?}");
        assert_eq!(
            a.subg_rows, plain.subg_rows,
            "{m:?}: the subset is the same"
        );
    }
}

/// A class-balanced run stopped at its 4th checkpoint continues from its saved state (in the
/// `class_balanced/` sub-folder) to the bits of an uninterrupted run; a shuffled run's state
/// in the same folder is never resumed by it.
#[test]
fn a_stopped_class_balanced_run_continues_to_the_same_bits() {
    let ds = data(120, 30, 3);
    let dir = scratch("cb-resume");
    let spec = ModelSpec::linear_no_bias();
    let method = balanced(Method::GroupDro { eta: 0.05 });
    let run_cfg = |sub: &str| {
        let run = dir.join(sub);
        std::fs::create_dir_all(&run).unwrap();
        TrainConfig {
            checkpoints_path: Some(run.join("checkpoints.jsonl")),
            state_dir: Some(run),
            ..cfg(97, 16, 10)
        }
    };
    let whole = run_method_with(
        &ds,
        &method,
        &spec,
        &run_cfg("whole"),
        None,
        &mut |_| Ok(()),
    )
    .unwrap();
    let stop_at = |n: usize| {
        let mut seen = 0;
        move |_: &memaware::eval::selection::Checkpoint| {
            seen += 1;
            if seen == n {
                Err(Error::Data("stop".into()))
            } else {
                Ok(())
            }
        }
    };
    let stopped = run_cfg("stopped");
    assert!(run_method_with(&ds, &method, &spec, &stopped, None, &mut stop_at(4)).is_err());
    let state_dir = stopped.state_dir.clone().unwrap();
    assert!(state_dir.join("class_balanced/state.safetensors").is_file());
    assert!(!state_dir.join("state.safetensors").exists());
    let resumed = run_method_with(&ds, &method, &spec, &stopped, None, &mut |_| Ok(())).unwrap();
    assert!(fingerprint(&resumed) == fingerprint(&whole));
    assert!(!state_dir.join("class_balanced").exists(), "cleaned up");

    // A shuffled run stopped in a folder leaves its state there; the class-balanced run in
    // that folder starts afresh and ends as the uninterrupted one.
    let shared = run_cfg("shared");
    let plain = Method::GroupDro { eta: 0.05 };
    assert!(run_method_with(&ds, &plain, &spec, &shared, None, &mut stop_at(4)).is_err());
    assert!(shared
        .state_dir
        .as_ref()
        .unwrap()
        .join("state.safetensors")
        .is_file());
    let fresh = run_method_with(&ds, &method, &spec, &shared, None, &mut |_| Ok(())).unwrap();
    assert!(fingerprint(&fresh) == fingerprint(&whole));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// RWG and SUBG on XRM's inferred groups

fn xrm_cfg() -> XrmConfig {
    XrmConfig {
        steps: 20,
        batch_size: 32,
        optimizer: OptimizerSpec::plain_sgd(5e-2),
        loss: XrmLoss::ClassBalanced,
        seed: 0,
        device: Device::Cpu,
        log_every: 1,
    }
}

/// XRM's output with its inferred bits replaced by `tr` and `va`.
fn with_bits(x: &XrmOutput, tr: Vec<u32>, va: Vec<u32>) -> XrmOutput {
    XrmOutput {
        inferred_tr: tr,
        inferred_va: va,
        ..x.clone()
    }
}

#[test]
fn inferred_group_methods_equal_the_true_group_ones_when_inference_is_exact() {
    let ds = data(120, 30, 6);
    assert_eq!((ds.classes, ds.n_attr), (2, 2));
    let spec = ModelSpec::linear_no_bias();
    let xrm = run_xrm(&ds, &spec, &xrm_cfg()).unwrap();
    let exact = with_bits(&xrm, ds.train.a.clone(), ds.valid.a.clone());
    let c = cfg(25, 16, 5);
    for (true_groups, inferred) in [
        (Method::Rwg, Method::XrmRwg),
        (Method::Subg, Method::XrmSubg),
    ] {
        let a = run_method(&ds, &true_groups, &spec, &c, Some(&exact)).unwrap();
        let b = run_method(&ds, &inferred, &spec, &c, Some(&exact)).unwrap();
        assert!(fingerprint(&a) == fingerprint(&b), "{inferred:?}");
        assert_eq!(a.row_weights, b.row_weights);
        assert_eq!(a.subg_rows, b.subg_rows);
    }

    // With other bits, the inferred groups `2y + m` decide, not the true ones.
    let mut rng = Rng::new(1);
    let bits: Vec<u32> = (0..ds.train.n).map(|_| rng.below(2) as u32).collect();
    let guessed = with_bits(&xrm, bits.clone(), ds.valid.a.clone());
    let groups: Vec<u32> = ds
        .train
        .y
        .iter()
        .zip(&bits)
        .map(|(&y, &m)| 2 * y + m)
        .collect();
    let rwg = run_method(&ds, &Method::XrmRwg, &spec, &c, Some(&guessed)).unwrap();
    assert_eq!(
        rwg.row_weights.as_deref(),
        Some(&group_weights_balanced(&groups, 4).unwrap()[..])
    );
    let true_rwg = run_method(&ds, &Method::Rwg, &spec, &c, Some(&guessed)).unwrap();
    assert_ne!(rwg.row_weights, true_rwg.row_weights);
    let subg = run_method(&ds, &Method::XrmSubg, &spec, &c, Some(&guessed)).unwrap();
    let kept = subg.subg_rows.unwrap();
    let kept_counts = Split::counts(&kept.iter().map(|&i| groups[i]).collect::<Vec<_>>(), 4);
    let smallest = *Split::counts(&groups, 4)
        .iter()
        .filter(|&&n| n > 0)
        .min()
        .unwrap();
    assert!(
        kept_counts.iter().all(|&n| n == smallest),
        "{kept_counts:?}"
    );
    // Checkpoints carry the inferred-group validation metrics that va_gi_wga selects by.
    assert!(subg.outcome.checkpoints.iter().all(|cp| cp.va_gi.is_some()));

    for m in [Method::XrmRwg, Method::XrmSubg] {
        assert!(m.needs_xrm());
        assert!(!m.uses_training_groups());
        assert!(matches!(
            run_method(&ds, &m, &spec, &c, None),
            Err(Error::InvalidArgument { name: "xrm", .. })
        ));
    }
}

#[test]
fn sweep_kinds_for_inferred_groups() {
    let h = draw(&HparamSpace::paper(), &mut Rng::new(0)).unwrap();
    for (kind, name, label, method) in [
        (MethodKind::XrmRwg, "xrm_rwg", "XRM+RWG", Method::XrmRwg),
        (MethodKind::XrmSubg, "xrm_subg", "XRM+SUBG", Method::XrmSubg),
    ] {
        assert!(MethodKind::ALL.contains(&kind));
        assert!(!MethodKind::TABLE1.contains(&kind));
        assert_eq!(kind.name(), name);
        assert_eq!(kind.label(), label);
        assert_eq!(kind.method(&h, 100), method);
        assert_eq!(kind.method(&h, 100).name(), name);
        assert!(kind.needs_xrm());
        assert!(!kind.uses_training_groups());
        assert_eq!(
            kind.table_criteria(),
            vec![Criterion::VaWga, Criterion::VaGiWga]
        );
        for spelling in [name.to_string(), name.replace('_', "-"), label.to_string()] {
            assert_eq!(spelling.parse::<MethodKind>().unwrap(), kind);
        }
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

const DATA: &str = "interpretable:n=200,d=300";

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run_folder(out: &Path) -> std::path::PathBuf {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .expect("a run folder")
}

/// `train --select va_wca --sampler class_balanced`: the summary records the worst-class
/// selection (the last checkpoint after step 0 at the best validation worst-class accuracy)
/// and the sampler; RWG refuses the sampler; the XRM-group methods need `--xrm`.
#[test]
fn train_selects_by_worst_class_and_samples_class_balanced() {
    let out = scratch("cli-wca");
    let o = path_str(&out);
    let base = [
        "train",
        "--data",
        DATA,
        "--steps",
        "30",
        "--checkpoint-freq",
        "5",
        "--batch-size",
        "32",
        "--out",
        o,
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        memaware(&args)
    };
    let run = with(&[
        "--method",
        "erm",
        "--select",
        "va_wca",
        "--sampler",
        "class_balanced",
    ]);
    assert_ok(&run, "train --select va_wca --sampler class_balanced");
    let stdout = text(&run.stdout);
    assert!(stdout.contains("selected by va_wca"), "{stdout}");
    assert!(stdout.contains("class_balanced"), "{stdout}");
    let dir = run_folder(&out);
    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(
        summary["config"]["method_spec"],
        serde_json::json!({"sampled": {"sampler": "class_balanced", "method": "erm"}})
    );
    assert_eq!(summary["config"]["select"], Value::from("va_wca"));
    let records: Vec<Value> = std::fs::read_to_string(dir.join("checkpoints.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let values: Vec<f64> = records
        .iter()
        .map(|r| match r["step"].as_u64() {
            Some(0) => f64::NEG_INFINITY,
            _ => r["va"]["worst_class_acc"].as_f64().unwrap(),
        })
        .collect();
    let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s = &summary["selected"]["va_wca"];
    assert_eq!(s["value"].as_f64(), Some(best));
    let index = s["checkpoint_index"].as_u64().unwrap() as usize;
    assert_eq!(s["checkpoint"], records[index]);
    assert!(values[index + 1..].iter().all(|&v| v < best));
    let _ = std::fs::remove_dir_all(&dir);

    // Without --select va_wca the summary keeps its keys.
    let run = with(&["--method", "erm"]);
    assert_ok(&run, "train");
    let dir = run_folder(&out);
    let summary = read_json(&dir.join("summary.json"));
    assert!(summary["selected"].get("va_wca").is_none());
    assert_eq!(summary["config"]["method_spec"], Value::from("erm"));

    for (extra, needles) in [
        (
            &["--method", "rwg", "--sampler", "class_balanced"][..],
            &["rwg", "class_balanced"][..],
        ),
        (
            &["--method", "erm", "--sampler", "sometimes"],
            &["sometimes"],
        ),
        (&["--method", "xrm_rwg"], &["--xrm"]),
        (&["--method", "xrm-subg"], &["--xrm"]),
    ] {
        let run = with(extra);
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{extra:?} should fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{extra:?}: stderr lacks {n}:\n{stderr}");
        }
    }
    let help = text(&memaware(&["train", "--help"]).stdout);
    for needle in [
        "--sampler",
        "va_wca",
        "xrm_rwg",
        "xrm_subg",
        "class_balanced",
    ] {
        assert!(help.contains(needle), "train --help lacks {needle}");
    }
    let help = text(&memaware(&["sweep", "--help"]).stdout);
    for needle in ["va_wca", "xrm_rwg", "xrm_subg"] {
        assert!(help.contains(needle), "sweep --help lacks {needle}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `sweep --select va_wga,va_wca` with ERM and XRM+RWG: worst-class selection needs no XRM of
/// its own, the XRM-group method runs on XRM's phase, and `report --select va_wca` reads the
/// same cells back.
#[test]
fn sweep_selects_by_worst_class_and_runs_inferred_group_methods() {
    let out = scratch("cli-sweep");
    let o = path_str(&out);
    let run = memaware(&[
        "sweep",
        "--data",
        DATA,
        "--method",
        "erm,xrm_rwg,xrm-subg",
        "--select",
        "va_wga,va_wca",
        "--draws",
        "2",
        "--seeds",
        "2",
        "--steps",
        "21",
        "--checkpoint-freq",
        "5",
        "--out",
        o,
    ]);
    assert_ok(&run, "sweep --select va_wca");
    let stdout = text(&run.stdout);
    for row in ["ERM (va_wca)", "XRM+RWG (va_wga)", "XRM+SUBG (va_wca)"] {
        assert!(stdout.contains(row), "sweep output lacks {row}:\n{stdout}");
    }
    let sweep_files: Vec<std::path::PathBuf> = walk(&out)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "sweep.json"))
        .collect();
    assert_eq!(sweep_files.len(), 3, "{sweep_files:?}");
    let mut wca_cells = Vec::new();
    for f in &sweep_files {
        let sweep = read_json(f);
        let criteria: Vec<&str> = sweep["selections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["criterion"].as_str().unwrap())
            .collect();
        assert_eq!(criteria, ["va_wga", "va_wca"], "{}", f.display());
        let wca = &sweep["selections"][1];
        // Each seed's selected value is its validation worst-class accuracy.
        for s in wca["seeds"].as_array().unwrap() {
            assert_eq!(s["value"], s["va"]["worst_class_acc"]);
        }
        wca_cells.push((sweep["method"].clone(), wca["cell"].clone()));
    }
    let report_out = out.join("report");
    let report = memaware(&[
        "report",
        o,
        "--select",
        "va_wca",
        "--out",
        path_str(&report_out),
    ]);
    assert_ok(&report, "report --select va_wca");
    let json = read_json(&report_out.join("report.json"));
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for (method, cell) in &wca_cells {
        let kind: MethodKind = serde_json::from_value(method.clone()).unwrap();
        let e = entries
            .iter()
            .find(|e| e["row"] == format!("{} (va_wca)", kind.label()).as_str())
            .unwrap_or_else(|| panic!("no report row for {kind}"));
        assert_eq!(&e["cell"], cell, "{kind}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(walk(&p));
        } else {
            found.push(p);
        }
    }
    found
}

#[test]
fn a_sweep_draws_class_balanced_batches_when_asked() {
    let dir = scratch("sweep-sampler");
    let run = |sampler: &str| -> String {
        let out = dir.join(sampler);
        let o = memaware(&[
            "sweep",
            "--data",
            "interpretable:n=300,d=30",
            "--method",
            "erm,rwg",
            "--steps",
            "30",
            "--checkpoint-freq",
            "10",
            "--draws",
            "2",
            "--seeds",
            "2",
            "--select",
            "va_wga",
            "--sampler",
            sampler,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let erm = out.join("interpretable/erm/draw00_seed0/run.json");
        let rwg = out.join("interpretable/rwg/draw00_seed0/run.json");
        let rwg = std::fs::read_to_string(rwg).unwrap();
        assert!(
            !rwg.contains("class_balanced"),
            "RWG keeps its own balancing"
        );
        std::fs::read_to_string(erm).unwrap()
    };
    let balanced = run("class_balanced");
    let shuffled = run("shuffle");
    assert!(balanced.contains("class_balanced"), "{balanced}");
    assert!(!shuffled.contains("class_balanced"), "{shuffled}");
    let cps = |s: &str| {
        std::fs::read(
            dir.join(s)
                .join("interpretable/erm/draw00_seed0/checkpoints.jsonl"),
        )
        .unwrap()
    };
    assert_ne!(cps("class_balanced"), cps("shuffle"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn table1_official_runs_the_official_settings_on_a_features_file() {
    use memaware::data::features::save_features_safetensors;
    let dir = scratch("table1-official");
    let feats = dir.join("feats.safetensors");
    save_features_safetensors(&data(300, 24, 3), &feats).unwrap();
    let table = |name: &str, extra: &[&str]| -> Value {
        let out = dir.join(name);
        let mut args = vec![
            "table1",
            "--no-builtin",
            "--data",
            feats.to_str().unwrap(),
            "--methods",
            "erm,mat",
            "--steps",
            "21",
            "--draws",
            "2",
            "--seeds",
            "3",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = memaware(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(out.join("table1.json")).unwrap()).unwrap()
    };
    let official = table("official", &["--official"]);
    let sweep = &official["datasets"][0]["sweep"];
    assert_eq!(sweep["xrm"]["outputs"], "first", "{sweep}");
    assert!(
        sweep["model"].to_string().contains("zeros"),
        "{}",
        sweep["model"]
    );
    let md = std::fs::read_to_string(dir.join("official/table1.md")).unwrap();
    assert!(md.contains("population"), "{md}");
    // MAT reads the selection seed's XRM output at every seed.
    let mat = dir.join("official/feats/mat");
    let mut seeds = Vec::new();
    for e in std::fs::read_dir(&mat).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let run: Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("run.json")).unwrap())
                    .unwrap();
            assert_eq!(run["xrm_seed"], 0, "{}", p.display());
            seeds.push(run["seed"].as_u64().unwrap());
        }
    }
    assert!(seeds.iter().any(|&s| s > 0), "{seeds:?}");

    // `--model` alone replaces the recipe and nothing else.
    let zeros = table("zeros", &["--model", "linear:zeros"]);
    let sweep = &zeros["datasets"][0]["sweep"];
    assert!(sweep["model"].to_string().contains("zeros"));
    assert!(sweep["xrm"].get("outputs").is_none(), "{sweep}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn table1_select_adds_a_block_of_worst_class_rows() {
    let dir = scratch("table1-select");
    let out = dir.join("out");
    let o = memaware(&[
        "table1",
        "--no-builtin",
        "--data",
        "interpretable:n=300,d=24",
        "--methods",
        "erm,group_dro",
        "--steps",
        "21",
        "--draws",
        "2",
        "--seeds",
        "2",
        "--select",
        "va_wca",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("table1.json")).unwrap()).unwrap();
    let rows: Vec<&str> = table["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["row"].as_str().unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.contains("va_wca") && r.contains("ERM")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("va_wca") && r.contains("GroupDRO")),
        "{rows:?}"
    );
    // The default blocks stay first and as they were.
    assert!(rows[0].contains("va_wga"), "{rows:?}");
    let bad = memaware(&[
        "table1",
        "--no-builtin",
        "--data",
        "interpretable",
        "--select",
        "va_best",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("va_best"),
        "{}",
        text(&bad.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
