//! Data sets: generators, batching, group balancing, ColorMNIST and feature files.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memaware::data::batch::{group_weights_balanced, subsample_groups, Batcher, WeightedSampler};
use memaware::data::colormnist::{
    color_mnist, colours, load_mnist_idx, load_mnist_sample, read_idx_images,
    with_colour_attribute, ColorMnistConfig, ColorMnistSplit, COLOR_MNIST_DIM, MNIST_PIXELS,
};
use memaware::data::features::{
    load_features, read_npy_f32, save_features_npy, save_features_safetensors, write_npy_f32,
};
use memaware::data::synthetic::{
    core_spurious_columns, good_bad_ugly, interpretable, is_minority, minority_count,
    regression_target, waterbirds_like, waterbirds_like_directions, InterpretableConfig,
    RegressionConfig, WaterbirdsLikeConfig,
};
use memaware::data::{Dataset, Split};
use memaware::{Error, Rng};
use safetensors::tensor::{Dtype, TensorView};

// ---------------------------------------------------------------------------------------------
// helpers

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memaware-data-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            tag
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts an `Error::File` for `path` whose tensor and message contain the given parts.
fn assert_file_error<T: std::fmt::Debug>(
    r: memaware::Result<T>,
    path: &Path,
    tensor: &str,
    words: &str,
) {
    match r {
        Err(Error::File {
            path: p,
            tensor: t,
            problem,
        }) => {
            assert_eq!(p, path, "error names the wrong file ({t}: {problem})");
            assert!(
                t.contains(tensor),
                "tensor `{t}` should name `{tensor}` ({problem})"
            );
            assert!(
                problem.contains(words),
                "problem `{problem}` should mention `{words}`"
            );
        }
        other => panic!("expected Error::File for {}, got {other:?}", path.display()),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n as f64
}

/// `|observed - p| <= 5` binomial standard errors of a proportion over `n` trials.
fn assert_proportion(observed: f64, p: f64, n: usize, what: &str) {
    let se = (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (observed - p).abs() <= 5.0 * se,
        "{what}: {observed} vs {p} (n = {n}, 5 SE = {})",
        5.0 * se
    );
}

// ---------------------------------------------------------------------------------------------
// Figure 1

#[test]
fn interpretable_follows_the_recipe() {
    let cfg = InterpretableConfig::default();
    let ds = interpretable(&cfg).unwrap();
    assert_eq!((ds.classes, ds.n_attr, ds.d()), (2, 2, 1800));
    assert_eq!(
        minority_count(1000, 0.9),
        99,
        "(1 - 0.9) * 1000 truncates to 99"
    );
    for (split, want_minority) in [(&ds.train, 99), (&ds.valid, 500), (&ds.test, 500)] {
        assert_eq!(split.n, 1000);
        let minority = is_minority(split);
        assert_eq!(minority.iter().filter(|&&m| m).count(), want_minority);
        let (core, spurious) = core_spurious_columns(split);
        for i in 0..split.n {
            // Class 1 sits at x_y ≈ -1; the minority is where x_y and x_a disagree in sign.
            assert_eq!(core[i] < 0.0, split.y[i] == 1, "row {i}");
            assert_eq!(core[i] * spurious[i] < 0.0, minority[i], "row {i}");
            assert_eq!(split.a[i], u32::from(spurious[i] < 0.0));
        }
        // |x_y| = |N * 0.12 - 1| has mean ≈ 1 and second moment 1 + 0.12²; the spurious
        // column is five times larger.
        let n = split.n as f64;
        let m_core = mean(core.iter().map(|&v| v.abs() as f64));
        let m_spur = mean(spurious.iter().map(|&v| v.abs() as f64 / 5.0));
        let tol = 5.0 * 0.12 / n.sqrt();
        assert!((m_core - 1.0).abs() < tol, "core mean {m_core}");
        assert!((m_spur - 1.0).abs() < tol, "spurious mean {m_spur}");
        let sq_core = mean(core.iter().map(|&v| (v as f64).powi(2)));
        assert!(
            (sq_core - 1.0144).abs() < 5.0 * 0.24 / n.sqrt(),
            "core norm² / n {sq_core}"
        );
        // Noise columns: squared norm per column ≈ n * sigma_eps².
        let noise_sq =
            mean((0..split.n).flat_map(|i| split.row(i)[2..].iter().map(|&v| (v as f64).powi(2))));
        let count = split.n * (split.d - 2);
        assert!(
            (noise_sq - 0.25).abs() < 5.0 * 0.25 * (2.0 / count as f64).sqrt(),
            "noise second moment {noise_sq}"
        );
        let ones = split.y.iter().filter(|&&y| y == 1).count();
        assert_proportion(ones as f64 / n, 0.5, split.n, "share of class 1");
    }
}

#[test]
fn interpretable_is_deterministic_and_splits_have_their_own_streams() {
    let small = |seed, sigma_eps| InterpretableConfig {
        n: 200,
        d: 40,
        sigma_eps,
        seed,
        ..Default::default()
    };
    let a = interpretable(&small(3, 0.5)).unwrap();
    assert_eq!(a, interpretable(&small(3, 0.5)).unwrap());
    let b = interpretable(&small(4, 0.5)).unwrap();
    assert_ne!(a.train, b.train);
    // The reference's seed + {0, 1, 2} would make seed 4's training set seed 3's validation set.
    assert_ne!(b.train.x, a.valid.x);
    assert_ne!(a.train.x, a.valid.x);
    // sigma_eps = 0 zeroes the noise without moving any other draw.
    let quiet = interpretable(&small(3, 0.0)).unwrap();
    for (s0, s5) in [(&quiet.train, &a.train), (&quiet.test, &a.test)] {
        assert_eq!(s0.y, s5.y);
        assert_eq!(s0.a, s5.a);
        assert_eq!(core_spurious_columns(s0), core_spurious_columns(s5));
        assert!((0..s0.n).all(|i| s0.row(i)[2..].iter().all(|&v| v == 0.0)));
    }
    assert!(interpretable(&InterpretableConfig {
        d: 1,
        ..small(0, 0.5)
    })
    .is_err());
    assert!(interpretable(&InterpretableConfig {
        train_majority: 1.5,
        ..small(0, 0.5)
    })
    .is_err());
    assert!(interpretable(&InterpretableConfig {
        sigma_eps: f32::NAN,
        ..small(0, 0.5)
    })
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// Figure 3

#[test]
fn regression_data_has_the_papers_layout() {
    let good = good_bad_ugly(&RegressionConfig::good(5)).unwrap();
    let d = 31;
    assert_eq!(good.d, d);
    assert_eq!(good.train_x.len(), 20 * d);
    assert_eq!(good.train_y.len(), 20);
    assert_eq!(good.grid_x.len(), 1000 * d);
    assert_eq!(good.grid_f.len(), 1000);
    // NumPy's linspace(0, 999, 20).astype(int), computed in floating point.
    let numpy_like: Vec<usize> = (0..20)
        .map(|i| (i as f64 * (999.0 / 19.0)) as usize)
        .collect();
    assert_eq!(good.train_idx, numpy_like);
    assert_eq!((good.train_idx[0], good.train_idx[19]), (0, 999));
    assert!(good
        .train_idx
        .windows(2)
        .all(|w| (52..=53).contains(&(w[1] - w[0]))));
    for j in 0..1000 {
        let x = good.grid_x[j * d];
        assert!((x as f64 - (-1.5 + 3.0 * j as f64 / 999.0)).abs() < 1e-6);
        assert!(good.grid_x[j * d + 1..(j + 1) * d]
            .iter()
            .all(|&v| v == 0.0));
        assert!((good.grid_f[j] as f64 - regression_target(x as f64)).abs() < 1e-6);
    }
    for (r, &j) in good.train_idx.iter().enumerate() {
        assert_eq!(good.train_x[r * d], good.grid_x[j * d]);
        assert!((good.train_y[r] - good.grid_f[j]).abs() < 5.0 * 0.08);
    }
    // The three settings share labels; only the scale of the extra coordinates differs.
    let bad = good_bad_ugly(&RegressionConfig::bad(5)).unwrap();
    let ugly = good_bad_ugly(&RegressionConfig::ugly(5)).unwrap();
    assert_eq!(good.train_y, bad.train_y);
    assert_eq!(good.train_y, ugly.train_y);
    let extra = |data: &memaware::data::synthetic::RegressionData| -> Vec<f32> {
        (0..20)
            .flat_map(|r| data.train_x[r * d + 1..(r + 1) * d].to_vec())
            .collect()
    };
    assert!(extra(&ugly).iter().all(|&v| v == 0.0));
    for (g, b) in extra(&good).iter().zip(extra(&bad)) {
        assert!(
            (b - 10.0 * g).abs() <= 1e-6 * b.abs().max(1e-9),
            "{b} vs 10 × {g}"
        );
    }
    let sd = mean(extra(&bad).iter().map(|&v| (v as f64).powi(2))).sqrt();
    assert!(
        (sd - 1e-3).abs() < 5.0 * 1e-3 / (2.0 * 600.0f64).sqrt(),
        "extra std {sd}"
    );
    assert_ne!(
        good.train_y,
        good_bad_ugly(&RegressionConfig::good(6)).unwrap().train_y
    );
    assert!(good_bad_ugly(&RegressionConfig {
        n_train: 1001,
        ..Default::default()
    })
    .is_err());
    assert!(good_bad_ugly(&RegressionConfig {
        lo: 2.0,
        hi: 1.0,
        ..Default::default()
    })
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// Waterbirds-like

#[test]
fn waterbirds_like_has_waterbirds_group_counts_and_the_designed_geometry() {
    let cfg = WaterbirdsLikeConfig::default();
    let ds = waterbirds_like(&cfg).unwrap();
    assert_eq!(ds.d(), 2048);
    assert_eq!((ds.train.n, ds.valid.n, ds.test.n), (4795, 1199, 5794));
    for (split, counts) in [
        (&ds.train, [3498, 184, 56, 1057]),
        (&ds.valid, [467, 466, 133, 133]),
        (&ds.test, [2255, 2255, 642, 642]),
    ] {
        assert_eq!(Split::counts(&split.groups(2), 4), counts.to_vec());
    }
    let [u_y, u_a] = waterbirds_like_directions(&cfg).unwrap();
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    assert!((dot(&u_y, &u_y) - 1.0).abs() < 1e-5);
    assert!((dot(&u_a, &u_a) - 1.0).abs() < 1e-5);
    assert!(dot(&u_y, &u_a).abs() < 1e-6);

    // Per group, the projections on u_y and u_a have means ±core_mean and ±spurious_mean;
    // their spread is the coefficient std plus the noise's share along one direction.
    let noise_sd = 15.0 / (2048.0f64).sqrt();
    let core_sd = (1.0 + noise_sd * noise_sd).sqrt();
    let spur_sd = (0.25 + noise_sd * noise_sd).sqrt();
    for split in [&ds.train, &ds.valid, &ds.test] {
        let groups = split.groups(2);
        for g in 0..4u32 {
            let rows: Vec<usize> = (0..split.n).filter(|&i| groups[i] == g).collect();
            let k = rows.len() as f64;
            let sy = if g / 2 == 1 { 1.0 } else { -1.0 };
            let sa = if g % 2 == 1 { 1.0 } else { -1.0 };
            let py = mean(rows.iter().map(|&i| dot(split.row(i), &u_y)));
            let pa = mean(rows.iter().map(|&i| dot(split.row(i), &u_a)));
            assert!(
                (py - 2.0 * sy).abs() < 5.0 * core_sd / k.sqrt(),
                "group {g}: core {py}"
            );
            assert!(
                (pa - 5.0 * sa).abs() < 5.0 * spur_sd / k.sqrt(),
                "group {g}: spurious {pa}"
            );
        }
        // Squared row norms ≈ c² + s² + noise_norm² = (4 + 1) + (25 + 0.25) + 225.
        let sq = mean((0..split.n).map(|i| dot(split.row(i), split.row(i))));
        assert!((sq - 255.25).abs() < 2.0, "mean squared norm {sq}");
    }
    // The spurious attribute agrees with the label on 95% of training examples and the core
    // direction classifies about Φ(2 / core_sd) of them, so neither alone separates the set.
    let agree = ds
        .train
        .y
        .iter()
        .zip(&ds.train.a)
        .filter(|(y, a)| y == a)
        .count();
    assert_eq!(agree, 3498 + 1057);
    let core_right = (0..ds.train.n)
        .filter(|&i| (dot(ds.train.row(i), &u_y) > 0.0) == (ds.train.y[i] == 1))
        .count() as f64
        / ds.train.n as f64;
    // Φ(2 / 1.052) = 0.9714.
    assert_proportion(core_right, 0.9714, ds.train.n, "core-direction accuracy");
    let small = WaterbirdsLikeConfig {
        d: 16,
        ..cfg.clone()
    };
    assert_eq!(
        waterbirds_like(&small).unwrap(),
        waterbirds_like(&small).unwrap()
    );
    assert_ne!(
        waterbirds_like(&small).unwrap().train.x,
        waterbirds_like(&WaterbirdsLikeConfig {
            seed: 1,
            ..small.clone()
        })
        .unwrap()
        .train
        .x
    );
    assert!(waterbirds_like(&WaterbirdsLikeConfig { d: 1, ..small }).is_err());
}

// ---------------------------------------------------------------------------------------------
// batching and balancing

#[test]
fn batcher_is_deterministic_covers_each_epoch_and_reshuffles() {
    let run = |seed| {
        let mut b = Batcher::new(10, 3, seed).unwrap();
        (0..12).map(|_| b.next_batch().to_vec()).collect::<Vec<_>>()
    };
    let batches = run(7);
    assert_eq!(batches, run(7));
    assert_ne!(batches, run(8));
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 3, 1].repeat(3));
    let epochs: Vec<Vec<usize>> = batches.chunks(4).map(|c| c.concat()).collect();
    for e in &epochs {
        let mut s = e.clone();
        s.sort_unstable();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);

    let mut b = Batcher::new(10, 3, 7).unwrap();
    assert_eq!(b.batches_per_epoch(), 4);
    for _ in 0..5 {
        b.next_batch();
    }
    assert_eq!(b.epoch(), 2);

    for bs in [10, 64] {
        let mut full = Batcher::new(10, bs, 1).unwrap();
        assert!(full.is_full_batch());
        for _ in 0..3 {
            assert_eq!(full.next_batch(), (0..10).collect::<Vec<_>>().as_slice());
        }
    }
    assert!(Batcher::new(0, 4, 0).is_err());
    assert!(Batcher::new(4, 0, 0).is_err());
}

#[test]
fn balanced_group_weights_give_every_present_group_the_same_mass() {
    // Group 3 is absent: it must not take a share.
    let mut groups = Vec::new();
    for (g, c) in [(0u32, 50usize), (1, 7), (2, 20), (4, 3)] {
        groups.extend(std::iter::repeat_n(g, c));
    }
    let w = group_weights_balanced(&groups, 5).unwrap();
    let n = groups.len() as f64;
    let mut mass = [0.0f64; 5];
    for (&g, &wi) in groups.iter().zip(&w) {
        mass[g as usize] += wi as f64;
    }
    for g in [0, 1, 2, 4] {
        assert!(
            (mass[g] - n / 4.0).abs() < 1e-4,
            "group {g} mass {}",
            mass[g]
        );
    }
    assert_eq!(mass[3], 0.0);
    assert!((w.iter().map(|&v| v as f64).sum::<f64>() - n).abs() < 1e-3);
    assert!(matches!(
        group_weights_balanced(&[], 4),
        Err(Error::Data(_))
    ));
    assert!(matches!(
        group_weights_balanced(&[0, 5], 4),
        Err(Error::IndexOutOfRange {
            index: 5,
            position: 1,
            ..
        })
    ));

    // Sampling with these weights draws the groups equally often.
    let draws = 200_000;
    let mut sampler = WeightedSampler::new(&w, 11).unwrap();
    let mut freq = [0usize; 5];
    for _ in 0..draws / 100 {
        for &i in sampler.next_batch(100) {
            freq[groups[i] as usize] += 1;
        }
    }
    for g in [0, 1, 2, 4] {
        assert_proportion(
            freq[g] as f64 / draws as f64,
            0.25,
            draws,
            "RWG group frequency",
        );
    }
    assert_eq!(freq[3], 0);
}

#[test]
fn weighted_sampler_draws_proportionally_and_never_zero_weights() {
    let w = [1.0f32, 0.0, 3.0, 0.0];
    let draws = 100_000;
    let mut s = WeightedSampler::new(&w, 3).unwrap();
    let picks: Vec<usize> = (0..draws).map(|_| s.sample()).collect();
    let mut again = WeightedSampler::new(&w, 3).unwrap();
    assert!(
        picks.iter().all(|&p| p == again.sample()),
        "same seed, same draws"
    );
    let count = |k| picks.iter().filter(|&&p| p == k).count();
    assert_eq!(count(1) + count(3), 0);
    assert_proportion(count(0) as f64 / draws as f64, 0.25, draws, "weight 1 of 4");
    assert!(WeightedSampler::new(&[], 0).is_err());
    assert!(WeightedSampler::new(&[0.0, 0.0], 0).is_err());
    assert!(WeightedSampler::new(&[1.0, -1.0], 0).is_err());
    assert!(WeightedSampler::new(&[1.0, f32::NAN], 0).is_err());
}

#[test]
fn subsampling_keeps_the_smallest_group_count_from_every_group() {
    let mut rng = Rng::new(4);
    let mut groups = Vec::new();
    for (g, c) in [(2u32, 20usize), (0, 50), (3, 7)] {
        groups.extend(std::iter::repeat_n(g, c));
    }
    let perm = rng.permutation(groups.len());
    let groups: Vec<u32> = perm.iter().map(|&i| groups[i]).collect();
    let kept = subsample_groups(&groups, 4, &mut Rng::new(9));
    assert_eq!(kept.len(), 21);
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    let kept_groups: Vec<u32> = kept.iter().map(|&i| groups[i]).collect();
    assert_eq!(Split::counts(&kept_groups, 4), vec![7, 0, 7, 7]);
    assert_eq!(kept, subsample_groups(&groups, 4, &mut Rng::new(9)));
    assert_ne!(kept, subsample_groups(&groups, 4, &mut Rng::new(10)));
    assert!(subsample_groups(&[], 4, &mut Rng::new(0)).is_empty());
}

// ---------------------------------------------------------------------------------------------
// ColorMNIST

/// A recognisable 28 × 28 image: pixel (r, c) of digit i.
fn pixel(i: usize, r: usize, c: usize) -> u8 {
    ((r * 28 + c + 7 * i) % 253) as u8
}

fn synthetic_digits(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let mut images = Vec::with_capacity(n * MNIST_PIXELS);
    for i in 0..n {
        for r in 0..28 {
            for c in 0..28 {
                images.push(pixel(i, r, c));
            }
        }
    }
    (images, labels)
}

fn idx_images(images: &[u8], n_header: u32, rows: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0803u32, n_header, rows, 28] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(images);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0801u32.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_files_load_with_full_validation() {
    let dir = TempDir::new("idx");
    let (train_img, train_lab) = synthetic_digits(60, 1);
    let (test_img, test_lab) = synthetic_digits(20, 2);
    // Training files gzipped, t10k plain, with the dotted Kaggle names.
    std::fs::write(
        dir.path("train-images-idx3-ubyte.gz"),
        gzip(&idx_images(&train_img, 60, 28)),
    )
    .unwrap();
    std::fs::write(
        dir.path("train-labels-idx1-ubyte.gz"),
        gzip(&idx_labels(&train_lab)),
    )
    .unwrap();
    std::fs::write(
        dir.path("t10k-images.idx3-ubyte"),
        idx_images(&test_img, 20, 28),
    )
    .unwrap();
    std::fs::write(dir.path("t10k-labels.idx1-ubyte"), idx_labels(&test_lab)).unwrap();
    let (images, labels) = load_mnist_idx(&dir.0).unwrap();
    assert_eq!(images, [train_img.clone(), test_img].concat());
    assert_eq!(labels, [train_lab.clone(), test_lab].concat());

    // A truncated image file: the header promises 10 images, the file holds 5.
    let bad = dir.path("truncated-images-idx3-ubyte");
    std::fs::write(&bad, idx_images(&train_img[..5 * MNIST_PIXELS], 10, 28)).unwrap();
    assert_file_error(read_idx_images(&bad), &bad, "images", "truncated");
    let err = read_idx_images(&bad).unwrap_err().to_string();
    assert!(
        err.contains("truncated-images-idx3-ubyte"),
        "message names the file: {err}"
    );
    // A truncated gzip stream names the file too.
    let gz = dir.path("cut.gz");
    let full = gzip(&idx_images(&train_img, 60, 28));
    std::fs::write(&gz, &full[..full.len() / 2]).unwrap();
    assert_file_error(read_idx_images(&gz), &gz, "gzip", "decompress");
    // Wrong magic (a label file read as images) and wrong image size.
    let labels_as_images = dir.path("labels-as-images");
    std::fs::write(&labels_as_images, idx_labels(&train_lab)).unwrap();
    assert_file_error(
        read_idx_images(&labels_as_images),
        &labels_as_images,
        "images",
        "magic",
    );
    let small = dir.path("small-images");
    std::fs::write(&small, idx_images(&train_img[..27 * 28], 1, 27)).unwrap();
    assert_file_error(read_idx_images(&small), &small, "images", "27 × 28");

    // Labels that are not digits, and a label count that disagrees with the images.
    let other = TempDir::new("idx-bad");
    std::fs::write(
        other.path("train-images-idx3-ubyte"),
        idx_images(&train_img, 60, 28),
    )
    .unwrap();
    let mut lab = train_lab.clone();
    lab[3] = 12;
    std::fs::write(other.path("train-labels-idx1-ubyte"), idx_labels(&lab)).unwrap();
    assert_file_error(
        load_mnist_idx(&other.0),
        &other.path("train-labels-idx1-ubyte"),
        "labels",
        "row 3",
    );
    std::fs::write(
        other.path("train-labels-idx1-ubyte"),
        idx_labels(&train_lab[..59]),
    )
    .unwrap();
    assert_file_error(
        load_mnist_idx(&other.0),
        &other.path("train-labels-idx1-ubyte"),
        "labels",
        "59 labels",
    );
    let empty = TempDir::new("idx-empty");
    assert!(matches!(load_mnist_idx(&empty.0), Err(Error::File { .. })));
}

#[test]
fn color_mnist_downsamples_and_colours_by_the_recipe() {
    let n = 20_000;
    let (images, digits) = synthetic_digits(n, 5);
    let cfg = ColorMnistConfig::default();
    let ds = color_mnist(&images, &digits, &cfg).unwrap();
    assert_eq!((ds.train.n, ds.valid.n, ds.test.n), (10_000, 5_000, 5_000));
    assert_eq!((ds.d(), ds.classes, ds.n_attr), (COLOR_MNIST_DIM, 2, 2));
    assert_eq!(ds, color_mnist(&images, &digits, &cfg).unwrap());

    // Every source digit appears once.
    let mut ids: Vec<u64> = [&ds.train, &ds.valid, &ds.test]
        .iter()
        .flat_map(|s| s.ids.clone())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());

    let mut label_flips = 0usize;
    for (name, split) in [("tr", &ds.train), ("va", &ds.valid), ("te", &ds.test)] {
        let colour = colours(split).unwrap();
        let mut disagree = [0usize; 2];
        let mut per_env = [0usize; 2];
        for (i, &colour_i) in colour.iter().enumerate() {
            let src = split.ids[i] as usize;
            let row = split.row(i);
            let (on, off) = if colour_i == 1 {
                (&row[196..], &row[..196])
            } else {
                (&row[..196], &row[196..])
            };
            assert!(
                off.iter().all(|&v| v == 0.0),
                "{name} row {i}: the other channel is zero"
            );
            for r in 0..14 {
                for c in 0..14 {
                    assert_eq!(on[r * 14 + c], pixel(src, 2 * r, 2 * c) as f32 / 255.0);
                }
            }
            let truth = u32::from(digits[src] < 5);
            label_flips += usize::from(split.y[i] != truth);
            let env = i % 2;
            per_env[env] += 1;
            disagree[env] += usize::from(colour_i != split.y[i]);
            match name {
                "tr" => assert_eq!(split.a[i], env as u32, "train a = environment"),
                _ => assert_eq!(split.a[i], colour_i, "{name}: a = colour"),
            }
        }
        if name == "te" {
            let rate = (disagree[0] + disagree[1]) as f64 / split.n as f64;
            assert_proportion(rate, 0.9, split.n, "test colour flips");
        } else {
            assert_proportion(
                disagree[0] as f64 / per_env[0] as f64,
                0.2,
                per_env[0],
                "env 0 colour flips",
            );
            assert_proportion(
                disagree[1] as f64 / per_env[1] as f64,
                0.1,
                per_env[1],
                "env 1 colour flips",
            );
        }
    }
    assert_proportion(label_flips as f64 / n as f64, 0.25, n, "label flips");

    let recoloured = with_colour_attribute(&ds).unwrap();
    assert_eq!(recoloured.train.a, colours(&ds.train).unwrap());
    assert_eq!(recoloured.valid, ds.valid);

    assert!(color_mnist(&images[1..], &digits, &cfg).is_err());
    assert!(color_mnist(
        &images,
        &digits,
        &ColorMnistConfig {
            label_noise: 1.5,
            ..cfg.clone()
        }
    )
    .is_err());
    let bad_shares = ColorMnistSplit::Shuffled {
        train_share: 0.8,
        valid_share: 0.2,
    };
    assert!(color_mnist(
        &images,
        &digits,
        &ColorMnistConfig {
            split: bad_shares,
            ..cfg.clone()
        }
    )
    .is_err());
    assert!(
        color_mnist(&images, &digits, &ColorMnistConfig::xrm(0)).is_err(),
        "XRM split needs 70000 digits"
    );
}

#[test]
fn color_mnist_xrm_split_uses_xrms_sizes() {
    let images = vec![0u8; 70_000 * MNIST_PIXELS];
    let digits: Vec<u8> = (0..70_000).map(|i| (i % 10) as u8).collect();
    let ds = color_mnist(&images, &digits, &ColorMnistConfig::xrm(1)).unwrap();
    assert_eq!(
        (ds.train.n, ds.valid.n, ds.test.n),
        (50_000, 10_000, 10_000)
    );
    let mut tr = ds.train.ids.clone();
    assert_ne!(
        tr,
        (0..50_000u64).collect::<Vec<_>>(),
        "training digits are shuffled"
    );
    tr.sort_unstable();
    assert_eq!(tr, (0..50_000u64).collect::<Vec<_>>());
    assert_eq!(ds.valid.ids, (50_000..60_000u64).collect::<Vec<_>>());
    assert_eq!(ds.test.ids, (60_000..70_000u64).collect::<Vec<_>>());
}

#[test]
fn mnist_sample_loads_and_builds_color_mnist() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist_5k.csv.gz");
    if !path.exists() {
        eprintln!(
            "SKIPPED: {} is missing; run scripts/fetch-mnist-sample.sh",
            path.display()
        );
        return;
    }
    let (images, labels) = load_mnist_sample(&path).unwrap();
    assert_eq!((images.len(), labels.len()), (5000 * 784, 5000));
    for digit in 0..10u8 {
        assert_eq!(labels.iter().filter(|&&l| l == digit).count(), 500);
    }
    assert!(images.contains(&255));
    let ds = color_mnist(&images, &labels, &ColorMnistConfig::default()).unwrap();
    assert_eq!((ds.train.n, ds.valid.n, ds.test.n), (2500, 1250, 1250));
    assert!(ds.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));

    let dir = TempDir::new("csv");
    let bad = dir.path("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{}\n{}\n",
            vec!["0"; 785].join(","),
            vec!["0"; 700].join(",")
        ),
    )
    .unwrap();
    assert_file_error(load_mnist_sample(&bad), &bad, "row 2", "700 fields");
    std::fs::write(&bad, format!("{},11\n", vec!["0"; 784].join(","))).unwrap();
    assert_file_error(load_mnist_sample(&bad), &bad, "row 1", "label 11");
}

