//! Sweeps on a cluster: `sweep … --plan DIR` and `table1 … --plan DIR` write the sweep as a
//! plan of jobs instead of running it, and `memaware job` runs one job of it.
//!
//! `DIR/plan.json` holds the command's arguments, the folder it was planned from and the
//! number of jobs of each phase ([`crate::algo::sweep::Phase`], then `finish`, one job that
//! writes the tables). `DIR/submit.sh` submits each phase to Slurm as one `sbatch --array`,
//! each after the previous one succeeded (`--dependency=afterok`), passing its own arguments
//! (`--partition`, `--time`, `--cpus-per-task`, `--gres`, …) to every `sbatch`. A job writes
//! exactly the files a local run writes, so once `finish` has run the output folder is the
//! one `sweep`/`table1` would have written (timings aside), and `report` reads it as usual.
//!
//! Planning loads the data and writes each data set's manifest, so a bad flag or file fails
//! before anything is submitted; `--overwrite` acts then and never in a job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{sweep, table1};
use crate::algo::sweep::{phase_jobs, Phase, Scope};
use crate::error::{Error, Result};
use crate::io::{read_json, write_json, write_text};
use crate::repro::table1::{prepare_table1, table1_jobs};

const FORMAT: &str = "memaware-plan-v1";
/// File names inside a plan's folder.
pub const PLAN_FILE: &str = "plan.json";
pub const SUBMIT_FILE: &str = "submit.sh";
/// The name of the last phase, which writes the tables from the recorded runs.
pub const FINISH: &str = "finish";

/// The planned command, with its arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Sweep(sweep::Args),
    Table1(table1::Args),
}

/// One phase of the plan and its number of jobs (array indices `0..jobs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseJobs {
    pub name: String,
    pub jobs: usize,
}

/// `plan.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    /// Jobs refuse a plan written by another version (run digests would differ).
    pub crate_version: String,
    /// The folder the command was planned from: jobs run there, so relative paths in the
    /// arguments mean what they meant.
    pub cwd: PathBuf,
    /// The binary that wrote the plan (what `submit.sh` runs unless `MEMAWARE` is set).
    pub binary: PathBuf,
    pub command: Command,
    /// The phases with at least one job, in order, `finish` last.
    pub phases: Vec<PhaseJobs>,
}

