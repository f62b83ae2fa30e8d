//! The paper's Table 1 offline: every method on ColorMNIST (real digits) and on
//! Waterbirds-shaped features, plus any user feature file, each selected with and without
//! validation group annotations (PAPER.md §4–§6).
//!
//! # Data sets and presets ([`crate::recipes::preset_sweep`])
//!
//! | | ColorMNIST ([`crate::recipes::Family::ColorMnist`]) | Waterbirds-like and feature files ([`crate::recipes::Family::Features`]) |
//! |---|---|---|
//! | data | the bundled 5000-digit MNIST sample, XRM's recipe, 2500 / 1250 / 1250 | 2048-d synthetic features, Waterbirds' group counts |
//! | model | MLP 392→390→390→2, ReLU, Xavier-uniform weights, zero biases | linear head `d → K` with bias |
//! | optimizer | Adam, L2 weight decay (XRM's ColorMNIST recipe) | SGD, momentum 0.9, L2 weight decay (the paper's Waterbirds recipe) |
//! | lr | `10^U(-5,-3)` | `10^U(-5,-3)` |
//! | batch | `int(2^U(3,6))`, XRM's ColorMNIST range | `int(2^U(5,7))`, the paper's |
//! | weight decay | `10^U(-6,-3)` | `10^U(-6,-3)` |
//! | steps | 1001 (XRM's ColorMNIST) | 1001 (the paper's Waterbirds) |
//!
//! Both: MAT `tau ∈ {0.001, 0.01, 0.1}`, GroupDRO `eta = 10^U(-3,-1)`, JTT's grid of
//! [`crate::eval::selection::HparamSpace::paper`], evaluation every 50 steps, 10 draws, the winner over 5 seeds; XRM
//! with the class-balanced held-in loss, as many steps as the methods, its first 10 draws.
//! `--quick` keeps the model and ranges but runs 201 steps, 2 draws and 2 seeds.
//!
//! On ColorMNIST the training group attribute is the environment (see
//! [`crate::data::colormnist`]), so GroupDRO "with training groups" balances environments, as
//! in XRM; validation and test groups are (label, colour).
//!
//! # The table ([`run_table1`])
//!
//! Columns: average and worst-group test accuracy per data set. Rows: each method under each
//! selection setting it applies to ([`MethodKind::table_criteria`]): `va_wga` (validation
//! group annotations) and `va_gi_wga` (none: XRM-inferred validation groups). Cells: mean ±
//! sample std over the seeds of the winning draw. Average accuracy is the plain accuracy over
//! the test split. Margins ([`Margin`]) compare worst-group accuracies seed by seed (the
//! rows share seeds and XRM outputs), reported as mean ± sample std of the per-seed
//! differences.
//!
//! Files under the output folder: `table1.md` (the table, margins, XRM's verdicts, the
//! settings, the inferred groups' precision and recall), `table1.json` ([`Table1Record`]: the
//! table with per-group accuracies and counts behind every cell, every selection with its per-seed metrics, the margins, timings), and
//! one folder per data set with every run (see [`crate::algo::sweep`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::algo::heldout::inference_quality;
use crate::algo::model::{ModelSpec, OptimizerSpec};
use crate::algo::sweep::{
    data_digest, phase_jobs, prepare_folder, run_sweeps_scoped, Manifest, MethodKind, MethodPlan,
    Phase, Scope, Selection, SweepConfig, SweepOutcome, XrmPhase, XrmPhaseRecord,
};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::selection::{mean_std_with, Criterion, MeanStd, Spread, TableCell};
use crate::io::{write_json, write_text};
use crate::nn::Init;
use crate::progress::ProgressFn;
use crate::report::table::{markdown_table, ResultsTable};

const FORMAT: &str = "memaware-table1-v1";
/// The table's Markdown and JSON file names.
pub const TABLE_MD: &str = "table1.md";
pub const TABLE_JSON: &str = "table1.json";

/// One column of the table.
#[derive(Clone, Debug)]
pub struct Table1Entry {
    /// Column name.
    pub label: String,
    pub dataset: Dataset,
    pub sweep: SweepConfig,
}

