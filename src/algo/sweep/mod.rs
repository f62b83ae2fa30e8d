//! Model selection by random hyperparameter search (PAPER.md §4), for one data set and one or
//! more methods.
//!
//! # The protocol ([`run_sweeps`])
//!
//! Let `S = seeds = [s_0, …, s_{S-1}]` and `N = draws`. Draw `i` is
//! `h_i = draw(space, Rng::new(hparam_seed).fork(i))`, so every method (and XRM) sees the same
//! learning rate, batch size and weight decay at index `i`, as the reference's `hparams_comb`.
//!
//! 1. **XRM** (only when a method needs it or a criterion reads inferred groups): draws
//!    `h_0 … h_{X-1}` trained at seed `s_0`; the draw with the highest
//!    [`XrmOutput::selection_flip_rate`] wins (0 for a degenerate run; ties go to the lower
//!    index); the winner is rerun at every other seed. The output at seed `s` is shared by
//!    every method's runs at seed `s` (an in-memory cache per (data set, seed), saved to disk).
//! 2. **Draws**: every method trains once per draw at seed `s_0`, with XRM's seed-`s_0` output
//!    when there is one (MAT's shift, XRM + GroupDRO's groups, and the inferred validation
//!    groups that `va_gi_wga` reads, for every method). Every checkpoint is recorded.
//! 3. **Selection**, for each criterion `c` separately but from the *same* runs: each draw's
//!    checkpoint is the last one reaching the best value of `c`
//!    ([`select_checkpoint_with`]); the best draw has the highest selected value, ties broken by the
//!    validation average accuracy at that checkpoint, then by the lower index
//!    ([`pick_best_draw`]).
//! 4. **Seeds**: the winning draw is rerun at `s_1 … s_{S-1}` (its run at `s_0` is the draw run
//!    itself: runs are deterministic, so rerunning it would give the same bits, as in the
//!    reference, which selects at seed 0 and then runs seeds `0..S`). Each seed's checkpoint is
//!    selected by `c` again; the test metrics there give the table cell: mean ± **sample
//!    standard deviation** (`n − 1`) over the `S` seeds.
//!
//! A draw whose training fails (a non-finite loss under a large step size, say) is recorded
//! with its error and takes no part in selection; a failing rerun is an error.
//!
//! # Parallelism
//!
//! Runs are independent and seeded independently, so the result does not depend on the order
//! they run in. [`Parallelism::Runs`] maps each phase's runs over rayon's pool (one task per
//! run); [`Parallelism::Ops`] runs them one after the other and leaves the cores to the
//! row-parallel kernels inside each op. The CPU kernels split work into fixed chunks, so both
//! give bitwise-identical results. Runs on a CUDA device always go one at a time.
//!
//! `Runs` is the default: Table 1's steps are small (batches of 8–128 rows), most of their ops
//! fall below the kernels' parallel thresholds, and per-thread CPU time on the 2-core machine
//! shows 58% (ColorMNIST) to 78% (Waterbirds-like) of an `Ops` sweep's work on one thread,
//! against under 25% serial work for `Runs` (data loading), which keeps both cores busy.
//!
//! # Files
//!
//! Under the output folder of one data set:
//! - `xrm/draw{i:02}_seed{s}/xrm.{json,safetensors}`, one folder per XRM run, and
//!   `xrm/xrm_phase.json` (every draw's flip rate, the chosen draw, each seed's verdict);
//! - `{method}/draw{i:02}_seed{s}/run.json` (what the run is: method, hyperparameters, seed,
//!   optimizer, XRM seed) and `checkpoints.jsonl` (every checkpoint, written as it is made);
//! - `{method}/sweep.json`: the [`SweepOutcome`] — the configuration, every run, and for each
//!   criterion the per-draw selected values, the winner and the per-seed test metrics.
//!
//! [`reselect`] applies any criterion again to the recorded `checkpoints.jsonl` files.

mod jobs;
mod resume;

pub use jobs::{needs_xrm, phase_jobs, xrm_reruns, Phase, Scope};
pub use resume::{data_digest, device_kind, prepare_folder, Manifest, RunStatus, MANIFEST_FILE};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::heldout::external_output;
use super::kfold::{run_kfold, KfoldConfig};
use super::method::{run_method_with, Method};
use super::model::{ModelSpec, OptimizerSpec};
use super::train::TrainConfig;
use super::xrm::{run_xrm, XrmConfig, XrmLoss, XrmOutput};
use crate::backend::Device;
use crate::data::batch::Sampler;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::metrics::SplitMetrics;
use crate::eval::selection::{
    draw, pick_best_draw, select_checkpoint_with, Checkpoint, Criterion, HparamSpace, Hparams,
    StepZero, TableCell,
};
use crate::io::{read_json, read_jsonl, write_json};
use crate::progress::{Progress, ProgressFn};
use crate::rng::Rng;
use jobs::Role;
use resume::digest_of;

/// File names inside a sweep's folders.
pub const SWEEP_FILE: &str = "sweep.json";
pub const RUN_FILE: &str = "run.json";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const XRM_PHASE_FILE: &str = "xrm_phase.json";
const FORMAT: &str = "memaware-sweep-v1";

/// A method of the sweep, before its hyperparameters are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Erm,
    GroupDro,
    Jtt,
    XrmGroupDro,
    Mat,
    Rwg,
    Subg,
    /// RWG on XRM's inferred training groups.
    XrmRwg,
    /// SUBG on XRM's inferred training groups.
    XrmSubg,
}

impl MethodKind {
    /// Every method, in table order.
    pub const ALL: [MethodKind; 9] = [
        MethodKind::Erm,
        MethodKind::GroupDro,
        MethodKind::Jtt,
        MethodKind::XrmGroupDro,
        MethodKind::Mat,
        MethodKind::Rwg,
        MethodKind::Subg,
        MethodKind::XrmRwg,
        MethodKind::XrmSubg,
    ];
    /// The methods of the paper's Table 1.
    pub const TABLE1: [MethodKind; 5] = [
        MethodKind::Erm,
        MethodKind::GroupDro,
        MethodKind::Jtt,
        MethodKind::XrmGroupDro,
        MethodKind::Mat,
    ];

