//! Figure-level training times, measured the way benches/pytorch_reference.py `--figures`
//! measures PyTorch: training only (data generation, plotting and files excluded), one seed.
//!
//! ```text
//! cargo bench --bench figures [-- --repeats N]
//! ```
//!
//! - Figure 1: the three runs of one seed (ERM σ_ε = 0, ERM σ_ε = 0.5, XRM + MAT σ_ε = 0.5),
//!   1000 full-batch epochs per phase, every epoch evaluated on train and test (the reference
//!   logs group accuracies every epoch too): 4000 updates in all. Where the time goes: each
//!   ERM run is also timed without per-epoch evaluation (one evaluation at the end), and the
//!   MAT run is split into XRM and MAT.
//! - Figure 3: the good, bad and ugly fits of one seed (Adam until MSE < 1e-6). Step counts
//!   depend on the seed (the reference uses torch seed 123, we use seed 0), so the steps/s
//!   ratio is printed beside the wall-time ratio.
//!
//! With `--repeats N` each figure runs N times and the fastest run is reported (the machine is
//! shared; the minimum is the least disturbed). When `results/pytorch_reference.json` exists
//! (written by benches/pytorch_reference.py --figures), the ratios against PyTorch's
//! `figure1_total_s` / `figure3_total_s` are printed.

use std::path::Path;
use std::time::Instant;

use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::train::{run_method, Method, TrainConfig};
use memaware::data::synthetic::{interpretable, InterpretableConfig};
use memaware::repro::figure1::{self, Figure1Config, Figure1Run};
use memaware::repro::figure3::{self, Figure3Config, Setting};
use memaware::{Device, Result};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/results/pytorch_reference.json"
);

/// PyTorch's figure totals and step counts, when the reference file holds them.
struct Reference {
    figure1_s: Option<f64>,
    figure3_s: Option<f64>,
    figure3_steps: Option<f64>,
}

fn read_reference(path: &Path) -> Option<Reference> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    // Either {"workloads": {"figure1_total_s": {"total_s": ..}}} or a flat {"figure1_total_s": ..}.
    let total = |key: &str| -> Option<f64> {
        let w = json.get("workloads").and_then(|w| w.get(key));
        w.and_then(|v| v.get("total_s").and_then(|t| t.as_f64()))
            .or_else(|| w.and_then(|v| v.as_f64()))
            .or_else(|| json.get(key).and_then(|v| v.as_f64()))
    };
    let figure3_steps = json
        .pointer("/workloads/figure3_total_s/detail/steps")
        .and_then(|v| v.as_f64());
    Some(Reference {
        figure1_s: total("figure1_total_s"),
        figure3_s: total("figure3_total_s"),
        figure3_steps,
    })
}

fn repeats_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1)
        .unwrap_or(1)
}

/// Seconds of one ERM run on the Figure-1 data with a single evaluation at the end.
fn erm_without_evaluation(sigma_eps: f32, lr: f32) -> Result<f64> {
    let ds = interpretable(&InterpretableConfig {
        sigma_eps,
        ..Default::default()
    })?;
    let cfg = TrainConfig {
        steps: 1000,
        batch_size: usize::MAX,
        optimizer: OptimizerSpec::plain_sgd(lr),
        checkpoint_freq: 1000,
        seed: 0,
        device: Device::Cpu,
        eval_train: false,
        eval_valid: true,
        checkpoints_path: None,
    };
    let start = Instant::now();
    run_method(&ds, &Method::Erm, &ModelSpec::linear_no_bias(), &cfg, None)?;
    Ok(start.elapsed().as_secs_f64())
}

