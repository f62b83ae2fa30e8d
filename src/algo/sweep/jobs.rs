//! A sweep as jobs: the phases of the protocol and which part of them one call runs, so a
//! cluster can run every run of a phase as its own job (a Slurm job array per phase, each
//! phase after the previous one succeeded) and end with the files a local sweep writes.
//!
//! | phase | jobs | needs |
//! |---|---|---|
//! | [`Phase::XrmDraws`] | XRM's draws at `s_0` | – |
//! | [`Phase::XrmSeeds`] | the chosen XRM draw at `s_1 … s_{S-1}` | every XRM draw |
//! | [`Phase::Draws`] | every method × draw at `s_0` | XRM's outputs |
//! | [`Phase::Reruns`] | each criterion's winner at `s_1 … s_{S-1}` | every draw |
//!
//! Job `i` of a phase is the `i`-th run of that phase in the order a local sweep lists them,
//! so a job needs nothing but the records of the phases before it. How many reruns a phase
//! has depends on which draws win, which is known only after the draws; [`phase_jobs`] gives
//! the most there can be, and a rerun job past the real count has nothing to do.
//!
//! A job is idempotent: a run whose record is finished with the same digest is kept (see
//! the resume rules of [`super::run_sweeps`]); records are written atomically, and two jobs
//! never write the same file (the manifest is written when the sweep is planned, the
//! summaries only by [`Scope::Finish`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{MethodKind, MethodPlan, SweepConfig, XrmOutputs};
use crate::error::{Error, Result};
use crate::eval::selection::Criterion;

/// A phase of the protocol (see the module docs), in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    XrmDraws,
    XrmSeeds,
    Draws,
    Reruns,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::XrmDraws,
        Phase::XrmSeeds,
        Phase::Draws,
        Phase::Reruns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::XrmDraws => "xrm-draws",
            Phase::XrmSeeds => "xrm-seeds",
            Phase::Draws => "draws",
            Phase::Reruns => "reruns",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
                Error::arg(
                    "phase",
                    format!("unknown phase `{s}`; expected one of {}", names.join(", ")),
                )
            })
    }
}

/// Which part of a sweep one call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every run that has no finished record, then the selections and summaries: a local
    /// sweep.
    All,
    /// Job `index` of `phase` and nothing else; every run of the phases before it must have
    /// a finished record.
    Job { phase: Phase, index: usize },
    /// Nothing is trained: every run must have a finished record; writes the selections and
    /// summaries (the last job of a planned sweep).
    Finish,
}

/// What a call does with the runs of one phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Train every run without a finished record.
    Run,
    /// Read every run's finished record; a missing one is an error.
    Load,
    /// Train only job `i` of the phase, then stop.
    Only(usize),
}

impl Scope {
    /// The role of `phase`. Phases after a job's own are never reached: the sweep stops
    /// after its job.
    pub(super) fn role(self, phase: Phase) -> Role {
        match self {
            Scope::All => Role::Run,
            Scope::Finish => Role::Load,
            Scope::Job { phase: p, index } if p == phase => Role::Only(index),
            Scope::Job { .. } => Role::Load,
        }
    }

    /// Whether this call writes the phase summaries (`xrm_phase.json`, `sweep.json`), which
    /// concurrent jobs must not.
    pub(super) fn writes_summaries(self) -> bool {
        !matches!(self, Scope::Job { .. })
    }
}

/// Whether a sweep of `plans` runs XRM's phase: a method needs its output, or a criterion
/// reads the groups it infers.
pub fn needs_xrm(plans: &[MethodPlan]) -> bool {
    plans.iter().any(reads_xrm)
}

fn reads_xrm(p: &MethodPlan) -> bool {
    p.kind.needs_xrm() || p.criteria.contains(&Criterion::VaGiWga)
}

/// Whether XRM's chosen draw is rerun at the other seeds: a run there reads its own seed's
/// output (every method but MAT under [`XrmOutputs::First`], every one otherwise).
pub fn xrm_reruns(plans: &[MethodPlan], cfg: &SweepConfig) -> bool {
    plans
        .iter()
        .filter(|p| reads_xrm(p))
        .any(|p| cfg.xrm.outputs == XrmOutputs::PerSeed || p.kind != MethodKind::Mat)
}

/// The number of jobs of each phase of [`Phase::ALL`] for a sweep of `plans` with `cfg`; for
/// [`Phase::Reruns`] the most there can be (every criterion of a method choosing another
/// draw).
pub fn phase_jobs(plans: &[MethodPlan], cfg: &SweepConfig) -> [usize; 4] {
    let other_seeds = cfg.seeds.len().saturating_sub(1);
    let (xrm_draws, xrm_seeds) = if needs_xrm(plans) {
        let reruns = if xrm_reruns(plans, cfg) {
            other_seeds
        } else {
            0
        };
        (cfg.xrm.draws, reruns)
    } else {
        (0, 0)
    };
    let winners: usize = plans
        .iter()
        .map(|p| {
            let c = &p.criteria;
            let distinct = (0..c.len()).filter(|&i| !c[..i].contains(&c[i])).count();
            distinct.min(cfg.draws)
        })
        .sum();
    [
        xrm_draws,
        xrm_seeds,
        plans.len() * cfg.draws,
        winners * other_seeds,
    ]
}