    /// Name in files and on the command line (as [`Method::name`]).
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Erm => "erm",
            MethodKind::GroupDro => "group_dro",
            MethodKind::Jtt => "jtt",
            MethodKind::XrmGroupDro => "xrm_group_dro",
            MethodKind::Mat => "mat",
            MethodKind::Rwg => "rwg",
            MethodKind::Subg => "subg",
            MethodKind::XrmRwg => "xrm_rwg",
            MethodKind::XrmSubg => "xrm_subg",
        }
    }

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            MethodKind::Erm => "ERM",
            MethodKind::GroupDro => "GroupDRO",
            MethodKind::Jtt => "JTT",
            MethodKind::XrmGroupDro => "XRM+GroupDRO",
            MethodKind::Mat => "MAT",
            MethodKind::Rwg => "RWG",
            MethodKind::Subg => "SUBG",
            MethodKind::XrmRwg => "XRM+RWG",
            MethodKind::XrmSubg => "XRM+SUBG",
        }
    }

    /// The method with draw `h`'s hyperparameters, for runs of `steps` steps (JTT's first
    /// stage is [`Hparams::jtt_steps`]).
    pub fn method(self, h: &Hparams, steps: usize) -> Method {
        match self {
            MethodKind::Erm => Method::Erm,
            MethodKind::GroupDro => Method::GroupDro { eta: h.eta as f32 },
            MethodKind::Jtt => Method::Jtt {
                first_stage_steps: h.jtt_steps(steps),
                lambda_up: h.jtt_lambda as f32,
            },
            MethodKind::XrmGroupDro => Method::XrmGroupDro { eta: h.eta as f32 },
            MethodKind::Mat => Method::Mat { tau: h.tau },
            MethodKind::Rwg => Method::Rwg,
            MethodKind::Subg => Method::Subg,
            MethodKind::XrmRwg => Method::XrmRwg,
            MethodKind::XrmSubg => Method::XrmSubg,
        }
    }

    /// Whether the method needs XRM's outputs.
    pub fn needs_xrm(self) -> bool {
        matches!(
            self,
            MethodKind::Mat | MethodKind::XrmGroupDro | MethodKind::XrmRwg | MethodKind::XrmSubg
        )
    }

    /// Whether the method reads the true training groups.
    pub fn uses_training_groups(self) -> bool {
        matches!(
            self,
            MethodKind::GroupDro | MethodKind::Rwg | MethodKind::Subg
        )
    }

    /// The selection settings under which the method appears in Table 1: a method trained on
    /// true training groups only with validation annotations (`va_wga`), the others also
    /// without any annotation (`va_gi_wga`).
    pub fn table_criteria(self) -> Vec<Criterion> {
        if self.uses_training_groups() {
            vec![Criterion::VaWga]
        } else {
            vec![Criterion::VaWga, Criterion::VaGiWga]
        }
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MethodKind {
    type Err = Error;

    /// Accepts the [`MethodKind::name`]s and the table labels in any case, with `-` or `+`
    /// for `_`, and `groupdro`, `xrm_groupdro` (so `group-dro`, `xrm-groupdro`, `XRM+GroupDRO`,
    /// `xrm-rwg`, `XRM+SUBG`).
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace(['-', '+'], "_");
        let found = match key.as_str() {
            "groupdro" => Some(MethodKind::GroupDro),
            "xrm_groupdro" => Some(MethodKind::XrmGroupDro),
            _ => MethodKind::ALL.into_iter().find(|m| m.name() == key),
        };
        found.ok_or_else(|| {
            Error::arg(
                "method",
                format!(
                    "unknown method `{s}`; expected one of erm, group_dro, jtt, xrm_group_dro, \
                     mat, rwg, subg, xrm_rwg, xrm_subg"
                ),
            )
        })
    }
}

/// How independent runs share the cores (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallelism {
    /// Runs in parallel over rayon's pool, one task per run.
    #[default]
    Runs,
    /// One run at a time, parallel inside each op.
    Ops,
}

impl FromStr for Parallelism {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "runs" => Ok(Parallelism::Runs),
            "ops" => Ok(Parallelism::Ops),
            other => Err(Error::arg(
                "parallel",
                format!("`{other}`: expected runs or ops"),
            )),
        }
    }
}

/// How XRM's phase runs inside a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct XrmPlan {
    /// Hyperparameter draws (the first `draws` of the sweep's draws).
    pub draws: usize,
    pub steps: usize,
    pub loss: XrmLoss,
    /// What infers the groups: XRM's twins (the default, left out of files) or K-fold
    /// held-out predictions ([`run_kfold`]) with XRM's draw of steps, batch, optimizer and seed.
    #[serde(default, skip_serializing_if = "Estimator::is_xrm")]
    pub estimator: Estimator,
    /// Which XRM output MAT's run at seed `s` reads: the chosen draw rerun at `s` (the
    /// default, left out of files) or, as the official MAT does, the output at the selection
    /// seed for every seed. Other methods read the output at their seed either way, as
    /// officially.
    #[serde(default, skip_serializing_if = "XrmOutputs::is_per_seed")]
    pub outputs: XrmOutputs,
}

/// Which XRM output feeds MAT's runs at each seed (`--xrm-output per-seed|first`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XrmOutputs {
    /// XRM's chosen draw is rerun at every seed; a run at seed `s` reads the output at `s`.
    #[default]
    PerSeed,
    /// MAT reads the output at the selection seed `s_0` at every seed (the official MAT loads
    /// XRM's seed-0 output for every seed: `Pitfalls/algos.py:27-29`, `50-54`); XRM is rerun
    /// at the other seeds only when another method or criterion needs its output there.
    First,
}

impl XrmOutputs {
    fn is_per_seed(&self) -> bool {
        *self == XrmOutputs::PerSeed
    }
}

impl fmt::Display for XrmOutputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XrmOutputs::PerSeed => "per-seed",
            XrmOutputs::First => "first",
        })
    }
}

impl FromStr for XrmOutputs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "per-seed" | "per_seed" => Ok(XrmOutputs::PerSeed),
            "first" | "seed0" => Ok(XrmOutputs::First),
            other => Err(Error::arg(
                "xrm-output",
                format!("`{other}`: expected `per-seed` or `first`"),
            )),
        }
    }
}

/// The group estimator of phase 1 (`--estimator xrm|kfold:K|external:PATH`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// Cross-risk minimization (the paper's estimator).
    #[default]
    Xrm,
    /// K-fold cross-fitting: each example labelled by the fold model that did not train on it.
    Kfold { folds: usize },
    /// Held-out logits (and optionally inferred bits) read from a file, say from a PyTorch run
    /// ([`crate::algo::heldout`]); every draw and seed reads the same file. Files record the
    /// path and a digest of the file's bytes, so a changed file is a changed configuration.
    External(#[serde(with = "external_file")] PathBuf),
}

/// How [`Estimator::External`] is written: `{"path": ..., "digest": ...}` (the digest of the
/// file's bytes, `missing` when it cannot be read); read back from that or a plain path.
mod external_file {
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Written {
        Full { path: PathBuf, digest: String },
        Path(PathBuf),
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        Written::Full {
            path: path.to_path_buf(),
            digest: crate::algo::heldout::file_digest(path),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Written::deserialize(d)? {
            Written::Full { path, .. } | Written::Path(path) => path,
        })
    }
}

impl Estimator {
    fn is_xrm(&self) -> bool {
        *self == Estimator::Xrm
    }
}

impl fmt::Display for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Estimator::Xrm => f.write_str("xrm"),
            Estimator::Kfold { folds } => write!(f, "kfold:{folds}"),
            Estimator::External(path) => write!(f, "external:{}", path.display()),
        }
    }
}

impl FromStr for Estimator {
    type Err = Error;

    /// `xrm`, `kfold:K` with `2 <= K <= 255`, or `external:PATH` (a held-out file; see
    /// [`crate::algo::heldout`]).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::arg(
                "estimator",
                format!(
                    "unknown estimator `{s}`; expected xrm, kfold:K (K from 2 to 255) or \
                     external:PATH"
                ),
            )
        };
        match s.trim().split_once(':') {
            None if s.trim() == "xrm" => Ok(Estimator::Xrm),
            Some(("kfold", k)) => match k.trim().parse::<usize>() {
                Ok(folds) if (2..=255).contains(&folds) => Ok(Estimator::Kfold { folds }),
                _ => Err(bad()),
            },
            Some(("external", path)) if !path.is_empty() => {
                Ok(Estimator::External(PathBuf::from(path)))
            }
            _ => Err(bad()),
        }
    }
}

fn is_shuffle(s: &Sampler) -> bool {
    *s == Sampler::Shuffle
}

fn is_drop(z: &StepZero) -> bool {
    *z == StepZero::Drop
}

fn cpu() -> Device {
    Device::Cpu
}