// ---------------------------------------------------------------------------------------------
// feature files

fn small_dataset() -> Dataset {
    let mut ds = waterbirds_like(&WaterbirdsLikeConfig {
        d: 6,
        train_counts: [9, 3, 2, 7],
        valid_counts: [4, 3, 3, 4],
        test_counts: [5, 5, 4, 4],
        ..Default::default()
    })
    .unwrap();
    ds.name = "tiny".into();
    ds.test.ids = (0..ds.test.n as u64).map(|i| 1000 + 3 * i).collect();
    ds
}

type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn write_safetensors(path: &Path, tensors: &[RawTensor], meta: Option<HashMap<String, String>>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, dt, shape, data)| {
            (
                k.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, meta).unwrap()).unwrap();
}

/// The tensors of `ds` in the safetensors layout, as raw parts that tests can break.
fn raw_tensors(ds: &Dataset) -> Vec<RawTensor> {
    let mut out = Vec::new();
    for (s, split) in [("tr", &ds.train), ("va", &ds.valid), ("te", &ds.test)] {
        out.push((
            format!("{s}.x"),
            Dtype::F32,
            vec![split.n, split.d],
            split.x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        out.push((
            format!("{s}.y"),
            Dtype::I64,
            vec![split.n],
            split
                .y
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
        ));
        out.push((
            format!("{s}.a"),
            Dtype::I64,
            vec![split.n, 1],
            split
                .a
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
        ));
    }
    out
}

fn set(tensors: &mut [RawTensor], key: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) {
    let t = tensors.iter_mut().find(|t| t.0 == key).unwrap();
    *t = (key.to_string(), dtype, shape, data);
}

#[test]
fn safetensors_features_round_trip_and_convert_dtypes() {
    let dir = TempDir::new("st");
    let ds = small_dataset();
    let path = dir.path("tiny.safetensors");
    save_features_safetensors(&ds, &path).unwrap();
    assert_eq!(load_features(&path, "tiny").unwrap(), ds);

    // f16 / bf16 features, int32 / uint8 labels, [n, 1] attributes, no ids.
    let mut t = raw_tensors(&ds);
    let tr = &ds.train;
    set(
        &mut t,
        "tr.x",
        Dtype::F16,
        vec![tr.n, tr.d],
        tr.x.iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    );
    set(
        &mut t,
        "va.x",
        Dtype::BF16,
        vec![ds.valid.n, ds.valid.d],
        ds.valid
            .x
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    );
    set(
        &mut t,
        "tr.y",
        Dtype::I32,
        vec![tr.n],
        tr.y.iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
    );
    set(
        &mut t,
        "va.y",
        Dtype::U8,
        vec![ds.valid.n],
        ds.valid.y.iter().map(|&v| v as u8).collect(),
    );
    let converted = dir.path("converted.safetensors");
    write_safetensors(&converted, &t, None);
    let got = load_features(&converted, "conv").unwrap();
    assert_eq!((got.classes, got.n_attr), (2, 2));
    assert_eq!(got.train.y, tr.y);
    assert_eq!(got.valid.y, ds.valid.y);
    assert_eq!(
        got.test.ids,
        (0..ds.test.n as u64).collect::<Vec<_>>(),
        "ids default to rows"
    );
    for (g, w) in got.train.x.iter().zip(&tr.x) {
        assert_eq!(*g, half::f16::from_f32(*w).to_f32());
    }
    for (g, w) in got.valid.x.iter().zip(&ds.valid.x) {
        assert_eq!(*g, half::bf16::from_f32(*w).to_f32());
    }
}

#[test]
fn safetensors_problems_name_the_file_and_tensor() {
    let dir = TempDir::new("st-bad");
    let ds = small_dataset();
    let path = dir.path("bad.safetensors");
    let check = |tensors: &[RawTensor],
                 meta: Option<HashMap<String, String>>,
                 tensor: &str,
                 words: &str| {
        write_safetensors(&path, tensors, meta);
        assert_file_error(load_features(&path, "bad"), &path, tensor, words);
    };
    let (n_tr, n_va, n_te, d) = (ds.train.n, ds.valid.n, ds.test.n, ds.d());

    let mut missing = raw_tensors(&ds);
    missing.retain(|t| t.0 != "va.y");
    check(&missing, None, "va.y", "missing");

    let mut float_labels = raw_tensors(&ds);
    set(
        &mut float_labels,
        "tr.y",
        Dtype::F32,
        vec![n_tr],
        vec![0; 4 * n_tr],
    );
    check(&float_labels, None, "tr.y", "dtype F32");

    let mut int_features = raw_tensors(&ds);
    set(
        &mut int_features,
        "te.x",
        Dtype::I32,
        vec![n_te, d],
        vec![0; 4 * n_te * d],
    );
    check(&int_features, None, "te.x", "dtype I32");

    let mut short = raw_tensors(&ds);
    set(
        &mut short,
        "tr.a",
        Dtype::I64,
        vec![n_tr - 1],
        vec![0; 8 * (n_tr - 1)],
    );
    check(&short, None, "tr.a", "rows");

    let mut rank1 = raw_tensors(&ds);
    set(
        &mut rank1,
        "va.x",
        Dtype::F32,
        vec![n_va * d],
        ds.valid.x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    check(&rank1, None, "va.x", "matrix");

    let mut narrow = raw_tensors(&ds);
    set(
        &mut narrow,
        "va.x",
        Dtype::F32,
        vec![n_va, d - 1],
        vec![0; 4 * n_va * (d - 1)],
    );
    check(&narrow, None, "va.x", "features per example");

    let mut out_of_range = raw_tensors(&ds);
    let mut y: Vec<i64> = ds.test.y.iter().map(|&v| v as i64).collect();
    y[2] = 5;
    set(
        &mut out_of_range,
        "te.y",
        Dtype::I64,
        vec![n_te],
        y.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let declared = HashMap::from([("classes".to_string(), "2".to_string())]);
    check(
        &out_of_range,
        Some(declared),
        "te.y",
        "value 5 at row 2 is out of range",
    );

    let mut negative = raw_tensors(&ds);
    y[2] = -1;
    set(
        &mut negative,
        "te.y",
        Dtype::I64,
        vec![n_te],
        y.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    check(&negative, None, "te.y", "negative value -1 at row 2");

    let mut nan = raw_tensors(&ds);
    let mut x = ds.test.x.clone();
    x[d + 3] = f32::NAN;
    set(
        &mut nan,
        "te.x",
        Dtype::F32,
        vec![n_te, d],
        x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    check(&nan, None, "te.x", "row 1, feature 3");

    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert_file_error(load_features(&path, "bad"), &path, "", "safetensors");
    let unknown = dir.path("features.bin");
    std::fs::write(&unknown, b"x").unwrap();
    assert_file_error(
        load_features(&unknown, "bad"),
        &unknown,
        "",
        "unknown feature format",
    );
}

fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 16 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_reader_handles_the_supported_dtypes_and_rejects_the_rest() {
    let dir = TempDir::new("npy");
    let p = dir.path("a.npy");
    let vals = [1.5f32, -2.0, 0.25, 7.0, 3.0, -0.5];
    write_npy_f32(&p, &[2, 3], &vals).unwrap();
    let a = read_npy_f32(&p, "a").unwrap();
    assert_eq!((a.shape, a.data), (vec![2, 3], vals.to_vec()));
    let raw = std::fs::read(&p).unwrap();
    let header_len = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0, "data aligned like NumPy's");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "<f2",
            vals.iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (
            "<f8",
            vals.iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
        ),
    ];
    for (descr, data) in cases {
        std::fs::write(&p, npy_bytes(descr, false, "(2, 3)", &data)).unwrap();
        assert_eq!(
            read_npy_f32(&p, "a").unwrap().data,
            vals.to_vec(),
            "{descr}"
        );
    }
    let ints = [3i64, -4, 5];
    std::fs::write(
        &p,
        npy_bytes(
            "<i8",
            false,
            "(3,)",
            &ints
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    assert_eq!(read_npy_f32(&p, "a").unwrap().data, vec![3.0, -4.0, 5.0]);
    std::fs::write(
        &p,
        npy_bytes("<i4", false, "(3,)", &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]),
    )
    .unwrap();
    assert_eq!(read_npy_f32(&p, "a").unwrap().data, vec![1.0, 2.0, 3.0]);
    std::fs::write(&p, npy_bytes("|u1", false, "(1, 3)", &[0, 128, 255])).unwrap();
    let u = read_npy_f32(&p, "a").unwrap();
    assert_eq!((u.shape, u.data), (vec![1, 3], vec![0.0, 128.0, 255.0]));

    std::fs::write(&p, npy_bytes("<f4", true, "(2, 3)", &[0; 24])).unwrap();
    assert_file_error(read_npy_f32(&p, "a"), &p, "a", "Fortran");
    std::fs::write(&p, npy_bytes(">f4", false, "(2, 3)", &[0; 24])).unwrap();
    assert_file_error(read_npy_f32(&p, "a"), &p, "a", "big-endian");
    std::fs::write(&p, npy_bytes("<c8", false, "(2, 3)", &[0; 48])).unwrap();
    assert_file_error(read_npy_f32(&p, "a"), &p, "a", "not supported");
    std::fs::write(&p, npy_bytes("<f4", false, "(2, 3)", &[0; 20])).unwrap();
    assert_file_error(read_npy_f32(&p, "a"), &p, "a", "truncated");
    std::fs::write(&p, b"PK\x03\x04 a zip, not an npy").unwrap();
    assert_file_error(read_npy_f32(&p, "a"), &p, "a", "magic");
}

#[test]
fn npy_directory_round_trips_and_reports_problems() {
    let dir = TempDir::new("npy-dir");
    let ds = small_dataset();
    let root = dir.path("tiny");
    save_features_npy(&ds, &root).unwrap();
    assert_eq!(load_features(&root, "tiny").unwrap(), ds);

    let meta_path = root.join("meta.csv");
    let x_path = root.join("x.npy");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let lines: Vec<&str> = meta.lines().collect();
    let rewrite = |f: &dyn Fn(Vec<String>) -> Vec<String>| {
        let new = f(lines.iter().map(|s| s.to_string()).collect());
        std::fs::write(&meta_path, new.join("\n") + "\n").unwrap();
    };

    // Columns in another order, `a` missing: attributes become 0.
    rewrite(&|l| {
        l.iter()
            .map(|row| {
                let f: Vec<&str> = row.split(',').collect();
                format!("{},{},{}", f[2], f[1], f[0])
            })
            .collect()
    });
    let no_attr = load_features(&root, "tiny").unwrap();
    assert_eq!(no_attr.train.y, ds.train.y);
    assert_eq!(no_attr.n_attr, 1);
    assert!(no_attr.train.a.iter().all(|&a| a == 0));

    rewrite(&|mut l| {
        l.pop();
        l
    });
    assert_file_error(
        load_features(&root, "tiny"),
        &meta_path,
        "row",
        "rows, but x.npy has",
    );
    rewrite(&|mut l| {
        l[3] = l[3].replacen(",tr,", ",train,", 1);
        l
    });
    assert_file_error(load_features(&root, "tiny"), &meta_path, "split", "line 4");
    rewrite(&|mut l| {
        let f: Vec<String> = l[5].split(',').map(str::to_string).collect();
        l[5] = format!("{},{},-1,{}", f[0], f[1], f[3]);
        l
    });
    assert_file_error(
        load_features(&root, "tiny"),
        &meta_path,
        "y",
        "negative value -1",
    );
    rewrite(&|mut l| {
        l[0] = "id,split,label,a".into();
        l
    });
    assert_file_error(
        load_features(&root, "tiny"),
        &meta_path,
        "y",
        "no `y` column",
    );
    rewrite(&|l| l);
    let mut x = read_npy_f32(&x_path, "x").unwrap();
    x.data[4] = f32::INFINITY;
    write_npy_f32(&x_path, &x.shape, &x.data).unwrap();
    assert_file_error(
        load_features(&root, "tiny"),
        &x_path,
        "x",
        "non-finite value inf at row 0, feature 4",
    );
    std::fs::remove_file(&x_path).unwrap();
    assert_file_error(load_features(&root, "tiny"), &x_path, "x", "missing");
}
