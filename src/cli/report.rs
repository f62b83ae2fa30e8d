//! `memaware report`: summarises recorded runs into one Markdown + JSON table.
//!
//! Each folder given is searched recursively for
//! - `sweep.json` (written by `memaware sweep` and `memaware table1`): the selection is applied
//!   again to the sweep's recorded `checkpoints.jsonl` files ([`crate::algo::sweep::reselect`]), under `--select`
//!   or, without it, under the criteria the sweep used; one row per method and criterion;
//! - run folders holding `checkpoints.jsonl` outside any sweep (`memaware train` writes them
//!   with a `summary.json`): the selected checkpoint of that single run (one seed, so no
//!   spread), in a row labelled with the method (from `summary.json`) and the folder name.
//!
//! Columns are data sets, in the order found; cells are test accuracy, mean ± sample std over
//! seeds. A criterion whose winning draw was never rerun at every seed (possible when it was
//! not among the sweep's criteria) is reported over the seeds recorded, with a note.
//! Writes `report.md` and `report.json` into `--out` (default: the first folder) and prints
//! the Markdown.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::train::SUMMARY_FILE;
use crate::algo::sweep::{
    reselect_recorded_with, MethodKind, RunRecord, RunStatus, Selection, SweepOutcome,
    CHECKPOINTS_FILE, RUN_FILE, SWEEP_FILE,
};
use crate::algo::xrm::XRM_JSON_FILE;
use crate::error::{Error, Result};
use crate::eval::selection::{
    select_checkpoint_with, Checkpoint, Criterion, Spread, StepZero, TableCell,
};
use crate::io::{read_json, read_jsonl_lenient, write_json, write_text};
use crate::report::table::ResultsTable;

/// Arguments of `memaware report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Folders to search (recursively) for sweep.json files and run folders.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Criteria to apply to the recorded checkpoints, comma-separated: va_wga, va_gi_wga,
    /// va_avg, va_wca (worst class) [default: the criteria each sweep used; va_wga for single runs].
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Folder for report.md and report.json [default: the first DIR].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Let interrupted runs, and runs with damaged checkpoint lines, into the cells with the
    /// checkpoints that read back (they are still listed). Failed runs stay out.
    #[arg(long)]
    pub include_incomplete: bool,
    /// Whether a step-0 checkpoint may be selected: `drop` (the official rule) or `keep`
    /// [default: the rule each sweep ran with; drop for single runs].
    #[arg(long, value_name = "RULE")]
    pub step_zero: Option<StepZero>,
    /// The ± of the table: `sample` std (n − 1) or `population` std (n, as the official
    /// tables).
    #[arg(long, value_name = "STD", default_value = "sample")]
    pub spread: Spread,
}

/// How [`build_report_with`] selects and summarises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportOptions {
    pub include_incomplete: bool,
    /// The step-0 rule; `None`: each sweep's own, [`StepZero::Drop`] for single runs.
    pub step_zero: Option<StepZero>,
    pub spread: Spread,
}

/// One row × column entry of the report and where it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportEntry {
    /// The sweep.json or run folder it was read from.
    pub source: PathBuf,
    pub dataset: String,
    pub row: String,
    pub criterion: Criterion,
    /// The selection (sweeps only).
    pub selection: Option<Selection>,
    pub cell: TableCell,
}

/// What `report.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub table: ResultsTable,
    pub entries: Vec<ReportEntry>,
    /// Caveats: seeds missing from a re-applied criterion, runs that could not be selected.
    pub notes: Vec<String>,
    /// Runs that are not complete (interrupted, failed, damaged), and whether each was left
    /// out of the cells.
    pub excluded: Vec<Excluded>,
    /// Files and lines that could not be read.
    pub damaged: Vec<Damaged>,
    /// The spread of the table's cells (left out of files when it is the sample std).
    #[serde(default, skip_serializing_if = "is_sample")]
    pub spread: Spread,
}

fn is_sample(s: &Spread) -> bool {
    *s == Spread::Sample
}

/// A run that is not complete.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Excluded {
    /// Its folder (or file).
    pub source: PathBuf,
    pub reason: String,
    /// Left out of the cells (false when `--include-incomplete` let it in).
    pub excluded: bool,
}

/// A file, or one line of it, that could not be read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Damaged {
    pub path: PathBuf,
    /// 1-based line number, for JSON-lines files.
    pub line: Option<usize>,
    pub problem: String,
}