/// Everything a sweep needs besides the data and the methods.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepConfig {
    pub model: ModelSpec,
    /// The optimizer family and its fixed settings (momentum); each draw replaces the learning
    /// rate and the weight decay.
    pub optimizer: OptimizerSpec,
    pub space: HparamSpace,
    /// Training steps of every run.
    pub steps: usize,
    pub checkpoint_freq: usize,
    /// Hyperparameter draws per method.
    pub draws: usize,
    /// Training seeds; the first one is the selection seed.
    pub seeds: Vec<u64>,
    /// Seeds the draws: draw `i` comes from `Rng::new(hparam_seed).fork(i)`.
    pub hparam_seed: u64,
    pub xrm: XrmPlan,
    pub parallelism: Parallelism,
    /// Whether step-0 checkpoints may be selected (default: dropped, the official rule; left
    /// out of files when default).
    #[serde(default, skip_serializing_if = "is_drop")]
    pub step_zero: StepZero,
    /// How every run draws its batches ([`Method::with_sampler`]; RWG keeps its own
    /// balancing). Left out of files when it is the default shuffle.
    #[serde(default, skip_serializing_if = "is_shuffle")]
    pub sampler: Sampler,
    /// Where the runs compute (not saved: a loaded sweep reports the CPU).
    #[serde(skip, default = "cpu")]
    pub device: Device,
}

impl SweepConfig {
    /// Checks counts and ranges before anything runs.
    pub fn validate(&self) -> Result<()> {
        self.space.validate()?;
        for (name, v) in [
            ("steps", self.steps),
            ("checkpoint_freq", self.checkpoint_freq),
            ("draws", self.draws),
            ("xrm.draws", self.xrm.draws),
            ("xrm.steps", self.xrm.steps),
        ] {
            if v == 0 {
                return Err(Error::arg("sweep", format!("`{name}` must be at least 1")));
            }
        }
        if self.seeds.is_empty() {
            return Err(Error::arg("seeds", "a sweep needs at least one seed"));
        }
        let distinct: BTreeSet<u64> = self.seeds.iter().copied().collect();
        if distinct.len() != self.seeds.len() {
            return Err(Error::arg(
                "seeds",
                format!("seeds {:?} repeat a value", self.seeds),
            ));
        }
        Ok(())
    }

    /// Hyperparameter draw `i`.
    pub fn hparams(&self, i: usize) -> Result<Hparams> {
        draw(&self.space, &mut Rng::new(self.hparam_seed).fork(i as u64))
    }

    /// The optimizer of a run with draw `h`: the configured family with `h`'s learning rate
    /// and weight decay.
    pub fn optimizer_for(&self, h: &Hparams) -> OptimizerSpec {
        self.optimizer
            .with_lr_and_decay(h.lr as f32, h.weight_decay as f32)
    }

    fn effective_parallelism(&self) -> Parallelism {
        if self.device.is_cpu() {
            self.parallelism
        } else {
            Parallelism::Ops
        }
    }
}

/// Maps `f` over `jobs` with the chosen parallelism, keeping the order.
fn map_jobs<T, R, F>(parallelism: Parallelism, jobs: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync + Send,
{
    match parallelism {
        Parallelism::Runs => jobs.par_iter().with_max_len(1).map(f).collect(),
        Parallelism::Ops => jobs.iter().map(f).collect(),
    }
}

/// Runs the jobs of `phase` as `scope` has it: every job (`f(job, true)` trains what is not
/// finished), every job from its finished record (`f(job, false)`), or only job `i`, after
/// which the sweep stops (`None`). A rerun job past the phase's real count has nothing to do;
/// any other index past the end is an error.
fn run_phase<T, R, F>(
    scope: Scope,
    phase: Phase,
    parallelism: Parallelism,
    jobs: &[T],
    progress: ProgressFn<'_>,
    f: F,
) -> Result<Option<Vec<R>>>
where
    T: Sync,
    R: Send,
    F: Fn(&T, bool) -> Result<R> + Sync + Send,
{
    let all = |train: bool| -> Result<Option<Vec<R>>> {
        progress(Progress::Queued(jobs.len() as u64));
        map_jobs(parallelism, jobs, |j| f(j, train))
            .into_iter()
            .collect::<Result<Vec<R>>>()
            .map(Some)
    };
    match scope.role(phase) {
        Role::Run => all(true),
        Role::Load => all(false),
        Role::Only(i) => match jobs.get(i) {
            Some(job) => {
                progress(Progress::Queued(1));
                f(job, true).map(|_| None)
            }
            None if phase == Phase::Reruns => Ok(None),
            None => Err(Error::arg(
                "index",
                format!(
                    "phase `{phase}` has {} jobs (0 to {}); job {i} does not exist",
                    jobs.len(),
                    jobs.len().saturating_sub(1)
                ),
            )),
        },
    }
}

/// The error of a job that needs the record of a run from an earlier phase.
fn unfinished(dir: &Path, phase: Phase) -> Error {
    Error::Data(format!(
        "{} holds no finished run of this sweep: phase `{phase}` must finish first",
        dir.display()
    ))
}

/// Folder name of the run of draw `draw` at seed `seed`.
pub fn run_label(draw: usize, seed: u64) -> String {
    format!("draw{draw:02}_seed{seed}")
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

// ---------------------------------------------------------------------------------------------
// XRM phase

/// One XRM run of the phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XrmRunRecord {
    pub label: String,
    pub draw: usize,
    pub seed: u64,
    pub hparams: Hparams,
    pub final_flip_rate: f64,
    /// The flip rate that selects XRM's draw: 0 for a degenerate run.
    pub selection_flip_rate: f64,
    pub degenerate: Option<String>,
    /// Held-out accuracy per true training group.
    pub heldout_acc_by_group: Vec<Option<f64>>,
    /// Inferred training and validation groups `2y + m`: counts.
    pub inferred_counts_tr: Vec<usize>,
    pub inferred_counts_va: Vec<usize>,
    pub error: Option<String>,
    /// Complete, failed, or (on disk, while it runs) running.
    #[serde(default)]
    pub status: RunStatus,
    /// The digest of everything that determines the run (see `sweep/resume.rs`).
    #[serde(default)]
    pub digest: String,
}

/// What XRM's phase chose, per seed (the JSON half of [`XrmPhase`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XrmPhaseRecord {
    /// The draws, at the selection seed.
    pub draws: Vec<XrmRunRecord>,
    /// The draw with the highest selection flip rate.
    pub chosen_draw: usize,
    /// The chosen draw's run at each seed (the first is its draw run).
    pub seeds: Vec<XrmRunRecord>,
}

/// XRM's phase: the record and the outputs per seed, shared by every method of the sweep.
#[derive(Clone, Debug)]
pub struct XrmPhase {
    pub record: XrmPhaseRecord,
    pub outputs: BTreeMap<u64, Arc<XrmOutput>>,
    /// Which output a run at each seed reads.
    pub mode: XrmOutputs,
}

impl XrmPhase {
    /// The seed of the XRM output that a run of `kind` at `seed` reads.
    pub fn seed_for(&self, kind: MethodKind, seed: u64) -> u64 {
        match self.mode {
            XrmOutputs::First if kind == MethodKind::Mat => {
                self.record.seeds.first().map_or(seed, |r| r.seed)
            }
            _ => seed,
        }
    }

    /// The XRM output that a run of `kind` at `seed` reads.
    pub fn output_for(&self, kind: MethodKind, seed: u64) -> Result<&XrmOutput> {
        self.output(self.seed_for(kind, seed))
    }