/// What [`run_table1`] runs.
#[derive(Clone, Debug)]
pub struct Table1Config {
    pub entries: Vec<Table1Entry>,
    pub methods: Vec<MethodKind>,
    pub out: PathBuf,
    /// Replace sweeps of another configuration found under `out` (see
    /// [`run_sweeps`](crate::algo::sweep::run_sweeps)); without it they are an error, and finished runs of the same
    /// configuration are kept.
    pub overwrite: bool,
    /// Criteria beyond each method's table rows (`va_wga`, and `va_gi_wga` where the method
    /// uses no training groups): each adds a block of rows, one per method.
    pub extra_criteria: Vec<Criterion>,
    /// The spread the table's cells and margins print: sample std (the default) or the
    /// population std of the official tables.
    pub spread: Spread,
}

/// The folder of a column under the output folder: its label, lowercased, with anything but
/// letters, digits and `-` / `_` turned into `-`.
pub fn entry_dir(out: &Path, label: &str) -> PathBuf {
    let slug: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.join(slug)
}

/// A worst-group accuracy comparison between two rows of one data set, seed by seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Margin {
    pub dataset: String,
    /// `a − b`, row labels.
    pub a: String,
    pub b: String,
    /// Seeds both rows have, and `WGA_a − WGA_b` at each.
    pub seeds: Vec<u64>,
    pub per_seed: Vec<f64>,
    /// Mean ± sample std of `per_seed`.
    pub diff: MeanStd,
}

/// A column's data and XRM's verdict, for the record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub label: String,
    pub name: String,
    pub d: usize,
    pub classes: usize,
    /// Examples per group `n_attr · y + a`, per split.
    pub group_counts_tr: Vec<usize>,
    pub group_counts_va: Vec<usize>,
    pub group_counts_te: Vec<usize>,
    pub sweep: SweepConfig,
    pub xrm: Option<XrmPhaseRecord>,
    pub seconds: f64,
}

/// One selection behind a cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellRecord {
    pub dataset: String,
    pub row: String,
    pub method: MethodKind,
    pub selection: Selection,
}

/// What `table1.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Table1Record {
    pub format: String,
    pub table: ResultsTable,
    pub margins: Vec<Margin>,
    pub cells: Vec<CellRecord>,
    pub datasets: Vec<DatasetSummary>,
    pub seconds: f64,
}

/// What [`run_table1`] returns.
#[derive(Clone, Debug)]
pub struct Table1Outcome {
    pub record: Table1Record,
    /// The contents of `table1.md`.
    pub markdown: String,
    /// Per column, every method's sweep.
    pub sweeps: Vec<Vec<SweepOutcome>>,
}

/// Row label of `kind` selected by `c`.
pub fn row_label(kind: MethodKind, c: Criterion) -> String {
    format!("{} ({c})", kind.label())
}

/// The table's rows in order: every criterion block (`va_wga`, then `va_gi_wga`), methods in
/// the given order, each where [`MethodKind::table_criteria`] lists the criterion.
pub fn table_rows(methods: &[MethodKind]) -> Vec<(MethodKind, Criterion)> {
    table_rows_with(methods, &[])
}

/// [`table_rows`], then a block of rows for each criterion of `extra` (every method) that is
/// not already a block.
pub fn table_rows_with(
    methods: &[MethodKind],
    extra: &[Criterion],
) -> Vec<(MethodKind, Criterion)> {
    let base = [Criterion::VaWga, Criterion::VaGiWga];
    let mut rows: Vec<(MethodKind, Criterion)> = base
        .into_iter()
        .flat_map(|c| {
            methods
                .iter()
                .filter(move |m| m.table_criteria().contains(&c))
                .map(move |&m| (m, c))
        })
        .collect();
    let mut seen = base.to_vec();
    for &c in extra {
        if !seen.contains(&c) {
            seen.push(c);
            rows.extend(methods.iter().map(|&m| (m, c)));
        }
    }
    rows
}

fn group_counts(ds: &Dataset, split: &Split) -> Vec<usize> {
    Split::counts(&split.groups(ds.n_attr), ds.n_groups())
}

