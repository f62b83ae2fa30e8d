//! The sweep's model selection on small real runs, the shape and determinism of Table 1, the
//! report's re-selection, and errors for bad feature files through the command entry points.

use std::path::{Path, PathBuf};

use memaware::algo::sweep::{
    reselect, run_label, run_sweeps, MethodKind, MethodPlan, Parallelism, RunRecord, SweepConfig,
    SweepOutcome, CHECKPOINTS_FILE, RUN_FILE, SWEEP_FILE,
};
use memaware::cli;
use memaware::data::synthetic::{
    interpretable, waterbirds_like, InterpretableConfig, WaterbirdsLikeConfig,
};
use memaware::data::{Dataset, Split};
use memaware::eval::selection::{
    select_checkpoint, select_checkpoint_with, Checkpoint, Criterion, Spread, StepZero,
};
use memaware::io::read_jsonl;
use memaware::recipes::{preset_sweep, Family, Sizes};
use memaware::repro::table1::{
    row_label, run_table1, table_rows, Table1Config, Table1Entry, TABLE_JSON, TABLE_MD,
};
use memaware::Error;
use safetensors::tensor::{Dtype, TensorView};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memaware-table1-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waterbirds-shaped features, small: few minority validation examples make worst-group
/// accuracy coarse, so that draws tie on it and the validation average decides.
fn tiny_birds(seed: u64) -> Dataset {
    waterbirds_like(&WaterbirdsLikeConfig {
        d: 48,
        train_counts: [150, 12, 8, 90],
        valid_counts: [40, 40, 5, 5],
        test_counts: [60, 60, 20, 20],
        noise_norm: 6.0,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn tiny_interpretable(seed: u64) -> Dataset {
    interpretable(&InterpretableConfig {
        n: 100,
        d: 30,
        sigma_eps: 0.5,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn small_sweep(draws: usize, seeds: usize, steps: usize, seed: u64) -> SweepConfig {
    let mut cfg = preset_sweep(
        Family::Features,
        Sizes {
            steps,
            draws,
            seeds,
        },
        seed,
    );
    cfg.checkpoint_freq = 10;
    // Larger steps than the paper's range so that a few dozen steps move a linear head.
    cfg.space.lr_log10 = (-3.0, -1.0);
    cfg
}

fn checkpoints_of(method_dir: &Path, label: &str) -> Vec<Checkpoint> {
    read_jsonl(method_dir.join(label).join(CHECKPOINTS_FILE)).unwrap()
}

/// The winner by the rule of PAPER.md §4, computed here from scratch: the highest selected
/// value, then the highest validation average at that checkpoint, then the lowest index.
fn expected_winner(values: &[(f64, f64)]) -> usize {
    let mut best = 0;
    for (i, &(v, a)) in values.iter().enumerate().skip(1) {
        let (bv, ba) = values[best];
        if v > bv || (v == bv && a > ba) {
            best = i;
        }
    }
    best
}

#[test]
fn sweep_selects_per_checkpoint_per_draw_and_reruns_the_winner() {
    let ds = tiny_birds(0);
    let cfg = small_sweep(6, 3, 60, 0);
    let out = temp_dir("selection");
    let plans: Vec<MethodPlan> = [MethodKind::Erm, MethodKind::Mat]
        .into_iter()
        .map(|kind| MethodPlan {
            kind,
            criteria: vec![Criterion::VaWga, Criterion::VaGiWga],
        })
        .collect();
    let set = run_sweeps(&ds, &plans, &cfg, &out, false, &|_| {}).unwrap();
    let xrm = set.xrm.as_ref().expect("MAT and va_gi_wga need XRM");
    assert_eq!(
        xrm.outputs.keys().copied().collect::<Vec<_>>(),
        cfg.seeds,
        "one XRM output per seed"
    );

    let mut ties_broken_by_average = 0;
    for sweep in &set.sweeps {
        let method_dir = out.join(sweep.method.name());
        assert!(method_dir.join(SWEEP_FILE).is_file());
        for sel in &sweep.selections {
            // Each draw: the last checkpoint reaching the best value, read back from disk.
            let mut values = Vec::new();
            for d in 0..cfg.draws {
                let cps = checkpoints_of(&method_dir, &run_label(d, cfg.seeds[0]));
                assert_eq!(cps.len(), 7, "steps 0, 10, …, 50 and the last, 59");
                let (index, value) = select_checkpoint(&cps, sel.criterion).unwrap();
                // The official rule: the step-0 checkpoint takes no part.
                let best = cps
                    .iter()
                    .filter(|cp| cp.step > 0)
                    .map(|cp| match sel.criterion {
                        Criterion::VaWga => cp.valid().unwrap().worst_group_acc,
                        _ => cp.va_gi.as_ref().unwrap().worst_group_acc,
                    })
                    .fold(f64::NEG_INFINITY, f64::max);
                assert_eq!(value, best);
                let choice = sel.draws[d].as_ref().unwrap();
                assert_eq!((choice.index, choice.value), (index, value));
                assert_eq!(choice.va_avg, cps[index].valid().unwrap().avg_acc);
                assert_eq!(choice.step, cps[index].step);
                values.push((value, cps[index].valid().unwrap().avg_acc));
            }
            assert_eq!(sel.winner, expected_winner(&values), "{:?}", values);
            let top = values.iter().map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
            let tied: Vec<f64> = values.iter().filter(|v| v.0 == top).map(|v| v.1).collect();
            if tied.len() > 1 && tied.iter().any(|&a| a != tied[0]) {
                ties_broken_by_average += 1;
            }

            // The winner at every seed: its draw's hyperparameters, selected by the same rule.
            assert_eq!(
                sel.seeds.iter().map(|s| s.seed).collect::<Vec<_>>(),
                cfg.seeds
            );
            assert!(sel.missing_seeds.is_empty());
            assert_eq!(sel.hparams, cfg.hparams(sel.winner).unwrap());
            for sc in &sel.seeds {
                assert_eq!(sc.run, run_label(sel.winner, sc.seed));
                let run: RunRecord = serde_json::from_str(
                    &std::fs::read_to_string(method_dir.join(&sc.run).join(RUN_FILE)).unwrap(),
                )
                .unwrap();
                assert_eq!((run.draw, run.seed), (sel.winner, sc.seed));
                assert_eq!(run.hparams, sel.hparams);
                let cps = checkpoints_of(&method_dir, &sc.run);
                let (index, value) = select_checkpoint(&cps, sel.criterion).unwrap();
                assert_eq!((sc.index, sc.value), (index, value));
                assert_eq!(sc.te, cps[index].te);
            }
            let wgas: Vec<f64> = sel.seeds.iter().map(|s| s.te.worst_group_acc).collect();
            let mean = wgas.iter().sum::<f64>() / wgas.len() as f64;
            let var =
                wgas.iter().map(|w| (w - mean).powi(2)).sum::<f64>() / (wgas.len() - 1) as f64;
            assert_eq!(sel.cell.wga.n, cfg.seeds.len());
            assert!((sel.cell.wga.mean - mean).abs() < 1e-12);
            assert!((sel.cell.wga.std - var.sqrt()).abs() < 1e-12);
        }
        // Runs: every draw at the selection seed, and each winner at the other seeds once.
        let winners: std::collections::BTreeSet<usize> =
            sweep.selections.iter().map(|s| s.winner).collect();
        assert_eq!(
            sweep.runs.len(),
            cfg.draws + winners.len() * (cfg.seeds.len() - 1)
        );
    }
    assert!(
        ties_broken_by_average > 0,
        "the fixture is meant to produce a tie on the criterion that the average breaks"
    );

    // The report re-applies criteria to the recorded checkpoints: the recorded ones reproduce
    // the sweep's selections exactly, and va_avg selects by validation average.
    let loaded = SweepOutcome::load(out.join("mat").join(SWEEP_FILE)).unwrap();
    let again = reselect(
        &loaded,
        &out.join("mat"),
        &[Criterion::VaWga, Criterion::VaGiWga],
    )
    .unwrap();
    assert_eq!(again, set.sweeps[1].selections);
    let report =
        cli::report::build_report(std::slice::from_ref(&out), &[Criterion::VaAvg], false).unwrap();
    assert_eq!(report.table.rows.len(), 2);
    for entry in &report.entries {
        let sel = entry.selection.as_ref().unwrap();
        let method_dir = entry.source.parent().unwrap();
        let values: Vec<(f64, f64)> = (0..cfg.draws)
            .map(|d| {
                let cps = checkpoints_of(method_dir, &run_label(d, cfg.seeds[0]));
                let (i, v) = select_checkpoint(&cps, Criterion::VaAvg).unwrap();
                (v, cps[i].valid().unwrap().avg_acc)
            })
            .collect();
        assert_eq!(sel.winner, expected_winner(&values));
        // Seeds the winner was never rerun at are reported as missing, not invented.
        let recorded = sel.seeds.len() + sel.missing_seeds.len();
        assert_eq!(recorded, cfg.seeds.len());
        assert_eq!(entry.cell.wga.n, sel.seeds.len());
    }

    // `report --spread population` prints the population std of the same cells;
    // `--step-zero keep` lets step-0 checkpoints compete.
    let options = cli::report::ReportOptions {
        include_incomplete: false,
        step_zero: Some(StepZero::Keep),
        spread: Spread::Population,
    };
    let criteria = [Criterion::VaWga, Criterion::VaGiWga];
    let pop =
        cli::report::build_report_with(std::slice::from_ref(&out), &criteria, &options).unwrap();
    assert_eq!(pop.spread, Spread::Population);
    assert!(pop.to_markdown().contains("mean ± population std"));
    for entry in &pop.entries {
        let sel = entry.selection.as_ref().unwrap();
        let n = sel.cell.wga.n as f64;
        let expected = sel.cell.wga.std * ((n - 1.0) / n).sqrt();
        assert!((entry.cell.wga.std - expected).abs() < 1e-12);
        assert_eq!(entry.cell.wga.mean, sel.cell.wga.mean);
        let method_dir = entry.source.parent().unwrap();
        for sc in &sel.seeds {
            let cps = checkpoints_of(method_dir, &sc.run);
            let (i, v) = select_checkpoint_with(&cps, sel.criterion, StepZero::Keep).unwrap();
            assert_eq!((sc.index, sc.value), (i, v));
        }
    }

    // A stand-alone run folder (as `memaware train` writes): its own row, one seed.
    let single = out.join("single").join("mat-run");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(
        out.join("mat").join(run_label(2, 0)).join(CHECKPOINTS_FILE),
        single.join(CHECKPOINTS_FILE),
    )
    .unwrap();
    std::fs::write(
        single.join("summary.json"),
        r#"{"complete": true, "config": {"method": "mat", "data_name": "waterbirds_like"}}"#,
    )
    .unwrap();
    let report = cli::report::build_report(&[out.join("single")], &[], false).unwrap();
    let cps = checkpoints_of(&out.join("mat"), &run_label(2, 0));
    let (i, _) = select_checkpoint(&cps, Criterion::VaWga).unwrap();
    assert_eq!(report.table.datasets, vec!["waterbirds_like"]);
    assert_eq!(report.table.rows.len(), 1);
    assert_eq!(report.table.rows[0].0, "MAT (va_wga) [mat-run]");
    let cell = report.table.rows[0].1[0].as_ref().unwrap();
    assert_eq!(cell.wga.mean, cps[i].te.worst_group_acc);
    assert_eq!(cell.wga.n, 1);
    std::fs::remove_dir_all(&out).unwrap();
}

fn tiny_table(out: &Path, seed: u64, parallelism: Parallelism) -> Table1Config {
    let sizes = Sizes {
        steps: 30,
        draws: 2,
        seeds: 2,
    };
    let entry = |label: &str, dataset: Dataset| {
        let mut sweep = small_sweep(sizes.draws, sizes.seeds, sizes.steps, seed);
        sweep.parallelism = parallelism;
        Table1Entry {
            label: label.into(),
            dataset,
            sweep,
        }
    };
    Table1Config {
        entries: vec![
            entry("Tiny birds", tiny_birds(0)),
            entry("Tiny interpretable", tiny_interpretable(0)),
        ],
        methods: MethodKind::TABLE1.to_vec(),
        out: out.to_path_buf(),
        overwrite: false,
        extra_criteria: Vec::new(),
        spread: Default::default(),
    }
}

#[test]
fn table_has_the_papers_shape_and_is_deterministic() {
    let out_a = temp_dir("table-a");
    let cfg = tiny_table(&out_a, 0, Parallelism::Runs);
    let a = run_table1(&cfg, &|_| {}).unwrap();
    let table = &a.record.table;
    assert_eq!(table.datasets, vec!["Tiny birds", "Tiny interpretable"]);
    let rows = table_rows(&MethodKind::TABLE1);
    let labels: Vec<String> = rows.iter().map(|&(m, c)| row_label(m, c)).collect();
    assert_eq!(
        table.rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        labels
    );
    for (row, cells) in &table.rows {
        for (entry, cell) in cfg.entries.iter().zip(cells) {
            let cell = cell.as_ref().unwrap_or_else(|| panic!("{row}: empty cell"));
            assert_eq!(cell.wga.n, 2);
            assert_eq!(cell.avg.n, 2);
            assert_eq!(cell.per_group.len(), 2);
            let ds = &entry.dataset;
            let counts = Split::counts(&ds.test.groups(ds.n_attr), ds.n_groups());
            assert_eq!(cell.group_counts, counts);
            assert!(cell.wga.mean <= cell.avg.mean + 1e-12);
        }
    }
    // One cell record per filled cell; margins for MAT and XRM+GroupDRO against ERM under
    // both criteria, and MAT without against with annotations, per data set.
    assert_eq!(a.record.cells.len(), rows.len() * 2);
    assert_eq!(a.record.margins.len(), 5 * 2);
    let md = std::fs::read_to_string(out_a.join(TABLE_MD)).unwrap();
    assert_eq!(md, a.markdown);
    let header = md.lines().find(|l| l.starts_with("| Method |")).unwrap();
    assert_eq!(
        header,
        "| Method | Tiny birds Avg | Tiny birds WGA | Tiny interpretable Avg | Tiny interpretable WGA |"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join(TABLE_JSON)).unwrap()).unwrap();
    assert!(json["table"]["rows"].as_array().unwrap().len() == rows.len());
    assert!(out_a
        .join("tiny-birds")
        .join("mat")
        .join(SWEEP_FILE)
        .is_file());

    // Columns whose labels map to one folder of runs are refused before anything runs.
    let mut clash = tiny_table(&out_a, 0, Parallelism::Runs);
    clash.entries[1].label = "tiny birds".into();
    assert!(matches!(
        run_table1(&clash, &|_| {}),
        Err(Error::InvalidArgument { name: "data", .. })
    ));

    // Same seed, runs one at a time instead of in parallel: the same table, bit for bit.
    let out_b = temp_dir("table-b");
    let b = run_table1(&tiny_table(&out_b, 0, Parallelism::Ops), &|_| {}).unwrap();
    assert_eq!(b.markdown, a.markdown);
    assert_eq!(
        serde_json::to_string(&b.record.table).unwrap(),
        serde_json::to_string(&a.record.table).unwrap()
    );
    assert_eq!(b.record.margins, a.record.margins);
    // Another seed draws other hyperparameters and initializations.
    let out_c = temp_dir("table-c");
    let c = run_table1(&tiny_table(&out_c, 1, Parallelism::Runs), &|_| {}).unwrap();
    assert_ne!(
        serde_json::to_string(&c.record.table).unwrap(),
        serde_json::to_string(&a.record.table).unwrap()
    );
    for d in [out_a, out_b, out_c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// A safetensors entry: name, dtype, shape, little-endian bytes.
type Entry = (&'static str, Dtype, Vec<usize>, Vec<u8>);

/// A feature file with one problem, written by hand.
fn write_features(path: &Path, tensors: Vec<Entry>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = std::collections::HashMap::from([("classes".to_string(), "2".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A valid three-split file's tensors: 4 examples of 3 features per split.
fn good_tensors() -> Vec<Entry> {
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    let mut t = Vec::new();
    for (xk, yk, ak) in [
        ("tr.x", "tr.y", "tr.a"),
        ("va.x", "va.y", "va.a"),
        ("te.x", "te.y", "te.a"),
    ] {
        t.push((xk, Dtype::F32, vec![4, 3], f32s(&x)));
        t.push((yk, Dtype::I64, vec![4], i64s(&[0, 1, 0, 1])));
        t.push((ak, Dtype::I64, vec![4], i64s(&[0, 0, 1, 1])));
    }
    t
}

#[test]
fn bad_feature_files_are_errors_naming_file_tensor_and_problem() {
    let dir = temp_dir("bad-files");
    let replace = |name: &str, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>| {
        let mut t = good_tensors();
        let slot = t.iter_mut().find(|e| e.0 == name).unwrap();
        *slot = (slot.0, dtype, shape, bytes);
        t
    };
    let mut nan = (0..12).map(|i| i as f32).collect::<Vec<_>>();
    nan[7] = f32::NAN;
    let cases: Vec<(&str, Vec<Entry>, &str, &str)> = vec![
        (
            "missing",
            good_tensors()
                .into_iter()
                .filter(|e| e.0 != "va.y")
                .collect(),
            "va.y",
            "missing",
        ),
        (
            "dtype",
            replace("tr.x", Dtype::I64, vec![4, 3], i64s(&[1; 12])),
            "tr.x",
            "dtype",
        ),
        (
            "lengths",
            replace("te.y", Dtype::I64, vec![3], i64s(&[0, 1, 0])),
            "te.y",
            "3 values",
        ),
        (
            "range",
            replace("tr.y", Dtype::I64, vec![4], i64s(&[0, 1, 5, 1])),
            "tr.y",
            "out of range",
        ),
        (
            "nan",
            replace("va.x", Dtype::F32, vec![4, 3], f32s(&nan)),
            "va.x",
            "non-finite",
        ),
    ];
    for (name, tensors, tensor, problem) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        write_features(&path, tensors);
        let spec = path.to_string_lossy().into_owned();
        let table_args = cli::table1::Args {
            data: vec![spec.clone()],
            no_builtin: true,
            quick: true,
            out: Some(dir.join("out")),
            ..Default::default()
        };
        let sweep_args = cli::sweep::Args {
            data: spec,
            method: vec![MethodKind::Erm],
            out: Some(dir.join("out")),
            ..Default::default()
        };
        for err in [
            cli::table1::run(&table_args).unwrap_err(),
            cli::sweep::run(&sweep_args).unwrap_err(),
        ] {
            assert!(matches!(err, Error::File { .. }), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{name}.safetensors")), "{msg}");
            assert!(msg.contains(&format!("`{tensor}`")), "{msg}");
            assert!(msg.contains(problem), "{name}: {msg}");
        }
    }
    assert!(
        !dir.join("out").exists(),
        "nothing runs before the data loads"
    );
    // A file that does not exist names the path.
    let ghost = dir.join("ghost.safetensors");
    let err = cli::table1::run(&cli::table1::Args {
        data: vec![ghost.to_string_lossy().into_owned()],
        no_builtin: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("ghost.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sweep_defaults_leave_files_as_they_were_and_estimators_print_back() {
    use memaware::algo::sweep::{Estimator, SweepConfig};
    use memaware::eval::selection::StepZero;
    let mut cfg = memaware::recipes::preset_sweep(
        memaware::recipes::Family::Features,
        memaware::recipes::Sizes::QUICK,
        0,
    );
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        !json.contains("step_zero") && !json.contains("estimator"),
        "{json}"
    );
    let back: SweepConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.step_zero, back.xrm.estimator),
        (StepZero::Drop, Estimator::Xrm)
    );
    cfg.step_zero = StepZero::Keep;
    cfg.xrm.estimator = Estimator::Kfold { folds: 5 };
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains(r#""step_zero":"keep""#), "{json}");
    assert!(
        json.contains(r#""estimator":{"kfold":{"folds":5}}"#),
        "{json}"
    );
    let back: SweepConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.step_zero, StepZero::Keep);
    assert_eq!(back.xrm, cfg.xrm);
    for e in [
        Estimator::Xrm,
        Estimator::Kfold { folds: 2 },
        Estimator::Kfold { folds: 255 },
    ] {
        assert_eq!(e.to_string().parse::<Estimator>().unwrap(), e);
    }
    for bad in ["", "kfold:256", "kfold:0", "KFOLD:3"] {
        assert!(bad.parse::<Estimator>().is_err(), "{bad}");
    }
}