    /// XRM's output at `seed`.
    pub fn output(&self, seed: u64) -> Result<&XrmOutput> {
        self.outputs.get(&seed).map(|o| o.as_ref()).ok_or_else(|| {
            Error::Data(format!(
                "no XRM output for seed {seed} (the phase ran seeds {:?})",
                self.outputs.keys().collect::<Vec<_>>()
            ))
        })
    }
}

fn inferred_counts(y: &[u32], bits: &[u32], classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; 2 * classes];
    for (&y, &m) in y.iter().zip(bits) {
        counts[(2 * y + m) as usize] += 1;
    }
    counts
}

fn xrm_record(
    ds: &Dataset,
    draw: usize,
    seed: u64,
    hparams: &Hparams,
    digest: &str,
    out: &Result<XrmOutput>,
) -> XrmRunRecord {
    let base = XrmRunRecord {
        label: run_label(draw, seed),
        draw,
        seed,
        hparams: hparams.clone(),
        final_flip_rate: f64::NAN,
        selection_flip_rate: f64::NAN,
        degenerate: None,
        heldout_acc_by_group: Vec::new(),
        inferred_counts_tr: Vec::new(),
        inferred_counts_va: Vec::new(),
        error: None,
        status: RunStatus::Running,
        digest: digest.into(),
    };
    match out {
        Ok(o) => XrmRunRecord {
            final_flip_rate: o.final_flip_rate,
            selection_flip_rate: o.selection_flip_rate(),
            degenerate: o.degenerate.clone(),
            heldout_acc_by_group: o.heldout_acc_by_group.clone(),
            inferred_counts_tr: inferred_counts(&ds.train.y, &o.inferred_tr, ds.classes),
            inferred_counts_va: inferred_counts(&ds.valid.y, &o.inferred_va, ds.classes),
            status: RunStatus::Complete,
            ..base
        },
        Err(e) => XrmRunRecord {
            error: Some(e.to_string()),
            status: RunStatus::Failed,
            ..base
        },
    }
}

/// What determines one XRM run of a sweep (its digest is the run's [`XrmRunRecord::digest`]).
#[derive(Serialize)]
struct XrmRunKey<'a> {
    format: &'static str,
    data: &'a str,
    draw: usize,
    seed: u64,
    hparams: &'a Hparams,
    model: &'a ModelSpec,
    optimizer: OptimizerSpec,
    plan: &'a XrmPlan,
    checkpoint_freq: usize,
    device: &'static str,
}

/// The record of a finished XRM run in `dir` whose digest is `digest`, with its output when
/// it completed; `None` when there is none, it is unfinished, another configuration made it,
/// or its output does not load.
fn finished_xrm_run(
    ds: &Dataset,
    dir: &Path,
    digest: &str,
) -> Option<(XrmRunRecord, Option<XrmOutput>)> {
    let record: XrmRunRecord = read_json(&dir.join(RUN_FILE)).ok()?;
    if record.digest != digest || !record.status.is_final() {
        return None;
    }
    match record.status {
        RunStatus::Complete => {
            let out = XrmOutput::load(dir, ds).ok()?;
            Some((record, Some(out)))
        }
        _ => Some((record, None)),
    }
}

/// Runs XRM's phase of a sweep (see the module docs) and saves every run under `dir`
/// (`{label}/xrm.{json,safetensors}` and the record `{label}/run.json`). A run whose record
/// there is finished with the same digest is loaded instead of trained again; `data_digest`
/// is [`data_digest`]`(ds)`. The chosen draw is rerun at the other seeds when `plans` need
/// it there ([`xrm_reruns`]). `scope` says which runs this call may train ([`Scope`]); `None`
/// when it stopped after its job.
pub fn run_xrm_phase(
    ds: &Dataset,
    cfg: &SweepConfig,
    dir: &Path,
    data_digest: &str,
    plans: &[MethodPlan],
    scope: Scope,
    progress: ProgressFn<'_>,
) -> Result<Option<XrmPhase>> {
    cfg.validate()?;
    create_dir(dir)?;
    let parallelism = cfg.effective_parallelism();
    let xrm_cfg = |h: &Hparams, seed: u64| XrmConfig {
        steps: cfg.xrm.steps,
        batch_size: h.batch_size,
        optimizer: cfg.optimizer_for(h),
        loss: cfg.xrm.loss,
        seed,
        device: cfg.device.clone(),
        log_every: cfg.checkpoint_freq,
    };
    let run_one = |draw: usize,
                   seed: u64,
                   h: &Hparams,
                   phase: Phase,
                   train: bool|
     -> Result<(XrmRunRecord, Option<XrmOutput>)> {
        let label = run_label(draw, seed);
        let run_dir = dir.join(&label);
        let key = XrmRunKey {
            format: "memaware-xrm-run-v1",
            data: data_digest,
            draw,
            seed,
            hparams: h,
            model: &cfg.model,
            optimizer: cfg.optimizer_for(h),
            plan: &cfg.xrm,
            checkpoint_freq: cfg.checkpoint_freq,
            device: device_kind(&cfg.device),
        };
        let digest = digest_of(&run_dir.join(RUN_FILE), &key)?;
        if let Some(done) = finished_xrm_run(ds, &run_dir, &digest) {
            progress(Progress::Finished(&format!("xrm/{label}")));
            return Ok(done);
        }
        if !train {
            return Err(unfinished(&run_dir, phase));
        }
        create_dir(&run_dir)?;
        let started = xrm_record(
            ds,
            draw,
            seed,
            h,
            &digest,
            &Err(Error::Data("running".into())),
        );
        write_json(
            &run_dir.join(RUN_FILE),
            &XrmRunRecord {
                error: None,
                status: RunStatus::Running,
                ..started
            },
        )?;
        let out = match &cfg.xrm.estimator {
            Estimator::Xrm => run_xrm(ds, &cfg.model, &xrm_cfg(h, seed)),
            Estimator::External(path) => external_output(path, ds, &cfg.model),
            Estimator::Kfold { folds } => {
                let x = xrm_cfg(h, seed);
                let kcfg = KfoldConfig {
                    folds: *folds,
                    steps: x.steps,
                    batch_size: x.batch_size,
                    optimizer: x.optimizer,
                    seed: x.seed,
                    device: x.device,
                };
                run_kfold(ds, &cfg.model, &kcfg)
            }
        };
        if let Ok(o) = &out {
            o.save(&run_dir, ds)?;
        }
        let record = xrm_record(ds, draw, seed, h, &digest, &out);
        write_json(&run_dir.join(RUN_FILE), &record)?;
        progress(Progress::Finished(&format!("xrm/{label}")));
        Ok((record, out.ok()))
    };

    let s0 = cfg.seeds[0];
    let draw_hparams: Vec<Hparams> = (0..cfg.xrm.draws)
        .map(|i| cfg.hparams(i))
        .collect::<Result<_>>()?;
    let Some(draw_runs) = run_phase(
        scope,
        Phase::XrmDraws,
        parallelism,
        &draw_hparams.iter().enumerate().collect::<Vec<_>>(),
        progress,
        |(i, h), train| run_one(*i, s0, h, Phase::XrmDraws, train),
    )?
    else {
        return Ok(None);
    };
    // Highest selection flip rate; failed runs (NaN) never win; ties go to the lower index.
    let chosen = draw_runs
        .iter()
        .enumerate()
        .filter(|(_, (r, o))| o.is_some() && !r.selection_flip_rate.is_nan())
        .fold(None::<(usize, f64)>, |best, (i, (r, _))| match best {
            Some((_, b)) if r.selection_flip_rate <= b => best,
            _ => Some((i, r.selection_flip_rate)),
        })
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Error::Data(format!(
                "XRM: all {} draws failed on `{}`; first error: {}",
                draw_runs.len(),
                ds.name,
                draw_runs[0].0.error.as_deref().unwrap_or("unknown")
            ))
        })?;
    let mut records: Vec<XrmRunRecord> = Vec::with_capacity(draw_runs.len());
    let mut chosen_output = None;
    for (i, (r, o)) in draw_runs.into_iter().enumerate() {
        if i == chosen {
            chosen_output = o;
        }
        records.push(r);
    }
    let chosen_output = chosen_output.expect("the chosen draw has an output");
    let h = draw_hparams[chosen].clone();

    let others: Vec<u64> = if xrm_reruns(plans, cfg) {
        cfg.seeds[1..].to_vec()
    } else {
        Vec::new()
    };
    let Some(seed_runs) = run_phase(
        scope,
        Phase::XrmSeeds,
        parallelism,
        &others,
        progress,
        |&s, train| run_one(chosen, s, &h, Phase::XrmSeeds, train),
    )?
    else {
        return Ok(None);
    };
    let mut outputs = BTreeMap::new();
    let mut seed_records = vec![records[chosen].clone()];
    outputs.insert(s0, Arc::new(chosen_output));
    for (r, o) in seed_runs {
        let o = o.ok_or_else(|| {
            Error::Data(format!(
                "XRM at seed {} (draw {chosen}) failed: {}",
                r.seed,
                r.error.as_deref().unwrap_or("unknown")
            ))
        })?;
        outputs.insert(r.seed, Arc::new(o));
        seed_records.push(r);
    }
    let record = XrmPhaseRecord {
        draws: records,
        chosen_draw: chosen,
        seeds: seed_records,
    };
    if scope.writes_summaries() {
        write_json(&dir.join(XRM_PHASE_FILE), &record)?;
    }
    Ok(Some(XrmPhase {
        record,
        outputs,
        mode: cfg.xrm.outputs,
    }))
}

