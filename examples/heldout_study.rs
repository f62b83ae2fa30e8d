//! MAT with XRM vs K-fold held-out estimates (`docs/heldout-estimators.md`).
//!
//! ```text
//! cargo run --release --example heldout_study -- figure1 [--seeds 5]
//! cargo run --release --example heldout_study -- table1 DIR_XRM DIR_KFOLD2 DIR_KFOLD5
//! ```
//!
//! `figure1`: per seed, Figure 1's data (`n = 1000`, `d = 1800`, `σ_ε = 0.5`) and its recipe
//! (full-batch plain SGD, lr `1e-2`, 1000 steps for phase 1 and for MAT, `τ = 0.1`, MAT's
//! model seeded as in Figure 1), with phase 1 from XRM (Figure 1's twins: mean loss) or K-fold
//! (K = 2, 5; every fold model 1000 steps of the same optimizer). No selection: the final
//! model's test accuracies, as in the figure.
//!
//! `table1`: reads the `table1.json` of `memaware table1 --methods mat --estimator E` runs
//! (one folder per estimator) and the chosen phase-1 run's `xrm.json` at every seed, and
//! prints minority / worst-group test accuracy of MAT under each selection, the inferred-group
//! precision and recall, and the phase-1 cost in optimizer steps.

use std::path::{Path, PathBuf};

use memaware::algo::heldout::{inference_quality, InferenceQuality};
use memaware::algo::kfold::{run_kfold, KfoldConfig};
use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput};
use memaware::algo::{run_method, Method, TrainConfig};
use memaware::backend::Device;
use memaware::data::synthetic::{interpretable, InterpretableConfig};
use memaware::eval::metrics::SplitMetrics;
use memaware::eval::selection::mean_std;
use memaware::repro::figure1::{MAJORITY_GROUPS, MAT_MODEL_STREAM, MINORITY_GROUPS};
use memaware::repro::table1::{entry_dir, Table1Record};
use memaware::rng::Rng;
use serde_json::Value;

/// Accuracy pooled over `groups` (each weighted by its size).
fn pooled(m: &SplitMetrics, groups: &[usize]) -> f64 {
    let correct: f64 = groups
        .iter()
        .map(|&g| m.group_acc[g].unwrap_or(0.0) * m.group_count[g] as f64)
        .sum();
    let count: usize = groups.iter().map(|&g| m.group_count[g]).sum();
    correct / count.max(1) as f64
}

fn pm(values: &[f64], scale: f64) -> String {
    let s = mean_std(values);
    format!("{:.1} ± {:.1}", s.mean * scale, s.std * scale)
}

fn pm3(values: &[f64]) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let s = mean_std(values);
    format!("{:.2} ± {:.2}", s.mean, s.std)
}

const ESTIMATORS: [(&str, usize); 3] = [("XRM", 0), ("K-fold, K = 2", 2), ("K-fold, K = 5", 5)];

fn figure1(seeds: u64) -> memaware::Result<()> {
    let steps = 1000;
    let spec = ModelSpec::linear_no_bias();
    let sgd = OptimizerSpec::plain_sgd(1e-2);
    println!("| Phase 1 | phase-1 steps | held-out error | precision (tr / va) | recall (tr / va) | MAT test minority | MAT test majority | MAT test WGA |");
    println!("|---|---:|---:|---|---|---:|---:|---:|");
    for (name, folds) in ESTIMATORS {
        let (mut minority, mut majority, mut wga, mut err) = (vec![], vec![], vec![], vec![]);
        let (mut p, mut r) = ([vec![], vec![]], [vec![], vec![]]);
        for seed in 0..seeds {
            let ds = interpretable(&InterpretableConfig {
                seed,
                ..Default::default()
            })?;
            let out: XrmOutput = if folds == 0 {
                run_xrm(
                    &ds,
                    &spec,
                    &XrmConfig {
                        steps,
                        batch_size: usize::MAX,
                        optimizer: sgd.clone(),
                        loss: XrmLoss::Mean,
                        seed,
                        device: Device::Cpu,
                        log_every: steps,
                    },
                )?
            } else {
                run_kfold(
                    &ds,
                    &spec,
                    &KfoldConfig {
                        folds,
                        steps,
                        batch_size: usize::MAX,
                        optimizer: sgd.clone(),
                        seed,
                        device: Device::Cpu,
                    },
                )?
            };
            // Held-out error rate of the held-out logits (XRM's final flip rate is not it).
            let pred = memaware::eval::metrics::argmax_rows(&out.heldout_logits, ds.classes);
            let wrong = pred.iter().zip(&ds.train.y).filter(|(a, b)| a != b).count();
            err.push(wrong as f64 / ds.train.n as f64);
            if let Some(q) = inference_quality(&out, &ds) {
                collect(&q, &mut p, &mut r);
            }
            let cfg = TrainConfig {
                seed: Rng::new(seed).fork(MAT_MODEL_STREAM).next_u64(),
                eval_valid: false,
                ..TrainConfig::full_batch(steps, sgd.clone(), steps)
            };
            let mat = run_method(&ds, &Method::Mat { tau: 0.1 }, &spec, &cfg, Some(&out))?;
            let te = &mat
                .outcome
                .checkpoints
                .last()
                .expect("a final checkpoint")
                .te;
            minority.push(pooled(te, &MINORITY_GROUPS));
            majority.push(pooled(te, &MAJORITY_GROUPS));
            wga.push(te.worst_group_acc);
        }
        let cost = if folds == 0 { steps } else { folds * steps };
        println!(
            "| {name} | {cost} | {} | {} / {} | {} / {} | {} | {} | {} |",
            pm(&err, 100.0),
            pm3(&p[0]),
            pm3(&p[1]),
            pm3(&r[0]),
            pm3(&r[1]),
            pm(&minority, 100.0),
            pm(&majority, 100.0),
            pm(&wga, 100.0)
        );
    }
    println!("\n{seeds} seeds; accuracies in %, mean ± sample std over seeds.");
    Ok(())
}