impl Report {
    /// The table and its notes in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = self.table.to_markdown();
        md.push_str(&format!(
            "\nTest accuracy (%), mean ± {} std over seeds; Avg is the plain test accuracy.\n",
            self.spread
        ));
        if !self.notes.is_empty() {
            md.push_str("\nNotes:\n");
            for n in &self.notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        if !self.excluded.is_empty() {
            md.push_str("\nRuns that are not complete:\n");
            for e in &self.excluded {
                md.push_str(&format!(
                    "- {}: {}{}\n",
                    e.source.display(),
                    e.reason,
                    if e.excluded {
                        " (left out)"
                    } else {
                        " (included: --include-incomplete)"
                    }
                ));
            }
        }
        if !self.damaged.is_empty() {
            md.push_str("\nDamaged files:\n");
            for d in &self.damaged {
                let place = d.line.map_or(String::new(), |l| format!(", line {l}"));
                let path = d.path.display().to_string();
                let problem = d
                    .problem
                    .strip_prefix(&format!("{path}: "))
                    .unwrap_or(&d.problem);
                md.push_str(&format!("- {path}{place}: {problem}\n"));
            }
        }
        md
    }
}

/// What the search of the folders found.
#[derive(Default)]
struct Found {
    /// `sweep.json` files that load, with their contents.
    sweeps: Vec<(PathBuf, SweepOutcome)>,
    /// Run folders outside any readable sweep.
    runs: Vec<PathBuf>,
    damaged: Vec<Damaged>,
}