fn margin(dataset: &str, a: (&str, &Selection), b: (&str, &Selection), spread: Spread) -> Margin {
    let mut seeds = Vec::new();
    let mut per_seed = Vec::new();
    for sa in &a.1.seeds {
        if let Some(sb) = b.1.seeds.iter().find(|s| s.seed == sa.seed) {
            seeds.push(sa.seed);
            per_seed.push(sa.te.worst_group_acc - sb.te.worst_group_acc);
        }
    }
    Margin {
        dataset: dataset.into(),
        a: a.0.into(),
        b: b.0.into(),
        seeds,
        diff: mean_std_with(&per_seed, spread),
        per_seed,
    }
}

/// The margins the paper's claim is about: MAT − ERM and XRM+GroupDRO − ERM under each
/// criterion, and MAT without annotations − MAT with them.
fn margins_of(label: &str, sweeps: &[SweepOutcome], spread: Spread) -> Vec<Margin> {
    let sel = |kind: MethodKind, c: Criterion| {
        sweeps
            .iter()
            .find(|s| s.method == kind)
            .and_then(|s| s.selection(c))
            .map(|s| (row_label(kind, c), s))
    };
    let mut out = Vec::new();
    for c in [Criterion::VaWga, Criterion::VaGiWga] {
        for kind in [MethodKind::Mat, MethodKind::XrmGroupDro] {
            if let (Some((la, a)), Some((lb, b))) = (sel(kind, c), sel(MethodKind::Erm, c)) {
                out.push(margin(label, (&la, a), (&lb, b), spread));
            }
        }
    }
    if let (Some((la, a)), Some((lb, b))) = (
        sel(MethodKind::Mat, Criterion::VaGiWga),
        sel(MethodKind::Mat, Criterion::VaWga),
    ) {
        out.push(margin(label, (&la, a), (&lb, b), spread));
    }
    out
}

fn signed_points(m: &MeanStd) -> String {
    format!("{:+.1} ± {:.1}", 100.0 * m.mean, 100.0 * m.std)
}

fn describe_model(m: &ModelSpec) -> String {
    match m {
        ModelSpec::Linear { bias, init } => format!(
            "linear{}{}",
            if *bias { " + bias" } else { "" },
            if *init == Init::PyTorchDefault {
                String::new()
            } else {
                format!(" ({init} init)")
            }
        ),
        ModelSpec::Mlp { hidden, init, .. } if hidden.is_empty() => {
            format!("linear + bias ({init} init)")
        }
        ModelSpec::Mlp {
            hidden,
            activation,
            init,
        } => format!(
            "MLP {} ({activation}, {init})",
            hidden
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("→")
        ),
    }
}

fn describe_optimizer(o: &OptimizerSpec) -> String {
    match o {
        OptimizerSpec::Sgd { momentum, .. } => format!("SGD, momentum {momentum}"),
        OptimizerSpec::Adam { .. } => "Adam (L2 weight decay)".into(),
        OptimizerSpec::AdamW { .. } => "AdamW".into(),
    }
}

