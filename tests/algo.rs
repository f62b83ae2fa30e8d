//! The defining invariants of XRM, MAT and the baselines, and the paper's Figure-1 result end
//! to end. The full-size Figure-1 run (n = 1000, d = 1800, 1000 full-batch epochs) is
//! `#[ignore]`d; run it in release with `cargo test --release --test algo -- --include-ignored`.

mod common;

use std::path::Path;
use std::time::Instant;

use memaware::algo::mat::mat_shift_tensor;
use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::objective::GroupDroState;
use memaware::algo::train::predict;
use memaware::algo::xrm::{
    flip_probability, run_xrm, run_xrm_with_twins, XrmConfig, XrmLoss, XrmOutput, XRM_JSON_FILE,
    XRM_TENSORS_FILE,
};
use memaware::algo::{
    run_method, run_method_with, train, Method, Objective, TrainConfig, TrainSetup,
};
use memaware::data::synthetic::{interpretable, is_minority, InterpretableConfig};
use memaware::data::{Dataset, Split};
use memaware::eval::metrics::{split_metrics, SplitMetrics};
use memaware::eval::selection::{select_checkpoint, Checkpoint, Criterion};
use memaware::io::read_jsonl;
use memaware::{Device, Error, Rng, Tensor};

/// Groups `g = 2y + a` of the interpretable data whose spurious feature disagrees with `y`.
const MINORITY: [usize; 2] = [1, 2];
const MAJORITY: [usize; 2] = [0, 3];

fn figure1_data(n: usize, d: usize, sigma_eps: f32, seed: u64) -> Dataset {
    interpretable(&InterpretableConfig {
        n,
        d,
        sigma_eps,
        seed,
        ..Default::default()
    })
    .unwrap()
}

/// A small instance for the invariant tests.
fn small_data(seed: u64) -> Dataset {
    figure1_data(120, 200, 0.5, seed)
}

fn train_cfg(steps: usize, batch_size: usize, lr: f32, checkpoint_freq: usize) -> TrainConfig {
    TrainConfig::minibatch(
        steps,
        batch_size,
        OptimizerSpec::plain_sgd(lr),
        checkpoint_freq,
    )
}

fn xrm_cfg(steps: usize, batch_size: usize, lr: f32, loss: XrmLoss) -> XrmConfig {
    XrmConfig {
        steps,
        batch_size,
        optimizer: OptimizerSpec::plain_sgd(lr),
        loss,
        seed: 0,
        device: Device::Cpu,
        log_every: 1,
    }
}

/// Accuracy over the union of `groups` (each group weighted by its size).
fn pooled(m: &SplitMetrics, groups: &[usize]) -> f64 {
    let correct: f64 = groups
        .iter()
        .map(|&g| m.group_acc[g].unwrap_or(0.0) * m.group_count[g] as f64)
        .sum();
    let count: usize = groups.iter().map(|&g| m.group_count[g]).sum();
    correct / count as f64
}

/// Share of examples whose inferred bit equals the true minority indicator.
fn agreement(bits: &[u32], split: &Split) -> f64 {
    let minority = is_minority(split);
    bits.iter()
        .zip(&minority)
        .filter(|(&m, &is_min)| (m == 1) == is_min)
        .count() as f64
        / split.n as f64
}

fn forward_rows(model: &dyn memaware::nn::Module, split: &Split) -> Vec<f32> {
    let x = Tensor::from_slice(&split.x, (split.n, split.d), &Device::Cpu).unwrap();
    memaware::no_grad(|| model.forward(&x).unwrap().to_vec().unwrap())
}