impl Plan {
    /// Reads `dir/plan.json`, checking its format and version.
    pub fn load(dir: &Path) -> Result<Plan> {
        let path = dir.join(PLAN_FILE);
        let plan: Plan = read_json(&path)?;
        if plan.format != FORMAT {
            return Err(Error::Data(format!(
                "{}: format `{}`, expected `{FORMAT}`",
                path.display(),
                plan.format
            )));
        }
        if plan.crate_version != env!("CARGO_PKG_VERSION") {
            return Err(Error::Data(format!(
                "{} was planned by memaware {}, this is {}: plan it again with this binary",
                path.display(),
                plan.crate_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(plan)
    }

    /// The scope of job `index` of the phase named `phase`.
    pub fn scope(&self, phase: &str, index: Option<usize>) -> Result<Scope> {
        let Some(p) = self.phases.iter().find(|p| p.name == phase) else {
            let names: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::arg(
                "phase",
                format!(
                    "this plan has no phase `{phase}`; its phases: {}",
                    names.join(", ")
                ),
            ));
        };
        if phase == FINISH {
            return Ok(Scope::Finish);
        }
        let index = index.ok_or_else(|| {
            Error::arg(
                "index",
                format!(
                    "phase `{phase}` has {} jobs: give --index (or run it as a Slurm array \
                     task, which sets SLURM_ARRAY_TASK_ID)",
                    p.jobs
                ),
            )
        })?;
        if index >= p.jobs {
            return Err(Error::arg(
                "index",
                format!(
                    "phase `{phase}` has {} jobs (indices 0 to {}); {index} is past the end",
                    p.jobs,
                    p.jobs - 1
                ),
            ));
        }
        Ok(Scope::Job {
            phase: phase.parse::<Phase>()?,
            index,
        })
    }
}

/// Plans `command` into `dir` (see the module docs) and prints what to run next.
pub fn write(dir: &Path, command: Command) -> Result<()> {
    let jobs = match &command {
        Command::Sweep(a) => {
            let planned = sweep::planned(a)?;
            sweep::prepare(&planned, a.overwrite)?;
            phase_jobs(&planned.plans, &planned.cfg)
        }
        Command::Table1(a) => {
            let cfg = table1::config(a)?;
            prepare_table1(&cfg)?;
            table1_jobs(&cfg)
        }
    };
    // `--overwrite` has acted on the folders; in a job it would remove its neighbours' runs.
    let command = match command {
        Command::Sweep(a) => Command::Sweep(sweep::Args {
            overwrite: false,
            ..a
        }),
        Command::Table1(a) => Command::Table1(table1::Args {
            overwrite: false,
            ..a
        }),
    };
    let mut phases: Vec<PhaseJobs> = Phase::ALL
        .iter()
        .zip(jobs)
        .filter(|(_, n)| *n > 0)
        .map(|(p, jobs)| PhaseJobs {
            name: p.name().to_string(),
            jobs,
        })
        .collect();
    phases.push(PhaseJobs {
        name: FINISH.to_string(),
        jobs: 1,
    });
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
    let binary = std::env::current_exe().map_err(|e| Error::io(Path::new("memaware"), e))?;
    let plan = Plan {
        format: FORMAT.into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        cwd,
        binary,
        command,
        phases,
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    write_json(&dir.join(PLAN_FILE), &plan)?;
    let script = dir.join(SUBMIT_FILE);
    write_text(&script, &submit_script(&plan))?;
    make_executable(&script)?;
    println!("planned {} in {}:", plan_name(&plan.command), dir.display());
    for p in &plan.phases {
        println!("  {:<10} {:>5} job(s)", p.name, p.jobs);
    }
    println!(
        "submit with `{} [sbatch options]`, or run each job with `memaware job --plan {} \
         --phase NAME --index I`",
        script.display(),
        dir.display()
    );
    Ok(())
}

fn plan_name(c: &Command) -> &'static str {
    match c {
        Command::Sweep(_) => "a sweep",
        Command::Table1(_) => "Table 1",
    }
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<()> {
    Ok(())
}

/// `s` quoted for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The Slurm submission script of `plan`: one array per phase, chained with `afterok`.
fn submit_script(plan: &Plan) -> String {
    let mut s = format!(
        r#"#!/usr/bin/env bash
# Submits the memaware plan in this folder to Slurm: one job array per phase, each phase
# after every job of the one before succeeded. Arguments go to every sbatch, e.g.
#   ./submit.sh --partition=cpu --time=01:00:00 --cpus-per-task=2 [--gres=gpu:1]
# MEMAWARE overrides the binary; logs go to logs/ here.
set -euo pipefail
plan_dir="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
memaware=${{MEMAWARE:-}}
[ -n "$memaware" ] || memaware={binary}
mkdir -p "$plan_dir/logs"
dependency=()
submit() {{
    local phase=$1 jobs=$2 id
    shift 2
    id=$(sbatch --parsable --job-name="memaware-$phase" --array="0-$((jobs - 1))" \
        --chdir={cwd} --output="$plan_dir/logs/$phase-%a.out" --kill-on-invalid-dep=yes \
        "${{dependency[@]}}" "$@" \
        --wrap="$(printf '%q ' "$memaware" job --plan "$plan_dir" --phase "$phase")")
    id=${{id%%;*}}
    dependency=(--dependency="afterok:$id")
    echo "$phase: $jobs job(s), Slurm job $id"
}}
"#,
        binary = sh_quote(&plan.binary.to_string_lossy()),
        cwd = sh_quote(&plan.cwd.to_string_lossy()),
    );
    for p in &plan.phases {
        s.push_str(&format!("submit {} {} \"$@\"\n", p.name, p.jobs));
    }
    s
}

/// Arguments of `memaware job`.
#[derive(clap::Args, Debug, Clone)]
pub struct JobArgs {
    /// The folder `sweep --plan` or `table1 --plan` wrote.
    #[arg(long, value_name = "DIR")]
    pub plan: PathBuf,
    /// The phase: one of the plan's (xrm-draws, xrm-seeds, draws, reruns), or `finish`.
    #[arg(long)]
    pub phase: String,
    /// The job's index in its phase [default: $SLURM_ARRAY_TASK_ID].
    #[arg(long)]
    pub index: Option<usize>,
}

/// Runs one job of a plan: the runs of earlier phases must be recorded; a job whose run is
/// already recorded finishes at once.
pub fn run_job(args: &JobArgs) -> Result<()> {
    let plan = Plan::load(&args.plan)?;
    let index = match args.index {
        Some(i) => Some(i),
        None => match std::env::var("SLURM_ARRAY_TASK_ID") {
            Ok(v) => Some(v.trim().parse::<usize>().map_err(|_| {
                Error::arg(
                    "index",
                    format!("SLURM_ARRAY_TASK_ID is `{v}`, not a job index"),
                )
            })?),
            Err(_) => None,
        },
    };
    let scope = plan.scope(&args.phase, index)?;
    std::env::set_current_dir(&plan.cwd).map_err(|e| Error::io(&plan.cwd, e))?;
    match &plan.command {
        Command::Sweep(a) => sweep::run_scoped(a, scope),
        Command::Table1(a) => table1::run_scoped(a, scope),
    }
}
