//! Synthetic data sets: the paper's interpretable experiment (Figure 1), its good/bad/ugly
//! regression (Figure 3), and a Waterbirds-shaped stand-in for frozen ResNet-50 features.
//!
//! # Figure 1: [`interpretable`]
//!
//! Per split, `n` examples with `y ~ Bernoulli(0.5)` and `s = 2y - 1`:
//!
//! ```text
//! x_y = (N(0,1) * 0.12 - 1) * s          core feature, predicts y everywhere
//! x_a = (N(0,1) * 0.12 - 1) * s          spurious feature, then sign-flipped on
//!                                        k = int((1 - maj) * n) random examples
//! x   = [x_y, spurious_scale * x_a, sigma_eps * N(0, I_{d-2})]
//! ```
//!
//! `maj` is `train_majority` (0.9) for training and `eval_majority` (0.5) for validation and
//! test. `k` is computed as the reference does, `((1.0 - maj) * n as f64) as usize`: in f64,
//! `1.0 - 0.9 = 0.09999999999999998`, so `(1 - 0.9) * 1000 = 99.99999999999999` truncates to
//! **99** minority training examples, not 100. We keep that so counts match the reference.
//!
//! Note the sign convention: class 1 (`s = +1`) sits at `x_y ≈ -1`. The group attribute is the
//! class the spurious feature points to, `a = 1[x_a < 0]`, so that the majority has `a = y`
//! and the minority groups are exactly those with `a ≠` y ([`is_minority`]). This agrees with
//! the reference's majority test `x_y * x_a > 0` unless some `N(0,1)` draw exceeds `1/0.12 ≈
//! 8.3`, which has probability about `1e-16` per draw. Groups are `g = 2y + a`.
//!
//! Columns 0 and 1 of `x` are `x_y` and `spurious_scale * x_a` (the spurious column is stored
//! scaled, as the model sees it); [`core_spurious_columns`] returns them for plotting the
//! `(x_y, x_a)` plane.
//!
//! The splits draw from independent streams `Rng::new(seed).fork(0 | 1 | 2)` for train,
//! validation and test, so consecutive seeds share nothing (the reference seeds the splits with
//! `seed + {0, 1, 2}`, which makes seed 1's training set seed 0's validation set).
//! Within a split the draws come in this order: all `y`, all `x_y` normals, all `x_a` normals,
//! the flipped set (`Rng::choice(n, k)`), then the noise row by row (skipped when
//! `sigma_eps = 0`, which leaves every earlier draw unchanged).
//!
//! # Figure 3: [`good_bad_ugly`]
//!
//! `f(x) = tanh(x) + 0.5 * tanh(-5x)` on `n_grid` evenly spaced points
//! `x_j = lo + (hi - lo) * j / (n_grid - 1)`. The `n_train` training points sit at grid
//! indices `i * (n_grid - 1) / (n_train - 1)` in exact integer arithmetic, `i = 0..n_train`
//! (this equals NumPy's `linspace(0, n_grid - 1, n_train).astype(int)` for the defaults: no
//! intermediate value `i * 999 / 19` is an integer that floating point could round below).
//! Labels are `f(x) + label_noise * N(0,1)`. Every input carries `extra_dims` more
//! coordinates: `sigma_eps * N(0,1)` on the training points, 0 on the grid. (The reference
//! also writes the training noise into the grid rows at the training indices; we keep the
//! grid clean, so the grid is exactly the noise-free input `[x, 0]`.) Draw order, from
//! `Rng::new(seed).fork(0)`: the extra coordinates row by row (drawn and scaled even when
//! `sigma_eps = 0`), then the label noise, so the good, bad and ugly settings of one seed
//! share the same noisy labels and the same noise directions.
//!
//! # Waterbirds-shaped features: [`waterbirds_like`]
//!
//! `d = 2048` features, Waterbirds' split sizes and group counts (groups `g = 2y + a`: `y` the
//! bird, `a` the background): train 3498 / 184 / 56 / 1057, validation 467 / 466 / 133 / 133,
//! test 2255 / 2255 / 642 / 642. Two orthonormal random directions `u_y` (core) and `u_a`
//! (spurious) are drawn once per seed (stream `fork(3)`), and each example is
//!
//! ```text
//! x = c * (2y - 1) * u_y + s * (2a - 1) * u_a + noise_norm * N(0, I_d) / sqrt(d)
//! c ~ N(core_mean, core_std²),  s ~ N(spurious_mean, spurious_std²)
//! ```
//!
//! Defaults and why:
//! - `spurious_mean = 5, spurious_std = 0.5`: the background is large and clean, so it agrees
//!   with `y` with a wide margin on the 95% majority and a gradient step moves its weight
//!   first; early in training the minority groups are all misclassified.
//! - `core_mean = 2, core_std = 1`: the bird is predictive in every group but noisy per
//!   example (about 2.3% of examples have `c < 0`), so the core alone does not separate the
//!   training set and cannot explain the minority by itself; a linear model that weighs it
//!   well reaches about 0.9 worst-group accuracy at best.
//! - `noise_norm = 15` (per-coordinate std `15 / sqrt(2048) ≈ 0.33`): each example carries a
//!   private direction of squared norm about 225, against `s² ≈ 25` and `c² ≈ 5`. With 240
//!   minority examples in 2048 dimensions, pushing them across the spurious boundary along
//!   their own noise is cheap, so empirical risk minimization reaches ~100% training
//!   accuracy by memorizing the minority instead of leaning on the core feature.
//!
//! With these defaults a linear softmax head with bias trained by SGD (lr 1e-2, momentum 0.9,
//! batch 64, 1001 steps) misclassifies every minority test example after 10 steps, ends at
//! about 100% training accuracy and 0.65–0.70 test worst-group accuracy, while reweighting
//! the groups ends at about 0.8–0.87 (and peaks earlier, before the minority is memorized).
//! That is the shape of ERM and group-balanced results on real Waterbirds features.
//!
//! **Imperfect group inference** ([`WaterbirdsLikeConfig::imperfect`],
//! `waterbirds-like:imperfect`): with the defaults, held-out errors find the minority exactly
//! (XRM's inferred groups are the true ones, so `va_gi_wga = va_wga`). A weaker, more variable
//! background, `spurious_mean = 2.5` and `spurious_std = 1.5`, changes that: a minority
//! example with a faint background and a clear bird is predicted right by a held-out model
//! (a miss), and a majority example with a faint background and a murky bird wrong (a false
//! alarm). XRM with the recipe's defaults (`memaware heldout --data waterbirds-like:imperfect`,
//! seeds 0–2) then reaches inferred-minority precision 0.73–0.78 and recall 0.51–0.63 on
//! training (0.98–0.99 and 0.56–0.65 on validation); K-fold (K = 2, 5) recall 0.15–0.19.
//! Only the two coefficients change: every draw of a seed is the default set's draw, scaled.
//! (Raising the core coefficient of every minority example instead does not degrade XRM's
//! inference gradually: its label flips keep the recall at 1 until the core outweighs the
//! background for the whole minority, and then no example is inferred at all.)
//!
//! Each split's group labels are laid out by count and shuffled (`permutation`), then rows
//! are drawn in order: `c`, `s`, then `d` noise normals. Streams: `fork(0 | 1 | 2)` for the
//! splits, `fork(3)` for the directions.