#[test]
fn heldout_logits_come_from_the_twin_that_never_trained_on_the_example() {
    let ds = small_data(1);
    let k = ds.classes;
    let cfg = xrm_cfg(40, 32, 5e-2, XrmLoss::Mean);
    let (out, twins) = run_xrm_with_twins(&ds, &ModelSpec::linear_no_bias(), &cfg).unwrap();
    let by_a = forward_rows(twins.a.as_ref(), &ds.train);
    let by_b = forward_rows(twins.b.as_ref(), &ds.train);
    let mut held_in_differs = 0;
    for i in 0..ds.train.n {
        let (held_out, held_in) = match out.assignment[i] {
            0 => (&by_b, &by_a),
            1 => (&by_a, &by_b),
            other => panic!("assignment {other}"),
        };
        for c in 0..k {
            let h = out.heldout_logits[i * k + c];
            assert!(
                (h - held_out[i * k + c]).abs() <= 1e-5 * (1.0 + h.abs()),
                "row {i}"
            );
            if (h - held_in[i * k + c]).abs() > 1e-3 {
                held_in_differs += 1;
            }
        }
    }
    assert!(
        held_in_differs > ds.train.n,
        "the twins should disagree on most logits"
    );
    let on_a = out.assignment.iter().filter(|&&t| t == 0).count();
    assert!(on_a > 30 && on_a < 90, "{on_a} of 120 held in by A");

    // Never trained on: change the labels of examples held in by A. B never trains on them;
    // the only way A's examples reach B is through label flipping, which uses A's held-out
    // predictions *before* each update: B's labels at step s come from A after s - 1 updates.
    // So after two full-batch steps B has seen nothing of A's examples, and every held-out
    // logit B produces (those of A's examples) is bitwise unchanged, while A's (those of B's
    // examples) move.
    let two_steps = xrm_cfg(2, usize::MAX, 5e-2, XrmLoss::Mean);
    let before = run_xrm(&ds, &ModelSpec::linear_no_bias(), &two_steps).unwrap();
    let mut changed = ds.clone();
    let a_rows: Vec<usize> = (0..ds.train.n)
        .filter(|&i| out.assignment[i] == 0)
        .collect();
    for &i in a_rows.iter().take(15) {
        changed.train.y[i] = 1 - changed.train.y[i];
    }
    let after = run_xrm(&changed, &ModelSpec::linear_no_bias(), &two_steps).unwrap();
    assert_eq!(after.assignment, out.assignment);
    let mut moved = 0;
    for i in 0..ds.train.n {
        let (a, b) = (
            &before.heldout_logits[i * k..(i + 1) * k],
            &after.heldout_logits[i * k..(i + 1) * k],
        );
        if out.assignment[i] == 0 {
            assert_eq!(a, b, "held-out logits of row {i} (from B) changed");
        } else if a != b {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "A trained on the changed labels, so its held-out logits must move"
    );
}

#[test]
fn flip_probability_is_zero_at_uniform_and_one_at_certain() {
    for k in [2usize, 3] {
        let uniform = 1.0 / k as f64;
        assert!(flip_probability(uniform, k).abs() < 1e-15, "K = {k}");
        assert!((flip_probability(1.0, k) - 1.0).abs() < 1e-15, "K = {k}");
        // Halfway between uniform and certain flips half the time.
        let half = (uniform + 1.0) / 2.0;
        assert!((flip_probability(half, k) - 0.5).abs() < 1e-12, "K = {k}");
    }
    // K = 3, p = 0.6: (0.6 - 1/3) * 3/2 = 0.4.
    assert!((flip_probability(0.6, 3) - 0.4).abs() < 1e-12);
}

/// An XRM output with the given held-out logits, for the MAT tests.
fn fake_xrm(ds: &Dataset, heldout_logits: Vec<f32>) -> XrmOutput {
    XrmOutput {
        dataset: ds.name.clone(),
        classes: ds.classes,
        model_spec: ModelSpec::linear_no_bias(),
        config: xrm_cfg(1, 1, 0.1, XrmLoss::Mean),
        heldout_logits,
        assignment: vec![0; ds.train.n],
        y_dyn: ds.train.y.clone(),
        flip_rate_history: vec![],
        final_flip_rate: 0.0,
        inferred_tr: vec![0; ds.train.n],
        inferred_va: vec![0; ds.valid.n],
        degenerate: None,
        heldout_acc_by_group: vec![],
        steps_per_s: 0.0,
    }
}

#[test]
fn mat_shift_for_one_hot_heldout_predictions_is_the_log_conditional() {
    let ds = small_data(2);
    let (n, k) = (ds.train.n, ds.classes);
    // The held-out model predicts the spurious class a (as XRM does on this data), with
    // logits ±50 that make softmax(h / 0.1) exactly one-hot.
    let yho = &ds.train.a;
    let mut h = vec![-50.0f32; n * k];
    for i in 0..n {
        h[i * k + yho[i] as usize] = 50.0;
    }
    let shift = mat_shift_tensor(&fake_xrm(&ds, h), &ds, 0.1, &Device::Cpu).unwrap();
    assert_eq!(shift.dims(), &[n, k]);
    let shift = shift.to_vec().unwrap();
    let mut counts = [[0usize; 2]; 2];
    for i in 0..n {
        counts[yho[i] as usize][ds.train.y[i] as usize] += 1;
    }
    for i in 0..n {
        let row = counts[yho[i] as usize];
        for y in 0..k {
            let p = row[y] as f64 / (row[0] + row[1]) as f64;
            let expected = (p + 1e-6).ln();
            assert!(
                (shift[i * k + y] as f64 - expected).abs() < 1e-5,
                "row {i}, class {y}: {} vs {expected}",
                shift[i * k + y]
            );
        }
    }
}

#[test]
fn jtt_upweights_exactly_the_first_stage_errors() {
    let ds = small_data(3);
    let cfg = train_cfg(60, usize::MAX, 1e-2, 20);
    let first_stage_steps = 10;
    let lambda_up = 20.0;
    let spec = ModelSpec::linear_no_bias();
    let out = run_method(
        &ds,
        &Method::Jtt {
            first_stage_steps,
            lambda_up,
        },
        &spec,
        &cfg,
        None,
    )
    .unwrap();
    // Stage 1 is ERM for first_stage_steps with the same seed: recompute its errors.
    let stage1 = run_method(
        &ds,
        &Method::Erm,
        &spec,
        &TrainConfig {
            steps: first_stage_steps,
            ..cfg.clone()
        },
        None,
    )
    .unwrap();
    let pred = predict(stage1.outcome.model.as_ref(), &ds.train, &Device::Cpu).unwrap();
    let errors: Vec<usize> = (0..ds.train.n)
        .filter(|&i| pred[i] != ds.train.y[i])
        .collect();
    assert!(
        !errors.is_empty() && errors.len() < ds.train.n / 2,
        "{errors:?}"
    );
    assert_eq!(out.jtt_error_set.as_ref().unwrap(), &errors);
    let w = out.row_weights.as_ref().unwrap();
    for (i, &wi) in w.iter().enumerate() {
        let expected = if errors.contains(&i) { lambda_up } else { 1.0 };
        assert_eq!(wi, expected, "row {i}");
    }
    assert_eq!(out.outcome.checkpoints.last().unwrap().step, 59);
}

#[test]
fn group_dro_q_stays_a_distribution_and_rises_on_the_worst_group() {
    let mut dro = GroupDroState::new(4, 0.3).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..200 {
        // A batch of 16 rows over groups 0, 1, 3 (group 2 absent); group 3 has the largest loss.
        let groups: Vec<u32> = (0..16)
            .map(|_| [0u32, 1, 3][rng.below(3) as usize])
            .collect();
        let losses: Vec<f32> = groups
            .iter()
            .map(|&g| {
                if g == 3 {
                    2.0 + rng.uniform()
                } else {
                    rng.uniform()
                }
            })
            .collect();
        let before = dro.q().to_vec();
        let w = dro.update(&losses, &groups).unwrap();
        let q = dro.q();
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(q.iter().all(|&v| (0.0..=1.0).contains(&v)));
        // Strictly, until q[3] is 1 in f64.
        if groups.contains(&3) && before[3] < 1.0 {
            assert!(q[3] > before[3], "{before:?} -> {q:?}");
        }
        // The weighted row loss is the q-weighted mean of the present groups' losses.
        let weighted: f64 = w.iter().zip(&losses).map(|(&w, &l)| (w * l) as f64).sum();
        let mut by_group = 0.0;
        for g in [0u32, 1, 3] {
            let rows: Vec<f64> = groups
                .iter()
                .zip(&losses)
                .filter(|(&gi, _)| gi == g)
                .map(|(_, &l)| l as f64)
                .collect();
            if !rows.is_empty() {
                by_group += q[g as usize] * rows.iter().sum::<f64>() / rows.len() as f64;
            }
        }
        assert!((weighted - by_group).abs() < 1e-5);
    }
    assert!(dro.q()[3] > 0.99, "{:?}", dro.q());

    // In a training run q stays a distribution and moves away from uniform.
    let ds = small_data(4);
    let out = run_method(
        &ds,
        &Method::GroupDro { eta: 1.0 },
        &ModelSpec::linear_no_bias(),
        &train_cfg(100, usize::MAX, 1e-2, 100),
        None,
    )
    .unwrap();
    let q = out.outcome.group_dro_q.unwrap();
    assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(q.iter().all(|&v| v > 0.0 && v < 1.0), "{q:?}");
    assert!(q.iter().any(|&v| (v - 0.25).abs() > 0.05), "{q:?}");
}

#[test]
fn selection_picks_the_last_best_checkpoint_of_a_real_run() {
    let ds = small_data(6);
    let dir = common::scratch("algo-selection");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoints.jsonl");
    let cfg = TrainConfig {
        eval_train: true,
        eval_valid: true,
        checkpoints_path: Some(path.clone()),
        ..train_cfg(300, usize::MAX, 1e-2, 5)
    };
    let mut seen = Vec::new();
    let out = run_method_with(
        &ds,
        &Method::Erm,
        &ModelSpec::linear_no_bias(),
        &cfg,
        None,
        &mut |cp| {
            seen.push(cp.clone());
            Ok(())
        },
    )
    .unwrap();
    let cps = &out.outcome.checkpoints;
    let steps: Vec<usize> = cps.iter().map(|c| c.step).collect();
    let mut expected: Vec<usize> = (0..300).step_by(5).collect();
    expected.push(299);
    assert_eq!(steps, expected);
    assert_eq!(&seen, cps);
    assert_eq!(&read_jsonl::<Checkpoint>(&path).unwrap(), cps);
    assert!(cps.iter().all(|c| c.tr.is_some() && c.va_gi.is_none()));

    // The official rule: the step-0 checkpoint takes no part.
    let (index, value) = select_checkpoint(cps, Criterion::VaWga).unwrap();
    let best = cps
        .iter()
        .filter(|c| c.step > 0)
        .map(|c| c.valid().unwrap().worst_group_acc)
        .fold(f64::NEG_INFINITY, f64::max);
    let last_best = cps
        .iter()
        .rposition(|c| c.step > 0 && c.valid().unwrap().worst_group_acc == best)
        .unwrap();
    assert_eq!((index, value), (last_best, best));
    // The run is not trivially flat: selection has something to choose.
    assert!(cps
        .iter()
        .any(|c| c.valid().unwrap().worst_group_acc < best));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_checkpoint_of_a_wide_linear_run_equals_a_live_evaluation_of_that_step() {
    // d ≥ 512: a linear model's checkpoints are evaluated in batches of parameter snapshots.
    // The run of `s` steps ends in the model of step s − 1 of the long run (same seed, same
    // updates); evaluating it directly must give that step's checkpoint.
    let ds = figure1_data(150, 700, 0.5, 3);
    let steps = 21;
    let cfg = |steps: usize| TrainConfig {
        eval_train: true,
        ..train_cfg(steps, usize::MAX, 1e-2, 1)
    };
    let spec = ModelSpec::linear_no_bias();
    let mut streamed = Vec::new();
    let long = run_method_with(&ds, &Method::Erm, &spec, &cfg(steps), None, &mut |cp| {
        streamed.push(cp.clone());
        Ok(())
    })
    .unwrap();
    let cps = &long.outcome.checkpoints;
    assert_eq!(&streamed, cps);
    assert_eq!(
        cps.iter().map(|c| c.step).collect::<Vec<_>>(),
        (0..steps).collect::<Vec<_>>()
    );
    let n_groups = ds.n_groups();
    for s in 1..=steps {
        let short = run_method(&ds, &Method::Erm, &spec, &cfg(s), None).unwrap();
        let model = short.outcome.model.as_ref();
        let live = |split: &Split| {
            let pred = predict(model, split, &Device::Cpu).unwrap();
            split_metrics(
                &pred,
                &split.y,
                &split.groups(ds.n_attr),
                n_groups,
                ds.classes,
            )
            .unwrap()
        };
        let cp = &cps[s - 1];
        assert_eq!(cp.te, live(&ds.test), "step {}", s - 1);
        assert_eq!(cp.va.as_ref(), Some(&live(&ds.valid)), "step {}", s - 1);
        assert_eq!(cp.tr.as_ref(), Some(&live(&ds.train)), "step {}", s - 1);
        assert_eq!(short.outcome.checkpoints.last(), Some(cp));
    }
}

#[test]
fn a_run_without_validation_records_test_metrics_and_refuses_selection() {
    let ds = small_data(6);
    let run = |eval_valid: bool| {
        let cfg = TrainConfig {
            eval_valid,
            ..train_cfg(30, usize::MAX, 1e-2, 5)
        };
        run_method(&ds, &Method::Erm, &ModelSpec::linear_no_bias(), &cfg, None).unwrap()
    };
    let (with, without) = (run(true), run(false));
    let (a, b) = (&with.outcome.checkpoints, &without.outcome.checkpoints);
    assert_eq!(a.len(), b.len());
    for (ca, cb) in a.iter().zip(b) {
        assert!(ca.va.is_some() && cb.va.is_none() && cb.va_gi.is_none());
        // Validation is only read, never trained on: test metrics and losses are the same.
        assert_eq!((ca.step, ca.train_loss), (cb.step, cb.train_loss));
        assert_eq!(ca.te, cb.te);
    }
    for c in [Criterion::VaWga, Criterion::VaAvg] {
        assert!(matches!(select_checkpoint(b, c), Err(Error::Data(_))));
    }
    assert!(matches!(b[0].valid(), Err(Error::Data(m)) if m.contains("step 0")));
}

#[test]
fn training_accuracy_from_the_training_pass_equals_a_separate_evaluation() {
    // Full batch over all rows reuses the training logits; the same rows given as an explicit
    // subset take the separate-forward path. Everything else is identical.
    let ds = small_data(7);
    let cfg = TrainConfig {
        eval_train: true,
        eval_valid: true,
        ..train_cfg(40, usize::MAX, 1e-2, 3)
    };
    let spec = ModelSpec::linear_no_bias();
    let reuse = train(
        &ds,
        &spec,
        &cfg,
        &TrainSetup::new(Objective::Mean),
        &mut |_| Ok(()),
    )
    .unwrap();
    let separate_setup = TrainSetup {
        rows: Some((0..ds.train.n).collect()),
        ..TrainSetup::new(Objective::Mean)
    };
    let separate = train(&ds, &spec, &cfg, &separate_setup, &mut |_| Ok(())).unwrap();
    assert_eq!(reuse.checkpoints, separate.checkpoints);
    let last = reuse.checkpoints.last().unwrap();
    let pred = predict(reuse.model.as_ref(), &ds.train, &Device::Cpu).unwrap();
    let correct = pred.iter().zip(&ds.train.y).filter(|(p, y)| p == y).count();
    assert_eq!(
        last.tr.as_ref().unwrap().avg_acc,
        correct as f64 / ds.train.n as f64
    );
}

#[test]
fn runs_are_deterministic_in_the_seed() {
    let ds = small_data(8);
    let spec = ModelSpec::linear_no_bias();
    let xcfg = xrm_cfg(30, 25, 5e-2, XrmLoss::ClassBalanced);
    let x1 = run_xrm(&ds, &spec, &xcfg).unwrap();
    let x2 = run_xrm(&ds, &spec, &xcfg).unwrap();
    assert_eq!(x1.heldout_logits, x2.heldout_logits);
    assert_eq!(x1.y_dyn, x2.y_dyn);
    assert_eq!(x1.flip_rate_history, x2.flip_rate_history);
    let x3 = run_xrm(&ds, &spec, &XrmConfig { seed: 1, ..xcfg }).unwrap();
    assert_ne!(x1.heldout_logits, x3.heldout_logits);

    let cfg = train_cfg(30, 16, 1e-2, 10);
    for method in [
        Method::Mat { tau: 0.1 },
        Method::Rwg,
        Method::Subg,
        Method::XrmGroupDro { eta: 0.1 },
    ] {
        let a = run_method(&ds, &method, &spec, &cfg, Some(&x1)).unwrap();
        let b = run_method(&ds, &method, &spec, &cfg, Some(&x1)).unwrap();
        assert_eq!(a.outcome.checkpoints, b.outcome.checkpoints, "{method:?}");
        assert!(a.outcome.checkpoints.iter().all(|c| c.va_gi.is_some()));
    }
    let subg = run_method(&ds, &Method::Subg, &spec, &cfg, None).unwrap();
    let rows = subg.subg_rows.unwrap();
    let groups = ds.train.groups(ds.n_attr);
    let kept = Split::counts(&rows.iter().map(|&i| groups[i]).collect::<Vec<_>>(), 4);
    let smallest = *Split::counts(&groups, 4)
        .iter()
        .filter(|&&c| c > 0)
        .min()
        .unwrap();
    assert!(kept.iter().all(|&c| c == smallest), "{kept:?}");
}

#[test]
fn methods_that_need_xrm_outputs_say_so() {
    let ds = small_data(9);
    for method in [Method::Mat { tau: 0.1 }, Method::XrmGroupDro { eta: 0.1 }] {
        assert!(matches!(
            run_method(
                &ds,
                &method,
                &ModelSpec::linear_no_bias(),
                &train_cfg(2, 8, 0.1, 1),
                None
            ),
            Err(Error::InvalidArgument { name: "xrm", .. })
        ));
    }
}

/// Figure 1 at a size that runs in seconds in debug builds: n = 200, d = 360 (the paper's
/// d/n = 1.8), otherwise the paper's recipe.
#[test]
fn figure1_small_erm_memorizes_the_minority_and_mat_does_not() {
    let report = figure1(200, 360, 100);
    report.check();
}

/// Figure 1 at the paper's size; see the module docs for how to run it.
#[test]
#[ignore]
fn figure1_paper_size() {
    let report = figure1(1000, 1800, 1);
    report.check();
    // The spurious feature comes first: at epoch 100 the σ = 0 model still fails the minority.
    let early = &report.erm0_checkpoints[99];
    assert_eq!(early.step, 99);
    let early_min = pooled(&early.te, &MINORITY);
    println!("ERM sigma=0 minority test accuracy at epoch 100: {early_min:.3}");
    assert!(early_min < 0.2, "{early_min}");
}

struct Figure1Report {
    erm0_min: f64,
    erm_min: f64,
    erm_min_train: f64,
    erm_maj: f64,
    mat_min: f64,
    mat_maj: f64,
    flip_rate: f64,
    minority_share: f64,
    agree_tr: f64,
    agree_va: f64,
    degenerate: Option<String>,
    erm0_checkpoints: Vec<memaware::eval::selection::Checkpoint>,
}

impl Figure1Report {
    fn check(&self) {
        assert!(self.erm0_min >= 0.95, "ERM σ=0 minority {}", self.erm0_min);
        assert_eq!(
            self.erm_min_train, 1.0,
            "ERM σ=0.5 memorizes the training minority"
        );
        assert!(self.erm_min <= 0.35, "ERM σ=0.5 minority {}", self.erm_min);
        assert!(self.erm_maj >= 0.95, "ERM σ=0.5 majority {}", self.erm_maj);
        assert!(self.mat_min >= 0.8, "MAT minority {}", self.mat_min);
        assert!(self.mat_maj >= 0.9, "MAT majority {}", self.mat_maj);
        assert!(
            (self.flip_rate - self.minority_share).abs() <= 0.02,
            "flip rate {} vs minority share {}",
            self.flip_rate,
            self.minority_share
        );
        assert!(self.agree_tr >= 0.98 && self.agree_va >= 0.98);
        assert_eq!(self.degenerate, None);
    }
}

/// The Figure-1 pipeline: ERM at σ = 0 and 0.5, XRM, MAT (seed 0), every epoch evaluated
/// with training metrics (`checkpoint_freq` as given).
fn figure1(n: usize, d: usize, checkpoint_freq: usize) -> Figure1Report {
    let spec = ModelSpec::linear_no_bias();
    let epochs = 1000;
    let cfg = |lr: f32| TrainConfig {
        eval_train: true,
        eval_valid: true,
        ..train_cfg(epochs, usize::MAX, lr, checkpoint_freq)
    };
    let timed = |what: &str, t: Instant| {
        println!("{what}: {:.2} s", t.elapsed().as_secs_f64());
    };

    let ds0 = figure1_data(n, d, 0.0, 0);
    let t = Instant::now();
    let erm0 = run_method(&ds0, &Method::Erm, &spec, &cfg(3e-2), None).unwrap();
    timed("ERM sigma=0", t);
    let erm0_last = erm0.outcome.checkpoints.last().unwrap().clone();

    let ds = figure1_data(n, d, 0.5, 0);
    let t = Instant::now();
    let erm = run_method(&ds, &Method::Erm, &spec, &cfg(1e-2), None).unwrap();
    timed("ERM sigma=0.5", t);
    let erm_last = erm.outcome.checkpoints.last().unwrap();

    let t = Instant::now();
    let xrm = run_xrm(
        &ds,
        &spec,
        &xrm_cfg(epochs, usize::MAX, 1e-2, XrmLoss::Mean),
    )
    .unwrap();
    timed("XRM", t);
    let t = Instant::now();
    let mat = run_method(
        &ds,
        &Method::Mat { tau: 0.1 },
        &spec,
        &cfg(1e-2),
        Some(&xrm),
    )
    .unwrap();
    timed("MAT", t);
    let mat_last = mat.outcome.checkpoints.last().unwrap();
    // MAT predicts without the shift: the reported test metrics are those of argmax f(x).
    let pred = predict(mat.outcome.model.as_ref(), &ds.test, &Device::Cpu).unwrap();
    let correct = pred.iter().zip(&ds.test.y).filter(|(p, y)| p == y).count();
    assert_eq!(mat_last.te.avg_acc, correct as f64 / ds.test.n as f64);

    let minority = is_minority(&ds.train).iter().filter(|&&m| m).count();
    let report = Figure1Report {
        erm0_min: pooled(&erm0_last.te, &MINORITY),
        erm_min: pooled(&erm_last.te, &MINORITY),
        erm_min_train: pooled(erm_last.tr.as_ref().unwrap(), &MINORITY),
        erm_maj: pooled(&erm_last.te, &MAJORITY),
        mat_min: pooled(&mat_last.te, &MINORITY),
        mat_maj: pooled(&mat_last.te, &MAJORITY),
        flip_rate: xrm.final_flip_rate,
        minority_share: minority as f64 / ds.train.n as f64,
        agree_tr: agreement(&xrm.inferred_tr, &ds.train),
        agree_va: agreement(&xrm.inferred_va, &ds.valid),
        degenerate: xrm.degenerate.clone(),
        erm0_checkpoints: erm0.outcome.checkpoints,
    };
    println!(
        "n={n} d={d}: ERM σ=0 minority test {:.3}; ERM σ=0.5 minority test {:.3} (train {:.3}), \
         majority test {:.3}; MAT minority test {:.3}, majority test {:.3}; XRM flip rate {:.3} \
         (minority share {:.3}), inferred-group agreement train {:.3} / validation {:.3}, \
         held-out accuracy by group {:?}",
        report.erm0_min,
        report.erm_min,
        report.erm_min_train,
        report.erm_maj,
        report.mat_min,
        report.mat_maj,
        report.flip_rate,
        report.minority_share,
        report.agree_tr,
        report.agree_va,
        xrm.heldout_acc_by_group
    );
    report
}

fn assert_file_error(result: Result<XrmOutput, Error>, file: &str, tensor: &str, problem: &str) {
    match result {
        Err(Error::File {
            path,
            tensor: t,
            problem: p,
        }) => {
            assert!(path.ends_with(file), "{path:?}");
            assert_eq!(t, tensor, "{p}");
            assert!(p.contains(problem), "{p}");
        }
        other => panic!("expected a File error for {file}/{tensor}, got {other:?}"),
    }
}

/// Rewrites `xrm.safetensors` in `dir` with `edit` applied to its tensor list.
fn rewrite_tensors(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join(XRM_TENSORS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut list);
    let views: Vec<(String, safetensors::tensor::TensorView)> = list
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn xrm_outputs_round_trip_and_damaged_files_are_named_errors() {
    let ds = small_data(10);
    let spec = ModelSpec::linear_no_bias();
    let out = run_xrm(&ds, &spec, &xrm_cfg(20, usize::MAX, 5e-2, XrmLoss::Mean)).unwrap();
    let dir = common::scratch("algo-xrm-files");
    out.save(&dir, &ds).unwrap();
    let back = XrmOutput::load(&dir, &ds).unwrap();
    assert_eq!(back.heldout_logits, out.heldout_logits);
    assert_eq!(back.assignment, out.assignment);
    assert_eq!(back.y_dyn, out.y_dyn);
    assert_eq!(back.inferred_tr, out.inferred_tr);
    assert_eq!(back.inferred_va, out.inferred_va);
    assert_eq!(back.flip_rate_history, out.flip_rate_history);
    assert_eq!(back.final_flip_rate, out.final_flip_rate);
    assert_eq!(back.degenerate, out.degenerate);
    assert_eq!(back.model_spec, out.model_spec);
    assert_eq!(back.config.steps, 20);

    // Outputs of another data set: other sizes (the JSON says so), or the same sizes with
    // other labels (another seed).
    let other_size = figure1_data(100, 200, 0.5, 10);
    assert_file_error(
        XrmOutput::load(&dir, &other_size),
        XRM_JSON_FILE,
        "dataset",
        "written for",
    );
    let other_seed = small_data(11);
    assert_file_error(
        XrmOutput::load(&dir, &other_seed),
        XRM_TENSORS_FILE,
        "y_tr",
        "differs",
    );

    // A failed save leaves the earlier files as they were.
    let other = run_xrm(
        &ds,
        &spec,
        &XrmConfig {
            seed: 3,
            ..out.config.clone()
        },
    )
    .unwrap();
    assert_ne!(other.heldout_logits, out.heldout_logits);
    let blocker = dir.join(format!("{XRM_JSON_FILE}.partial"));
    std::fs::create_dir(&blocker).unwrap();
    assert!(matches!(other.save(&dir, &ds), Err(Error::Io { .. })));
    std::fs::remove_dir(&blocker).unwrap();
    assert!(!dir.join(format!("{XRM_TENSORS_FILE}.partial")).exists());
    assert_eq!(
        XrmOutput::load(&dir, &ds).unwrap().heldout_logits,
        out.heldout_logits
    );

    // Damaged tensor files.
    let good = std::fs::read(dir.join(XRM_TENSORS_FILE)).unwrap();
    rewrite_tensors(&dir, |list| list.retain(|(n, ..)| n != "inferred_va"));
    assert_file_error(
        XrmOutput::load(&dir, &ds),
        XRM_TENSORS_FILE,
        "inferred_va",
        "missing",
    );
    rewrite_tensors(&dir, |list| {
        let entry = list
            .iter_mut()
            .find(|(n, ..)| n == "heldout_logits")
            .unwrap();
        let n = entry.2[0];
        entry.2 = vec![n / 2, 4];
    });
    assert_file_error(
        XrmOutput::load(&dir, &ds),
        XRM_TENSORS_FILE,
        "heldout_logits",
        "shape",
    );
    std::fs::write(dir.join(XRM_TENSORS_FILE), &good[..good.len() / 2]).unwrap();
    assert_file_error(
        XrmOutput::load(&dir, &ds),
        XRM_TENSORS_FILE,
        "",
        "truncated",
    );
    std::fs::remove_file(dir.join(XRM_TENSORS_FILE)).unwrap();
    assert_file_error(
        XrmOutput::load(&dir, &ds),
        XRM_TENSORS_FILE,
        "",
        "run XRM first",
    );
    std::fs::write(dir.join(XRM_TENSORS_FILE), &good).unwrap();
    assert!(XrmOutput::load(&dir, &ds).is_ok());
    let json = std::fs::read(dir.join(XRM_JSON_FILE)).unwrap();
    std::fs::write(dir.join(XRM_JSON_FILE), &json[..json.len() / 2]).unwrap();
    assert!(matches!(
        XrmOutput::load(&dir, &ds),
        Err(Error::Json { .. })
    ));
    std::fs::remove_file(dir.join(XRM_JSON_FILE)).unwrap();
    assert_file_error(
        XrmOutput::load(&dir, &ds),
        XRM_JSON_FILE,
        "",
        "run XRM first",
    );
    // The message says where it looked and what it found there.
    let msg = XrmOutput::load(&dir, &ds).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("looked in `{}`", dir.display())),
        "{msg}"
    );
    assert!(msg.contains(&format!("holds {XRM_TENSORS_FILE}")), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
    let msg = XrmOutput::load(&dir, &ds).unwrap_err().to_string();
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ds = small_data(12);
    let spec = ModelSpec::linear_no_bias();
    let cfg = train_cfg(3, 16, 1e-2, 1);
    let erm = |ds: &Dataset| run_method(ds, &Method::Erm, &spec, &cfg, None).map(|_| ());
    let xrm = |ds: &Dataset| {
        run_xrm(ds, &spec, &xrm_cfg(2, 16, 1e-2, XrmLoss::ClassBalanced)).map(|_| ())
    };

    let mut bad = ds.clone();
    bad.train.y[7] = 2;
    assert!(matches!(
        erm(&bad),
        Err(Error::LabelOutOfRange {
            row: 7,
            label: 2,
            ..
        })
    ));
    assert!(matches!(
        xrm(&bad),
        Err(Error::LabelOutOfRange { row: 7, .. })
    ));

    let mut bad = ds.clone();
    bad.classes = 1;
    assert!(matches!(erm(&bad), Err(Error::Data(m)) if m.contains("class")));

    let mut bad = ds.clone();
    bad.train.x[5 * bad.train.d + 3] = f32::NAN;
    assert!(matches!(erm(&bad), Err(Error::NonFinite { .. })));
    assert!(matches!(xrm(&bad), Err(Error::NonFinite { .. })));

    let mut bad = ds.clone();
    bad.train.a.pop();
    assert!(matches!(erm(&bad), Err(Error::Data(m)) if m.contains("lengths")));

    // A validation split without the minority group (y = 0, a = 1) that training has.
    let mut bad = ds.clone();
    let keep: Vec<usize> = (0..ds.valid.n)
        .filter(|&i| !(ds.valid.y[i] == 0 && ds.valid.a[i] == 1))
        .collect();
    bad.valid = ds.valid.select(&keep);
    assert!(matches!(erm(&bad), Err(Error::Data(m)) if m.contains("group 1")));

    // Configs that cannot run.
    for (bad_cfg, name) in [
        (
            TrainConfig {
                steps: 0,
                ..cfg.clone()
            },
            "steps",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..cfg.clone()
            },
            "batch_size",
        ),
        (
            TrainConfig {
                checkpoint_freq: 0,
                ..cfg.clone()
            },
            "checkpoint_freq",
        ),
    ] {
        assert!(matches!(
            run_method(&ds, &Method::Erm, &spec, &bad_cfg, None),
            Err(Error::InvalidArgument { name: n, .. }) if n == name
        ));
    }
    assert!(matches!(
        run_method(
            &ds,
            &Method::Jtt {
                first_stage_steps: 0,
                lambda_up: 5.0
            },
            &spec,
            &cfg,
            None
        ),
        Err(Error::InvalidArgument {
            name: "first_stage_steps",
            ..
        })
    ));
    assert!(matches!(
        run_method(&ds, &Method::GroupDro { eta: f32::NAN }, &spec, &cfg, None),
        Err(Error::InvalidArgument { name: "eta", .. })
    ));

    // Held-out logits of the wrong shape, and XRM outputs of another data set.
    let (n, k) = (ds.train.n, ds.classes);
    let short = fake_xrm(&ds, vec![0.0; n * k - 1]);
    assert!(matches!(
        mat_shift_tensor(&short, &ds, 0.1, &Device::Cpu),
        Err(Error::Data(m)) if m.contains("held-out logits")
    ));
    assert!(matches!(
        run_method(&ds, &Method::Mat { tau: 0.1 }, &spec, &cfg, Some(&short)),
        Err(Error::Data(_))
    ));
    let fits = fake_xrm(&ds, vec![0.0; n * k]);
    let smaller = figure1_data(100, 200, 0.5, 12);
    assert!(matches!(
        run_method(
            &smaller,
            &Method::XrmGroupDro { eta: 0.1 },
            &spec,
            &cfg,
            Some(&fits)
        ),
        Err(Error::Data(_))
    ));
    assert!(matches!(
        mat_shift_tensor(&fits, &ds, 0.0, &Device::Cpu),
        Err(Error::InvalidArgument { name: "tau", .. })
    ));
    let mut nan = fake_xrm(&ds, vec![0.0; n * k]);
    nan.heldout_logits[4] = f32::NAN;
    assert!(matches!(
        mat_shift_tensor(&nan, &ds, 0.1, &Device::Cpu),
        Err(Error::NonFinite { .. })
    ));
}
