//! Minibatches and group balancing.
//!
//! - [`Batcher`]: seeded shuffled minibatches over `0..n`. Each epoch is one permutation
//!   (`Rng::permutation`), cut into consecutive batches of `batch_size`; the last batch of an
//!   epoch holds the remainder (`n mod batch_size` examples when that is not 0), so every
//!   example is seen exactly once per epoch. The next epoch draws a new permutation from the
//!   same generator, so the whole sequence of batches is a function of the seed.
//!   `batch_size >= n` means full batch: every call returns `0..n` in the original order.
//! - [`group_weights_balanced`]: per-example weights `w_i = n / (G * n_{g_i})` with `G` the
//!   number of groups present, so each present group carries total weight `n / G` and the
//!   weights average 1 (RWG, "reweight groups").
//! - [`WeightedSampler`]: draws with replacement, `P(i) = w_i / Σ w`, by inverting the
//!   cumulative sums (f64) with a binary search: `O(log n)` per draw, one uniform each.
//! - [`Sampler`] picks how training batches are drawn: [`Sampler::Shuffle`] (the [`Batcher`],
//!   the default) or [`Sampler::ClassBalanced`], the official `balanced_batch`
//!   ([`WeightedBatcher`] over [`class_weights_balanced`]).
//! - [`WeightedBatcher`]: the official weighted loader: each epoch is `n` draws with
//!   replacement from a [`WeightedSampler`] (PyTorch's `WeightedRandomSampler(weights,
//!   num_samples=n, replacement=True)`, `XRM/datasets.py:68-70`), cut into consecutive batches
//!   of `batch_size`, the last one holding the remainder (`FastBatchSampler`,
//!   `XRM/datasets.py:100-113`); the next epoch draws on from the same generator. Batches are
//!   never the whole set in order, even when `batch_size >= n`.
//! - [`class_weights_balanced`]: `w_i = n / n_{y_i}` (`XRM/datasets.py:168`, `weights_y`), so
//!   every class present is drawn with probability `1 / K_present`.
//! - [`subsample_groups`]: keeps `min_g n_g` examples of every present group, chosen at random
//!   (SUBG, "subsample groups"): the first `min_g n_g` of each group in the order of one random
//!   permutation of `0..n`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// How a training run draws its batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Every example once per epoch, in a fresh random order ([`Batcher`]).
    #[default]
    Shuffle,
    /// Draws with replacement, each example with probability proportional to
    /// `n / n_{y_i}`, so every class is drawn equally often in expectation
    /// ([`WeightedBatcher`] over [`class_weights_balanced`]): the official `balanced_batch`
    /// (`XRM/datasets.py:49-50`, `68-70`, `168`).
    ClassBalanced,
}

impl Sampler {
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Shuffle => "shuffle",
            Sampler::ClassBalanced => "class_balanced",
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Sampler {
    type Err = Error;

    /// `shuffle` or `class_balanced` (`class-balanced` works too).
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        [Sampler::Shuffle, Sampler::ClassBalanced]
            .into_iter()
            .find(|x| x.name() == key)
            .ok_or_else(|| {
                Error::arg(
                    "sampler",
                    format!("unknown sampler `{s}`; expected shuffle or class_balanced"),
                )
            })
    }
}

/// Seeded shuffled minibatches over `0..n` (see the module docs).
#[derive(Clone, Debug)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    rng: Rng,
    order: Vec<usize>,
    pos: usize,
    epoch: usize,
    /// Permutations drawn so far: the generator's position, for [`Batcher::state`].
    permutations: usize,
}

/// Where a [`Batcher`] stands: enough to rebuild it exactly ([`Batcher::from_state`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatcherState {
    pub n: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Permutations drawn from the generator so far (the last one is the current epoch's).
    pub permutations: usize,
    /// Position in the current epoch's order.
    pub pos: usize,
    pub epoch: usize,
}