use super::{check_generated_size, try_zeros, Dataset, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Configuration of the paper's interpretable experiment (Figure 1).
#[derive(Clone, Debug, PartialEq)]
pub struct InterpretableConfig {
    /// Examples per split.
    pub n: usize,
    /// Total feature dimension (2 informative + `d - 2` noise coordinates).
    pub d: usize,
    /// Share of training examples whose spurious feature agrees with the label.
    pub train_majority: f64,
    /// The same share for validation and test.
    pub eval_majority: f64,
    /// Factor on the spurious column (5 in the paper).
    pub spurious_scale: f32,
    /// Standard deviation of the example-specific noise coordinates.
    pub sigma_eps: f32,
    pub seed: u64,
}

impl Default for InterpretableConfig {
    fn default() -> Self {
        InterpretableConfig {
            n: 1000,
            d: 1800,
            train_majority: 0.9,
            eval_majority: 0.5,
            spurious_scale: 5.0,
            sigma_eps: 0.5,
            seed: 0,
        }
    }
}

/// Number of minority (sign-flipped) examples among `n` for majority share `majority`,
/// computed the way the reference does (`int((1 - maj) * n)`): 99 for 0.9 and 1000.
pub fn minority_count(n: usize, majority: f64) -> usize {
    ((1.0 - majority) * n as f64) as usize
}

fn check_probability(name: &'static str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::arg(
            name,
            format!("{p} is not a probability in [0, 1]"),
        ));
    }
    Ok(())
}