fn markdown(record: &Table1Record, spread: Spread) -> String {
    let seeds: Vec<String> = record
        .datasets
        .iter()
        .map(|d| d.sweep.seeds.len().to_string())
        .collect();
    let mut md = format!(
        "## Table 1 (offline): test accuracy (%), mean ± std over {} seeds\n\n",
        seeds.join(" / ")
    );
    md.push_str(&record.table.to_markdown());
    md.push_str(&format!(
        "\nRows: `(va_wga)` selects checkpoints and hyperparameters by validation worst-group \
         accuracy (validation group annotations); `(va_gi_wga)` by worst-group accuracy over \
         XRM-inferred validation groups (no group annotations). GroupDRO trains on the true \
         training groups. Avg is the plain test accuracy, WGA the worst-group test accuracy; \
         ± is the {spread} standard deviation over seeds.\n",
    ));
    if !record.margins.is_empty() {
        let rows: Vec<Vec<String>> = record
            .margins
            .iter()
            .map(|m| {
                let comparison = format!("{} − {}", m.a, m.b);
                vec![m.dataset.clone(), comparison, signed_points(&m.diff)]
            })
            .collect();
        md.push_str(
            "\n### Worst-group margins (test WGA, points; per-seed differences, mean ± std)\n\n",
        );
        md.push_str(&markdown_table(
            &["Data set", "Comparison", "Δ WGA"],
            "llr",
            &rows,
        ));
    }
    let mut rows = Vec::new();
    for d in &record.datasets {
        let Some(x) = &d.xrm else { continue };
        let rates: Vec<String> = x
            .seeds
            .iter()
            .map(|s| format!("{:.3}", s.final_flip_rate))
            .collect();
        let degenerate = x.seeds.iter().filter(|s| s.degenerate.is_some()).count();
        let acc: Vec<String> = x.seeds[0]
            .heldout_acc_by_group
            .iter()
            .map(|a| a.map_or("—".into(), |v| format!("{:.2}", v)))
            .collect();
        rows.push(vec![
            d.label.clone(),
            x.chosen_draw.to_string(),
            rates.join(", "),
            format!("{degenerate} / {}", x.seeds.len()),
            acc.join(", "),
        ]);
    }
    md.push_str("\n### XRM (held-out estimator)\n\n");
    md.push_str(&markdown_table(
        &[
            "Data set",
            "chosen draw",
            "flip rate per seed",
            "degenerate seeds",
            "held-out accuracy per training group (selection seed)",
        ],
        "lrlrl",
        &rows,
    ));
    let n = |c: &[usize]| c.iter().sum::<usize>();
    let rows: Vec<Vec<String>> = record
        .datasets
        .iter()
        .map(|d| {
            vec![
                d.label.clone(),
                format!(
                    "{} / {} / {}",
                    n(&d.group_counts_tr),
                    n(&d.group_counts_va),
                    n(&d.group_counts_te)
                ),
                describe_model(&d.sweep.model),
                describe_optimizer(&d.sweep.optimizer),
                d.sweep.steps.to_string(),
                d.sweep.draws.to_string(),
                d.sweep.seeds.len().to_string(),
            ]
        })
        .collect();
    md.push_str("\n### Settings\n\n");
    md.push_str(&markdown_table(
        &[
            "Data set",
            "train / val / test",
            "model",
            "optimizer",
            "steps",
            "draws",
            "seeds",
        ],
        "llllrrr",
        &rows,
    ));
    md
}