impl Batcher {
    /// A batcher over `0..n`; `batch_size >= n` gives full, unshuffled batches.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Batcher> {
        if n == 0 {
            return Err(Error::arg("n", "cannot batch an empty training set"));
        }
        if batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        let mut rng = Rng::new(seed);
        let full = batch_size >= n;
        let order = if full {
            (0..n).collect()
        } else {
            rng.permutation(n)
        };
        Ok(Batcher {
            n,
            batch_size,
            rng,
            order,
            pos: 0,
            epoch: 0,
            permutations: usize::from(!full),
        })
    }

    /// Where the batcher stands.
    pub fn state(&self) -> BatcherState {
        BatcherState {
            n: self.n,
            batch_size: self.batch_size,
            seed: self.rng.seed(),
            permutations: self.permutations,
            pos: self.pos,
            epoch: self.epoch,
        }
    }

    /// The batcher that [`Batcher::state`] described: the same seed, its permutations drawn
    /// again (`O(n)` each), the same position. Its next batches are the original's.
    ///
    /// Errors: sizes [`Batcher::new`] refuses, or a position that no batcher reaches.
    pub fn from_state(state: &BatcherState) -> Result<Batcher> {
        let mut b = Batcher::new(state.n, state.batch_size, state.seed)?;
        let full = b.is_full_batch();
        let consistent = if full {
            state.permutations == 0 && state.pos == 0
        } else {
            state.permutations >= 1 && state.pos <= state.n && state.epoch <= state.permutations
        };
        if !consistent {
            return Err(Error::Data(format!(
                "batcher state {state:?} is not one a batcher reaches"
            )));
        }
        for _ in 1..state.permutations {
            b.order = b.rng.permutation(b.n);
        }
        b.permutations = state.permutations;
        b.pos = state.pos;
        b.epoch = state.epoch;
        Ok(b)
    }

    /// Whether every batch is the whole set in its original order.
    pub fn is_full_batch(&self) -> bool {
        self.batch_size >= self.n
    }

    /// The next batch of indices; starts a freshly shuffled epoch when the current one is used
    /// up.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.is_full_batch() {
            self.epoch += 1;
            return &self.order;
        }
        if self.pos >= self.n {
            self.order = self.rng.permutation(self.n);
            self.permutations += 1;
            self.pos = 0;
        }
        if self.pos == 0 {
            self.epoch += 1;
        }
        let start = self.pos;
        self.pos = (start + self.batch_size).min(self.n);
        &self.order[start..self.pos]
    }

    /// Epochs started so far (1 after the first call to [`Batcher::next_batch`]).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Batches per epoch, `ceil(n / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }

    /// Number of examples.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Batch size as given (the full set when at least `n`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

fn group_counts(op: &'static str, groups: &[u32], n_groups: usize) -> Result<Vec<usize>> {
    let mut counts = vec![0usize; n_groups];
    for (position, &g) in groups.iter().enumerate() {
        match counts.get_mut(g as usize) {
            Some(c) => *c += 1,
            None => {
                return Err(Error::IndexOutOfRange {
                    op,
                    position,
                    index: g as usize,
                    size: n_groups,
                })
            }
        }
    }
    Ok(counts)
}

/// Per-example weights that give every present group the same total weight, `n / G`, with
/// `G` the number of present groups (the weights average 1).
pub fn group_weights_balanced(groups: &[u32], n_groups: usize) -> Result<Vec<f32>> {
    if groups.is_empty() {
        return Err(Error::Data(
            "group_weights_balanced: the training set is empty".into(),
        ));
    }
    let counts = group_counts("group_weights_balanced", groups, n_groups)?;
    let present = counts.iter().filter(|&&c| c > 0).count();
    let n = groups.len() as f64;
    Ok(groups
        .iter()
        .map(|&g| (n / (present as f64 * counts[g as usize] as f64)) as f32)
        .collect())
}

/// Draws indices with replacement, with probability proportional to per-example weights.
#[derive(Clone, Debug)]
pub struct WeightedSampler {
    cumulative: Vec<f64>,
    last_positive: usize,
    rng: Rng,
    batch: Vec<usize>,
}

impl WeightedSampler {
    /// A sampler for `weights` (finite, non-negative, not all zero).
    pub fn new(weights: &[f32], seed: u64) -> Result<WeightedSampler> {
        if weights.is_empty() {
            return Err(Error::arg("weights", "no examples to sample from"));
        }
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0.0f64;
        let mut last_positive = None;
        for (i, &w) in weights.iter().enumerate() {
            if !w.is_finite() || w < 0.0 {
                return Err(Error::arg(
                    "weights",
                    format!("weight {w} at position {i} is not finite and >= 0"),
                ));
            }
            if w > 0.0 {
                last_positive = Some(i);
            }
            total += w as f64;
            cumulative.push(total);
        }
        let last_positive =
            last_positive.ok_or_else(|| Error::arg("weights", "all weights are zero"))?;
        Ok(WeightedSampler {
            cumulative,
            last_positive,
            rng: Rng::new(seed),
            batch: Vec::new(),
        })
    }