/// The 1-minute load average, which says how much other processes disturbed the timings.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> Result<()> {
    let repeats = repeats_from_args();
    println!(
        "{} logical CPUs, load average {} at the start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let reference = read_reference(Path::new(REFERENCE));

    let mut fig1: Option<figure1::Figure1Report> = None;
    for _ in 0..repeats {
        let r = figure1::run(&Figure1Config {
            seeds: vec![0],
            ..Default::default()
        })?;
        if fig1
            .as_ref()
            .map_or(true, |best| r.training_s_total < best.training_s_total)
        {
            fig1 = Some(r);
        }
    }
    let fig1 = fig1.expect("repeats >= 1");
    println!("Figure 1, seed 0, training only (fastest of {repeats}):");
    for run in Figure1Run::ALL {
        let r = fig1.run(run);
        let s = &r.seeds[0];
        print!(
            "  {:<14} {:>7.2} s  {:>8.0} updates/s",
            r.name, s.training_s, s.steps_per_s
        );
        if let Some(x) = &s.xrm {
            print!("  (XRM twins {:.2} s, MAT {:.2} s)", x.xrm_s, x.mat_s);
        }
        println!();
    }
    println!(
        "  total          {:>7.2} s  {:>8.0} updates/s",
        fig1.training_s_total,
        4000.0 / fig1.training_s_total
    );
    println!("  where the time goes: the ERM runs again with one evaluation at the end instead of every epoch");
    for (name, sigma, lr, with_eval) in [
        (
            "erm_sigma0",
            0.0,
            3e-2,
            fig1.run(Figure1Run::ErmClean).seeds[0].training_s,
        ),
        (
            "erm_sigma0.5",
            0.5,
            1e-2,
            fig1.run(Figure1Run::ErmNoisy).seeds[0].training_s,
        ),
    ] {
        let bare = erm_without_evaluation(sigma, lr)?;
        println!(
            "  {name:<14} {bare:>7.2} s  {:>8.0} updates/s  (per-epoch evaluation costs {:.2} s, {:.0}% of the run)",
            1000.0 / bare,
            with_eval - bare,
            100.0 * (with_eval - bare) / with_eval
        );
    }

    let mut fig3: Option<figure3::Figure3Report> = None;
    for _ in 0..repeats {
        let r = figure3::run(&Figure3Config {
            seeds: vec![0],
            ..Default::default()
        })?;
        if fig3
            .as_ref()
            .map_or(true, |best| r.training_s_total < best.training_s_total)
        {
            fig3 = Some(r);
        }
    }
    let fig3 = fig3.expect("repeats >= 1");
    println!("Figure 3, seed 0, training only (fastest of {repeats}):");
    let mut steps3 = 0usize;
    for setting in Setting::ALL {
        let s = &fig3.setting(setting).seeds[0];
        steps3 += s.steps;
        println!(
            "  {:<5} {:>7} steps {:>7.2} s  {:>8.0} steps/s",
            setting.name(),
            s.steps,
            s.training_s,
            s.steps_per_s
        );
    }
    let steps3_per_s = steps3 as f64 / fig3.training_s_total;
    println!(
        "  total {steps3:>7} steps {:>7.2} s  {steps3_per_s:>8.0} steps/s",
        fig3.training_s_total
    );

    println!("load average {} at the end", load_average());
    match reference {
        None => {
            println!("no {REFERENCE}: run benches/pytorch_reference.py --figures for the ratios")
        }
        Some(r) => {
            println!("against PyTorch ({REFERENCE}):");
            match r.figure1_s {
                Some(t) => println!(
                    "  Figure 1: PyTorch {t:.2} s, ours {:.2} s: speed-up {:.2}×",
                    fig1.training_s_total,
                    t / fig1.training_s_total
                ),
                None => println!("  Figure 1: no figure1_total_s in the file"),
            }
            match r.figure3_s {
                Some(t) => {
                    print!(
                        "  Figure 3: PyTorch {t:.2} s, ours {:.2} s: speed-up {:.2}×",
                        fig3.training_s_total,
                        t / fig3.training_s_total
                    );
                    if let Some(steps) = r.figure3_steps {
                        let theirs = steps / t;
                        print!(
                            "; per step PyTorch {theirs:.0} steps/s ({steps:.0} steps), ours \
                             {steps3_per_s:.0}: speed-up {:.2}×",
                            steps3_per_s / theirs
                        );
                    }
                    println!();
                }
                None => println!("  Figure 3: no figure3_total_s in the file"),
            }
        }
    }
    Ok(())
}