// ---------------------------------------------------------------------------------------------
// Runs

/// One training run of a sweep (`run.json` holds the same, written before training).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Folder name under the method's folder: `draw{i:02}_seed{s}`.
    pub label: String,
    pub dataset: String,
    pub kind: MethodKind,
    pub draw: usize,
    pub seed: u64,
    pub hparams: Hparams,
    pub method: Method,
    pub optimizer: OptimizerSpec,
    pub batch_size: usize,
    pub steps: usize,
    pub checkpoint_freq: usize,
    /// The seed of the XRM output the run read, if any.
    pub xrm_seed: Option<u64>,
    /// Filled after training.
    pub checkpoints: usize,
    pub steps_per_s: f64,
    /// JTT: size of the first stage's error set.
    pub jtt_errors: Option<usize>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Complete, failed, or (on disk, while it runs) running.
    #[serde(default)]
    pub status: RunStatus,
    /// The digest of everything that determines the run (see `sweep/resume.rs`).
    #[serde(default)]
    pub digest: String,
}

/// A run's record and its checkpoints.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub record: RunRecord,
    pub checkpoints: Vec<Checkpoint>,
}

#[derive(Clone, Copy, Debug)]
struct RunJob {
    kind: MethodKind,
    draw: usize,
    seed: u64,
}

/// What determines one training run of a sweep (its digest is the run's
/// [`RunRecord::digest`]).
#[derive(Serialize)]
struct RunKey<'a> {
    format: &'static str,
    data: &'a str,
    kind: MethodKind,
    draw: usize,
    seed: u64,
    hparams: &'a Hparams,
    method: &'a Method,
    model: &'a ModelSpec,
    optimizer: &'a OptimizerSpec,
    batch_size: usize,
    steps: usize,
    checkpoint_freq: usize,
    device: &'static str,
    /// The digest of the XRM run whose output the run reads.
    xrm: Option<&'a str>,
}

/// The record and checkpoints of a finished run in `dir` made with `digest`; `None` when
/// there is none, it is unfinished, another configuration made it, or its checkpoints do not
/// read back in full.
fn finished_run(dir: &Path, digest: &str) -> Option<RunResult> {
    let record: RunRecord = read_json(&dir.join(RUN_FILE)).ok()?;
    if record.digest != digest || !record.status.is_final() {
        return None;
    }
    let checkpoints = match record.status {
        RunStatus::Complete => {
            let cps: Vec<Checkpoint> = read_jsonl(dir.join(CHECKPOINTS_FILE)).ok()?;
            if cps.len() != record.checkpoints {
                return None;
            }
            cps
        }
        _ => Vec::new(),
    };
    Some(RunResult {
        record,
        checkpoints,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    ds: &Dataset,
    job: RunJob,
    cfg: &SweepConfig,
    hparams: &Hparams,
    xrm: Option<&XrmPhase>,
    data_digest: &str,
    out: &Path,
    (phase, train): (Phase, bool),
    progress: ProgressFn<'_>,
) -> Result<RunResult> {
    let label = run_label(job.draw, job.seed);
    let dir = out.join(job.kind.name()).join(&label);
    let method = job
        .kind
        .method(hparams, cfg.steps)
        .with_sampler(cfg.sampler);
    let optimizer = cfg.optimizer_for(hparams);
    let xrm_out = xrm.map(|p| p.output_for(job.kind, job.seed)).transpose()?;
    let xrm_seed = xrm.map(|p| p.seed_for(job.kind, job.seed));
    let xrm_digest = xrm
        .and_then(|p| p.record.seeds.iter().find(|r| Some(r.seed) == xrm_seed))
        .map(|r| r.digest.as_str());
    let digest = digest_of(
        &dir.join(RUN_FILE),
        &RunKey {
            format: "memaware-run-v1",
            data: data_digest,
            kind: job.kind,
            draw: job.draw,
            seed: job.seed,
            hparams,
            method: &method,
            model: &cfg.model,
            optimizer: &optimizer,
            batch_size: hparams.batch_size,
            steps: cfg.steps,
            checkpoint_freq: cfg.checkpoint_freq,
            device: device_kind(&cfg.device),
            xrm: xrm_out.and(xrm_digest),
        },
    )?;
    let finished =
        |label: &str| progress(Progress::Finished(&format!("{}/{label}", job.kind.name())));
    if let Some(done) = finished_run(&dir, &digest) {
        finished(&label);
        return Ok(done);
    }
    if !train {
        return Err(unfinished(&dir, phase));
    }
    create_dir(&dir)?;
    let mut record = RunRecord {
        label: label.clone(),
        dataset: ds.name.clone(),
        kind: job.kind,
        draw: job.draw,
        seed: job.seed,
        hparams: hparams.clone(),
        method: method.clone(),
        optimizer: optimizer.clone(),
        batch_size: hparams.batch_size,
        steps: cfg.steps,
        checkpoint_freq: cfg.checkpoint_freq,
        xrm_seed: xrm_out.and(xrm_seed),
        checkpoints: 0,
        steps_per_s: 0.0,
        jtt_errors: None,
        error: None,
        status: RunStatus::Running,
        digest,
    };
    write_json(&dir.join(RUN_FILE), &record)?;
    let train_cfg = TrainConfig {
        steps: cfg.steps,
        batch_size: hparams.batch_size,
        optimizer,
        checkpoint_freq: cfg.checkpoint_freq,
        seed: job.seed,
        device: cfg.device.clone(),
        eval_train: false,
        eval_valid: true,
        checkpoints_path: Some(dir.join(CHECKPOINTS_FILE)),
        // A run killed midway continues from its last checkpoint when the sweep is rerun.
        state_dir: Some(dir.clone()),
    };
    let outcome = run_method_with(
        ds,
        &method,
        &cfg.model,
        &train_cfg,
        xrm_out,
        &mut |_| Ok(()),
    );
    let checkpoints = match outcome {
        Ok(o) => {
            record.checkpoints = o.outcome.checkpoints.len();
            record.steps_per_s = o.outcome.steps_per_s;
            record.jtt_errors = o.jtt_error_set.as_ref().map(Vec::len);
            record.status = RunStatus::Complete;
            o.outcome.checkpoints
        }
        Err(e) => {
            record.error = Some(e.to_string());
            record.status = RunStatus::Failed;
            Vec::new()
        }
    };
    // The final record, counters and status included, replaces the one written at the start.
    write_json(&dir.join(RUN_FILE), &record)?;
    finished(&label);
    Ok(RunResult {
        record,
        checkpoints,
    })
}

// ---------------------------------------------------------------------------------------------
// Selection

/// A draw's selected checkpoint under one criterion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrawChoice {
    pub draw: usize,
    /// Index and step of the selected checkpoint.
    pub index: usize,
    pub step: usize,
    /// The criterion's value there.
    pub value: f64,
    /// Validation average accuracy there (the tie-break between draws).
    pub va_avg: f64,
}

/// One seed of the winning draw under one criterion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedChoice {
    pub seed: u64,
    /// The run's folder name.
    pub run: String,
    pub index: usize,
    pub step: usize,
    pub value: f64,
    pub va: SplitMetrics,
    pub te: SplitMetrics,
}