    /// One index, `P(i) = w_i / Σ w`.
    pub fn sample(&mut self) -> usize {
        let total = self.cumulative[self.last_positive];
        let u = self.rng.uniform_f64() * total;
        // First index whose cumulative sum exceeds u: zero-weight entries repeat the previous
        // sum and are never chosen. The clamp guards `u` rounding up to `total`.
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.last_positive)
    }

    /// `batch_size` independent draws.
    pub fn next_batch(&mut self, batch_size: usize) -> &[usize] {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        batch.extend((0..batch_size).map(|_| self.sample()));
        self.batch = batch;
        &self.batch
    }
}

/// Per-example weights `w_i = n / n_{y_i}` (`n_c` the examples of class `c`), the official
/// `weights_y` (`XRM/datasets.py:163`, `168`): drawn with replacement in proportion to them,
/// every class present comes up with probability `1 / K_present`.
pub fn class_weights_balanced(y: &[u32], classes: usize) -> Result<Vec<f32>> {
    if y.is_empty() {
        return Err(Error::Data(
            "class_weights_balanced: the training set is empty".into(),
        ));
    }
    let counts = group_counts("class_weights_balanced", y, classes)?;
    let n = y.len() as f64;
    Ok(y.iter()
        .map(|&c| (n / counts[c as usize] as f64) as f32)
        .collect())
}

/// Batches drawn with replacement in proportion to per-example weights, cut into epochs of `n`
/// draws as the official weighted loader (see the module docs). Its position is a function of
/// the batches drawn, so [`WeightedBatcher::skip`] rebuilds any point of a run.
#[derive(Clone, Debug)]
pub struct WeightedBatcher {
    sampler: WeightedSampler,
    n: usize,
    batch_size: usize,
    /// Draws made in the current epoch.
    pos: usize,
    epoch: usize,
}

impl WeightedBatcher {
    /// A batcher over `weights.len()` examples (weights as [`WeightedSampler::new`]).
    pub fn new(weights: &[f32], batch_size: usize, seed: u64) -> Result<WeightedBatcher> {
        if batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        Ok(WeightedBatcher {
            sampler: WeightedSampler::new(weights, seed)?,
            n: weights.len(),
            batch_size,
            pos: 0,
            epoch: 0,
        })
    }

    /// The next batch: `min(batch_size, n − drawn this epoch)` draws; an epoch ends after `n`.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.pos >= self.n {
            self.pos = 0;
        }
        if self.pos == 0 {
            self.epoch += 1;
        }
        let size = self.batch_size.min(self.n - self.pos);
        self.pos += size;
        self.sampler.next_batch(size)
    }

    /// Draws and drops `batches` batches: the batcher then stands where one that returned them
    /// stands.
    pub fn skip(&mut self, batches: usize) {
        for _ in 0..batches {
            self.next_batch();
        }
    }

    /// Epochs started so far (1 after the first call to [`WeightedBatcher::next_batch`]).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Batches per epoch, `ceil(n / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch_size)
    }
}

/// SUBG: the indices (sorted) of `min_g n_g` random examples from every present group, where
/// `n_g` counts the examples of group `g`. Group ids at or above `n_groups` count as groups of
/// their own. Empty input gives an empty result.
pub fn subsample_groups(groups: &[u32], n_groups: usize, rng: &mut Rng) -> Vec<usize> {
    let size = groups
        .iter()
        .map(|&g| g as usize + 1)
        .max()
        .unwrap_or(0)
        .max(n_groups);
    let mut counts = vec![0usize; size];
    for &g in groups {
        counts[g as usize] += 1;
    }
    let Some(keep) = counts.iter().copied().filter(|&c| c > 0).min() else {
        return Vec::new();
    };
    let mut taken = vec![0usize; size];
    let mut kept: Vec<usize> = rng
        .permutation(groups.len())
        .into_iter()
        .filter(|&i| {
            let t = &mut taken[groups[i] as usize];
            *t += 1;
            *t <= keep
        })
        .collect();
    kept.sort_unstable();
    kept
}
