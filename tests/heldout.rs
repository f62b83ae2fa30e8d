//! Phase 1 from outside: a held-out file (safetensors or NPY, keyed by example id or row) as
//! MAT's phase-1 output, its validation, `--estimator external:PATH` in sweeps and on the
//! command line, inferred-group precision and recall, and the imperfect-inference
//! Waterbirds-like variant.

mod common;

use std::path::Path;

use common::{memaware, scratch, text};
use memaware::algo::heldout::{
    external_output, file_digest, inference_quality, read_heldout_file, write_heldout_file,
};
use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::sweep::{run_sweeps, Estimator, MethodKind, MethodPlan};
use memaware::algo::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput};
use memaware::algo::{run_method, Method, TrainConfig};
use memaware::backend::Device;
use memaware::data::features::write_npy_f32;
use memaware::data::synthetic::{
    interpretable, waterbirds_like, InterpretableConfig, WaterbirdsLikeConfig,
};
use memaware::data::Dataset;
use memaware::eval::selection::Criterion;
use memaware::recipes::{preset_sweep, Family, Sizes};
use memaware::Error;
use safetensors::tensor::{Dtype, TensorView};

fn data() -> Dataset {
    interpretable(&InterpretableConfig {
        n: 120,
        d: 40,
        sigma_eps: 0.5,
        seed: 5,
        ..Default::default()
    })
    .unwrap()
}

fn xrm(ds: &Dataset) -> XrmOutput {
    run_xrm(
        ds,
        &ModelSpec::linear_no_bias(),
        &XrmConfig {
            steps: 40,
            batch_size: 32,
            optimizer: OptimizerSpec::plain_sgd(5e-2),
            loss: XrmLoss::ClassBalanced,
            seed: 0,
            device: Device::Cpu,
            log_every: 10,
        },
    )
    .unwrap()
}

/// One tensor to write: `(name, dtype, shape, little-endian bytes)`.
type Tensor<'a> = (&'a str, Dtype, Vec<usize>, Vec<u8>);