fn check_finite_nonneg(name: &'static str, v: f32) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::arg(name, format!("{v} must be finite and >= 0")));
    }
    Ok(())
}

fn interpretable_split(cfg: &InterpretableConfig, majority: f64, mut rng: Rng) -> Result<Split> {
    let (n, d) = (cfg.n, cfg.d);
    let y: Vec<u32> = (0..n).map(|_| u32::from(rng.bernoulli(0.5))).collect();
    let sign = |label: u32| if label == 1 { 1.0f32 } else { -1.0 };
    let x_y: Vec<f32> = y
        .iter()
        .map(|&label| (rng.normal() * 0.12 - 1.0) * sign(label))
        .collect();
    let mut x_a: Vec<f32> = y
        .iter()
        .map(|&label| (rng.normal() * 0.12 - 1.0) * sign(label))
        .collect();
    for i in rng.choice(n, minority_count(n, majority)) {
        x_a[i] = -x_a[i];
    }
    let mut x = try_zeros(n * d, "interpretable features")?;
    for i in 0..n {
        let row = &mut x[i * d..(i + 1) * d];
        row[0] = x_y[i];
        row[1] = cfg.spurious_scale * x_a[i];
    }
    if cfg.sigma_eps != 0.0 {
        fill_noise(&mut rng, &mut x, d, 2, cfg.sigma_eps);
    }
    let a: Vec<u32> = x_a.iter().map(|&v| u32::from(v < 0.0)).collect();
    Split::new(x, d, y, Some(a))
}

/// Columns `from..d` of every row of `x` (`d` columns) set to `scale · normal()`, drawn in row
/// order as a loop over rows and columns draws them, a block of rows at a time
/// ([`Rng::fill_normals`]).
fn fill_noise(rng: &mut Rng, x: &mut [f32], d: usize, from: usize, scale: f32) {
    let width = d.saturating_sub(from);
    if width == 0 {
        return;
    }
    let rows = (1 << 16) / width + 1;
    let mut noise = vec![0.0f32; rows * width];
    for block in x.chunks_mut(rows * d) {
        let noise = &mut noise[..block.len() / d * width];
        rng.fill_normals(noise);
        for (row, noise) in block.chunks_exact_mut(d).zip(noise.chunks_exact(width)) {
            for (v, &e) in row[from..].iter_mut().zip(noise) {
                *v = scale * e;
            }
        }
    }
}

/// The interpretable data set of Figure 1 (see the module docs for the exact recipe).
///
/// Errors before drawing anything when the three splits would hold more than
/// [`MAX_GENERATED_VALUES`](super::MAX_GENERATED_VALUES) feature values (`3 n d`).
pub fn interpretable(cfg: &InterpretableConfig) -> Result<Dataset> {
    if cfg.n == 0 {
        return Err(Error::arg("n", "need at least one example per split"));
    }
    if cfg.d < 2 {
        return Err(Error::arg(
            "d",
            format!(
                "{} < 2: the core and spurious features need two columns",
                cfg.d
            ),
        ));
    }
    check_generated_size(
        "n",
        &format!("3 splits × {} examples", cfg.n),
        3 * cfg.n as u128,
        cfg.d,
    )?;
    check_probability("train_majority", cfg.train_majority)?;
    check_probability("eval_majority", cfg.eval_majority)?;
    if !cfg.spurious_scale.is_finite() {
        return Err(Error::arg("spurious_scale", "must be finite"));
    }
    check_finite_nonneg("sigma_eps", cfg.sigma_eps)?;
    let root = Rng::new(cfg.seed);
    // Each split from its own stream: they are drawn side by side.
    let split = |majority: f64, stream: u64| interpretable_split(cfg, majority, root.fork(stream));
    let (train, (valid, test)) = rayon::join(
        || split(cfg.train_majority, 0),
        || {
            rayon::join(
                || split(cfg.eval_majority, 1),
                || split(cfg.eval_majority, 2),
            )
        },
    );
    let (train, valid, test) = (train?, valid?, test?);
    let ds = Dataset {
        name: "interpretable".into(),
        classes: 2,
        n_attr: 2,
        train,
        valid,
        test,
    };
    ds.validate()?;
    Ok(ds)
}

