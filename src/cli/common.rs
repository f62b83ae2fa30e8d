//! Helpers shared by the subcommands: naming a data set on the command line, choosing the
//! device, output folders that say which run produced what, progress bars that stay quiet
//! when the output is not a terminal, and JSON files written atomically.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::Device;
use crate::data::colormnist::{color_mnist, load_mnist_idx, load_mnist_sample, ColorMnistConfig};
use crate::data::features::load_features;
use crate::data::synthetic::{
    interpretable, waterbirds_like, InterpretableConfig, WaterbirdsLikeConfig,
};
use crate::data::Dataset;
use crate::error::{Error, Result};

/// The MNIST sample shipped with the crate (see `data/README.md`).
pub const MNIST_SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist_5k.csv.gz");

/// Help text for `--data`.
pub const DATA_HELP: &str = "data set: `interpretable` (Figure 1; `interpretable:sigma=0.5` \
sets sigma_eps), `colormnist` (from the bundled 5000-digit MNIST sample, or \
`colormnist:DIR` with the MNIST IDX files), `waterbirds-like` (synthetic 2048-d features), \
or a path to a features file (`.safetensors`, or a folder with `x.npy` + `meta.csv`)";

/// Loads the data set named by `spec` (see [`DATA_HELP`]), seeded by `seed`, and validates it.
pub fn load_dataset(spec: &str, seed: u64) -> Result<Dataset> {
    let (name, arg) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    let ds = match name {
        "interpretable" => {
            let mut cfg = InterpretableConfig {
                seed,
                ..Default::default()
            };
            if let Some(arg) = arg {
                for kv in arg.split(',') {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| Error::arg("data", format!("`{kv}`: expected key=value")))?;
                    let num = |v: &str| -> Result<f64> {
                        v.parse::<f64>()
                            .map_err(|_| Error::arg("data", format!("`{k}={v}`: not a number")))
                    };
                    match k {
                        "sigma" | "sigma_eps" => cfg.sigma_eps = num(v)? as f32,
                        "n" => cfg.n = num(v)? as usize,
                        "d" => cfg.d = num(v)? as usize,
                        "majority" => cfg.train_majority = num(v)?,
                        "spurious" => cfg.spurious_scale = num(v)? as f32,
                        other => {
                            return Err(Error::arg(
                                "data",
                                format!("unknown interpretable option `{other}` (sigma, n, d, majority, spurious)"),
                            ))
                        }
                    }
                }
            }
            interpretable(&cfg)?
        }
        "colormnist" => {
            let (images, labels) = match arg {
                Some(dir) => load_mnist_idx(dir)?,
                None => load_mnist_sample(MNIST_SAMPLE)?,
            };
            let cfg = ColorMnistConfig {
                seed,
                ..Default::default()
            };
            color_mnist(&images, &labels, &cfg)?
        }
        "waterbirds-like" => waterbirds_like(&WaterbirdsLikeConfig {
            seed,
            ..Default::default()
        })?,
        _ => {
            let path = Path::new(spec);
            if !path.exists() {
                return Err(Error::arg(
                    "data",
                    format!("`{spec}` is neither a built-in data set nor an existing file"),
                ));
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "features".into());
            load_features(path, &name)?
        }
    };
    ds.validate()?;
    Ok(ds)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    Device::parse(name)
}

/// Creates (if needed) and returns `out/label`, the folder of one run.
pub fn run_dir(out: &Path, label: &str) -> Result<PathBuf> {
    let dir = out.join(label);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, message: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{msg:>24} [{bar:32}] {pos}/{len} ({elapsed} / ~{eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename, so an
/// existing file is replaced whole or not at all.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_text(path, &text)
}

/// Writes `text` to `path` atomically (temporary file, then rename).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.partial",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_data_sets_load() {
        let ds = load_dataset("interpretable:sigma=0,n=100,d=50", 0).unwrap();
        assert_eq!((ds.train.n, ds.d()), (100, 50));
        assert!(load_dataset("interpretable:bogus=1", 0).is_err());
        assert!(load_dataset("/no/such/file.safetensors", 0).is_err());
    }
}
