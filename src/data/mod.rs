//! Data sets: features, labels, group attributes and example ids, in three splits.
//!
//! A [`Split`] holds `n` examples of `d` f32 features in one row-major buffer, a class label
//! `y ∈ 0..classes` and a group attribute `a ∈ 0..n_attr` per example (all zero when the data
//! has no attribute), and a stable example id. The group of an example is
//! `g = n_attr * y + a`, so there are `classes * n_attr` groups.
//!
//! Data lives on the host: labels and attributes as plain vectors, features as a shared
//! [`F32Buffer`] (mapped from the file they were read from, when their layout allows), which a
//! training run hands to its device once, at its start — on the CPU without a copy.
//!
//! # Sizes and memory
//!
//! Nothing here allocates from a size it has not checked. The generators ([`synthetic`])
//! refuse a configuration whose three splits would hold more than [`MAX_GENERATED_VALUES`]
//! feature values (16 GiB of f32) before drawing anything, with an
//! [`Error::InvalidArgument`] that names the sizes; the file readers ([`features`],
//! [`colormnist`]) check every size a header declares against the bytes the file holds before
//! they allocate for it. The few buffers that can still be large (features converted to f32)
//! are reserved fallibly, so a machine without the memory gets an error, not an abort.
//!
//! # Classes absent from training
//!
//! [`Dataset::validate`] accepts a training split in which some of the `classes` has no
//! example: a tiny generated set (say `interpretable` with `n = 1`) can lack a class, and a
//! model can still be trained and evaluated on it. Such a run cannot learn that class, so a
//! caller that wants to say so asks [`Dataset::classes_missing_from_train`] and prints a
//! warning. Data read from a user's file is stricter: the feature loaders refuse a file whose
//! training split lacks a declared (or, without declaration, inferred) class, since that
//! means a split or the `classes` metadata is wrong (see [`features`]).

pub mod batch;
pub mod colormnist;
pub mod features;
pub mod synthetic;

use crate::buffer::F32Buffer;
use crate::error::{Error, Result};

/// Largest number of feature values that a generated data set ([`synthetic`]) may hold over
/// its three splits: 2^32, that is 16 GiB of f32.
pub const MAX_GENERATED_VALUES: usize = 1 << 32;

/// `bytes` as a short human-readable size (`512 bytes`, `1.5 GiB`).
pub(crate) fn fmt_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// An empty vector with room for `len` values, reserved fallibly: `Err` says how much memory
/// could not be had, instead of aborting the process.
pub(crate) fn try_with_capacity<T>(len: usize) -> std::result::Result<Vec<T>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        let bytes = len as u128 * std::mem::size_of::<T>() as u128;
        format!(
            "cannot allocate {} for {len} values (not enough memory)",
            fmt_bytes(bytes)
        )
    })?;
    Ok(v)
}

/// `len` zeros, reserved fallibly (see [`try_with_capacity`]); `what` names the buffer.
pub(crate) fn try_zeros(len: usize, what: &str) -> Result<Vec<f32>> {
    let mut v = try_with_capacity(len).map_err(|e| Error::Data(format!("{what}: {e}")))?;
    v.resize(len, 0.0);
    Ok(v)
}

/// Checks that a generated data set of `rows` examples in all of `d` features stays within
/// [`MAX_GENERATED_VALUES`]; `name` names the argument to blame and `rows_text` says how
/// `rows` is made (`3 splits × 1000 examples`). `rows` may be `u128` to carry a product that
/// does not fit `usize`.
pub(crate) fn check_generated_size(
    name: &'static str,
    rows_text: &str,
    rows: u128,
    d: usize,
) -> Result<()> {
    let values = rows.saturating_mul(d as u128);
    if values <= MAX_GENERATED_VALUES as u128 {
        return Ok(());
    }
    Err(Error::arg(
        name,
        format!(
            "{rows_text} × {d} features = {values} feature values ({} as f32), more than the \
             {MAX_GENERATED_VALUES} values (16 GiB) a generated data set may hold",
            fmt_bytes(values.saturating_mul(4))
        ),
    ))
}

/// One split (train, validation or test) of a data set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// Row-major `n × d` features: shared (clones and tensors made from them do not copy
    /// them) and, when read from a feature file, usually mapped from it (see
    /// [`crate::buffer`]).
    pub x: F32Buffer,
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
        Split::with_features(F32Buffer::new(x), d, y, a)
    }

    /// [`Split::new`] with features in any buffer (say, mapped from a file); they become
    /// shared ([`F32Buffer::into_shared`]), so that clones and tensors do not copy them.
    pub fn with_features(
        x: F32Buffer,
        d: usize,
        y: Vec<u32>,
        a: Option<Vec<u32>>,
    ) -> Result<Split> {
        let x = x.into_shared();
        let n = y.len();
        if d == 0 {
            return Err(Error::Data("feature dimension d is 0".into()));
        }
        if n.checked_mul(d) != Some(x.len()) {
            return Err(Error::Data(format!(
                "features hold {} values but {} labels × {} features need {}",
                x.len(),
                n,
                d,
                n as u128 * d as u128
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
            x: F32Buffer::new(x).into_shared(),
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
        if self.n.checked_mul(self.d) != Some(self.x.len())
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
        if let Some(i) = self.x.first_non_finite() {
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
    /// labels and attributes in range, finite features, non-empty splits, and at most
    /// [`MAX_LABEL_VALUES`](features::MAX_LABEL_VALUES) groups (`classes * n_attr`), so that
    /// per-group tables stay small.
    ///
    /// A training split that lacks some class is accepted (see the module docs, "Classes
    /// absent from training"); [`Dataset::classes_missing_from_train`] lists them.
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
        let max = features::MAX_LABEL_VALUES;
        if self
            .classes
            .checked_mul(self.n_attr)
            .is_none_or(|g| g > max)
        {
            return Err(Error::Data(format!(
                "`{}`: {} classes × {} attribute values = {} groups, more than the {max} allowed",
                self.name,
                self.classes,
                self.n_attr,
                self.classes as u128 * self.n_attr as u128
            )));
        }
        let d = self.train.d;
        self.train.validate("tr", self.classes, self.n_attr, d)?;
        self.valid.validate("va", self.classes, self.n_attr, d)?;
        self.test.validate("te", self.classes, self.n_attr, d)?;
        Ok(())
    }

    /// The classes in `0..classes` that no training example has, in increasing order (empty
    /// for a training split that has every class). A caller can warn about them: a model
    /// never sees those classes during training. Meant for a validated data set; at most
    /// the first [`MAX_LABEL_VALUES`](features::MAX_LABEL_VALUES) classes are looked at.
    pub fn classes_missing_from_train(&self) -> Vec<u32> {
        let classes = self.classes.min(features::MAX_LABEL_VALUES);
        Split::counts(&self.train.y, classes)
            .iter()
            .enumerate()
            .filter(|(_, &c)| c == 0)
            .map(|(k, _)| k as u32)
            .collect()
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