/// `true` for the examples whose group attribute disagrees with the label (`a ≠ y`): the
/// minority of the interpretable and Waterbirds-like sets.
pub fn is_minority(split: &Split) -> Vec<bool> {
    split.y.iter().zip(&split.a).map(|(y, a)| y != a).collect()
}

/// Columns 0 and 1 of every row: `x_y` and the scaled spurious feature `spurious_scale * x_a`
/// of the interpretable set. Empty vectors when the split has fewer than two features.
pub fn core_spurious_columns(split: &Split) -> (Vec<f32>, Vec<f32>) {
    if split.d < 2 {
        return (Vec::new(), Vec::new());
    }
    (0..split.n)
        .map(|i| (split.x[i * split.d], split.x[i * split.d + 1]))
        .unzip()
}

/// Configuration of the good/bad/ugly regression (Figure 3).
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionConfig {
    /// Points of the evaluation grid.
    pub n_grid: usize,
    /// Training points, at evenly spaced grid indices.
    pub n_train: usize,
    pub lo: f32,
    pub hi: f32,
    /// Standard deviation of the label noise.
    pub label_noise: f32,
    /// Extra input coordinates (noise on training points, 0 on the grid).
    pub extra_dims: usize,
    /// Standard deviation of the extra coordinates of the training points.
    pub sigma_eps: f32,
    pub seed: u64,
}

impl Default for RegressionConfig {
    /// The paper's setting with `sigma_eps = 1e-4` ("good" memorization).
    fn default() -> Self {
        RegressionConfig {
            n_grid: 1000,
            n_train: 20,
            lo: -1.5,
            hi: 1.5,
            label_noise: 0.08,
            extra_dims: 30,
            sigma_eps: 1e-4,
            seed: 0,
        }
    }
}

impl RegressionConfig {
    /// `sigma_eps = 1e-4`: the model parks the label noise in the extra coordinates.
    pub fn good(seed: u64) -> Self {
        RegressionConfig {
            sigma_eps: 1e-4,
            seed,
            ..Default::default()
        }
    }

    /// `sigma_eps = 1e-3`: fitting through the extra coordinates is fastest and generalizes
    /// worst.
    pub fn bad(seed: u64) -> Self {
        RegressionConfig {
            sigma_eps: 1e-3,
            seed,
            ..Default::default()
        }
    }

    /// `sigma_eps = 0`: the model bends `f` through every noisy label.
    pub fn ugly(seed: u64) -> Self {
        RegressionConfig {
            sigma_eps: 0.0,
            seed,
            ..Default::default()
        }
    }
}

/// Training set and evaluation grid of the good/bad/ugly regression.
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionData {
    /// Row-major `n_train × d` inputs `[x, extra...]`.
    pub train_x: Vec<f32>,
    /// Noisy targets `f(x) + label_noise * N(0,1)`.
    pub train_y: Vec<f32>,
    /// Row-major `n_grid × d` inputs `[x, 0...]`.
    pub grid_x: Vec<f32>,
    /// The true function on the grid.
    pub grid_f: Vec<f32>,
    /// Grid index of every training point.
    pub train_idx: Vec<usize>,
    /// Input dimension, `1 + extra_dims`.
    pub d: usize,
}

