//! `memaware report`: summarises recorded runs into one Markdown + JSON table.
//!
//! Each folder given is searched recursively for
//! - `sweep.json` (written by `memaware sweep` and `memaware table1`): the selection is applied
//!   again to the sweep's recorded `checkpoints.jsonl` files ([`reselect`]), under `--select`
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

use crate::algo::sweep::{
    reselect, MethodKind, Selection, SweepOutcome, CHECKPOINTS_FILE, SWEEP_FILE,
};
use crate::error::{Error, Result};
use crate::eval::selection::{select_checkpoint, Checkpoint, Criterion, TableCell};
use crate::io::{read_jsonl, write_json, write_text};
use crate::report::table::ResultsTable;

/// Arguments of `memaware report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Folders to search (recursively) for sweep.json files and run folders.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Criteria to apply to the recorded checkpoints, comma-separated: va_wga, va_gi_wga,
    /// va_avg [default: the criteria each sweep used; va_wga for single runs].
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// Folder for report.md and report.json [default: the first DIR].
    #[arg(long)]
    pub out: Option<PathBuf>,
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
}

impl Report {
    /// The table and its notes in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = self.table.to_markdown();
        md.push_str(
            "\nTest accuracy (%), mean ± sample std over seeds; Avg is the plain test accuracy.\n",
        );
        if !self.notes.is_empty() {
            md.push_str("\nNotes:\n");
            for n in &self.notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        md
    }
}

/// Sweep files and stand-alone run folders under `dir`, in sorted order. A folder with a
/// `sweep.json` is not searched further: its runs belong to the sweep.
fn discover(dir: &Path, sweeps: &mut Vec<PathBuf>, runs: &mut Vec<PathBuf>) -> Result<()> {
    if dir.join(SWEEP_FILE).is_file() {
        sweeps.push(dir.join(SWEEP_FILE));
        return Ok(());
    }
    if dir.join(CHECKPOINTS_FILE).is_file() {
        runs.push(dir.to_path_buf());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    children.sort();
    for c in children {
        if c.is_dir() {
            discover(&c, sweeps, runs)?;
        }
    }
    Ok(())
}

/// A string field of `summary.json` at `config.<key>`, if any.
fn summary_field(run_dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("summary.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("config")?.get(key)?.as_str().map(str::to_string)
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

/// Builds the report over `dirs` (see the module docs); `criteria` empty means the recorded
/// ones.
pub fn build_report(dirs: &[PathBuf], criteria: &[Criterion]) -> Result<Report> {
    let mut sweeps = Vec::new();
    let mut runs = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(Error::arg(
                "dirs",
                format!("`{}` is not a folder", d.display()),
            ));
        }
        discover(d, &mut sweeps, &mut runs)?;
    }
    if sweeps.is_empty() && runs.is_empty() {
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
    for path in &sweeps {
        let sweep = SweepOutcome::load(path)?;
        let sweep_dir = path.parent().unwrap_or(Path::new("."));
        let wanted: Vec<Criterion> = if criteria.is_empty() {
            sweep.selections.iter().map(|s| s.criterion).collect()
        } else {
            criteria.to_vec()
        };
        for sel in reselect(&sweep, sweep_dir, &wanted)? {
            let row = format!("{} ({})", sweep.method.label(), sel.criterion);
            if !sel.missing_seeds.is_empty() {
                notes.push(format!(
                    "{row} on {}: draw {} was not run at seeds {:?}; the cell covers {} seed(s) \
                     (run `memaware sweep --select {}` for all)",
                    sweep.dataset,
                    sel.winner,
                    sel.missing_seeds,
                    sel.seeds.len(),
                    sel.criterion
                ));
            }
            grid.put(&sweep.dataset, row.clone(), sel.cell.clone(), path);
            entries.push(ReportEntry {
                source: path.clone(),
                dataset: sweep.dataset.clone(),
                row,
                criterion: sel.criterion,
                cell: sel.cell.clone(),
                selection: Some(sel),
            });
        }
    }
    for dir in &runs {
        let cps: Vec<Checkpoint> = read_jsonl(dir.join(CHECKPOINTS_FILE))?;
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let method = summary_field(dir, "method")
            .map(|m| m.parse::<MethodKind>().map_or(m, |k| k.label().to_string()))
            .unwrap_or_else(|| "run".into());
        let dataset = summary_field(dir, "data_name").unwrap_or_else(|| "runs".into());
        let wanted: Vec<Criterion> = if criteria.is_empty() {
            vec![Criterion::VaWga]
        } else {
            criteria.to_vec()
        };
        for c in wanted {
            match select_checkpoint(&cps, c) {
                Ok((i, _)) => {
                    let cell = TableCell::from_seeds(std::slice::from_ref(&cps[i].te))?;
                    let row = format!("{method} ({c}) [{folder}]");
                    grid.put(&dataset, row.clone(), cell.clone(), dir);
                    entries.push(ReportEntry {
                        source: dir.clone(),
                        dataset: dataset.clone(),
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
    })
}

pub fn run(args: &Args) -> Result<()> {
    let criteria: Vec<Criterion> = args
        .select
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_>>()?;
    let report = build_report(&args.dirs, &criteria)?;
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