/// Errors of a table that no sweep can run: no column or method, columns that would share
/// a label or a folder of runs.
fn check_table(cfg: &Table1Config) -> Result<()> {
    if cfg.entries.is_empty() {
        return Err(Error::arg("data", "the table needs at least one data set"));
    }
    if cfg.methods.is_empty() {
        return Err(Error::arg("method", "the table needs at least one method"));
    }
    // Two columns must not share a folder of runs (nor a label).
    for (i, e) in cfg.entries.iter().enumerate() {
        let dir = entry_dir(&cfg.out, &e.label);
        if let Some(o) = cfg.entries[..i]
            .iter()
            .find(|o| o.label == e.label || entry_dir(&cfg.out, &o.label) == dir)
        {
            return Err(Error::arg(
                "data",
                format!(
                    "data sets `{}` and `{}` would share the folder {}",
                    o.label,
                    e.label,
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs every method's sweep on every column (one column after the other; runs inside a
/// column in parallel per its [`SweepConfig::parallelism`]), builds the table and the
/// margins, and writes `table1.md` and `table1.json` under `cfg.out`.
///
/// Errors: no column or no method, columns whose labels (or folders) coincide, and whatever
/// [`crate::algo::sweep::run_sweeps`] reports.
pub fn run_table1(cfg: &Table1Config, progress: ProgressFn<'_>) -> Result<Table1Outcome> {
    let outcome = run_table1_scoped(cfg, Scope::All, progress)?;
    Ok(outcome.expect("a table of every phase runs to its end"))
}

/// The sweep plans of the table's methods: each with its rows' criteria.
fn table_plans(cfg: &Table1Config) -> Vec<MethodPlan> {
    let rows = table_rows_with(&cfg.methods, &cfg.extra_criteria);
    cfg.methods
        .iter()
        .map(|&kind| MethodPlan {
            kind,
            criteria: rows
                .iter()
                .filter(|(m, _)| *m == kind)
                .map(|&(_, c)| c)
                .collect(),
        })
        .collect()
}

/// The jobs of each phase of [`Phase::ALL`] for the whole table: the columns' jobs one
/// after the other (see [`phase_jobs`]).
pub fn table1_jobs(cfg: &Table1Config) -> [usize; 4] {
    let plans = table_plans(cfg);
    cfg.entries.iter().fold([0; 4], |mut acc, e| {
        let jobs = phase_jobs(&plans, &e.sweep);
        for (a, j) in acc.iter_mut().zip(jobs) {
            *a += j;
        }
        acc
    })
}

/// Checks the table and readies each column's folder for its sweep (its manifest; see
/// [`prepare_folder`]) without training, so that jobs started later in parallel find it.
pub fn prepare_table1(cfg: &Table1Config) -> Result<()> {
    check_table(cfg)?;
    let plans = table_plans(cfg);
    for e in &cfg.entries {
        e.sweep.validate()?;
        e.dataset.validate()?;
        let manifest = Manifest::new(&e.dataset, &data_digest(&e.dataset), &plans, &e.sweep)?;
        prepare_folder(&entry_dir(&cfg.out, &e.label), &manifest, cfg.overwrite)?;
    }
    Ok(())
}

/// [`run_table1`], running only the part that `scope` names. A job's index counts through
/// the columns in order ([`table1_jobs`]); it runs in its column's sweep and returns `None`.
/// [`Scope::Finish`] trains nothing and writes the table from the recorded runs.
pub fn run_table1_scoped(
    cfg: &Table1Config,
    scope: Scope,
    progress: ProgressFn<'_>,
) -> Result<Option<Table1Outcome>> {
    check_table(cfg)?;
    let plans = table_plans(cfg);
    if let Scope::Job { phase, index } = scope {
        let k = Phase::ALL.iter().position(|&p| p == phase).unwrap_or(0);
        let mut local = index;
        for entry in &cfg.entries {
            let n = phase_jobs(&plans, &entry.sweep)[k];
            if local < n {
                let dir = entry_dir(&cfg.out, &entry.label);
                let job = Scope::Job {
                    phase,
                    index: local,
                };
                run_sweeps_scoped(
                    &entry.dataset,
                    &plans,
                    &entry.sweep,
                    &dir,
                    cfg.overwrite,
                    job,
                    progress,
                )?;
                return Ok(None);
            }
            local -= n;
        }
        return Err(Error::arg(
            "index",
            format!(
                "phase `{phase}` of the table has {} jobs; job {index} does not exist",
                table1_jobs(cfg)[k]
            ),
        ));
    }
    let start = Instant::now();
    let rows = table_rows_with(&cfg.methods, &cfg.extra_criteria);
    let mut table = ResultsTable::new(cfg.entries.iter().map(|e| e.label.clone()).collect());
    let mut cells_by_row: Vec<Vec<Option<TableCell>>> = vec![Vec::new(); rows.len()];
    let mut cell_records = Vec::new();
    let mut margins = Vec::new();
    let mut summaries = Vec::new();
    let mut all_sweeps = Vec::new();
    let mut inference_rows = Vec::new();
    for entry in &cfg.entries {
        let column_start = Instant::now();
        let dir = entry_dir(&cfg.out, &entry.label);
        let set = run_sweeps_scoped(
            &entry.dataset,
            &plans,
            &entry.sweep,
            &dir,
            cfg.overwrite,
            scope,
            progress,
        )?
        .expect("a sweep that is not one job runs to its end");
        for (r, &(kind, c)) in rows.iter().enumerate() {
            let selection = set
                .sweeps
                .iter()
                .find(|s| s.method == kind)
                .and_then(|s| s.selection(c));
            cells_by_row[r].push(selection.map(|s| s.cell.with_spread(cfg.spread)));
            if let Some(s) = selection {
                cell_records.push(CellRecord {
                    dataset: entry.label.clone(),
                    row: row_label(kind, c),
                    method: kind,
                    selection: s.clone(),
                });
            }
        }
        margins.extend(margins_of(&entry.label, &set.sweeps, cfg.spread));
        let ds = &entry.dataset;
        inference_rows.extend(inference_row(entry, set.xrm.as_ref()));
        summaries.push(DatasetSummary {
            label: entry.label.clone(),
            name: ds.name.clone(),
            d: ds.d(),
            classes: ds.classes,
            group_counts_tr: group_counts(ds, &ds.train),
            group_counts_va: group_counts(ds, &ds.valid),
            group_counts_te: group_counts(ds, &ds.test),
            sweep: entry.sweep.clone(),
            xrm: set.xrm.as_ref().map(|x| x.record.clone()),
            seconds: column_start.elapsed().as_secs_f64(),
        });
        all_sweeps.push(set.sweeps);
    }
    for (&(kind, c), cells) in rows.iter().zip(cells_by_row) {
        table.push_row(row_label(kind, c), cells)?;
    }
    let record = Table1Record {
        format: FORMAT.into(),
        table,
        margins,
        cells: cell_records,
        datasets: summaries,
        seconds: start.elapsed().as_secs_f64(),
    };
    let mut md = markdown(&record, cfg.spread);
    md.push_str(&inference_markdown(&inference_rows));
    write_text(&cfg.out.join(TABLE_MD), &md)?;
    write_json(&cfg.out.join(TABLE_JSON), &record)?;
    Ok(Some(Table1Outcome {
        record,
        markdown: md,
        sweeps: all_sweeps,
    }))
}

/// One line per margin, for a terminal: `ColorMNIST: MAT (va_wga) − ERM (va_wga): +27.1 ± 3.0`.
pub fn margin_lines(margins: &[Margin]) -> Vec<String> {
    margins
        .iter()
        .map(|m| {
            format!(
                "{}: {} − {}: {} points (n = {})",
                m.dataset,
                m.a,
                m.b,
                signed_points(&m.diff),
                m.diff.n
            )
        })
        .collect()
}

/// A row of the inferred-groups section: the column, its phase-1 estimator, and the pooled
/// precision and recall of the inferred minority groups on training and validation
/// ([`crate::algo::heldout::inference_quality`]), mean ± sample std over the seeds' phase-1
/// outputs. `None` without a phase 1, or when the data set has no true minority.
fn inference_row(entry: &Table1Entry, phase: Option<&XrmPhase>) -> Option<Vec<String>> {
    let ds = &entry.dataset;
    let mut values: [Vec<f64>; 4] = Default::default();
    for out in phase?.outputs.values() {
        let q = inference_quality(out, ds)?;
        for (v, x) in values.iter_mut().zip([
            q.train.pooled.precision,
            q.train.pooled.recall,
            q.valid.pooled.precision,
            q.valid.pooled.recall,
        ]) {
            v.extend(x);
        }
    }
    let mut row = vec![entry.label.clone(), entry.sweep.xrm.estimator.to_string()];
    row.extend(values.iter().map(|v| match v.len() {
        0 => "—".to_string(),
        _ => {
            let m = mean_std_with(v, Spread::Sample);
            format!("{:.2} ± {:.2}", m.mean, m.std)
        }
    }));
    Some(row)
}

/// The inferred-groups section of `table1.md` (empty without rows).
fn inference_markdown(rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Inferred groups vs the true minority (precision / recall, mean ± std over seeds)\n\n",
    );
    md.push_str(&markdown_table(
        &[
            "Data set",
            "phase 1",
            "train precision",
            "train recall",
            "val precision",
            "val recall",
        ],
        "llrrrr",
        rows,
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_selection_blocks() {
        let rows = table_rows(&MethodKind::TABLE1);
        assert_eq!(rows.len(), 9);
        assert_eq!(rows[0], (MethodKind::Erm, Criterion::VaWga));
        assert_eq!(rows[4], (MethodKind::Mat, Criterion::VaWga));
        assert_eq!(rows[5], (MethodKind::Erm, Criterion::VaGiWga));
        assert!(!rows.contains(&(MethodKind::GroupDro, Criterion::VaGiWga)));
    }

    #[test]
    fn entry_folders_are_slugs() {
        assert_eq!(
            entry_dir(Path::new("o"), "Waterbirds like!"),
            Path::new("o").join("waterbirds-like-")
        );
    }

    #[test]
    fn linear_heads_are_described_as_linear() {
        let d = |m: &str| describe_model(&m.parse().unwrap());
        assert_eq!(d("linear"), "linear + bias");
        assert_eq!(d("linear:nobias"), "linear");
        assert_eq!(d("linear:zeros"), "linear + bias (zeros init)");
        assert_eq!(d("linear:xavier"), "linear + bias (xavier init)");
        assert!(d("mlp:4,4").starts_with("MLP 4→4"));
    }
}