/// The target of Figure 3, `tanh(x) + 0.5 * tanh(-5x)`.
pub fn regression_target(x: f64) -> f64 {
    x.tanh() + 0.5 * (-5.0 * x).tanh()
}

/// `n_train` evenly spaced indices into `0..n_grid`: `i * (n_grid - 1) / (n_train - 1)` in
/// integer arithmetic (`[0]` when `n_train == 1`). Distinct whenever `n_train <= n_grid`.
pub fn training_indices(n_grid: usize, n_train: usize) -> Vec<usize> {
    if n_train <= 1 {
        return vec![0; n_train];
    }
    (0..n_train)
        .map(|i| i * (n_grid - 1) / (n_train - 1))
        .collect()
}

/// The good/bad/ugly regression data (see the module docs).
///
/// Errors before drawing anything when the grid and the training points would hold more
/// than [`MAX_GENERATED_VALUES`](super::MAX_GENERATED_VALUES) input values.
pub fn good_bad_ugly(cfg: &RegressionConfig) -> Result<RegressionData> {
    if cfg.n_grid < 2 {
        return Err(Error::arg("n_grid", format!("{} < 2", cfg.n_grid)));
    }
    if cfg.n_train == 0 || cfg.n_train > cfg.n_grid {
        return Err(Error::arg(
            "n_train",
            format!("{} must be in 1..={}", cfg.n_train, cfg.n_grid),
        ));
    }
    if !(cfg.lo.is_finite() && cfg.hi.is_finite() && cfg.lo < cfg.hi) {
        return Err(Error::arg(
            "lo/hi",
            format!("need finite lo < hi, got [{}, {}]", cfg.lo, cfg.hi),
        ));
    }
    check_finite_nonneg("label_noise", cfg.label_noise)?;
    check_finite_nonneg("sigma_eps", cfg.sigma_eps)?;
    let rows = cfg.n_grid as u128 + cfg.n_train as u128;
    let d = cfg.extra_dims.checked_add(1).ok_or_else(|| {
        Error::arg(
            "extra_dims",
            format!("{} leaves no room for the input coordinate", cfg.extra_dims),
        )
    })?;
    check_generated_size(
        "n_grid",
        &format!("{} grid + {} training points", cfg.n_grid, cfg.n_train),
        rows,
        d,
    )?;

    let (lo, hi) = (cfg.lo as f64, cfg.hi as f64);
    let grid: Vec<f64> = (0..cfg.n_grid)
        .map(|j| lo + (hi - lo) * j as f64 / (cfg.n_grid - 1) as f64)
        .collect();
    let mut grid_x = try_zeros(cfg.n_grid * d, "regression grid")?;
    for (j, &g) in grid.iter().enumerate() {
        grid_x[j * d] = g as f32;
    }
    let grid_f: Vec<f32> = grid.iter().map(|&g| regression_target(g) as f32).collect();

    let train_idx = training_indices(cfg.n_grid, cfg.n_train);
    let mut rng = Rng::new(cfg.seed).fork(0);
    let mut train_x = try_zeros(cfg.n_train * d, "regression training inputs")?;
    for (r, &j) in train_idx.iter().enumerate() {
        train_x[r * d] = grid[j] as f32;
    }
    fill_noise(&mut rng, &mut train_x, d, 1, cfg.sigma_eps);
    let train_y: Vec<f32> = train_idx
        .iter()
        .map(|&j| grid_f[j] + cfg.label_noise * rng.normal())
        .collect();
    Ok(RegressionData {
        train_x,
        train_y,
        grid_x,
        grid_f,
        train_idx,
        d,
    })
}

/// Configuration of the Waterbirds-shaped synthetic features (defaults explained in the
/// module docs). Group counts are indexed by `g = 2y + a`.
#[derive(Clone, Debug, PartialEq)]
pub struct WaterbirdsLikeConfig {
    pub d: usize,
    pub train_counts: [usize; 4],
    pub valid_counts: [usize; 4],
    pub test_counts: [usize; 4],
    /// Mean and standard deviation of the per-example core coefficient `c`.
    pub core_mean: f32,
    pub core_std: f32,
    /// Mean and standard deviation of the per-example spurious coefficient `s`.
    pub spurious_mean: f32,
    pub spurious_std: f32,
    /// Expected norm of the isotropic per-example noise.
    pub noise_norm: f32,
    pub seed: u64,
}