/// Sweep files and stand-alone run folders under `dir`, in sorted order. A folder with a
/// readable `sweep.json` is not searched further: its runs belong to the sweep; a damaged
/// `sweep.json` is reported and its run folders are read one by one. A run folder holds
/// `checkpoints.jsonl`, `summary.json` (`memaware train`) or a sweep run's `run.json`; XRM's
/// folders (with `xrm.json`) are not runs.
fn discover(dir: &Path, found: &mut Found) -> Result<()> {
    let sweep_file = dir.join(SWEEP_FILE);
    if sweep_file.is_file() {
        match SweepOutcome::load(&sweep_file) {
            Ok(s) => {
                found.sweeps.push((sweep_file, s));
                return Ok(());
            }
            Err(e) => found.damaged.push(Damaged {
                path: sweep_file,
                line: None,
                problem: e.to_string(),
            }),
        }
    }
    let is_run = !dir.join(XRM_JSON_FILE).exists()
        && (dir.join(CHECKPOINTS_FILE).is_file()
            || dir.join(SUMMARY_FILE).is_file()
            || dir.join(RUN_FILE).is_file());
    if is_run {
        found.runs.push(dir.to_path_buf());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    children.sort();
    for c in children {
        if c.is_dir() {
            discover(&c, found)?;
        }
    }
    Ok(())
}

struct Grid {
    datasets: Vec<String>,
    rows: Vec<(String, Vec<Option<TableCell>>)>,
}

impl Grid {
    fn put(&mut self, dataset: &str, row: String, cell: TableCell, source: &Path) {
        let col = match self.datasets.iter().position(|d| d == dataset) {
            Some(c) => c,
            None => {
                self.datasets.push(dataset.to_string());
                for (_, cells) in &mut self.rows {
                    cells.push(None);
                }
                self.datasets.len() - 1
            }
        };
        let width = self.datasets.len();
        // A second result for the same row and column keeps both, the later one labelled by
        // its source.
        let label = match self.rows.iter().find(|(r, _)| *r == row) {
            Some((_, cells)) if cells[col].is_some() => format!("{row} [{}]", source.display()),
            _ => row,
        };
        let index = match self.rows.iter().position(|(r, _)| *r == label) {
            Some(i) => i,
            None => {
                self.rows.push((label, vec![None; width]));
                self.rows.len() - 1
            }
        };
        self.rows[index].1[col] = Some(cell);
    }
}

/// What a stand-alone run folder says about itself.
struct RunInfo {
    method: String,
    dataset: String,
    /// Why the run is not complete, if it is not (or cannot be told).
    incomplete: Option<String>,
    /// Checkpoints its record counts, when it says.
    checkpoints: Option<usize>,
}

/// Reads `summary.json` (`memaware train`) or `run.json` (a sweep run) of `dir`; damaged
/// files go to `damaged`.
fn run_info(dir: &Path, damaged: &mut Vec<Damaged>) -> RunInfo {
    let mut info = RunInfo {
        method: "run".into(),
        dataset: "runs".into(),
        incomplete: None,
        checkpoints: None,
    };
    let summary = dir.join(SUMMARY_FILE);
    let record = dir.join(RUN_FILE);
    if summary.is_file() {
        match read_json::<serde_json::Value>(&summary) {
            Ok(v) => {
                let config = v.get("config");
                let field = |k: &str| config.and_then(|c| c.get(k)).and_then(|m| m.as_str());
                if let Some(m) = field("method") {
                    info.method = m
                        .parse::<MethodKind>()
                        .map_or(m.to_string(), |k| k.label().to_string());
                }
                if let Some(d) = field("data_name") {
                    info.dataset = d.to_string();
                }
                let complete = v.get("complete").and_then(|c| c.as_bool()) == Some(true);
                let status = v.get("status").and_then(|s| s.as_str());
                let error = v.get("error").and_then(|e| e.as_str());
                info.checkpoints = v
                    .get("n_checkpoints")
                    .and_then(|n| n.as_u64())
                    .map(|n| n as usize);
                if !complete {
                    info.incomplete = Some(match (status, error) {
                        (_, Some(e)) => format!("failed: {e}"),
                        (Some("failed"), None) => "failed".into(),
                        _ => "interrupted (summary.json says it is not complete)".into(),
                    });
                }
            }
            Err(e) => {
                damaged.push(Damaged {
                    path: summary.clone(),
                    line: None,
                    problem: e.to_string(),
                });
                info.incomplete =
                    Some("summary.json is damaged: cannot tell whether it finished".into());
            }
        }
    } else if record.is_file() {
        match read_json::<RunRecord>(&record) {
            Ok(r) => {
                info.method = r.kind.label().to_string();
                info.dataset = r.dataset.clone();
                info.checkpoints = (r.status == RunStatus::Complete).then_some(r.checkpoints);
                info.incomplete = match (r.status, &r.error) {
                    (RunStatus::Complete, None) => None,
                    (_, Some(e)) => Some(format!("failed: {e}")),
                    (s, None) => Some(s.describe().to_string()),
                };
            }
            Err(e) => {
                damaged.push(Damaged {
                    path: record.clone(),
                    line: None,
                    problem: e.to_string(),
                });
                info.incomplete =
                    Some("run.json is damaged: cannot tell whether it finished".into());
            }
        }
    } else {
        info.incomplete = Some(format!(
            "no {SUMMARY_FILE} or {RUN_FILE}: cannot tell whether it finished"
        ));
    }
    info
}

/// Builds the report over `dirs` (see the module docs); `criteria` empty means the recorded
/// ones. Interrupted, failed and damaged runs are left out of the cells and listed, unless
/// `include_incomplete`, which lets interrupted or damaged runs take part with the
/// checkpoints that read back (still listed). Damaged files and lines are listed by name.
///
/// Errors: a folder that does not exist or cannot be listed, nothing to report, a criterion
/// that does not parse.
pub fn build_report(
    dirs: &[PathBuf],
    criteria: &[Criterion],
    include_incomplete: bool,
) -> Result<Report> {
    let options = ReportOptions {
        include_incomplete,
        ..ReportOptions::default()
    };
    build_report_with(dirs, criteria, &options)
}

/// [`build_report`] with a step-0 rule and a spread.
pub fn build_report_with(
    dirs: &[PathBuf],
    criteria: &[Criterion],
    options: &ReportOptions,
) -> Result<Report> {
    let include_incomplete = options.include_incomplete;
    let spread = options.spread;
    let mut found = Found::default();
    for d in dirs {
        if !d.is_dir() {
            return Err(Error::arg(
                "dirs",
                format!("`{}` is not a folder", d.display()),
            ));
        }
        discover(d, &mut found)?;
    }
    if found.sweeps.is_empty() && found.runs.is_empty() && found.damaged.is_empty() {
        return Err(Error::Data(format!(
            "no {SWEEP_FILE} and no run folder with {CHECKPOINTS_FILE} under {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut grid = Grid {
        datasets: Vec::new(),
        rows: Vec::new(),
    };
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    let mut excluded = Vec::new();
    let mut damaged = std::mem::take(&mut found.damaged);
    for (path, sweep) in &found.sweeps {
        let sweep_dir = path.parent().unwrap_or(Path::new("."));
        let wanted: Vec<Criterion> = if criteria.is_empty() {
            sweep.selections.iter().map(|s| s.criterion).collect()
        } else {
            criteria.to_vec()
        };
        let step_zero = options.step_zero.unwrap_or(sweep.config.step_zero);
        let (selections, issues) =
            reselect_recorded_with(sweep, sweep_dir, &wanted, include_incomplete, step_zero);
        for issue in issues {
            if issue.problem.starts_with("damaged") || issue.line.is_some() {
                damaged.push(Damaged {
                    path: issue.path.clone(),
                    line: issue.line,
                    problem: issue.problem.clone(),
                });
            }
            excluded.push(Excluded {
                source: issue.path,
                reason: issue.problem,
                excluded: issue.excluded,
            });
        }
        for (c, sel) in selections {
            let row = format!("{} ({c})", sweep.method.label());
            let sel = match sel {
                Ok(sel) => sel,
                Err(e) => {
                    notes.push(format!("{row} on {}: no cell: {e}", sweep.dataset));
                    continue;
                }
            };
            if !sel.missing_seeds.is_empty() {
                notes.push(format!(
                    "{row} on {}: draw {} has no usable run at seeds {:?}; the cell covers {} \
                     seed(s) (run `memaware sweep --select {}` for all, or rerun the sweep to \
                     complete interrupted runs)",
                    sweep.dataset,
                    sel.winner,
                    sel.missing_seeds,
                    sel.seeds.len(),
                    sel.criterion
                ));
            }
            grid.put(
                &sweep.dataset,
                row.clone(),
                sel.cell.with_spread(spread),
                path,
            );
            entries.push(ReportEntry {
                source: path.clone(),
                dataset: sweep.dataset.clone(),
                row,
                criterion: sel.criterion,
                cell: sel.cell.with_spread(spread),
                selection: Some(sel),
            });
        }
    }
    for dir in &found.runs {
        let info = run_info(dir, &mut damaged);
        let cp_file = dir.join(CHECKPOINTS_FILE);
        let (cps, bad): (Vec<Checkpoint>, _) = match read_jsonl_lenient(&cp_file) {
            Ok(r) => r,
            Err(e) => {
                excluded.push(Excluded {
                    source: dir.clone(),
                    reason: match &info.incomplete {
                        Some(why) => why.clone(),
                        None => format!("no checkpoints: {e}"),
                    },
                    excluded: true,
                });
                continue;
            }
        };
        for b in &bad {
            damaged.push(Damaged {
                path: cp_file.clone(),
                line: Some(b.line),
                problem: b.problem.clone(),
            });
        }
        let mut why: Vec<String> = info.incomplete.iter().cloned().collect();
        if !bad.is_empty() {
            why.push(format!(
                "{} damaged line(s) in {CHECKPOINTS_FILE}",
                bad.len()
            ));
        }
        if let Some(n) = info.checkpoints.filter(|&n| cps.len() < n) {
            why.push(format!(
                "{} of the {n} checkpoints recorded read back from {CHECKPOINTS_FILE}",
                cps.len()
            ));
        }
        let usable = include_incomplete && !cps.is_empty();
        let leave_out = !why.is_empty() && !usable;
        if !why.is_empty() {
            excluded.push(Excluded {
                source: dir.clone(),
                reason: why.join("; "),
                excluded: leave_out,
            });
        }
        if leave_out {
            continue;
        }
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let wanted: Vec<Criterion> = if criteria.is_empty() {
            vec![Criterion::VaWga]
        } else {
            criteria.to_vec()
        };
        for c in wanted {
            match select_checkpoint_with(&cps, c, options.step_zero.unwrap_or_default()) {
                Ok((i, _)) => {
                    let cell = TableCell::from_seeds(std::slice::from_ref(&cps[i].te))?;
                    let row = format!("{} ({c}) [{folder}]", info.method);
                    grid.put(&info.dataset, row.clone(), cell.clone(), dir);
                    entries.push(ReportEntry {
                        source: dir.clone(),
                        dataset: info.dataset.clone(),
                        row,
                        criterion: c,
                        selection: None,
                        cell,
                    });
                }
                Err(e) => notes.push(format!("{}: not selected by {c}: {e}", dir.display())),
            }
        }
    }
    let mut table = ResultsTable::new(grid.datasets);
    for (row, cells) in grid.rows {
        table.push_row(row, cells)?;
    }
    Ok(Report {
        table,
        entries,
        notes,
        excluded,
        damaged,
        spread,
    })
}

pub fn run(args: &Args) -> Result<()> {
    let criteria: Vec<Criterion> = args
        .select
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_>>()?;
    let options = ReportOptions {
        include_incomplete: args.include_incomplete,
        step_zero: args.step_zero,
        spread: args.spread,
    };
    let report = build_report_with(&args.dirs, &criteria, &options)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => args
            .dirs
            .first()
            .cloned()
            .ok_or_else(|| Error::arg("dirs", "name at least one folder"))?,
    };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let md = report.to_markdown();
    write_text(&out.join("report.md"), &md)?;
    write_json(&out.join("report.json"), &report)?;
    println!("{md}");
    println!(
        "wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    Ok(())
}