/// Model selection under one criterion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub criterion: Criterion,
    /// Per draw (at the selection seed): its selected checkpoint, `None` for a failed run.
    pub draws: Vec<Option<DrawChoice>>,
    pub winner: usize,
    pub hparams: Hparams,
    /// The winner's selected checkpoint at each seed whose run is recorded, in seed order.
    pub seeds: Vec<SeedChoice>,
    /// Seeds of the sweep whose run of the winner is not recorded (possible only when a
    /// criterion is applied afterwards, by [`reselect`]).
    pub missing_seeds: Vec<u64>,
    /// Test metrics over the recorded seeds: mean ± sample std, per-group accuracies, counts.
    pub cell: TableCell,
}

/// The selected checkpoint of one run, as a [`DrawChoice`].
fn choose_in_run(
    draw: usize,
    cps: &[Checkpoint],
    c: Criterion,
    step_zero: StepZero,
) -> Result<DrawChoice> {
    let (index, value) = select_checkpoint_with(cps, c, step_zero)?;
    Ok(DrawChoice {
        draw,
        index,
        step: cps[index].step,
        value,
        va_avg: cps[index].valid()?.avg_acc,
    })
}

/// The winning draw under `c` among `draw_runs` (one entry per draw at the selection seed;
/// `None` or a failed run takes no part). Returns every draw's choice and the winner.
fn choose_winner(
    draw_runs: &[Option<&RunResult>],
    c: Criterion,
    step_zero: StepZero,
) -> Result<(Vec<Option<DrawChoice>>, usize)> {
    let choices: Vec<Option<DrawChoice>> = draw_runs
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) if r.record.error.is_none() => {
                choose_in_run(i, &r.checkpoints, c, step_zero).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let values: Vec<(f64, f64)> = choices
        .iter()
        .map(|ch| {
            ch.as_ref()
                .map_or((f64::NAN, f64::NAN), |d| (d.value, d.va_avg))
        })
        .collect();
    let winner = pick_best_draw(&values).ok_or_else(|| {
        let first_error = draw_runs
            .iter()
            .flatten()
            .find_map(|r| r.record.error.clone())
            .unwrap_or_else(|| "no run recorded".into());
        Error::Data(format!(
            "selection by {c}: none of the {} draws has a usable run; first error: {first_error}",
            draw_runs.len()
        ))
    })?;
    Ok((choices, winner))
}

/// Model selection under `c` over `runs` (any order; keyed by draw and seed): the winner
/// among the draws at `seeds[0]`, then its selected checkpoint at each seed (see the module
/// docs). Seeds without a recorded run of the winner are listed in `missing_seeds`; a
/// recorded run of the winner that failed is an error.
pub fn select(runs: &[RunResult], draws: usize, seeds: &[u64], c: Criterion) -> Result<Selection> {
    select_with(runs, draws, seeds, c, StepZero::default())
}

/// [`select`] with the step-0 rule `step_zero` applied to every run's checkpoints.
pub fn select_with(
    runs: &[RunResult],
    draws: usize,
    seeds: &[u64],
    c: Criterion,
    step_zero: StepZero,
) -> Result<Selection> {
    let s0 = *seeds
        .first()
        .ok_or_else(|| Error::arg("seeds", "selection needs at least one seed"))?;
    let find = |draw: usize, seed: u64| {
        runs.iter()
            .find(|r| r.record.draw == draw && r.record.seed == seed)
    };
    let draw_runs: Vec<Option<&RunResult>> = (0..draws).map(|i| find(i, s0)).collect();
    let (choices, winner) = choose_winner(&draw_runs, c, step_zero)?;
    let mut seed_choices = Vec::new();
    let mut missing = Vec::new();
    let mut hparams = None;
    for &s in seeds {
        let Some(run) = find(winner, s) else {
            missing.push(s);
            continue;
        };
        if let Some(e) = &run.record.error {
            return Err(Error::Data(format!(
                "selection by {c}: the winning draw {winner} failed at seed {s}: {e}"
            )));
        }
        hparams.get_or_insert_with(|| run.record.hparams.clone());
        let (index, value) = select_checkpoint_with(&run.checkpoints, c, step_zero)?;
        let cp = &run.checkpoints[index];
        seed_choices.push(SeedChoice {
            seed: s,
            run: run.record.label.clone(),
            index,
            step: cp.step,
            value,
            va: cp.valid()?.clone(),
            te: cp.te.clone(),
        });
    }
    let te: Vec<SplitMetrics> = seed_choices.iter().map(|s| s.te.clone()).collect();
    Ok(Selection {
        criterion: c,
        draws: choices,
        winner,
        hparams: hparams.expect("the winner's run at the selection seed is recorded"),
        seeds: seed_choices,
        missing_seeds: missing,
        cell: TableCell::from_seeds(&te)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Sweeps

/// A method and the criteria it is selected by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodPlan {
    pub kind: MethodKind,
    pub criteria: Vec<Criterion>,
}

/// One method's sweep on one data set: what `sweep.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub format: String,
    pub dataset: String,
    pub method: MethodKind,
    pub config: SweepConfig,
    /// The draws (in draw order), then the seed reruns.
    pub runs: Vec<RunRecord>,
    /// One per criterion, in the plan's order.
    pub selections: Vec<Selection>,
    /// XRM's phase when the sweep ran it (shared by all methods of one data set).
    pub xrm: Option<XrmPhaseRecord>,
}

impl SweepOutcome {
    /// The selection under `c`, if the sweep made one.
    pub fn selection(&self, c: Criterion) -> Option<&Selection> {
        self.selections.iter().find(|s| s.criterion == c)
    }

    /// Reads a `sweep.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<SweepOutcome> {
        let path = path.as_ref();
        let out: SweepOutcome = read_json(path)?;
        if out.format != FORMAT {
            return Err(Error::File {
                path: path.to_path_buf(),
                tensor: "format".into(),
                problem: format!("`{}`, expected `{FORMAT}`", out.format),
            });
        }
        Ok(out)
    }
}