impl Default for WaterbirdsLikeConfig {
    fn default() -> Self {
        WaterbirdsLikeConfig {
            d: 2048,
            train_counts: [3498, 184, 56, 1057],
            valid_counts: [467, 466, 133, 133],
            test_counts: [2255, 2255, 642, 642],
            core_mean: 2.0,
            core_std: 1.0,
            spurious_mean: 5.0,
            spurious_std: 0.5,
            noise_norm: 15.0,
            seed: 0,
        }
    }
}

impl WaterbirdsLikeConfig {
    /// The imperfect-inference variant (`waterbirds-like:imperfect`): the default set with a
    /// weaker, more variable background, `spurious_mean = 2.5`, `spurious_std = 1.5` (see the
    /// module docs).
    pub fn imperfect(seed: u64) -> Self {
        WaterbirdsLikeConfig {
            spurious_mean: 2.5,
            spurious_std: 1.5,
            seed,
            ..Default::default()
        }
    }

    /// Applies comma-separated options (the `waterbirds-like:OPTIONS` data spec), in order:
    /// `imperfect` ([`WaterbirdsLikeConfig::imperfect`]'s background), and `key=value` with
    /// keys `core` (`core_mean`), `core_std`, `spurious` (`spurious_mean`), `spurious_std`,
    /// `noise` (`noise_norm`) (finite numbers) and `d` (a whole number). Ranges are checked when
    /// the data are drawn ([`waterbirds_like`]).
    pub fn apply_options(&mut self, options: &str) -> Result<()> {
        for kv in options.split(',') {
            if kv.trim() == "imperfect" {
                let preset = WaterbirdsLikeConfig::imperfect(self.seed);
                self.spurious_mean = preset.spurious_mean;
                self.spurious_std = preset.spurious_std;
                continue;
            }
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::arg("data", format!("`{kv}`: expected `imperfect` or key=value"))
            })?;
            let (k, v) = (k.trim(), v.trim());
            let num = || -> Result<f32> {
                match v.parse::<f32>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => Err(Error::arg(
                        "data",
                        format!("`{k}={v}`: `{k}` must be a finite number"),
                    )),
                }
            };
            match k {
                "core" | "core_mean" => self.core_mean = num()?,
                "core_std" => self.core_std = num()?,
                "spurious" | "spurious_mean" => self.spurious_mean = num()?,
                "spurious_std" => self.spurious_std = num()?,
                "noise" | "noise_norm" => self.noise_norm = num()?,
                "d" => {
                    self.d = v.parse::<usize>().map_err(|_| {
                        Error::arg("data", format!("`d={v}`: `d` must be a whole number"))
                    })?
                }
                other => {
                    return Err(Error::arg(
                        "data",
                        format!(
                            "unknown waterbirds-like option `{other}` (imperfect, core, \
                             core_std, spurious, spurious_std, noise, d)"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The unit core direction `u_y` and unit spurious direction `u_a` (orthogonal) that
/// [`waterbirds_like`] uses for `cfg.seed`: Gaussian draws, Gram–Schmidt in f64.
pub fn waterbirds_like_directions(cfg: &WaterbirdsLikeConfig) -> Result<[Vec<f32>; 2]> {
    if cfg.d < 2 {
        return Err(Error::arg(
            "d",
            format!("{} < 2: two orthogonal directions are needed", cfg.d),
        ));
    }
    check_generated_size("d", "2 directions", 2, cfg.d)?;
    let mut rng = Rng::new(cfg.seed).fork(3);
    let g1: Vec<f64> = (0..cfg.d).map(|_| rng.normal() as f64).collect();
    let g2: Vec<f64> = (0..cfg.d).map(|_| rng.normal() as f64).collect();
    let unit = |v: Vec<f64>| -> Result<Vec<f64>> {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(Error::Data("degenerate random direction".into()));
        }
        Ok(v.into_iter().map(|x| x / norm).collect())
    };
    let u_y = unit(g1)?;
    let dot: f64 = g2.iter().zip(&u_y).map(|(a, b)| a * b).sum();
    let u_a = unit(g2.iter().zip(&u_y).map(|(g, u)| g - dot * u).collect())?;
    Ok([
        u_y.into_iter().map(|v| v as f32).collect(),
        u_a.into_iter().map(|v| v as f32).collect(),
    ])
}

fn waterbirds_split(
    cfg: &WaterbirdsLikeConfig,
    counts: &[usize; 4],
    dirs: &[Vec<f32>; 2],
    mut rng: Rng,
) -> Result<Split> {
    let d = cfg.d;
    let laid_out: Vec<u32> = counts
        .iter()
        .enumerate()
        .flat_map(|(g, &c)| std::iter::repeat_n(g as u32, c))
        .collect();
    let groups: Vec<u32> = rng
        .permutation(laid_out.len())
        .into_iter()
        .map(|i| laid_out[i])
        .collect();
    let n = groups.len();
    let noise_std = cfg.noise_norm / (d as f32).sqrt();
    let mut x = try_zeros(n * d, "waterbirds-like features")?;
    for (i, &g) in groups.iter().enumerate() {
        let (y, a) = (g / 2, g % 2);
        let core = (cfg.core_mean + cfg.core_std * rng.normal()) * (2.0 * y as f32 - 1.0);
        let spurious =
            (cfg.spurious_mean + cfg.spurious_std * rng.normal()) * (2.0 * a as f32 - 1.0);
        let row = &mut x[i * d..(i + 1) * d];
        for ((v, &uy), &ua) in row.iter_mut().zip(&dirs[0]).zip(&dirs[1]) {
            *v = core * uy + spurious * ua + noise_std * rng.normal();
        }
    }
    let y = groups.iter().map(|g| g / 2).collect();
    let a = groups.iter().map(|g| g % 2).collect();
    Split::new(x, d, y, Some(a))
}

/// Synthetic features with Waterbirds' shape and group structure (see the module docs).
///
/// Errors before drawing anything when the three splits would hold more than
/// [`MAX_GENERATED_VALUES`](super::MAX_GENERATED_VALUES) feature values.
pub fn waterbirds_like(cfg: &WaterbirdsLikeConfig) -> Result<Dataset> {
    let mut rows = 0u128;
    for (name, counts) in [
        ("train_counts", &cfg.train_counts),
        ("valid_counts", &cfg.valid_counts),
        ("test_counts", &cfg.test_counts),
    ] {
        let total: u128 = counts.iter().map(|&c| c as u128).sum();
        if total == 0 {
            return Err(Error::arg(name, "all group counts are 0"));
        }
        rows += total;
    }
    check_generated_size(
        "d",
        &format!("{rows} examples (the group counts of the three splits)"),
        rows,
        cfg.d,
    )?;
    for (name, v) in [
        ("core_mean", cfg.core_mean),
        ("spurious_mean", cfg.spurious_mean),
    ] {
        if !v.is_finite() {
            return Err(Error::arg(name, format!("{v} is not finite")));
        }
    }
    check_finite_nonneg("core_std", cfg.core_std)?;
    check_finite_nonneg("spurious_std", cfg.spurious_std)?;
    check_finite_nonneg("noise_norm", cfg.noise_norm)?;
    let dirs = waterbirds_like_directions(cfg)?;
    let root = Rng::new(cfg.seed);
    let ds = Dataset {
        name: "waterbirds_like".into(),
        classes: 2,
        n_attr: 2,
        train: waterbirds_split(cfg, &cfg.train_counts, &dirs, root.fork(0))?,
        valid: waterbirds_split(cfg, &cfg.valid_counts, &dirs, root.fork(1))?,
        test: waterbirds_split(cfg, &cfg.test_counts, &dirs, root.fork(2))?,
    };
    ds.validate()?;
    Ok(ds)
}
