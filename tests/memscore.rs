//! Memorization scores end to end (`repro::memscore`): shapes and counts of the estimator, the
//! files it writes, determinism across schedules, rejected configurations, the CLI, and the
//! paper's Figure-2 finding on a reduced Figure-1 data set.

mod common;

use memaware::cli;
use memaware::data::synthetic::{interpretable, is_minority, InterpretableConfig};
use memaware::data::Dataset;
use memaware::repro::memscore::{
    estimate, run_memscore, write_memscore, MemscoreExperiment, MemscoreReport, ScoredMethod,
    HIST_ACC_STEM, HIST_PROB_STEM, JSON_FILE, SUMMARY_FILE,
};

/// The Figure-1 data at reduced size: 200 examples per split (19 minority in training), 600
/// dimensions, `sigma_eps = 0.5`: still far more noise dimensions than examples, so single
/// examples can be memorized.
fn small_figure1(seed: u64) -> Dataset {
    interpretable(&InterpretableConfig {
        n: 200,
        d: 600,
        sigma_eps: 0.5,
        seed,
        ..Default::default()
    })
    .unwrap()
}

/// The Figure-1 recipe with 8 models and 400 steps.
fn small_experiment(seed: u64) -> MemscoreExperiment {
    let mut exp = MemscoreExperiment::interpretable(seed);
    exp.estimator.models = 8;
    exp.estimator.steps = 400;
    exp.xrm.steps = 400;
    exp
}

fn mean_over(values: &[Option<f64>], keep: &[bool]) -> f64 {
    let kept: Vec<f64> = values
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .filter_map(|(v, _)| *v)
        .collect();
    kept.iter().sum::<f64>() / kept.len() as f64
}

fn check_shapes(report: &MemscoreReport, ds: &Dataset, models: usize) {
    let n = ds.train.n;
    let keep = (0.5 * n as f64).round() as usize;
    for m in [report.erm.as_ref(), report.mat.as_ref()] {
        let m = m.expect("both methods were scored");
        assert_eq!(m.records.len(), models);
        for rec in &m.records {
            assert_eq!(rec.member.iter().filter(|&&b| b).count(), keep);
            assert_eq!(rec.correct.len(), n);
            assert!(rec.true_prob.iter().all(|p| (0.0..=1.0).contains(p)));
        }
        let s = &m.scores;
        assert_eq!(s.mem_acc.len(), n);
        assert_eq!(s.mem_prob.len(), n);
        for i in 0..n {
            assert_eq!(s.n_in[i] + s.n_out[i], models);
            let scored = s.n_in[i] > 0 && s.n_out[i] > 0;
            assert_eq!(s.mem_acc[i].is_some(), scored);
            assert_eq!(s.mem_prob[i].is_some(), scored);
        }
        // Every model leaves out exactly n − keep examples.
        assert_eq!(
            m.left_out.mean,
            (models * (n - keep)) as f64 / n as f64,
            "mean left-out count"
        );
        assert_eq!(m.left_out.min, *s.n_out.iter().min().unwrap());
        assert_eq!(
            m.left_out.unscored,
            s.mem_acc.iter().filter(|v| v.is_none()).count()
        );
        // Summaries account for every example of every group.
        for summary in [&m.summary_acc, &m.summary_prob] {
            assert_eq!(summary.len(), ds.n_groups());
            for (g, gs) in summary.iter().enumerate() {
                assert_eq!(gs.count + gs.missing, report.group_counts[g]);
            }
        }
    }
    assert_eq!(report.group_counts.iter().sum::<usize>(), n);
    // ERM and MAT train on the same subsets, so their scores pair up example by example.
    let (erm, mat) = (report.erm.as_ref().unwrap(), report.mat.as_ref().unwrap());
    for (a, b) in erm.records.iter().zip(&mat.records) {
        assert_eq!(a.member, b.member);
    }
    let p = &report.proxy;
    assert_eq!(p.held_in_minus_held_out.len(), n);
    for i in 0..n {
        assert_eq!(
            p.held_in_minus_held_out[i],
            p.held_in_prob[i] - p.held_out_prob[i]
        );
        assert_eq!(p.held_out_error[i], 1.0 - p.held_out_prob[i]);
    }
    // Two proxies × two scores × two methods.
    assert_eq!(p.agreement.len(), 8);
}