/// The sweeps of several methods on one data set, and XRM's phase they shared.
#[derive(Clone, Debug)]
pub struct SweepSet {
    pub xrm: Option<XrmPhase>,
    pub sweeps: Vec<SweepOutcome>,
}

/// Runs the protocol of the module docs for every method of `plans` on `ds`, writing under
/// `out` (see "Files"). All methods share the draws and XRM's phase; runs of different
/// methods go in parallel like the draws of one.
///
/// Resuming: `out` gets a [`Manifest`] of the sweep. Rerun on the same folder with the same
/// configuration, the sweep keeps every finished run recorded there with the same digest and
/// runs the rest, ending with the files an uninterrupted sweep writes (timings aside). A
/// folder holding a sweep of another configuration is an error unless `overwrite`, which
/// removes that sweep's files first (see [`prepare_folder`]).
///
/// Errors: an invalid config or data set, no plan, a plan without criteria, a method listed
/// twice, a folder holding another sweep, I/O errors, every draw of a method failing, a
/// failing rerun.
pub fn run_sweeps(
    ds: &Dataset,
    plans: &[MethodPlan],
    cfg: &SweepConfig,
    out: &Path,
    overwrite: bool,
    progress: ProgressFn<'_>,
) -> Result<SweepSet> {
    let set = run_sweeps_scoped(ds, plans, cfg, out, overwrite, Scope::All, progress)?;
    Ok(set.expect("a sweep of every phase runs to its end"))
}

/// [`run_sweeps`], running only the part of the sweep that `scope` names: one job of one
/// phase (then `None`), or the summaries of a sweep whose runs are all recorded. The files
/// under `out` end as [`run_sweeps`] writes them once every job and [`Scope::Finish`] ran.
///
/// Errors: those of [`run_sweeps`], a run of an earlier phase without a finished record, a
/// job index past the end of its phase.
pub fn run_sweeps_scoped(
    ds: &Dataset,
    plans: &[MethodPlan],
    cfg: &SweepConfig,
    out: &Path,
    overwrite: bool,
    scope: Scope,
    progress: ProgressFn<'_>,
) -> Result<Option<SweepSet>> {
    cfg.validate()?;
    ds.validate()?;
    if plans.is_empty() {
        return Err(Error::arg("method", "a sweep needs at least one method"));
    }
    let mut seen = BTreeSet::new();
    for p in plans {
        if p.criteria.is_empty() {
            return Err(Error::arg(
                "select",
                format!("method {} has no selection criterion", p.kind),
            ));
        }
        if !seen.insert(p.kind) {
            return Err(Error::arg(
                "method",
                format!("method {} is listed twice", p.kind),
            ));
        }
    }
    create_dir(out)?;
    let data_digest = data_digest(ds);
    prepare_folder(
        out,
        &Manifest::new(ds, &data_digest, plans, cfg)?,
        overwrite,
    )?;
    let parallelism = cfg.effective_parallelism();
    let xrm = if needs_xrm(plans) {
        let xrm_dir = out.join("xrm");
        match run_xrm_phase(ds, cfg, &xrm_dir, &data_digest, plans, scope, progress)? {
            Some(x) => Some(x),
            None => return Ok(None),
        }
    } else {
        None
    };
    let hparams: Vec<Hparams> = (0..cfg.draws)
        .map(|i| cfg.hparams(i))
        .collect::<Result<_>>()?;
    let s0 = cfg.seeds[0];

    // Phase 2: every method × draw at the selection seed.
    let jobs: Vec<RunJob> = plans
        .iter()
        .flat_map(|p| {
            (0..cfg.draws).map(move |draw| RunJob {
                kind: p.kind,
                draw,
                seed: s0,
            })
        })
        .collect();
    let run = |j: &RunJob, phase: Phase, train: bool| {
        run_job(
            ds,
            *j,
            cfg,
            &hparams[j.draw],
            xrm.as_ref(),
            &data_digest,
            out,
            (phase, train),
            progress,
        )
    };
    let Some(mut results) =
        run_phase(scope, Phase::Draws, parallelism, &jobs, progress, |j, t| {
            run(j, Phase::Draws, t)
        })?
    else {
        return Ok(None);
    };

    // Phase 3: the winners of every criterion, at the other seeds (each run once).
    let mut reruns: BTreeSet<(MethodKind, usize, u64)> = BTreeSet::new();
    for p in plans {
        let draw_runs: Vec<Option<&RunResult>> = (0..cfg.draws)
            .map(|d| {
                results
                    .iter()
                    .find(|r| r.record.kind == p.kind && r.record.draw == d)
            })
            .collect();
        for &c in &p.criteria {
            let (_, winner) = choose_winner(&draw_runs, c, cfg.step_zero)
                .map_err(|e| Error::Data(format!("{} on `{}`: {e}", p.kind.label(), ds.name)))?;
            reruns.extend(cfg.seeds[1..].iter().map(|&s| (p.kind, winner, s)));
        }
    }
    let rerun_jobs: Vec<RunJob> = reruns
        .into_iter()
        .map(|(kind, draw, seed)| RunJob { kind, draw, seed })
        .collect();
    let rerun = |j: &RunJob, train: bool| {
        let r = run(j, Phase::Reruns, train)?;
        match &r.record.error {
            Some(e) => Err(Error::Data(format!(
                "{} on `{}`: rerun {} failed: {e}",
                r.record.kind.label(),
                ds.name,
                r.record.label
            ))),
            None => Ok(r),
        }
    };
    let Some(reruns) = run_phase(
        scope,
        Phase::Reruns,
        parallelism,
        &rerun_jobs,
        progress,
        rerun,
    )?
    else {
        return Ok(None);
    };
    results.extend(reruns);

    let mut sweeps = Vec::with_capacity(plans.len());
    for p in plans {
        let runs: Vec<RunResult> = results
            .iter()
            .filter(|r| r.record.kind == p.kind)
            .cloned()
            .collect();
        let selections = p
            .criteria
            .iter()
            .map(|&c| select_with(&runs, cfg.draws, &cfg.seeds, c, cfg.step_zero))
            .collect::<Result<Vec<_>>>()?;
        let outcome = SweepOutcome {
            format: FORMAT.into(),
            dataset: ds.name.clone(),
            method: p.kind,
            config: cfg.clone(),
            runs: runs.into_iter().map(|r| r.record).collect(),
            selections,
            xrm: xrm.as_ref().map(|x| x.record.clone()),
        };
        if scope.writes_summaries() {
            write_json(&out.join(p.kind.name()).join(SWEEP_FILE), &outcome)?;
        }
        sweeps.push(outcome);
    }
    Ok(Some(SweepSet { xrm, sweeps }))
}

/// Applies `criteria` again to the checkpoints a sweep recorded: reads
/// `{sweep_dir}/{label}/checkpoints.jsonl` of every run of `sweep` that did not fail, then
/// [`select`]s. A criterion whose winner was not rerun at every seed lists the seeds it lacks
/// in [`Selection::missing_seeds`].
///
/// Errors: a missing or unreadable checkpoint file (named), a checkpoint without the
/// criterion's value (`va_gi_wga` on a sweep that ran without XRM).
pub fn reselect(
    sweep: &SweepOutcome,
    sweep_dir: &Path,
    criteria: &[Criterion],
) -> Result<Vec<Selection>> {
    let runs: Vec<RunResult> = sweep
        .runs
        .iter()
        .map(|r| {
            let checkpoints = if r.error.is_some() {
                Vec::new()
            } else {
                read_jsonl(sweep_dir.join(&r.label).join(CHECKPOINTS_FILE))?
            };
            Ok(RunResult {
                record: r.clone(),
                checkpoints,
            })
        })
        .collect::<Result<_>>()?;
    criteria
        .iter()
        .map(|&c| {
            select_with(
                &runs,
                sweep.config.draws,
                &sweep.config.seeds,
                c,
                sweep.config.step_zero,
            )
        })
        .collect()
}

