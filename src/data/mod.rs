//! Data sets: features, labels, group attributes and example ids, in three splits.
//!
//! A [`Split`] holds `n` examples of `d` f32 features in one row-major buffer, a class label
//! `y ∈ 0..classes` and a group attribute `a ∈ 0..n_attr` per example (all zero when the data
//! has no attribute), and a stable example id. The group of an example is
//! `g = n_attr * y + a`, so there are `classes * n_attr` groups.
//!
//! Data lives on the host as plain vectors; a training run moves what it needs to the
//! device once, at its start.

pub mod batch;
pub mod colormnist;
pub mod features;
pub mod synthetic;

use crate::error::{Error, Result};

/// One split (train, validation or test) of a data set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Row-major `n × d` features.
    pub x: Vec<f32>,
    /// Number of examples.
    pub n: usize,
    /// Number of features.
    pub d: usize,
    /// Class labels, `0..classes`.
    pub y: Vec<u32>,
    /// Group attribute, `0..n_attr` (all zero when the data has none).
    pub a: Vec<u32>,
    /// Stable example ids (row numbers of the source, unless the source has its own).
    pub ids: Vec<u64>,
}

/// Which split of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitKind {
    Train,
    Valid,
    Test,
}

impl SplitKind {
    /// Short name used in files and tables: `tr`, `va`, `te`.
    pub fn short(self) -> &'static str {
        match self {
            SplitKind::Train => "tr",
            SplitKind::Valid => "va",
            SplitKind::Test => "te",
        }
    }
}

/// A data set: three splits that share `d`, `classes` and `n_attr`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Human-readable name used in reports.
    pub name: String,
    /// Number of classes `K`.
    pub classes: usize,
    /// Number of values of the group attribute.
    pub n_attr: usize,
    pub train: Split,
    pub valid: Split,
    pub test: Split,
}

impl Split {
    /// A split from its parts; ids default to `0..n`. Checks lengths (not label ranges: see
    /// [`Dataset::validate`]).
    pub fn new(x: Vec<f32>, d: usize, y: Vec<u32>, a: Option<Vec<u32>>) -> Result<Split> {
        let n = y.len();
        if d == 0 {
            return Err(Error::Data("feature dimension d is 0".into()));
        }
        if x.len() != n * d {
            return Err(Error::Data(format!(
                "features hold {} values but {} labels × {} features need {}",
                x.len(),
                n,
                d,
                n * d
            )));
        }
        let a = a.unwrap_or_else(|| vec![0; n]);
        if a.len() != n {
            return Err(Error::Data(format!(
                "{} group attributes for {} labels",
                a.len(),
                n
            )));
        }
        Ok(Split {
            x,
            n,
            d,
            y,
            a,
            ids: (0..n as u64).collect(),
        })
    }

    /// Row `i` of the features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    /// Group id `n_attr * y + a` of every example.
    pub fn groups(&self, n_attr: usize) -> Vec<u32> {
        self.y
            .iter()
            .zip(&self.a)
            .map(|(&y, &a)| y * n_attr as u32 + a)
            .collect()
    }

    /// The examples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Split {
        let mut x = Vec::with_capacity(rows.len() * self.d);
        for &r in rows {
            x.extend_from_slice(self.row(r));
        }
        Split {
            x,
            n: rows.len(),
            d: self.d,
            y: rows.iter().map(|&r| self.y[r]).collect(),
            a: rows.iter().map(|&r| self.a[r]).collect(),
            ids: rows.iter().map(|&r| self.ids[r]).collect(),
        }
    }

    /// Count of examples per value of `keys` (a label or group vector), `0..size`.
    pub fn counts(keys: &[u32], size: usize) -> Vec<usize> {
        let mut c = vec![0; size];
        for &k in keys {
            if (k as usize) < size {
                c[k as usize] += 1;
            }
        }
        c
    }

    fn validate(&self, name: &str, classes: usize, n_attr: usize, d: usize) -> Result<()> {
        if self.n == 0 {
            return Err(Error::Data(format!("split `{name}` is empty")));
        }
        if self.d != d {
            return Err(Error::Data(format!(
                "split `{name}` has {} features, train has {d}",
                self.d
            )));
        }
        if self.x.len() != self.n * self.d
            || self.y.len() != self.n
            || self.a.len() != self.n
            || self.ids.len() != self.n
        {
            return Err(Error::Data(format!(
                "split `{name}`: lengths disagree (x {} for n×d = {}×{}, y {}, a {}, ids {})",
                self.x.len(),
                self.n,
                self.d,
                self.y.len(),
                self.a.len(),
                self.ids.len()
            )));
        }
        if let Some((i, &y)) = self
            .y
            .iter()
            .enumerate()
            .find(|(_, &y)| y as usize >= classes)
        {
            return Err(Error::LabelOutOfRange {
                op: "dataset",
                row: i,
                label: y,
                classes,
            });
        }
        if let Some((i, &a)) = self
            .a
            .iter()
            .enumerate()
            .find(|(_, &a)| a as usize >= n_attr)
        {
            return Err(Error::Data(format!(
                "split `{name}`: attribute {a} at row {i} is out of range for {n_attr} attribute values"
            )));
        }
        if let Some(i) = self.x.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                op: "dataset",
                what: format!(
                    "split `{name}`, row {}, feature {}",
                    i / self.d.max(1),
                    i % self.d.max(1)
                ),
            });
        }
        Ok(())
    }
}

impl Dataset {
    /// Checks everything a training run relies on: at least two classes, consistent lengths,
    /// labels and attributes in range, finite features, non-empty splits.
    pub fn validate(&self) -> Result<()> {
        if self.classes < 2 {
            return Err(Error::Data(format!(
                "`{}` has {} class(es); at least two are needed",
                self.name, self.classes
            )));
        }
        if self.n_attr == 0 {
            return Err(Error::Data("n_attr must be at least 1".into()));
        }
        let d = self.train.d;
        self.train.validate("tr", self.classes, self.n_attr, d)?;
        self.valid.validate("va", self.classes, self.n_attr, d)?;
        self.test.validate("te", self.classes, self.n_attr, d)?;
        Ok(())
    }

    /// The split of the given kind.
    pub fn split(&self, kind: SplitKind) -> &Split {
        match kind {
            SplitKind::Train => &self.train,
            SplitKind::Valid => &self.valid,
            SplitKind::Test => &self.test,
        }
    }

    /// Number of groups, `classes * n_attr`.
    pub fn n_groups(&self) -> usize {
        self.classes * self.n_attr
    }

    /// Feature dimension.
    pub fn d(&self) -> usize {
        self.train.d
    }
}