fn collect(q: &InferenceQuality, p: &mut [Vec<f64>; 2], r: &mut [Vec<f64>; 2]) {
    for (i, s) in [&q.train, &q.valid].into_iter().enumerate() {
        if let Some(v) = s.pooled.precision {
            p[i].push(v);
        }
        if let Some(v) = s.pooled.recall {
            r[i].push(v);
        }
    }
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn table1(dirs: &[PathBuf]) {
    println!("| Data set | Phase 1 | phase-1 steps per output (per sweep) | precision (tr / va) | recall (tr / va) | selection | MAT test minority | MAT test WGA |");
    println!("|---|---|---:|---|---|---|---:|---:|");
    let records: Vec<Table1Record> = dirs
        .iter()
        .map(|d| {
            serde_json::from_value(read(&d.join("table1.json")))
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        })
        .collect();
    let labels: Vec<String> = records[0]
        .datasets
        .iter()
        .map(|d| d.label.clone())
        .collect();
    for label in &labels {
        for (dir, rec) in dirs.iter().zip(&records) {
            let Some(d) = rec.datasets.iter().find(|d| &d.label == label) else {
                continue;
            };
            let est = d.sweep.xrm.estimator.to_string();
            let Some(x) = &d.xrm else { continue };
            let (mut p, mut r) = ([vec![], vec![]], [vec![], vec![]]);
            for s in &x.seeds {
                let json = read(
                    &entry_dir(dir, label)
                        .join("xrm")
                        .join(&s.label)
                        .join("xrm.json"),
                );
                if let Some(q) = json.get("inference_quality") {
                    let q: InferenceQuality = serde_json::from_value(q.clone()).unwrap();
                    collect(&q, &mut p, &mut r);
                }
            }
            let folds = match d.sweep.xrm.estimator {
                memaware::algo::sweep::Estimator::Kfold { folds } => folds,
                _ => 1,
            };
            let per_output = folds * d.sweep.xrm.steps;
            let outputs = d.sweep.xrm.draws + d.sweep.seeds.len() - 1;
            for cell in rec.cells.iter().filter(|c| &c.dataset == label) {
                let seeds = &cell.selection.seeds;
                let minority: Vec<f64> = seeds
                    .iter()
                    .map(|s| pooled(&s.te, &MINORITY_GROUPS))
                    .collect();
                let wga: Vec<f64> = seeds.iter().map(|s| s.te.worst_group_acc).collect();
                println!(
                    "| {label} | {est} | {per_output} ({}) | {} / {} | {} / {} | {} | {} | {} |",
                    per_output * outputs,
                    pm3(&p[0]),
                    pm3(&p[1]),
                    pm3(&r[0]),
                    pm3(&r[1]),
                    cell.selection.criterion,
                    pm(&minority, 100.0),
                    pm(&wga, 100.0)
                );
            }
        }
    }
}

fn main() -> memaware::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("figure1") => {
            let seeds = match args.get(1).map(String::as_str) {
                Some("--seeds") => args[2].parse().expect("--seeds N"),
                _ => 5,
            };
            figure1(seeds)
        }
        Some("table1") => {
            table1(&args[1..].iter().map(PathBuf::from).collect::<Vec<_>>());
            Ok(())
        }
        _ => {
            eprintln!("usage: heldout_study figure1 [--seeds N] | table1 DIR...");
            std::process::exit(2);
        }
    }
}
