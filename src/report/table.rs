//! Results tables shaped like the paper's Table 1: one row per method (with its selection
//! setting), a pair of columns (average accuracy, worst-group accuracy) per data set.
//!
//! Accuracies are stored as fractions in `[0, 1]` and printed in percent with one decimal as
//! `mean ± std`, where `std` is the sample standard deviation over seeds (see
//! [`MeanStd`]), not the standard error. A missing cell prints as `—`. Average accuracy is the
//! plain accuracy over the test split.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::selection::{MeanStd, TableCell};

/// A whole table: data set names and, per method, one optional cell per data set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsTable {
    pub datasets: Vec<String>,
    /// `(method label, cells)`, cells in the order of `datasets`.
    pub rows: Vec<(String, Vec<Option<TableCell>>)>,
}

/// `mean ± std` in percent with one decimal; `—` for an empty sample.
pub fn format_percent(m: &MeanStd) -> String {
    if m.n == 0 {
        "—".to_string()
    } else {
        format!("{:.1} ± {:.1}", 100.0 * m.mean, 100.0 * m.std)
    }
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A GitHub Markdown table: the header, the rule (`align` has one `l` or `r` per column, for
/// `---` or `---:`), then one line per row. Cells are written as given.
pub fn markdown_table<S: AsRef<str>>(header: &[S], align: &str, rows: &[Vec<String>]) -> String {
    debug_assert_eq!(header.len(), align.len());
    let line = |cells: Vec<&str>| format!("| {} |\n", cells.join(" | "));
    let rule: Vec<&str> = align
        .chars()
        .map(|a| if a == 'r' { "---:" } else { "---" })
        .collect();
    let mut out = line(header.iter().map(AsRef::as_ref).collect());
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

impl ResultsTable {
    /// An empty table over `datasets`.
    pub fn new(datasets: Vec<String>) -> Self {
        ResultsTable {
            datasets,
            rows: Vec::new(),
        }
    }

    /// Adds a method's row; `cells` must have one entry per data set.
    pub fn push_row(
        &mut self,
        method: impl Into<String>,
        cells: Vec<Option<TableCell>>,
    ) -> Result<()> {
        let method = method.into();
        if cells.len() != self.datasets.len() {
            return Err(Error::Data(format!(
                "table row `{method}` has {} cells for {} data sets",
                cells.len(),
                self.datasets.len()
            )));
        }
        self.rows.push((method, cells));
        Ok(())
    }

    /// The table in GitHub Markdown: `| Method | <set> Avg | <set> WGA | ... |`. A row with fewer
    /// cells than data sets prints `—` for the missing ones.
    pub fn to_markdown(&self) -> String {
        let mut header = vec!["Method".to_string()];
        for d in &self.datasets {
            let d = escape_cell(d);
            header.extend([format!("{d} Avg"), format!("{d} WGA")]);
        }
        let align = format!("l{}", "rr".repeat(self.datasets.len()));
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|(method, cells)| {
                let mut row = vec![escape_cell(method)];
                for j in 0..self.datasets.len() {
                    match cells.get(j).and_then(Option::as_ref) {
                        Some(c) => row.extend([format_percent(&c.avg), format_percent(&c.wga)]),
                        None => row.extend(["—".to_string(), "—".to_string()]),
                    }
                }
                row
            })
            .collect();
        markdown_table(&header, &align, &rows)
    }

    /// Writes the pretty JSON to `path` atomically.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_json(path.as_ref(), self)
    }

    /// Reads a table written by [`ResultsTable::save_json`].
    pub fn load_json(path: impl AsRef<Path>) -> Result<ResultsTable> {
        crate::io::read_json(path.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::SplitMetrics;
    use crate::eval::selection::mean_std;

    fn metrics(avg: f64, group_acc: Vec<Option<f64>>, counts: Vec<usize>) -> SplitMetrics {
        let wga = group_acc
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        SplitMetrics {
            avg_acc: avg,
            group_acc,
            group_count: counts,
            worst_group_acc: wga,
            worst_class_acc: wga,
            class_acc: vec![],
        }
    }

    fn sample_table() -> ResultsTable {
        let cell = TableCell::from_seeds(&[
            metrics(0.9, vec![Some(0.95), Some(0.7)], vec![10, 2]),
            metrics(0.92, vec![Some(0.96), Some(0.8)], vec![10, 2]),
        ])
        .unwrap();
        let mut t = ResultsTable::new(vec!["Waterbirds".into(), "ColorMNIST".into()]);
        t.push_row("ERM (va_wga)", vec![Some(cell.clone()), None])
            .unwrap();
        t.push_row("MAT | va_gi_wga", vec![None, Some(cell)])
            .unwrap();
        t
    }

    #[test]
    fn cell_aggregates_over_seeds() {
        let t = sample_table();
        let cell = t.rows[0].1[0].as_ref().unwrap();
        assert!((cell.avg.mean - 0.91).abs() < 1e-12);
        assert!((cell.wga.mean - 0.75).abs() < 1e-12);
        // Sample std of {0.7, 0.8} is 0.1 / sqrt(2).
        assert!((cell.wga.std - 0.1 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(cell.wga.n, 2);
        assert_eq!(cell.per_group.len(), 2);
        assert_eq!(cell.group_counts, vec![10, 2]);
    }

    #[test]
    fn markdown_layout() {
        let md = sample_table().to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[0],
            "| Method | Waterbirds Avg | Waterbirds WGA | ColorMNIST Avg | ColorMNIST WGA |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|");
        assert_eq!(
            lines[2],
            "| ERM (va_wga) | 91.0 ± 1.4 | 75.0 ± 7.1 | — | — |"
        );
        assert_eq!(
            lines[3],
            "| MAT \\| va_gi_wga | — | — | 91.0 ± 1.4 | 75.0 ± 7.1 |"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn rows_must_match_datasets_and_seeds_must_agree() {
        let mut t = ResultsTable::new(vec!["a".into()]);
        assert!(t.push_row("x", vec![None, None]).is_err());
        assert!(TableCell::from_seeds(&[]).is_err());
        assert!(TableCell::from_seeds(&[
            metrics(0.5, vec![Some(0.5)], vec![4]),
            metrics(0.5, vec![Some(0.5)], vec![5]),
        ])
        .is_err());
    }

    /// serde_json without its `float_roundtrip` feature may parse a float one ulp away from the
    /// value it printed, so numbers are compared to a relative 1e-15 and everything else exactly.
    fn assert_same_table(a: &ResultsTable, b: &ResultsTable) {
        assert_eq!(a.datasets, b.datasets);
        assert_eq!(a.rows.len(), b.rows.len());
        assert_eq!(a.to_markdown(), b.to_markdown());
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-15 * x.abs().max(y.abs());
        for ((ma, ca), (mb, cb)) in a.rows.iter().zip(&b.rows) {
            assert_eq!(ma, mb);
            assert_eq!(ca.len(), cb.len());
            for (x, y) in ca.iter().zip(cb) {
                match (x, y) {
                    (None, None) => {}
                    (Some(x), Some(y)) => {
                        for (p, q) in [(&x.avg, &y.avg), (&x.wga, &y.wga)] {
                            assert!(close(p.mean, q.mean) && close(p.std, q.std), "{p:?} {q:?}");
                            assert_eq!(p.n, q.n);
                        }
                        assert_eq!(x.per_group, y.per_group);
                        assert_eq!(x.group_counts, y.group_counts);
                    }
                    _ => panic!("cell presence differs: {x:?} vs {y:?}"),
                }
            }
        }
    }

    #[test]
    fn json_round_trip() {
        let t = sample_table();
        let back: ResultsTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_same_table(&back, &t);
        let path = std::env::temp_dir().join(format!("memaware-table-{}.json", std::process::id()));
        t.save_json(&path).unwrap();
        assert_same_table(&ResultsTable::load_json(&path).unwrap(), &t);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn empty_sample_prints_a_dash() {
        assert_eq!(format_percent(&mean_std(&[])), "—");
        assert_eq!(format_percent(&mean_std(&[0.8767])), "87.7 ± 0.0");
    }
}