/// A safetensors file of the given tensors.
fn write_st(path: &Path, tensors: &[Tensor<'_>]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: impl IntoIterator<Item = i64>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The message of a `Error::File`, with its tensor; panics on any other result.
fn file_error(r: Result<impl std::fmt::Debug, Error>) -> (String, String) {
    match r {
        Err(Error::File {
            tensor, problem, ..
        }) => (tensor, problem),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn an_xrm_output_written_as_a_heldout_file_gives_identical_mat_runs() {
    let ds = data();
    let out = xrm(&ds);
    let dir = scratch("heldout-roundtrip");
    let path = dir.join("heldout.safetensors");
    write_heldout_file(&path, &out, &ds, true).unwrap();
    let ext = external_output(&path, &ds, &ModelSpec::linear_no_bias()).unwrap();
    assert_eq!(ext.heldout_logits, out.heldout_logits);
    assert_eq!(ext.inferred_tr, out.inferred_tr);
    assert_eq!(ext.inferred_va, out.inferred_va);
    assert_eq!(ext.degenerate, out.degenerate);
    assert_eq!(ext.heldout_acc_by_group, out.heldout_acc_by_group);
    assert_eq!(inference_quality(&ext, &ds), inference_quality(&out, &ds));

    let cfg = TrainConfig::minibatch(60, 16, OptimizerSpec::plain_sgd(2e-2), 20);
    let spec = ModelSpec::linear_no_bias();
    for method in [Method::Mat { tau: 0.1 }, Method::XrmGroupDro { eta: 0.1 }] {
        let a = run_method(&ds, &method, &spec, &cfg, Some(&out)).unwrap();
        let b = run_method(&ds, &method, &spec, &cfg, Some(&ext)).unwrap();
        assert_eq!(a.outcome.checkpoints, b.outcome.checkpoints, "{method:?}");
        assert_eq!(a.outcome.final_train_loss, b.outcome.final_train_loss);
    }

    // The saved phase-1 output of the external file loads like XRM's.
    let saved = dir.join("saved");
    ext.save(&saved, &ds).unwrap();
    let back = XrmOutput::load(&saved, &ds).unwrap();
    assert_eq!(back.heldout_logits, out.heldout_logits);
    assert_eq!(back.inferred_va, out.inferred_va);
    let json = std::fs::read_to_string(saved.join("xrm.json")).unwrap();
    assert!(json.contains("inference_quality"), "{json}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sweep_with_the_external_estimator_matches_the_xrm_sweep_it_came_from() {
    let ds = data();
    let dir = scratch("heldout-sweep");
    let mut cfg = preset_sweep(
        Family::Features,
        Sizes {
            steps: 30,
            draws: 2,
            seeds: 1,
        },
        0,
    );
    cfg.checkpoint_freq = 10;
    cfg.space.lr_log10 = (-2.0, -1.0);
    let plans = vec![MethodPlan {
        kind: MethodKind::Mat,
        criteria: vec![Criterion::VaWga, Criterion::VaGiWga],
    }];
    let xrm_set = run_sweeps(&ds, &plans, &cfg, &dir.join("xrm"), false, &|_| {}).unwrap();
    let phase = xrm_set.xrm.as_ref().unwrap();
    let path = dir.join("from-xrm.safetensors");
    write_heldout_file(&path, phase.output(cfg.seeds[0]).unwrap(), &ds, true).unwrap();

    let mut ext_cfg = cfg.clone();
    ext_cfg.xrm.estimator = format!("external:{}", path.display()).parse().unwrap();
    assert_eq!(ext_cfg.xrm.estimator, Estimator::External(path.clone()));
    let ext_set = run_sweeps(&ds, &plans, &ext_cfg, &dir.join("ext"), false, &|_| {}).unwrap();
    for c in [Criterion::VaWga, Criterion::VaGiWga] {
        let a = xrm_set.sweeps[0].selection(c).unwrap();
        let b = ext_set.sweeps[0].selection(c).unwrap();
        assert_eq!(a.winner, b.winner, "{c}");
        assert_eq!(a.seeds, b.seeds, "{c}");
        assert_eq!(a.cell, b.cell, "{c}");
    }
    // The manifest records the file's digest: rewriting the file is another configuration.
    let manifest = std::fs::read_to_string(dir.join("ext").join("manifest.json")).unwrap();
    assert!(manifest.contains(&file_digest(&path)), "{manifest}");
    let mut other = phase.output(cfg.seeds[0]).unwrap().clone();
    other.heldout_logits[0] += 1.0;
    write_heldout_file(&path, &other, &ds, true).unwrap();
    let err = run_sweeps(&ds, &plans, &ext_cfg, &dir.join("ext"), false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("estimator"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn estimators_parse_print_and_serialize() {
    for e in [
        Estimator::Xrm,
        Estimator::Kfold { folds: 3 },
        Estimator::External("some/held out.safetensors".into()),
    ] {
        assert_eq!(e.to_string().parse::<Estimator>().unwrap(), e);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            serde_json::from_str::<Estimator>(&json).unwrap(),
            e,
            "{json}"
        );
    }
    let json = serde_json::to_string(&Estimator::External("/no/such/file".into())).unwrap();
    assert!(json.contains("\"digest\":\"missing\""), "{json}");
    // A plain path reads too.
    let plain: Estimator = serde_json::from_str(r#"{"external":"a.npy"}"#).unwrap();
    assert_eq!(plain, Estimator::External("a.npy".into()));
    for bad in ["external", "external:", "extern:a", "file:a"] {
        assert!(bad.parse::<Estimator>().is_err(), "{bad}");
    }
}

#[test]
fn rows_match_by_id_in_any_order_or_by_position() {
    let ds = data();
    let out = xrm(&ds);
    let dir = scratch("heldout-ids");
    let (n, k) = (ds.train.n, ds.classes);
    let spec = ModelSpec::linear_no_bias();
    // Reversed rows with their ids: the same output.
    let rev: Vec<usize> = (0..n).rev().collect();
    let logits: Vec<f32> = rev
        .iter()
        .flat_map(|&i| out.heldout_logits[i * k..(i + 1) * k].to_vec())
        .collect();
    let ids: Vec<i64> = rev.iter().map(|&i| ds.train.ids[i] as i64).collect();
    let path = dir.join("rev.safetensors");
    write_st(
        &path,
        &[
            ("tr.logits", Dtype::F32, vec![n, k], f32s(&logits)),
            ("tr.ids", Dtype::I64, vec![n, 1], i64s(ids.clone())),
        ],
    );
    let file = read_heldout_file(&path, &ds).unwrap();
    assert!(file.tr_by_id && !file.va_by_id);
    assert_eq!(file.tr_logits, out.heldout_logits);
    let by_id = external_output(&path, &ds, &spec).unwrap();
    // Without ids the same rows are taken by position: row 0 is the last example's.
    write_st(
        &path,
        &[("tr.logits", Dtype::F32, vec![n, k], f32s(&logits))],
    );
    let by_row = read_heldout_file(&path, &ds).unwrap();
    assert_eq!(by_row.tr_logits, logits);
    assert_ne!(by_row.tr_logits, by_id.heldout_logits);
    // A single .npy file is the training logits by position; a folder of .npy files works
    // like the safetensors file.
    let npy = dir.join("logits.npy");
    write_npy_f32(&npy, &[n, k], &out.heldout_logits).unwrap();
    assert_eq!(
        external_output(&npy, &ds, &spec).unwrap().heldout_logits,
        out.heldout_logits
    );
    let folder = dir.join("npy");
    std::fs::create_dir_all(&folder).unwrap();
    write_npy_f32(folder.join("tr.logits.npy"), &[n, k], &logits).unwrap();
    let ids_f32: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    write_npy_f32(folder.join("tr.ids.npy"), &[n], &ids_f32).unwrap();
    // Float ids are refused (ids are integers)...
    let (tensor, problem) = file_error(read_heldout_file(&folder, &ds));
    assert_eq!(tensor, "tr.ids");
    assert!(problem.contains("integers"), "{problem}");
    // ... integer ones (here <i8, written by hand) are read exactly.
    write_npy_i64(&folder.join("tr.ids.npy"), &ids);
    assert_eq!(
        read_heldout_file(&folder, &ds).unwrap().tr_logits,
        out.heldout_logits
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A C-order `<i8` NPY file of `v` (version 1).
fn write_npy_i64(path: &Path, v: &[i64]) {
    let mut header = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}",
        v.len()
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(i64s(v.iter().copied()));
    std::fs::write(path, out).unwrap();
}

#[test]
fn validation_groups_come_from_va_m_va_logits_or_nowhere() {
    let ds = data();
    let out = xrm(&ds);
    let dir = scratch("heldout-va");
    let (n, k, n_va) = (ds.train.n, ds.classes, ds.valid.n);
    let spec = ModelSpec::linear_no_bias();
    let path = dir.join("h.safetensors");
    // Training logits only: every validation bit is 0, and the output says why.
    write_st(
        &path,
        &[(
            "tr.logits",
            Dtype::F32,
            vec![n, k],
            f32s(&out.heldout_logits),
        )],
    );
    let only_tr = external_output(&path, &ds, &spec).unwrap();
    assert!(only_tr.inferred_va.iter().all(|&m| m == 0));
    let why = only_tr.degenerate.as_deref().unwrap();
    assert!(
        why.contains("va.logits") && why.contains("worst-class"),
        "{why}"
    );
    // Training bits are the held-out errors of the logits.
    let pred = memaware::eval::metrics::argmax_rows(&out.heldout_logits, k);
    for ((&m, &p), &y) in only_tr.inferred_tr.iter().zip(&pred).zip(&ds.train.y) {
        assert_eq!(m, u32::from(p != y));
    }
    assert_eq!(
        only_tr.final_flip_rate,
        only_tr.inferred_tr.iter().sum::<u32>() as f64 / n as f64
    );
    // Validation logits: bits are their held-out errors.
    let va_logits: Vec<f32> = (0..n_va)
        .flat_map(|i| {
            // Class 1 for the first half, class 0 for the rest.
            if i < n_va / 2 {
                [0.0f32, 1.0]
            } else {
                [1.0, 0.0]
            }
        })
        .collect();
    write_st(
        &path,
        &[
            (
                "tr.logits",
                Dtype::F32,
                vec![n, k],
                f32s(&out.heldout_logits),
            ),
            ("va.logits", Dtype::F16, vec![n_va, k], {
                va_logits
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect()
            }),
        ],
    );
    let with_va = external_output(&path, &ds, &spec).unwrap();
    for i in 0..n_va {
        let p = u32::from(i < n_va / 2);
        assert_eq!(with_va.inferred_va[i], u32::from(p != ds.valid.y[i]), "{i}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_heldout_files_are_named_errors() {
    let ds = data();
    let out = xrm(&ds);
    let dir = scratch("heldout-bad");
    let (n, k, n_va) = (ds.train.n, ds.classes, ds.valid.n);
    let path = dir.join("bad.safetensors");
    let good = f32s(&out.heldout_logits);
    let ids = |v: Vec<i64>| ("tr.ids", Dtype::I64, vec![v.len()], i64s(v));
    let mut nan = out.heldout_logits.clone();
    nan[2 * k + 1] = f32::NAN;
    let mut dup: Vec<i64> = (0..n as i64).collect();
    dup[7] = 3;
    let mut unknown: Vec<i64> = (0..n as i64).collect();
    unknown[4] = 9999;
    let cases: Vec<(Vec<Tensor<'_>>, &str, &[&str])> = vec![
        (vec![], "tr.logits", &["missing"]),
        (
            vec![("tr.logits", Dtype::F32, vec![n, 3], f32s(&vec![0.0; n * 3]))],
            "tr.logits",
            &["3 classes", "K = 2"],
        ),
        (
            vec![(
                "tr.logits",
                Dtype::F32,
                vec![n - 1, k],
                good[..(n - 1) * k * 4].to_vec(),
            )],
            "tr.logits",
            &["119 rows", "120 examples"],
        ),
        (
            vec![("tr.logits", Dtype::F32, vec![n * k], good.clone())],
            "tr.logits",
            &["matrix"],
        ),
        (
            vec![("tr.logits", Dtype::F32, vec![n, k], f32s(&nan))],
            "tr.logits",
            &["non-finite", "row 2", "class 1"],
        ),
        (
            vec![("tr.logits", Dtype::I64, vec![n, k], i64s(vec![0; n * k]))],
            "tr.logits",
            &["floating point"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                ids(dup),
            ],
            "tr.ids",
            &["id 3 appears twice", "rows 3 and 7"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                ids(unknown),
            ],
            "tr.ids",
            &["id 9999", "not an example id"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                ids((0..n as i64 - 1).collect()),
            ],
            "tr.ids",
            &["119 values", "120 rows"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                ("tr.m", Dtype::U8, vec![n], {
                    let mut m = vec![0u8; n];
                    m[5] = 2;
                    m
                }),
            ],
            "tr.m",
            &["value 2 at row 5", "not 0 or 1"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                (
                    "tr.y",
                    Dtype::I64,
                    vec![n],
                    i64s(ds.train.y.iter().map(|&y| 1 - y as i64)),
                ),
            ],
            "tr.y",
            &["differs from the data set's"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                (
                    "va.logits",
                    Dtype::F32,
                    vec![n_va + 1, k],
                    f32s(&vec![0.0; (n_va + 1) * k]),
                ),
            ],
            "va.logits",
            &["validation split"],
        ),
        (
            vec![
                ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
                ("tr.logit", Dtype::F32, vec![n, k], good.clone()),
            ],
            "tr.logit",
            &["unknown tensor"],
        ),
    ];
    for (tensors, want_tensor, needles) in cases {
        write_st(&path, &tensors);
        let (tensor, problem) = file_error(read_heldout_file(&path, &ds));
        assert_eq!(tensor, want_tensor, "{problem}");
        for needle in needles {
            assert!(problem.contains(needle), "`{needle}` not in `{problem}`");
        }
    }
    // A truncated file, an unknown format, a missing file.
    write_st(
        &path,
        &[("tr.logits", Dtype::F32, vec![n, k], good.clone())],
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
    assert!(file_error(read_heldout_file(&path, &ds))
        .1
        .contains("truncated"));
    let txt = dir.join("h.txt");
    std::fs::write(&txt, "x").unwrap();
    assert!(file_error(read_heldout_file(&txt, &ds))
        .1
        .contains("format"));
    assert!(file_error(read_heldout_file(dir.join("none.npy"), &ds))
        .1
        .contains("no such"));
    // A data set whose ids repeat cannot be keyed by id.
    let mut twice = ds.clone();
    twice.train.ids[1] = twice.train.ids[0];
    write_st(
        &path,
        &[
            ("tr.logits", Dtype::F32, vec![n, k], good.clone()),
            ids((0..n as i64).collect()),
        ],
    );
    let (_, problem) = file_error(read_heldout_file(&path, &twice));
    assert!(problem.contains("not distinct"), "{problem}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn waterbirds_like_options_keep_the_preset_and_imperfect_scales_the_background() {
    let small = WaterbirdsLikeConfig {
        d: 64,
        train_counts: [60, 8, 4, 30],
        valid_counts: [10, 10, 5, 5],
        test_counts: [10, 10, 5, 5],
        seed: 4,
        ..Default::default()
    };
    let base = waterbirds_like(&small).unwrap();
    let mut same = small.clone();
    same.apply_options("core=2,spurious=5,noise=15").unwrap();
    assert_eq!(same, small);
    assert_eq!(waterbirds_like(&same).unwrap(), base);
    let mut imperfect = small.clone();
    imperfect.apply_options("imperfect").unwrap();
    assert_eq!(
        (imperfect.spurious_mean, imperfect.spurious_std),
        (2.5, 1.5)
    );
    assert_eq!(
        WaterbirdsLikeConfig::imperfect(4),
        WaterbirdsLikeConfig {
            spurious_mean: 2.5,
            spurious_std: 1.5,
            seed: 4,
            ..Default::default()
        }
    );
    let weak = waterbirds_like(&imperfect).unwrap();
    // The same groups and labels; only the features move.
    assert_eq!(weak.train.y, base.train.y);
    assert_eq!(weak.train.a, base.train.a);
    assert_ne!(weak.train.x, base.train.x);
    for bad in ["bogus=1", "core", "spurious=x", "noise=inf", "d=-3"] {
        assert!(small.clone().apply_options(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_heldout_command_runs_every_estimator_and_names_a_bad_file() {
    let out = scratch("heldout-cli");
    let o = out.to_str().unwrap();
    let data = "interpretable:n=80,d=30";
    let run = |extra: &[&str]| {
        let mut args = vec!["heldout", "--data", data, "--steps", "30", "--out", o];
        args.extend_from_slice(extra);
        memaware(&args)
    };
    let xrm = run(&[]);
    assert!(xrm.status.success(), "{}", text(&xrm.stderr));
    let stdout = text(&xrm.stdout);
    assert!(stdout.contains("precision"), "{stdout}");
    let xrm_dir = out.join("xrm-interpretable-n80-d30-seed0");
    assert!(xrm_dir.join("xrm.json").is_file());

    let kfold = run(&["--estimator", "kfold:2"]);
    assert!(kfold.status.success(), "{}", text(&kfold.stderr));
    assert!(text(&kfold.stdout).contains("held-out error rate"));
    assert!(out
        .join("kfold2-interpretable-n80-d30-seed0")
        .join("xrm.json")
        .is_file());

    // XRM's output as a held-out file, through the command line.
    let ds = memaware::cli::common::load_dataset(data, 0).unwrap();
    let x = XrmOutput::load(&xrm_dir, &ds).unwrap();
    let file = out.join("mine.safetensors");
    write_heldout_file(&file, &x, &ds, true).unwrap();
    let spec = format!("external:{}", file.display());
    let ext = run(&["--estimator", &spec]);
    assert!(ext.status.success(), "{}", text(&ext.stderr));
    let stdout = text(&ext.stdout);
    assert!(stdout.contains("matched by example id"), "{stdout}");
    let saved = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("external-interpretable-n80-d30-mine-")
        })
        .expect("the external output folder");
    let back = XrmOutput::load(&saved, &ds).unwrap();
    assert_eq!(back.heldout_logits, x.heldout_logits);
    assert_eq!(back.inferred_va, x.inferred_va);

    // A file with the wrong class count fails, naming the file, tensor and problem.
    write_st(
        &file,
        &[("tr.logits", Dtype::F32, vec![80, 3], f32s(&[0.0; 240]))],
    );
    let bad = run(&["--estimator", &spec]);
    assert!(!bad.status.success());
    let stderr = text(&bad.stderr);
    for needle in ["mine.safetensors", "tr.logits", "3 classes"] {
        assert!(stderr.contains(needle), "`{needle}` not in {stderr}");
    }
    let bad = run(&["--estimator", "kfold:1"]);
    assert!(!bad.status.success());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn table1_markdown_reports_the_inferred_groups_precision_and_recall() {
    use memaware::eval::selection::Spread;
    use memaware::repro::table1::{run_table1, Table1Config, Table1Entry};
    let out = scratch("heldout-table1");
    let mut sweep = preset_sweep(
        Family::Features,
        Sizes {
            steps: 20,
            draws: 1,
            seeds: 2,
        },
        0,
    );
    sweep.checkpoint_freq = 10;
    sweep.xrm.estimator = Estimator::Kfold { folds: 2 };
    let cfg = Table1Config {
        entries: vec![Table1Entry {
            label: "Tiny".into(),
            dataset: data(),
            sweep,
        }],
        methods: vec![MethodKind::Mat],
        out: out.clone(),
        overwrite: false,
        extra_criteria: Vec::new(),
        spread: Spread::Sample,
    };
    let outcome = run_table1(&cfg, &|_| {}).unwrap();
    let md = &outcome.markdown;
    assert!(
        md.contains("### Inferred groups vs the true minority"),
        "{md}"
    );
    let row = md.lines().find(|l| l.starts_with("| Tiny | kfold:2 |"));
    assert!(row.is_some(), "{md}");
    std::fs::remove_dir_all(&out).unwrap();
}
