//! Figure 3's fits from PyTorch's own data and initial weights, beside PyTorch's fits from the
//! same start (written by `benches/figure3_same_start.py`).
//!
//! ```text
//! python benches/figure3_same_start.py [DIR] [--seeds ...] [--settings ...]
//! cargo run --release --example figure3_same_start -- [DIR]
//! ```
//!
//! `DIR` (default `results/figure3_same_start`) holds `pytorch.json` and one
//! `{setting}_{seed}.safetensors` per fit. Each fit is made with [`figure3::fit_model`], the
//! loop of the main job, from the file's weights; the table sets steps to the criterion, the
//! loss at steps 100 and 1000, and the test MSE on the clean grid beside PyTorch's.

use std::path::{Path, PathBuf};

use memaware::data::synthetic::RegressionData;
use memaware::nn::{load_parameters, Activation, Init, Mlp, Module};
use memaware::repro::figure3::{self, Figure3Config};
use memaware::{Device, Error, Result, Rng, Tensor};

/// The data and the initial model stored in `path`. The shapes of `x` and `grid_f` set the
/// others; [`load_parameters`] checks and reads every tensor.
fn load_start(path: &Path, hidden: usize) -> Result<(RegressionData, Mlp)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |tensor: &str, problem: String| Error::File {
        path: path.to_path_buf(),
        tensor: tensor.into(),
        problem,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad("", format!("not a safetensors file: {e}")))?;
    let shape = |name: &str| -> Result<Vec<usize>> {
        Ok(file
            .tensor(name)
            .map_err(|_| bad(name, "missing".into()))?
            .shape()
            .to_vec())
    };
    let (x_shape, grid_shape) = (shape("x")?, shape("grid_f")?);
    let (&[n, d], &[n_grid]) = (&x_shape[..], &grid_shape[..]) else {
        return Err(bad(
            "x",
            format!("x {x_shape:?} and grid_f {grid_shape:?}, expected [n, d] and [n_grid]"),
        ));
    };
    let cpu = Device::Cpu;
    let data_shapes: [(&str, &[usize]); 4] = [
        ("x", &[n, d]),
        ("y", &[n, 1]),
        ("grid_x", &[n_grid, d]),
        ("grid_f", &[n_grid]),
    ];
    let data = data_shapes
        .iter()
        .map(|&(name, dims)| Ok((name.to_string(), Tensor::zeros(dims, &cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let model = Mlp::new(
        &[d, hidden, hidden, 1],
        Activation::Tanh,
        true,
        Init::Zeros,
        &mut Rng::new(0),
        &cpu,
    )?;
    let tensors: Vec<(String, Tensor)> = data.into_iter().chain(model.named_parameters()).collect();
    load_parameters(&tensors, path)?;
    let values = |i: usize| tensors[i].1.to_vec();
    let data = RegressionData {
        train_x: values(0)?,
        train_y: values(1)?,
        grid_x: values(2)?,
        grid_f: values(3)?,
        train_idx: Vec::new(),
        d,
    };
    Ok((data, model))
}

fn field<'a>(run: &'a serde_json::Value, key: &str, path: &Path) -> Result<&'a serde_json::Value> {
    run.get(key)
        .ok_or_else(|| Error::Data(format!("{}: a run without `{key}`", path.display())))
}

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from("results/figure3_same_start"),
        PathBuf::from,
    );
    let json_path = dir.join("pytorch.json");
    let text = std::fs::read_to_string(&json_path).map_err(|source| Error::Io {
        path: json_path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Data(format!("{}: {e}", json_path.display())))?;
    let runs = json
        .get("runs")
        .and_then(|r| r.as_array())
        .ok_or_else(|| Error::Data(format!("{}: no `runs` list", json_path.display())))?;
    let cfg = Figure3Config {
        max_steps: json
            .pointer("/meta/max_steps")
            .and_then(|v| v.as_u64())
            .map_or(Figure3Config::default().max_steps, |v| v as usize),
        ..Default::default()
    };

    println!(
        "{:<6} {:>5}  {:>13}  {:>25}  {:>25}  {:>19}",
        "", "seed", "steps", "loss at step 100", "loss at step 1000", "test MSE"
    );
    println!(
        "{:<6} {:>5}  {:>6} {:>6}  {:>12} {:>12}  {:>12} {:>12}  {:>9} {:>9}",
        "", "", "ours", "torch", "ours", "torch", "ours", "torch", "ours", "torch"
    );
    for run in runs {
        let setting = field(run, "setting", &json_path)?.as_str().unwrap_or("?");
        let seed = field(run, "seed", &json_path)?.as_u64().unwrap_or(0);
        let file = field(run, "file", &json_path)?.as_str().ok_or_else(|| {
            Error::Data(format!("{}: `file` is not a string", json_path.display()))
        })?;
        let (data, model) = load_start(&dir.join(file), cfg.hidden)?;
        let ours = figure3::fit_model(&model, &data, &cfg, seed)?;
        let our_loss = |step: usize| {
            ours.loss_history
                .iter()
                .find(|(s, _)| *s == step)
                .map_or_else(|| "-".to_string(), |(_, l)| format!("{l:.6e}"))
        };
        let their_loss = |step: usize| {
            run.pointer(&format!("/losses/{step}"))
                .and_then(|v| v.as_f64())
                .map_or_else(|| "-".to_string(), |l| format!("{l:.6e}"))
        };
        let their = |key: &str| run.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        println!(
            "{setting:<6} {seed:>5}  {:>6} {:>6}  {:>12} {:>12}  {:>12} {:>12}  {:>9.5} {:>9.5}",
            ours.steps,
            their("steps"),
            our_loss(100),
            their_loss(100),
            our_loss(1000),
            their_loss(1000),
            ours.test_mse,
            their("test_mse"),
        );
    }
    Ok(())
}
