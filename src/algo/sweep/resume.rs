//! Resuming a sweep: what a finished run's record must match to be kept, and the folder's
//! manifest that says which configuration the folder holds.
//!
//! Every run folder's record (`run.json`) carries a [`RunStatus`] and a **digest** of
//! everything that determines the run: the crate version, the data (a digest of every split's
//! features, labels, attributes and ids), the method and its hyperparameters, the model, the
//! optimizer, the batch size, the steps, the checkpoint frequency, the seed, the device kind
//! and, for runs that read XRM's output, the digest of that XRM run. A rerun of the sweep keeps
//! every run whose record is finished (`complete`, or `failed` by its own training: a run is
//! deterministic, so it would fail again) with the digest it would have now, and runs the rest.
//!
//! The data set's folder holds `manifest.json` ([`Manifest`]): the sweep's configuration and
//! its digest. A sweep started on a folder whose manifest describes another configuration is
//! an error naming what differs, unless the caller asks to overwrite, which removes the
//! sweep's files first.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{MethodPlan, Parallelism, SweepConfig};
pub use crate::algo::run_state::data_digest;
use crate::backend::Device;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{read_json, write_json, Digest};

/// The manifest's file name in a data set's sweep folder.
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_FORMAT: &str = "memaware-sweep-manifest-v1";

/// Where a run stands, as its record says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Written when the run starts: a record still `running` when no process runs it was
    /// interrupted.
    Running,
    /// Trained to the end; its counters are final. (Records written before statuses existed
    /// read as complete: they were only kept for finished runs.)
    #[default]
    Complete,
    /// Training stopped with an error, recorded with the run.
    Failed,
}

impl RunStatus {
    /// Whether the run ended (either way): a rerun with the same digest would give the same.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Running)
    }

    /// The status a reader reports: `running` on disk means interrupted.
    pub fn describe(self) -> &'static str {
        match self {
            RunStatus::Running => "interrupted (its record still says running)",
            RunStatus::Complete => "complete",
            RunStatus::Failed => "failed",
        }
    }
}

/// `cpu` or `cuda`: the device kind a digest depends on (not the ordinal).
pub fn device_kind(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else {
        "cuda"
    }
}

/// The digest of a serializable description of a run, with the crate version in it.
pub fn digest_of<T: Serialize>(what: &Path, value: &T) -> Result<String> {
    let mut d = Digest::new();
    d.str(env!("CARGO_PKG_VERSION"));
    d.json(what, value)?;
    Ok(d.hex())
}

/// What a data set's sweep folder holds (`manifest.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub crate_version: String,
    pub dataset: String,
    pub data_digest: String,
    pub device: String,
    pub methods: Vec<MethodPlan>,
    /// The sweep's configuration (its parallelism, which changes no result, left at `runs`).
    pub config: SweepConfig,
    /// The digest of everything above.
    pub digest: String,
}

impl Manifest {
    /// The manifest of a sweep of `plans` on `ds` with `cfg`.
    pub fn new(
        ds: &Dataset,
        data_digest: &str,
        plans: &[MethodPlan],
        cfg: &SweepConfig,
    ) -> Result<Self> {
        let mut config = cfg.clone();
        config.parallelism = Parallelism::Runs;
        let mut m = Manifest {
            format: MANIFEST_FORMAT.into(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            dataset: ds.name.clone(),
            data_digest: data_digest.into(),
            device: device_kind(&cfg.device).into(),
            methods: plans.to_vec(),
            config,
            digest: String::new(),
        };
        m.digest = digest_of(Path::new(MANIFEST_FILE), &m)?;
        Ok(m)
    }

    /// The top-level fields (and `config.*` fields) in which `self` and `other` differ.
    fn differences(&self, other: &serde_json::Value) -> Vec<String> {
        // Through the text, as the file was written, so that f32 fields compare as read back.
        let mine: serde_json::Value = serde_json::to_string(self)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut out = Vec::new();
        let (Some(a), Some(b)) = (mine.as_object(), other.as_object()) else {
            return vec!["the whole file".into()];
        };
        for (k, va) in a {
            if k == "digest" {
                continue;
            }
            let vb = b.get(k).unwrap_or(&serde_json::Value::Null);
            match (k.as_str(), va.as_object(), vb.as_object()) {
                ("config", Some(ca), Some(cb)) => {
                    for (ck, cva) in ca {
                        let cvb = cb.get(ck).unwrap_or(&serde_json::Value::Null);
                        if cva != cvb {
                            out.push(format!("config.{ck}: {cvb} there, {cva} now"));
                        }
                    }
                    // Fields left out now (at their default) but set there.
                    for (ck, cvb) in cb.iter().filter(|(ck, _)| !ca.contains_key(*ck)) {
                        out.push(format!("config.{ck}: {cvb} there, default now"));
                    }
                }
                _ if va != vb => out.push(format!("{k}: {vb} there, {va} now")),
                _ => {}
            }
        }
        out
    }
}

/// Makes `dir` ready for the sweep `manifest` describes: a new or empty folder gets the
/// manifest; a folder with the same manifest is kept as it is (its finished runs will be
/// reused); a folder with another manifest (or an unreadable one) is an error naming what
/// differs, unless `overwrite`, which removes the sweep's files (`xrm/`, the method folders,
/// `sweep.md`, the manifest) and starts afresh. Other files in `dir` are left alone.
pub fn prepare_folder(dir: &Path, manifest: &Manifest, overwrite: bool) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    if path.exists() && !overwrite {
        let found: serde_json::Value = read_json(&path).map_err(|e| {
            Error::arg(
                "out",
                format!(
                    "{e}; the folder holds a sweep whose manifest cannot be read: pass \
                     --overwrite to start afresh, or choose another --out"
                ),
            )
        })?;
        if found.get("digest").and_then(|d| d.as_str()) == Some(manifest.digest.as_str()) {
            return Ok(());
        }
        let diffs = manifest.differences(&found);
        return Err(Error::arg(
            "out",
            format!(
                "{} holds a sweep with another configuration ({}); pass --overwrite to \
                 replace it, or choose another --out",
                dir.display(),
                if diffs.is_empty() {
                    "its digest differs".to_string()
                } else {
                    diffs.join("; ")
                }
            ),
        ));
    }
    if overwrite {
        let mut names: Vec<String> = super::MethodKind::ALL
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        names.extend(["xrm", "sweep.md", MANIFEST_FILE].map(String::from));
        for name in names {
            let p = dir.join(&name);
            let removed = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            };
            removed.map_err(|e| Error::io(&p, e))?;
        }
    }
    write_json(&path, manifest)
}