#[test]
fn figure1_reduced_erm_memorizes_the_minority_and_mat_less() {
    let ds = small_figure1(0);
    let exp = small_experiment(0);
    let report = run_memscore(&ds, &exp, &|_| {}).unwrap();
    check_shapes(&report, &ds, 8);

    let minority = is_minority(&ds.train);
    let majority: Vec<bool> = minority.iter().map(|&m| !m).collect();
    let erm = report.erm.as_ref().unwrap();
    let mat = report.mat.as_ref().unwrap();
    for (name, erm_scores, mat_scores) in [
        ("mem_acc", &erm.scores.mem_acc, &mat.scores.mem_acc),
        ("mem_prob", &erm.scores.mem_prob, &mat.scores.mem_prob),
    ] {
        let (erm_min, erm_maj) = (
            mean_over(erm_scores, &minority),
            mean_over(erm_scores, &majority),
        );
        // ERM fits the majority with the spurious feature (nothing to memorize there) and
        // the minority through its own noise: far apart.
        assert!(erm_maj < 0.1, "{name}: ERM majority mean {erm_maj}");
        assert!(
            erm_min - erm_maj > 0.5,
            "{name}: ERM minority mean {erm_min} not far above the majority's {erm_maj}"
        );
        let mat_min = mean_over(mat_scores, &minority);
        assert!(
            mat_min < erm_min,
            "{name}: MAT minority mean {mat_min} is not below ERM's {erm_min}"
        );
    }

    let dir = common::scratch("memscore-files");
    let paths = write_memscore(&report, &dir).unwrap();
    for name in [
        JSON_FILE.to_string(),
        SUMMARY_FILE.to_string(),
        format!("{HIST_ACC_STEM}.png"),
        format!("{HIST_ACC_STEM}.svg"),
        format!("{HIST_PROB_STEM}.png"),
        format!("{HIST_PROB_STEM}.svg"),
    ] {
        let path = dir.join(&name);
        assert!(paths.contains(&path), "{name} not reported");
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "{name} empty");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(JSON_FILE)).unwrap()).unwrap();
    for method in ["erm", "mat"] {
        let scores = &json[method]["scores"];
        assert_eq!(scores["mem_acc"].as_array().unwrap().len(), ds.train.n);
        assert_eq!(scores["mem_prob"].as_array().unwrap().len(), ds.train.n);
        assert_eq!(json[method]["summary_prob"].as_array().unwrap().len(), 4);
    }
    assert_eq!(
        json["proxy"]["held_out_error"].as_array().unwrap().len(),
        ds.train.n
    );
    let summary = std::fs::read_to_string(dir.join(SUMMARY_FILE)).unwrap();
    for label in &report.group_labels {
        assert!(summary.contains(label.as_str()), "summary lacks `{label}`");
    }
    let svg = std::fs::read_to_string(dir.join(format!("{HIST_PROB_STEM}.svg"))).unwrap();
    assert!(svg.contains("ERM") && svg.contains("MAT"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parallel_and_sequential_runs_agree_bitwise() {
    let ds = interpretable(&InterpretableConfig {
        n: 80,
        d: 120,
        seed: 3,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = small_experiment(5).estimator;
    cfg.models = 4;
    cfg.steps = 50;
    let parallel = estimate(&ds, &ScoredMethod::Erm, &cfg, &|_| {}).unwrap();
    cfg.parallel = false;
    let sequential = estimate(&ds, &ScoredMethod::Erm, &cfg, &|_| {}).unwrap();
    assert!(parallel.parallel && !sequential.parallel);
    assert_eq!(parallel.records, sequential.records);
    assert_eq!(parallel.scores, sequential.scores);
    cfg.seed = 6;
    let other = estimate(&ds, &ScoredMethod::Erm, &cfg, &|_| {}).unwrap();
    assert_ne!(other.records, sequential.records);
}

#[test]
fn bad_configurations_are_rejected() {
    let ds = small_figure1(1);
    let base = small_experiment(0).estimator;
    let run = |f: &dyn Fn(&mut memaware::repro::memscore::MemscoreConfig)| {
        let mut cfg = base.clone();
        cfg.steps = 1;
        f(&mut cfg);
        estimate(&ds, &ScoredMethod::Erm, &cfg, &|_| {})
    };
    assert!(run(&|c| c.models = 1).is_err());
    assert!(run(&|c| c.share = 0.0).is_err());
    assert!(run(&|c| c.share = 1.0).is_err());
    assert!(run(&|c| c.share = f64::NAN).is_err());
    assert!(run(&|c| c.steps = 0).is_err());
    assert!(run(&|c| c.batch_size = 0).is_err());
    assert!(run(&|_| {}).is_ok());

    // MAT with XRM outputs from another data set (50 training examples, not 200).
    let mut exp = small_experiment(0);
    exp.xrm.steps = 5;
    let other = interpretable(&InterpretableConfig {
        n: 50,
        d: 600,
        ..Default::default()
    })
    .unwrap();
    let (foreign, _) =
        memaware::algo::xrm::run_xrm_with_twins(&other, &exp.estimator.model, &exp.xrm).unwrap();
    let mat = ScoredMethod::Mat {
        tau: 0.1,
        xrm: std::sync::Arc::new(foreign),
    };
    assert!(estimate(&ds, &mat, &exp.estimator, &|_| {}).is_err());
    exp.bin_width = 0.0;
    assert!(run_memscore(&ds, &exp, &|_| {}).is_err());
}

#[test]
fn cli_writes_the_run_folder() {
    let out = common::scratch("memscore-cli");
    let args = cli::memscore::Args {
        data: Some("interpretable:sigma=0.5,n=60,d=100".into()),
        method: Some("erm".into()),
        models: Some(3),
        steps: Some(20),
        seed: Some(2),
        out: Some(out.clone()),
        ..Default::default()
    };
    cli::memscore::run(&args).unwrap();
    let dir = out.join("memscore-interpretable-erm-m3-seed2");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(JSON_FILE)).unwrap()).unwrap();
    assert!(json["mat"].is_null());
    assert_eq!(json["erm"]["scores"]["n_in"].as_array().unwrap().len(), 60);
    assert!(dir.join(format!("{HIST_ACC_STEM}.png")).is_file());
    let bad = cli::memscore::Args {
        method: Some("jtt".into()),
        ..args
    };
    assert!(cli::memscore::run(&bad).is_err());
    let _ = std::fs::remove_dir_all(&out);
}