/// A run of a recorded sweep that [`reselect_recorded`] left out, or a damaged file it met.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunIssue {
    /// The run's folder (or the damaged file).
    pub path: std::path::PathBuf,
    /// The damaged line (1-based), when the problem is one line of a file.
    pub line: Option<usize>,
    /// What is wrong: `failed: …`, `interrupted …`, `damaged: …`, `incomplete: …`.
    pub problem: String,
    /// Whether the run was left out of selection.
    pub excluded: bool,
}

/// The runs of a recorded sweep as they stand on disk, with everything wrong with them.
///
/// A run is left out (its problem listed, and it is absent from the runs returned, so a
/// selection treats it as never run: a draw without a result, or a missing seed) when its record says it failed, when its folder's
/// `run.json` says it is still running (an interrupted run), when `checkpoints.jsonl` is
/// missing, has a damaged line (each listed with its number), or holds fewer checkpoints than
/// the record counts. With `include_incomplete`, interrupted and damaged runs that kept some
/// checkpoints take part with the checkpoints that read back (their problems still listed).
pub fn recorded_runs(
    sweep: &SweepOutcome,
    sweep_dir: &Path,
    include_incomplete: bool,
) -> (Vec<RunResult>, Vec<RunIssue>) {
    let mut runs = Vec::new();
    let mut issues = Vec::new();
    for r in &sweep.runs {
        let dir = sweep_dir.join(&r.label);
        if let Some(e) = &r.error {
            issues.push(RunIssue {
                path: dir,
                line: None,
                problem: format!("failed: {e}"),
                excluded: true,
            });
            continue;
        }
        let mut problems: Vec<(Option<usize>, String, std::path::PathBuf)> = Vec::new();
        let run_file = dir.join(RUN_FILE);
        if run_file.is_file() {
            match read_json::<RunRecord>(&run_file) {
                Ok(on_disk) if on_disk.status == RunStatus::Running => {
                    problems.push((None, RunStatus::Running.describe().to_string(), dir.clone()))
                }
                Ok(_) => {}
                Err(e) => problems.push((None, format!("damaged: {e}"), run_file.clone())),
            }
        }
        let cp_file = dir.join(CHECKPOINTS_FILE);
        let checkpoints = match crate::io::read_jsonl_lenient::<Checkpoint>(&cp_file) {
            Ok((cps, bad)) => {
                for b in bad {
                    problems.push((
                        Some(b.line),
                        format!("damaged line: {}", b.problem),
                        cp_file.clone(),
                    ));
                }
                if cps.len() < r.checkpoints {
                    problems.push((
                        None,
                        format!(
                            "incomplete: {} of the {} checkpoints recorded read back",
                            cps.len(),
                            r.checkpoints
                        ),
                        cp_file.clone(),
                    ));
                }
                cps
            }
            Err(e) => {
                problems.push((None, format!("missing or unreadable: {e}"), cp_file.clone()));
                Vec::new()
            }
        };
        let usable = include_incomplete && !checkpoints.is_empty();
        let excluded = !problems.is_empty() && !usable;
        for (line, problem, path) in problems {
            issues.push(RunIssue {
                path,
                line,
                problem,
                excluded,
            });
        }
        if !excluded {
            runs.push(RunResult {
                record: r.clone(),
                checkpoints,
            });
        }
    }
    (runs, issues)
}

/// Like [`reselect`], but over [`recorded_runs`]: every criterion gets its own result (an
/// error for one criterion does not hide the others), and the runs left out are listed.
pub fn reselect_recorded(
    sweep: &SweepOutcome,
    sweep_dir: &Path,
    criteria: &[Criterion],
    include_incomplete: bool,
) -> (Vec<(Criterion, Result<Selection>)>, Vec<RunIssue>) {
    reselect_recorded_with(
        sweep,
        sweep_dir,
        criteria,
        include_incomplete,
        sweep.config.step_zero,
    )
}

/// [`reselect_recorded`] under the step-0 rule `step_zero` (whatever the sweep ran with).
pub fn reselect_recorded_with(
    sweep: &SweepOutcome,
    sweep_dir: &Path,
    criteria: &[Criterion],
    include_incomplete: bool,
    step_zero: StepZero,
) -> (Vec<(Criterion, Result<Selection>)>, Vec<RunIssue>) {
    let (runs, issues) = recorded_runs(sweep, sweep_dir, include_incomplete);
    let selections = criteria
        .iter()
        .map(|&c| {
            let sel = select_with(&runs, sweep.config.draws, &sweep.config.seeds, c, step_zero);
            (c, sel)
        })
        .collect();
    (selections, issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_parse_and_round_trip() {
        for m in MethodKind::ALL {
            assert_eq!(m.name().parse::<MethodKind>().unwrap(), m);
            assert_eq!(m.label().parse::<MethodKind>().unwrap(), m);
        }
        assert_eq!(
            "groupdro".parse::<MethodKind>().unwrap(),
            MethodKind::GroupDro
        );
        assert_eq!(
            "xrm+groupdro".parse::<MethodKind>().unwrap(),
            MethodKind::XrmGroupDro
        );
        assert!(matches!(
            "dro".parse::<MethodKind>(),
            Err(Error::InvalidArgument { name: "method", .. })
        ));
    }

    #[test]
    fn draws_map_to_methods_and_optimizers() {
        let cfg = SweepConfig {
            model: ModelSpec::linear(true),
            optimizer: OptimizerSpec::Sgd {
                lr: 0.0,
                momentum: 0.9,
                weight_decay: 0.0,
            },
            space: HparamSpace::paper(),
            steps: 1001,
            checkpoint_freq: 50,
            draws: 3,
            seeds: vec![0, 1],
            hparam_seed: 7,
            xrm: XrmPlan {
                draws: 2,
                steps: 10,
                loss: XrmLoss::ClassBalanced,
                estimator: Default::default(),
                outputs: Default::default(),
            },
            parallelism: Parallelism::Runs,
            sampler: Default::default(),
            step_zero: Default::default(),
            device: Device::Cpu,
        };
        cfg.validate().unwrap();
        let h = cfg.hparams(1).unwrap();
        assert_eq!(h, cfg.hparams(1).unwrap());
        assert_ne!(h, cfg.hparams(0).unwrap());
        assert_eq!(
            cfg.optimizer_for(&h),
            OptimizerSpec::Sgd {
                lr: h.lr as f32,
                momentum: 0.9,
                weight_decay: h.weight_decay as f32
            }
        );
        assert_eq!(
            MethodKind::Jtt.method(&h, 1001),
            Method::Jtt {
                first_stage_steps: h.jtt_steps(1001),
                lambda_up: h.jtt_lambda as f32
            }
        );
        assert_eq!(MethodKind::Mat.method(&h, 5), Method::Mat { tau: h.tau });
        let mut bad = cfg.clone();
        bad.seeds = vec![3, 3];
        assert!(bad.validate().is_err());
        bad.seeds.clear();
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.draws = 0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn table_criteria_leave_out_unannotated_selection_for_group_methods() {
        assert_eq!(
            MethodKind::GroupDro.table_criteria(),
            vec![Criterion::VaWga]
        );
        assert_eq!(
            MethodKind::Mat.table_criteria(),
            vec![Criterion::VaWga, Criterion::VaGiWga]
        );
    }
}
