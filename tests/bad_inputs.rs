//! A corpus of bad inputs for every data file the crate reads — safetensors features, NumPy
//! features (`x.npy` + `meta.csv`), MNIST IDX files and the MNIST CSV sample — and for the
//! sizes the generators accept. Every file is written here, at test time.
//!
//! Each case asserts its exact outcome: an error that names the file, the place in it (tensor,
//! column, line) and the problem, checked by substrings of the message, with no empty tensor
//! label and no Rust debug output in it; or an accepted input that validates, with finite
//! features. Seeded loops then truncate valid files and flip their bytes: every mutation must
//! give such an error or a valid data set, never a panic.

use std::fmt::Debug;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memaware::data::colormnist::{
    color_mnist, load_mnist_idx, load_mnist_sample, read_idx_images, read_idx_labels,
    ColorMnistConfig, MAX_DECOMPRESSED_BYTES, MNIST_PIXELS,
};
use memaware::data::features::{load_features, read_npy_f32, save_features_npy};
use memaware::data::synthetic::{
    good_bad_ugly, interpretable, waterbirds_like, waterbirds_like_directions, InterpretableConfig,
    RegressionConfig, WaterbirdsLikeConfig,
};
use memaware::data::{Dataset, Split, MAX_GENERATED_VALUES};
use memaware::{Error, Result, Rng};

// ---------------------------------------------------------------------------------------------
// helpers

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memaware-bad-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `bytes` to `name` and returns its path.
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a message shows Rust debug output: `Some(..)`, `None`, an escaped quote, or a
/// struct literal such as `DatasetRecord { name: .. }`.
fn looks_like_debug(msg: &str) -> bool {
    if msg.contains("Some(") || msg.contains("None") || msg.contains("\\\"") {
        return true;
    }
    msg.match_indices(" { ").any(|(i, _)| {
        let word: String = msg[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        word.chars()
            .last()
            .is_some_and(|first| first.is_ascii_uppercase())
    })
}

/// Checks what every error message must do: name the file, and show neither an empty tensor
/// label nor debug output.
#[track_caller]
fn check_message(msg: &str, path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "`{msg}` should name {name}");
    assert!(!msg.contains("tensor ``"), "empty tensor label in `{msg}`");
    assert!(!looks_like_debug(msg), "debug output in `{msg}`");
}

/// An `Error::File` for `path`, at a place containing `place`, whose message contains every
/// one of `words`.
#[track_caller]
fn assert_file_err<T: Debug>(r: Result<T>, path: &Path, place: &str, words: &[&str]) {
    match r {
        Err(e @ Error::File { .. }) => {
            let msg = e.to_string();
            let Error::File {
                path: p, tensor: t, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(p, path, "wrong file in `{msg}`");
            assert!(
                t.contains(place),
                "place `{t}` should name `{place}`: {msg}"
            );
            for w in words {
                assert!(msg.contains(w), "`{msg}` should say `{w}`");
            }
            check_message(&msg, path);
        }
        other => panic!("expected Error::File for {}, got {other:?}", path.display()),
    }
}

/// An `Error::InvalidArgument` for `name` whose message contains every one of `words`.
#[track_caller]
fn assert_arg_err<T: Debug>(r: Result<T>, name: &str, words: &[&str]) {
    match r {
        Err(e @ Error::InvalidArgument { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("invalid argument `{name}`")),
                "`{msg}` should blame `{name}`"
            );
            for w in words {
                assert!(msg.contains(w), "`{msg}` should say `{w}`");
            }
            assert!(!looks_like_debug(&msg), "debug output in `{msg}`");
        }
        other => panic!("expected an invalid argument `{name}`, got {other:?}"),
    }
}

/// A data set that validates and has only finite features.
#[track_caller]
fn assert_valid(r: Result<Dataset>) -> Dataset {
    let ds = r.unwrap_or_else(|e| panic!("expected a data set, got: {e}"));
    check_valid(&ds);
    ds
}

#[track_caller]
fn check_valid(ds: &Dataset) {
    ds.validate().unwrap();
    for split in [&ds.train, &ds.valid, &ds.test] {
        assert!(split.n > 0);
        assert!(split.x.iter().all(|v| v.is_finite()));
    }
    assert!(ds.classes >= 2);
}

/// Four training, three validation and three test examples of 3 features; classes 0 and 1,
/// attributes 0 and 1.
fn small_dataset() -> Dataset {
    let split = |n: usize, y: Vec<u32>, a: Vec<u32>, offset: f32| {
        let x = (0..n * 3).map(|i| i as f32 * 0.25 - offset).collect();
        Split::new(x, 3, y, Some(a)).unwrap()
    };
    Dataset {
        name: "small".into(),
        classes: 2,
        n_attr: 2,
        train: split(4, vec![0, 1, 0, 1], vec![0, 0, 1, 1], 1.0),
        valid: split(3, vec![0, 1, 1], vec![1, 0, 1], 0.5),
        test: split(3, vec![1, 0, 0], vec![0, 1, 0], 0.0),
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors files, written byte by byte so that headers can be broken at will

/// One tensor: name, dtype name, shape, little-endian data.
type Tensor = (String, &'static str, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of `small_dataset()` in the layout of `features.rs`.
fn base_tensors() -> Vec<Tensor> {
    let ds = small_dataset();
    let mut out = Vec::new();
    for (s, split) in [("tr", &ds.train), ("va", &ds.valid), ("te", &ds.test)] {
        let ints = |v: &[u32]| i64_bytes(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
        out.push((
            format!("{s}.x"),
            "F32",
            vec![split.n, split.d],
            f32_bytes(&split.x),
        ));
        out.push((format!("{s}.y"), "I64", vec![split.n], ints(&split.y)));
        out.push((format!("{s}.a"), "I64", vec![split.n], ints(&split.a)));
    }
    out
}

/// Replaces (or adds) tensor `name`.
fn set(
    tensors: &mut Vec<Tensor>,
    name: &str,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
) {
    let t = (name.to_string(), dtype, shape, data);
    match tensors.iter_mut().find(|t| t.0 == name) {
        Some(slot) => *slot = t,
        None => tensors.push(t),
    }
}

/// A safetensors file from a raw header text and data.
fn st_raw(header: impl AsRef<[u8]>, data: &[u8]) -> Vec<u8> {
    let header = header.as_ref();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The header entries (`"name":{...}`) of `tensors`, data laid out in order, and the data.
fn st_entries(tensors: &[Tensor]) -> (Vec<String>, Vec<u8>) {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{begin},{}]}}",
            data.len()
        ));
    }
    (entries, data)
}

/// A well-formed safetensors file of `tensors` with `meta` as `__metadata__`.
fn st_file(tensors: &[Tensor], meta: &[(&str, &str)]) -> Vec<u8> {
    let (mut entries, data) = st_entries(tensors);
    if !meta.is_empty() {
        let kv: Vec<String> = meta
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect();
        entries.insert(0, format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    st_raw(format!("{{{}}}", entries.join(",")), &data)
}

/// Loads `bytes` written as `name.safetensors` in `dir`; returns the path and the result.
fn load_st(dir: &TempDir, name: &str, bytes: &[u8]) -> (PathBuf, Result<Dataset>) {
    let p = dir.write(&format!("{name}.safetensors"), bytes);
    let r = load_features(&p, name);
    (p, r)
}

/// Loads `bytes` as a safetensors feature file and asserts the error.
#[track_caller]
fn st_err(dir: &TempDir, bytes: &[u8], place: &str, words: &[&str]) {
    let (p, r) = load_st(dir, "bad", bytes);
    assert_file_err(r, &p, place, words);
}

/// The same with tensors and metadata.
#[track_caller]
fn st_tensors_err(
    dir: &TempDir,
    tensors: &[Tensor],
    meta: &[(&str, &str)],
    place: &str,
    words: &[&str],
) {
    st_err(dir, &st_file(tensors, meta), place, words);
}

#[test]
fn safetensors_structure() {
    let dir = TempDir::new("st-structure");
    let base = base_tensors();
    let good = st_file(&base, &[]);
    let (_, r) = load_st(&dir, "good", &good);
    assert_eq!(assert_valid(r).train.x, small_dataset().train.x);

    st_err(
        &dir,
        b"",
        "",
        &["0 bytes, too short for the 8-byte header length"],
    );
    st_err(&dir, b"\x05\x00\x00", "", &["3 bytes, too short"]);
    // A header length beyond the file, and an absurd one: nothing is allocated from either.
    let mut long = good.clone();
    long[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    st_err(
        &dir,
        &long,
        "",
        &["the header length field says", "truncated"],
    );
    let mut absurd = good.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    st_err(&dir, &absurd, "", &["18446744073709551615 bytes"]);
    st_err(
        &dir,
        b"not a safetensors file",
        "",
        &["not a valid safetensors file"],
    );
    st_err(
        &dir,
        &st_raw(b"{\"a\xff\":1}", b""),
        "",
        &["not UTF-8 text (at byte 11)"],
    );
    st_err(
        &dir,
        &st_raw("{\"tr.x\":", b""),
        "",
        &["not a JSON object", "EOF"],
    );
    st_err(&dir, &st_raw("[1, 2]", b""), "", &["not a JSON object"]);
    st_err(&dir, &st_raw("  ", b""), "", &["not a JSON object"]);

    // Truncated and padded data.
    st_err(
        &dir,
        &good[..good.len() - 5],
        "",
        &["truncated: the header's tensors need"],
    );
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 7]);
    st_err(&dir, &padded, "", &["7 trailing bytes"]);
}

#[test]
fn safetensors_duplicate_names_are_named() {
    let dir = TempDir::new("st-dup");
    let base = base_tensors();
    let (entries, data) = st_entries(&base);
    // The same entry twice: a map would keep one and accept the file silently.
    let mut twice = entries.clone();
    twice.push(entries[1].clone());
    st_err(
        &dir,
        &st_raw(format!("{{{}}}", twice.join(",")), &data),
        "tr.y",
        &["tensor `tr.y`", "listed twice in the header"],
    );
    // A second `tr.x` with its own data: a map would keep the last and blame other offsets.
    let mut other = base.clone();
    other.push((
        "tr.x".into(),
        "F32",
        vec![1, 3],
        f32_bytes(&[1.0, 2.0, 3.0]),
    ));
    st_tensors_err(
        &dir,
        &other,
        &[],
        "tr.x",
        &["tensor `tr.x`", "listed twice"],
    );
    // A metadata key twice.
    let header = format!(
        "{{\"__metadata__\":{{\"classes\":\"2\",\"classes\":\"3\"}},{}}}",
        entries.join(",")
    );
    st_err(
        &dir,
        &st_raw(&header, &data),
        "__metadata__",
        &["key `classes` is listed twice"],
    );
    // `__metadata__` itself twice.
    let header = format!(
        "{{\"__metadata__\":{{\"classes\":\"2\"}},\"__metadata__\":{{}},{}}}",
        entries.join(",")
    );
    st_err(
        &dir,
        &st_raw(&header, &data),
        "__metadata__",
        &["listed twice"],
    );
}

#[test]
fn safetensors_header_entries() {
    let dir = TempDir::new("st-entries");
    let base = base_tensors();
    let (entries, data) = st_entries(&base);
    let with_first = |first: &str| {
        let mut e = entries.clone();
        e[0] = first.to_string();
        st_raw(format!("{{{}}}", e.join(",")), &data)
    };
    let x_len = base[0].3.len();
    st_err(
        &dir,
        &with_first(&format!(
            "\"tr.x\":{{\"shape\":[4,3],\"data_offsets\":[0,{x_len}]}}"
        )),
        "tr.x",
        &["no `dtype` string"],
    );
    st_err(
        &dir,
        &with_first(&format!(
            "\"tr.x\":{{\"dtype\":\"Q7\",\"shape\":[4,3],\"data_offsets\":[0,{x_len}]}}"
        )),
        "tr.x",
        &["dtype `Q7` is not a safetensors dtype"],
    );
    st_err(
        &dir,
        &with_first(&format!(
            "\"tr.x\":{{\"dtype\":\"F32\",\"shape\":[4,-3],\"data_offsets\":[0,{x_len}]}}"
        )),
        "tr.x",
        &["no `shape` list of non-negative integers"],
    );
    st_err(
        &dir,
        &with_first("\"tr.x\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[0,1,2]}"),
        "tr.x",
        &["no `data_offsets` pair"],
    );
    st_err(
        &dir,
        &with_first("\"tr.x\":17"),
        "tr.x",
        &["no `dtype` string"],
    );
    st_err(
        &dir,
        &with_first("\"tr.x\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[48,0]}"),
        "tr.x",
        &["data_offsets [48, 0] end before they begin"],
    );
    st_err(
        &dir,
        &with_first(&format!(
            "\"tr.x\":{{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,{x_len}]}}"
        )),
        "tr.x",
        &["shape [4, 4] of F32 needs 64 bytes, but data_offsets [0, 48] span 48"],
    );
    // A shape whose byte count overflows, and an absurd shape whose bytes are not there.
    st_err(
        &dir,
        &with_first(&format!(
            "\"tr.x\":{{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,{x_len}]}}"
        )),
        "tr.x",
        &["is too large"],
    );
    let mut absurd = entries.clone();
    let start = data.len() - base[8].3.len();
    absurd[8] = format!(
        "\"te.a\":{{\"dtype\":\"F32\",\"shape\":[100000000000,1800],\"data_offsets\":[{start},{}]}}",
        start as u64 + 100_000_000_000 * 1800 * 4
    );
    let holds = format!("the file holds {}", data.len());
    st_err(
        &dir,
        &st_raw(format!("{{{}}}", absurd.join(",")), &data),
        "",
        &[
            "truncated: the header's tensors need 720000000000256 data bytes",
            &holds,
        ],
    );
    // Gaps and overlaps in the data offsets.
    let mut gap = entries.clone();
    let y_len = base[1].3.len();
    gap[1] = format!(
        "\"tr.y\":{{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[{},{}]}}",
        x_len + 8,
        x_len + 8 + y_len
    );
    st_err(
        &dir,
        &st_raw(format!("{{{}}}", gap.join(",")), &data),
        "tr.y",
        &["leave a gap after the data before them, which ends at byte 48"],
    );
    let mut overlap = entries.clone();
    overlap[1] = format!(
        "\"tr.y\":{{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[{},{}]}}",
        x_len - 8,
        x_len - 8 + y_len
    );
    st_err(
        &dir,
        &st_raw(format!("{{{}}}", overlap.join(",")), &data),
        "tr.y",
        &["data_offsets [40, 72] overlap the data before them, which ends at byte 48"],
    );
    // Metadata values must be strings.
    let header = format!(
        "{{\"__metadata__\":{{\"classes\":2}},{}}}",
        entries.join(",")
    );
    st_err(
        &dir,
        &st_raw(&header, &data),
        "__metadata__",
        &["the value of `classes` is 2, not a string"],
    );
    // `"__metadata__": null` is allowed by the format.
    let header = format!("{{\"__metadata__\":null,{}}}", entries.join(","));
    let (_, r) = load_st(&dir, "null-meta", &st_raw(&header, &data));
    assert_valid(r);
}

#[test]
fn safetensors_contents() {
    let dir = TempDir::new("st-contents");
    let base = base_tensors();
    let check = |tensors: &[Tensor], meta: &[(&str, &str)], place: &str, words: &[&str]| {
        st_tensors_err(&dir, tensors, meta, place, words)
    };
    let with = |name: &str, dtype: &'static str, shape: Vec<usize>, data: Vec<u8>| {
        let mut t = base.clone();
        set(&mut t, name, dtype, shape, data);
        t
    };
    let without = |name: &str| {
        let mut t = base.clone();
        t.retain(|t| t.0 != name);
        t
    };

    check(
        &without("tr.x"),
        &[],
        "tr.x",
        &["missing (the file holds: te.a"],
    );
    check(&without("va.y"), &[], "va.y", &["missing"]);
    check(
        &with("te.x", "I32", vec![3, 3], vec![0; 36]),
        &[],
        "te.x",
        &["dtype I32: features must be F32, F16, BF16 or F64"],
    );
    check(
        &with("tr.y", "F32", vec![4], vec![0; 16]),
        &[],
        "tr.y",
        &["dtype F32: labels, attributes and ids must be integers"],
    );
    check(
        &with("va.ids", "F64", vec![3], vec![0; 24]),
        &[],
        "va.ids",
        &["must be integers"],
    );
    check(
        &with("va.x", "F32", vec![9], vec![0; 36]),
        &[],
        "va.x",
        &["shape [9]: features must be a matrix [n, d]"],
    );
    check(
        &with("va.x", "F32", vec![3, 3, 1], vec![0; 36]),
        &[],
        "va.x",
        &["shape [3, 3, 1]"],
    );
    check(
        &with("tr.y", "I64", vec![2, 2], i64_bytes(&[0, 1, 0, 1])),
        &[],
        "tr.y",
        &["shape [2, 2]: expected one value per example"],
    );
    check(
        &with("tr.y", "I64", vec![3], i64_bytes(&[0, 1, 0])),
        &[],
        "tr.y",
        &["3 values, but tr.x has 4 rows"],
    );
    check(
        &with("te.ids", "I64", vec![2], i64_bytes(&[7, 8])),
        &[],
        "te.ids",
        &["2 values, but te.x has 3 rows"],
    );
    check(
        &with("va.x", "F32", vec![3, 2], vec![0; 24]),
        &[],
        "va.x",
        &["2 features per example, but tr.x has 3"],
    );
    let mut empty = with("va.x", "F32", vec![0, 3], vec![]);
    set(&mut empty, "va.y", "I64", vec![0], vec![]);
    set(&mut empty, "va.a", "I64", vec![0], vec![]);
    check(&empty, &[], "va.x", &["the split has no examples"]);
    let mut no_features = base.clone();
    for s in ["tr", "va", "te"] {
        let n = if s == "tr" { 4 } else { 3 };
        set(
            &mut no_features,
            &format!("{s}.x"),
            "F32",
            vec![n, 0],
            vec![],
        );
    }
    check(&no_features, &[], "tr.x", &["0 features per example"]);

    // Non-finite features, in each float dtype.
    let mut x = small_dataset().test.x;
    x[4] = f32::NAN;
    check(
        &with("te.x", "F32", vec![3, 3], f32_bytes(&x)),
        &[],
        "te.x",
        &["non-finite value NaN at row 1, feature 1"],
    );
    let f16_inf: Vec<u8> = (0..9)
        .flat_map(|i| if i == 8 { 0x7c00u16 } else { 0x3c00 }.to_le_bytes())
        .collect();
    check(
        &with("te.x", "F16", vec![3, 3], f16_inf),
        &[],
        "te.x",
        &["non-finite value inf at row 2, feature 2"],
    );
    let f64_huge: Vec<u8> = (0..9)
        .flat_map(|i| if i == 0 { 1e300f64 } else { 0.5 }.to_le_bytes())
        .collect();
    check(
        &with("te.x", "F64", vec![3, 3], f64_huge),
        &[],
        "te.x",
        &["non-finite value inf at row 0, feature 0"],
    );

    // Labels and attributes.
    check(
        &with("te.y", "I64", vec![3], i64_bytes(&[1, -1, 0])),
        &[],
        "te.y",
        &["negative value -1 at row 1"],
    );
    check(
        &with("va.a", "I8", vec![3], vec![0, 0xff, 1]),
        &[],
        "va.a",
        &["negative value -1 at row 1"],
    );
    check(
        &with("te.y", "I64", vec![3], i64_bytes(&[1, 1 << 20, 0])),
        &[],
        "te.y",
        &["value 1048576 at row 1 is out of range for at most 1048576 classes"],
    );
    check(
        &with("te.y", "I64", vec![3], i64_bytes(&[1, 5, 0])),
        &[("classes", "2")],
        "te.y",
        &["value 5 at row 1 is out of range for the 2 classes the file declares"],
    );
    check(
        &with("va.a", "I64", vec![3], i64_bytes(&[0, 3, 1])),
        &[("n_attr", "2")],
        "va.a",
        &["value 3 at row 1 is out of range for the 2 attribute values the file declares"],
    );
    check(
        &base,
        &[("classes", "two")],
        "__metadata__",
        &["`classes` = `two` is not a non-negative integer"],
    );
    check(
        &base,
        &[("classes", "0")],
        "__metadata__",
        &["`classes` = 0 is outside 1..=1048576"],
    );
    check(
        &base,
        &[("n_attr", "2097152")],
        "__metadata__",
        &["`n_attr` = 2097152 is outside"],
    );
    check(
        &base,
        &[("classes", "-2")],
        "__metadata__",
        &["`classes` = `-2`"],
    );
    let mut zeros = base.clone();
    for (s, n) in [("tr", 4), ("va", 3), ("te", 3)] {
        set(
            &mut zeros,
            &format!("{s}.y"),
            "I64",
            vec![n],
            vec![0; 8 * n],
        );
    }
    check(
        &zeros,
        &[],
        "tr.y",
        &["every label is 0: at least two classes are needed"],
    );
    // Too many groups for the per-group tables.
    let wide = [("n_attr", "1048576")];
    let (p, r) = load_st(&dir, "wide", &st_file(&base, &wide));
    assert_file_err(
        r,
        &p,
        "",
        &["2 classes × 1048576 attribute values = 2097152 groups"],
    );

    // Accepted variations: BOOL labels, [n, 1] labels, half-precision features, extra tensors.
    let mut bools = base.clone();
    set(&mut bools, "tr.y", "BOOL", vec![4], vec![0, 1, 0, 1]);
    set(&mut bools, "va.y", "U8", vec![3, 1], vec![0, 1, 1]);
    set(
        &mut bools,
        "te.x",
        "BF16",
        vec![3, 3],
        [0x80, 0x3f].repeat(9),
    );
    set(
        &mut bools,
        "extra",
        "F32",
        vec![2],
        f32_bytes(&[1.0, f32::NAN]),
    );
    let (_, r) = load_st(&dir, "variants", &st_file(&bools, &[("classes", "2")]));
    let ds = assert_valid(r);
    assert_eq!(ds.train.y, vec![0, 1, 0, 1]);
    assert!(ds.test.x.iter().all(|&v| v == 1.0));
}

#[test]
fn a_class_absent_from_training_is_an_error_in_files() {
    let dir = TempDir::new("st-absent");
    let base = base_tensors();
    let with = |name: &str, data: Vec<i64>| {
        let mut t = base.clone();
        set(&mut t, name, "I64", vec![data.len()], i64_bytes(&data));
        t
    };
    // Class 2 appears in the test labels only: inferred from the labels.
    st_tensors_err(
        &dir,
        &with("te.y", vec![1, 2, 0]),
        &[],
        "tr.y",
        &[
            "class 2 has no training example, but there are 3 classes",
            "the largest label over the three splits is 2",
            "the training labels are 0, 1",
        ],
    );
    // Declared: classes 2 and 3 appear nowhere.
    st_tensors_err(
        &dir,
        &base,
        &[("classes", "4")],
        "tr.y",
        &[
            "classes 2, 3 have no training example, but there are 4 classes",
            "the `classes` metadata",
        ],
    );
    // Training holds class 1 only.
    st_tensors_err(
        &dir,
        &with("tr.y", vec![1, 1, 1, 1]),
        &[],
        "tr.y",
        &[
            "class 0 has no training example",
            "the training labels are 1",
        ],
    );
    // An attribute value absent from training is fine (ColorMNIST's training groups are
    // environments, not colours).
    let (_, r) = load_st(&dir, "attr", &st_file(&with("tr.a", vec![0, 0, 0, 0]), &[]));
    assert_eq!(assert_valid(r).n_attr, 2);
    // In memory, the same data set is accepted and the missing class is reported.
    let mut ds = small_dataset();
    ds.classes = 3;
    ds.validate().unwrap();
    assert_eq!(ds.classes_missing_from_train(), vec![2]);
    assert_eq!(
        small_dataset().classes_missing_from_train(),
        Vec::<u32>::new()
    );
}

#[test]
fn feature_paths() {
    let dir = TempDir::new("paths");
    let missing = dir.path("nowhere.safetensors");
    match load_features(&missing, "x") {
        Err(e @ Error::Io { .. }) => check_message(&e.to_string(), &missing),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let other = dir.path("nowhere.bin");
    assert_file_err(
        load_features(&other, "x"),
        &other,
        "",
        &["no such file or directory"],
    );
    let bin = dir.write("features.bin", b"123");
    assert_file_err(
        load_features(&bin, "x"),
        &bin,
        "",
        &["unknown feature format"],
    );
}

// ---------------------------------------------------------------------------------------------
// NumPy folders: x.npy + meta.csv

/// An NPY file (version `version`) with the given header dict and data.
fn npy(version: u8, dict: &str, body: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

fn npy_f4(shape: &str, values: &[f32]) -> Vec<u8> {
    npy(
        1,
        &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
        &f32_bytes(values),
    )
}

/// A folder with the small data set saved by `save_features_npy`; returns it with the lines
/// of its meta.csv.
fn npy_folder(tag: &str) -> (TempDir, PathBuf, Vec<String>) {
    let dir = TempDir::new(tag);
    let root = dir.path("feats");
    save_features_npy(&small_dataset(), &root).unwrap();
    let meta = std::fs::read_to_string(root.join("meta.csv")).unwrap();
    let lines = meta.lines().map(str::to_string).collect();
    (dir, root, lines)
}

#[track_caller]
fn meta_err(root: &Path, meta: &[u8], place: &str, words: &[&str]) {
    let meta_path = root.join("meta.csv");
    std::fs::write(&meta_path, meta).unwrap();
    assert_file_err(load_features(root, "f"), &meta_path, place, words);
}

#[test]
fn meta_csv() {
    let (_dir, root, lines) = npy_folder("meta");
    let meta_path = root.join("meta.csv");
    let joined = |l: &[String]| l.join("\n") + "\n";
    let good = assert_valid(load_features(&root, "f"));
    assert_eq!(good.train, small_dataset().train);

    // Accepted: a byte-order mark, CRLF line ends, blank lines, no `a` column.
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend_from_slice(joined(&lines).as_bytes());
    std::fs::write(&meta_path, &bom).unwrap();
    assert_eq!(assert_valid(load_features(&root, "f")), good);
    std::fs::write(&meta_path, lines.join("\r\n") + "\r\n\r\n").unwrap();
    assert_eq!(assert_valid(load_features(&root, "f")), good);
    let no_a: Vec<String> = lines
        .iter()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect();
    std::fs::write(&meta_path, joined(&no_a)).unwrap();
    let ds = assert_valid(load_features(&root, "f"));
    assert_eq!((ds.n_attr, ds.train.y.clone()), (1, good.train.y.clone()));

    let edit = |i: usize, line: &str| {
        let mut l = lines.clone();
        l[i] = line.to_string();
        joined(&l).into_bytes()
    };
    meta_err(
        &root,
        b"",
        "",
        &["empty file: expected a header id,split,y,a"],
    );
    meta_err(&root, b"\n \n", "", &["empty file"]);
    meta_err(
        &root,
        &edit(0, "id,split,label,a"),
        "column `y`",
        &["no `y` column in the header `id,split,label,a`"],
    );
    meta_err(
        &root,
        &edit(0, "id,split,y,y"),
        "column `y`",
        &["listed twice in the header"],
    );
    meta_err(
        &root,
        &edit(2, "1,tr,1"),
        "line 3",
        &["3 fields, the header has 4 (id,split,y,a)"],
    );
    meta_err(&root, &edit(2, "1,tr,1,0,9"), "line 3", &["5 fields"]);
    meta_err(
        &root,
        &edit(4, "3,train,1,1"),
        "column `split`",
        &["line 5: split `train` is not tr, va or te"],
    );
    meta_err(
        &root,
        &edit(2, "1,tr,one,0"),
        "column `y`",
        &["line 3: `one` is not an integer"],
    );
    meta_err(
        &root,
        &edit(2, "1,tr,-1,0"),
        "column `y`",
        &["line 3: negative value -1"],
    );
    meta_err(
        &root,
        &edit(2, "x,tr,1,0"),
        "column `id`",
        &["line 3: `x` is not an integer"],
    );
    meta_err(
        &root,
        &edit(2, "1,tr,1,0.5"),
        "column `a`",
        &["line 3: `0.5` is not an integer"],
    );
    meta_err(
        &root,
        &edit(2, "1,tr,1048576,0"),
        "column `y`",
        &["value 1048576 at line 3 is out of range"],
    );
    meta_err(
        &root,
        &joined(&lines[..lines.len() - 1]).into_bytes(),
        "data rows",
        &["9 rows, but x.npy has 10"],
    );
    let mut extra = lines.clone();
    extra.push("99,te,0,0".into());
    meta_err(
        &root,
        &joined(&extra).into_bytes(),
        "data rows",
        &["11 rows, but x.npy has 10"],
    );
    // No validation rows: lines 6..8 (1-based) are the validation examples.
    let mut no_valid = lines.clone();
    for line in &mut no_valid[5..8] {
        *line = line.replace(",va,", ",te,");
    }
    meta_err(
        &root,
        &joined(&no_valid).into_bytes(),
        "split `va`",
        &["the split has no examples"],
    );
    // A class that only the test split has.
    meta_err(
        &root,
        &edit(10, "2,te,2,0"),
        "column `y`",
        &["class 2 has no training example, but there are 3 classes"],
    );
    // Not UTF-8.
    let mut latin1 = joined(&lines).into_bytes();
    latin1[lines[0].len() + 3] = 0xe9;
    meta_err(&root, &latin1, "line 2", &["not UTF-8 text"]);
    // Missing files.
    std::fs::remove_file(&meta_path).unwrap();
    assert_file_err(load_features(&root, "f"), &meta_path, "", &["missing file"]);
}

#[track_caller]
fn x_err(root: &Path, x: &[u8], words: &[&str]) {
    let x_path = root.join("x.npy");
    std::fs::write(&x_path, x).unwrap();
    assert_file_err(load_features(root, "f"), &x_path, "x", words);
}

#[test]
fn x_npy() {
    let (_dir, root, _) = npy_folder("npy");
    let x_path = root.join("x.npy");
    let x = read_npy_f32(&x_path, "x").unwrap();
    let good = std::fs::read(&x_path).unwrap();
    let dict = |descr: &str, fortran: &str, shape: &str| {
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
    };
    let body = f32_bytes(&x.data);

    x_err(&root, b"", &["missing the \\x93NUMPY magic"]);
    x_err(&root, b"PK\x03\x04 a zip file", &["not an NPY file"]);
    x_err(
        &root,
        &npy(4, &dict("<f4", "False", "(10, 3)"), &body),
        &["NPY format version 4 is not supported"],
    );
    x_err(
        &root,
        &npy(2, &dict("<f4", "False", "(10, 3)"), &body)[..11],
        &["truncated NPY header"],
    );
    let mut cut = good.clone();
    cut.truncate(40);
    x_err(&root, &cut, &["truncated: the header needs"]);
    let mut not_text = npy(1, &dict("<f4", "False", "(10, 3)"), &body);
    not_text[12] = 0xff;
    x_err(&root, &not_text, &["the NPY header is not text"]);
    x_err(
        &root,
        &npy(1, "{'fortran_order': False, 'shape': (10, 3), }", &body),
        &["no `descr` in the header `{'fortran_order': False, 'shape': (10, 3), }`"],
    );
    x_err(
        &root,
        &npy(1, "{'descr': '<f4', 'shape': (10, 3), }", &body),
        &["no `fortran_order` in the header"],
    );
    x_err(
        &root,
        &npy(1, &dict("<f4", "maybe", "(10, 3)"), &body),
        &["`fortran_order` is `maybe`, expected True or False"],
    );
    x_err(
        &root,
        &npy(1, &dict("<f4", "True", "(10, 3)"), &body),
        &["Fortran order is not supported"],
    );
    x_err(
        &root,
        &npy(1, "{'descr': '<f4', 'fortran_order': False, }", &body),
        &["no `shape` in the header"],
    );
    x_err(
        &root,
        &npy(1, &dict(">f4", "False", "(10, 3)"), &body),
        &["dtype >f4 is big-endian"],
    );
    x_err(
        &root,
        &npy(1, &dict("<c8", "False", "(10, 3)"), &body),
        &["dtype <c8 is not supported"],
    );
    x_err(
        &root,
        &npy(1, &dict("<f4", "False", "(10, three)"), &body),
        &["cannot read the shape (10, three)"],
    );
    x_err(
        &root,
        &npy(1, &dict("<f4", "False", "(10, -3)"), &body),
        &["cannot read the shape"],
    );
    x_err(
        &root,
        &npy(
            1,
            &dict("<f4", "False", "(4294967296, 4294967296, 4)"),
            &body,
        ),
        &["is too large"],
    );
    // An absurd declared shape is compared with the file before anything is allocated.
    x_err(
        &root,
        &npy(1, &dict("<f4", "False", "(100000000000, 1800)"), &body),
        &["truncated: shape [100000000000, 1800] of <f4 needs 720000000000000 data bytes, the file holds 120"],
    );
    let mut long = body.clone();
    long.extend_from_slice(&[0; 4]);
    x_err(
        &root,
        &npy(1, &dict("<f4", "False", "(10, 3)"), &long),
        &["4 trailing bytes after the 120 data bytes"],
    );
    x_err(
        &root,
        &npy_f4("(30,)", &x.data),
        &["shape [30]: features must be a matrix [N, d]"],
    );
    x_err(
        &root,
        &npy_f4("(10, 0)", &[]),
        &["shape [10, 0]: 0 features per example"],
    );
    let mut nan = x.data.clone();
    nan[7] = f32::NAN;
    x_err(
        &root,
        &npy_f4("(10, 3)", &nan),
        &["non-finite value NaN at row 2, feature 1"],
    );
    let huge: Vec<u8> = (0..30)
        .flat_map(|i| if i == 29 { -1e300f64 } else { 0.25 }.to_le_bytes())
        .collect();
    x_err(
        &root,
        &npy(1, &dict("<f8", "False", "(10, 3)"), &huge),
        &["non-finite value -inf at row 9, feature 2"],
    );
    // Rows in meta.csv must match: 10 there, 9 here.
    let meta_path = root.join("meta.csv");
    std::fs::write(&x_path, npy_f4("(9, 3)", &x.data[..27])).unwrap();
    assert_file_err(
        load_features(&root, "f"),
        &meta_path,
        "data rows",
        &["10 rows, but x.npy has 9"],
    );

    // Accepted: NPY version 2 and 3 headers, integer and byte dtypes.
    std::fs::write(&x_path, npy(2, &dict("<f4", "False", "(10, 3)"), &body)).unwrap();
    assert_eq!(
        assert_valid(load_features(&root, "f")).train.x,
        small_dataset().train.x
    );
    std::fs::write(&x_path, npy(3, &dict("<f4", "False", "(10L, 3L)"), &body)).unwrap();
    assert_valid(load_features(&root, "f"));
    let ints: Vec<u8> = (0..30i32).flat_map(|v| (v - 15).to_le_bytes()).collect();
    std::fs::write(&x_path, npy(1, &dict("<i4", "False", "(10, 3)"), &ints)).unwrap();
    assert_eq!(assert_valid(load_features(&root, "f")).train.x[0], -15.0);
    std::fs::write(
        &x_path,
        npy(1, &dict("|u1", "False", "(10, 3)"), &[255; 30]),
    )
    .unwrap();
    assert_eq!(assert_valid(load_features(&root, "f")).test.x[8], 255.0);

    std::fs::remove_file(&x_path).unwrap();
    assert_file_err(load_features(&root, "f"), &x_path, "x", &["missing file"]);
}

// ---------------------------------------------------------------------------------------------
// MNIST: IDX files and the CSV sample

fn idx_images(images: &[u8], n: u32, side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0803u32, n, side, side] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(images);
    out
}

fn idx_labels(labels: &[u8], n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0x0801u32, n] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Twenty digits with labels 0..=9 twice and pixels from a seeded generator.
fn digits() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(7);
    let images = (0..20 * MNIST_PIXELS)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..20).map(|i| (i % 10) as u8).collect();
    (images, labels)
}

#[test]
fn idx_files() {
    let dir = TempDir::new("idx");
    let (images, labels) = digits();
    let img = idx_images(&images, 20, 28);
    let lab = idx_labels(&labels, 20);

    let p = dir.write("img", &img);
    assert_eq!(read_idx_images(&p).unwrap(), images);
    let p = dir.write("img.gz", gzip(&img));
    assert_eq!(read_idx_images(&p).unwrap(), images);
    let p = dir.write("lab.gz", gzip(&lab));
    assert_eq!(read_idx_labels(&p).unwrap(), labels);

    let images_err = |name: &str, bytes: Vec<u8>, words: &[&str]| {
        let p = dir.write(name, bytes);
        assert_file_err(read_idx_images(&p), &p, "IDX images", words);
    };
    images_err(
        "short",
        img[..10].to_vec(),
        &["truncated: 10 bytes, the IDX header needs 16"],
    );
    images_err(
        "short.gz",
        gzip(&img[..10]),
        &["truncated: 10 bytes, the IDX header needs 16"],
    );
    images_err(
        "labels-as-images",
        lab.clone(),
        &["magic number 0x00000801 is not 0x00000803"],
    );
    images_err(
        "small",
        idx_images(&images[..27 * 27], 1, 27),
        &["images are 27 × 27, expected 28 × 28"],
    );
    images_err(
        "cut",
        img[..img.len() - 1].to_vec(),
        &["truncated: the header promises 20 items (15696 bytes) but the file holds 15695 bytes"],
    );
    images_err(
        "long",
        [img.clone(), vec![0; 3]].concat(),
        &["3 trailing bytes after the 20 items"],
    );
    images_err(
        "long.gz",
        gzip(&[img.clone(), vec![0; 3]].concat()),
        &["trailing data after the 20 items"],
    );
    // An absurd count: compared with the file, or refused before decompressing.
    images_err(
        "absurd",
        idx_images(&images, u32::MAX, 28),
        &["truncated: the header promises 4294967295 items"],
    );
    images_err(
        "absurd.gz",
        gzip(&idx_images(&images, u32::MAX, 28)),
        &["more than the 4294967296 bytes (4 GiB) a gzipped file may hold"],
    );
    images_err(
        "cut.gz",
        gzip(&img[..5000]),
        &["truncated: the header promises 20 items (15696 bytes) but the file holds 5000 bytes"],
    );
    assert_eq!(MAX_DECOMPRESSED_BYTES, 1 << 32);
    let full = gzip(&img);
    let p = dir.write("broken.gz", &full[..full.len() / 2]);
    assert_file_err(
        read_idx_images(&p),
        &p,
        "gzip stream",
        &["cannot decompress"],
    );

    let labels_err = |name: &str, bytes: Vec<u8>, words: &[&str]| {
        let p = dir.write(name, bytes);
        assert_file_err(read_idx_labels(&p), &p, "IDX labels", words);
    };
    labels_err(
        "lab-short",
        lab[..7].to_vec(),
        &["truncated: 7 bytes, the IDX header needs 8"],
    );
    labels_err(
        "images-as-labels",
        img.clone(),
        &["magic number 0x00000803 is not 0x00000801"],
    );
    let mut not_digit = labels.clone();
    not_digit[4] = 10;
    labels_err(
        "lab-10",
        idx_labels(&not_digit, 20),
        &["label 10 at row 4 is not a digit 0..=9"],
    );
    labels_err(
        "lab-cut",
        idx_labels(&labels[..19], 20),
        &["truncated: the header promises 20 items"],
    );

    // Folders.
    let pair = TempDir::new("idx-pair");
    pair.write("train-images-idx3-ubyte", &img);
    let lab_path = pair.path("train-labels-idx1-ubyte");
    assert_file_err(
        load_mnist_idx(&pair.0),
        &lab_path,
        "IDX labels",
        &["train images are present but their labels file is missing"],
    );
    pair.write("train-labels-idx1-ubyte", idx_labels(&labels[..19], 19));
    assert_file_err(
        load_mnist_idx(&pair.0),
        &lab_path,
        "IDX labels",
        &["19 labels for the 20 images of"],
    );
    pair.write("train-labels-idx1-ubyte.gz", gzip(&lab));
    std::fs::remove_file(&lab_path).unwrap();
    let (i, l) = load_mnist_idx(&pair.0).unwrap();
    assert_eq!((i, l), (images.clone(), labels.clone()));
    pair.write("t10k-labels-idx1-ubyte", &lab);
    let t10k = pair.path("t10k-images-idx3-ubyte");
    assert_file_err(
        load_mnist_idx(&pair.0),
        &t10k,
        "IDX images",
        &["t10k labels are present but their images file is missing"],
    );
    let empty = TempDir::new("idx-empty");
    let want = empty.path("train-images-idx3-ubyte");
    assert_file_err(
        load_mnist_idx(&empty.0),
        &want,
        "IDX images",
        &["not found (looked for train-images-idx3-ubyte"],
    );

    // In memory: image bytes that do not match the labels.
    match color_mnist(&images[..100], &labels, &ColorMnistConfig::default()) {
        Err(Error::Data(msg)) => assert!(msg.contains("100 image bytes for 20 labels"), "{msg}"),
        other => panic!("expected a data error, got {other:?}"),
    }
}

fn csv_row(pixel: u32, label: u32) -> String {
    let mut fields = vec![pixel.to_string(); MNIST_PIXELS];
    fields.push(label.to_string());
    fields.join(",")
}

#[test]
fn mnist_csv() {
    let dir = TempDir::new("csv");
    let good = [csv_row(0, 3), csv_row(255, 7)].join("\n");
    let p = dir.write("ok.csv", &good);
    let (images, labels) = load_mnist_sample(&p).unwrap();
    assert_eq!((images.len(), labels), (2 * MNIST_PIXELS, vec![3, 7]));
    let p = dir.write("ok.csv.gz", gzip(good.as_bytes()));
    assert_eq!(load_mnist_sample(&p).unwrap().1, vec![3, 7]);

    let err = |name: &str, bytes: &[u8], place: &str, words: &[&str]| {
        let p = dir.write(name, bytes);
        assert_file_err(load_mnist_sample(&p), &p, place, words);
    };
    err("empty.csv", b"", "", &["no digits in the file"]);
    err("latin1.csv", b"1,2,\xe9", "", &["not UTF-8 text"]);
    err(
        "pixel.csv",
        format!("{}\n{}", csv_row(0, 1), csv_row(256, 1)).as_bytes(),
        "row 2",
        &["pixel 256 in column 1 exceeds 255"],
    );
    err(
        "label.csv",
        csv_row(0, 11).as_bytes(),
        "row 1",
        &["label 11 is not a digit 0..=9"],
    );
    err(
        "text.csv",
        csv_row(0, 1).replacen("0", "zero", 1).as_bytes(),
        "row 1",
        &["column 1: `zero` is not a non-negative integer"],
    );
    err(
        "negative.csv",
        csv_row(0, 1).replacen("0", "-1", 1).as_bytes(),
        "row 1",
        &["`-1` is not a non-negative integer"],
    );
    err(
        "short.csv",
        b"1,2,3",
        "row 1",
        &["3 fields, expected 784 pixels and a label"],
    );
    err(
        "long.csv",
        format!("{},4", csv_row(0, 1)).as_bytes(),
        "row 1",
        &["786 fields"],
    );
}

// ---------------------------------------------------------------------------------------------
// generators: absurd sizes are refused before anything is allocated

#[test]
fn generator_sizes() {
    let huge = InterpretableConfig {
        n: 100_000_000_000,
        d: 1800,
        ..Default::default()
    };
    assert_arg_err(
        interpretable(&huge),
        "n",
        &[
            "3 splits × 100000000000 examples × 1800 features = 540000000000000 feature values",
            "more than the 4294967296 values (16 GiB) a generated data set may hold",
        ],
    );
    for (n, d) in [(usize::MAX, 2), (2, usize::MAX), (usize::MAX, usize::MAX)] {
        let cfg = InterpretableConfig {
            n,
            d,
            ..Default::default()
        };
        assert_arg_err(interpretable(&cfg), "n", &["feature values", "more than"]);
    }
    // Just over the limit still errs; a tiny set is fine.
    let over = InterpretableConfig {
        n: MAX_GENERATED_VALUES / 6 + 1,
        d: 2,
        ..Default::default()
    };
    assert_arg_err(interpretable(&over), "n", &["more than"]);
    let tiny = InterpretableConfig {
        n: 1,
        d: 2,
        ..Default::default()
    };
    let ds = assert_valid(interpretable(&tiny));
    assert_eq!(ds.train.n, 1);
    assert_eq!(
        ds.classes_missing_from_train().len(),
        1,
        "one example, one class"
    );

    let wb = |d: usize, counts: [usize; 4]| WaterbirdsLikeConfig {
        d,
        train_counts: counts,
        ..Default::default()
    };
    assert_arg_err(
        waterbirds_like(&wb(2048, [usize::MAX, usize::MAX, 1, 1])),
        "d",
        &["feature values", "more than"],
    );
    assert_arg_err(
        waterbirds_like(&wb(usize::MAX / 2, [1, 1, 1, 1])),
        "d",
        &["more than"],
    );
    assert_arg_err(
        waterbirds_like_directions(&wb(usize::MAX, [1, 1, 1, 1])),
        "d",
        &["2 directions"],
    );
    assert_arg_err(
        waterbirds_like(&wb(2048, [0; 4])),
        "train_counts",
        &["all group counts are 0"],
    );

    let reg = |n_grid: usize, extra_dims: usize| RegressionConfig {
        n_grid,
        extra_dims,
        ..Default::default()
    };
    assert_arg_err(
        good_bad_ugly(&reg(1000, usize::MAX)),
        "extra_dims",
        &["leaves no room"],
    );
    assert_arg_err(
        good_bad_ugly(&reg(usize::MAX, 30)),
        "n_grid",
        &["grid + 20 training points", "more than"],
    );
    assert_arg_err(good_bad_ugly(&reg(1 << 30, 30)), "n_grid", &["more than"]);
}

// ---------------------------------------------------------------------------------------------
// seeded mutations: truncations and byte flips give errors or valid data, never panics

/// `bytes` cut at a random length, or with 1 to 4 bytes changed, or with a random run of
/// bytes repeated; the text says which.
fn mutate(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    match rng.below(3) {
        0 => {
            let at = rng.below(bytes.len() as u64) as usize;
            out.truncate(at);
            (out, format!("truncated at {at}"))
        }
        1 => {
            let mut what = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() as u64) as usize;
                let x = 1 + rng.below(255) as u8;
                out[at] ^= x;
                what.push(format!("{at}^{x:#04x}"));
            }
            (out, format!("flipped {}", what.join(" ")))
        }
        _ => {
            let at = rng.below(bytes.len() as u64) as usize;
            let len = 1 + rng.below(16) as usize;
            let run: Vec<u8> = out[at..(at + len).min(bytes.len())].to_vec();
            out.splice(at..at, run);
            (out, format!("repeated {len} bytes at {at}"))
        }
    }
}

/// Runs `load` on `trials` mutations of `bytes` written to `path`; each must give an error
/// whose message names `path` (or the file `names` says) or a valid result (`check`).
fn fuzz<T>(
    what: &str,
    seed: u64,
    trials: usize,
    bytes: &[u8],
    path: &Path,
    load: impl Fn() -> Result<T>,
    check: impl Fn(&T),
) -> (usize, usize) {
    let mut rng = Rng::new(seed);
    let (mut errors, mut accepted) = (0, 0);
    for trial in 0..trials {
        let (mutated, how) = mutate(bytes, &mut rng);
        std::fs::write(path, &mutated).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(&load))
            .unwrap_or_else(|_| panic!("{what}, trial {trial} ({how}): panicked"));
        match outcome {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                assert!(!msg.contains("tensor ``"), "{what}, {how}: `{msg}`");
                assert!(!looks_like_debug(&msg), "{what}, {how}: `{msg}`");
                let parent = path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy();
                assert!(
                    msg.contains(&*parent),
                    "{what}, {how}: `{msg}` should name the file"
                );
                errors += 1;
            }
            Ok(v) => {
                check(&v);
                accepted += 1;
            }
        }
    }
    (errors, accepted)
}

#[test]
fn mutated_safetensors_never_panic() {
    let dir = TempDir::new("fuzz-st");
    let bytes = st_file(&base_tensors(), &[("classes", "2"), ("n_attr", "2")]);
    let path = dir.path("f.safetensors");
    let (errors, accepted) = fuzz(
        "safetensors",
        1,
        400,
        &bytes,
        &path,
        || load_features(&path, "f"),
        check_valid,
    );
    assert_eq!(errors + accepted, 400);
    assert!(
        errors > 0 && accepted > 0,
        "{errors} errors, {accepted} accepted"
    );
}

#[test]
fn mutated_npy_folders_never_panic() {
    let (_dir, root, _) = npy_folder("fuzz-npy");
    for (i, file) in ["x.npy", "meta.csv"].into_iter().enumerate() {
        let path = root.join(file);
        let bytes = std::fs::read(&path).unwrap();
        let (errors, accepted) = fuzz(
            file,
            10 + i as u64,
            300,
            &bytes,
            &path,
            || load_features(&root, "f"),
            check_valid,
        );
        assert_eq!(errors + accepted, 300);
        assert!(
            errors > 0 && accepted > 0,
            "{file}: {errors} errors, {accepted} accepted"
        );
        std::fs::write(&path, &bytes).unwrap();
    }
}

#[test]
fn mutated_mnist_files_never_panic() {
    let dir = TempDir::new("fuzz-idx");
    let (images, labels) = digits();
    // Small images keep the loop fast: two digits, gzipped and plain.
    let img = idx_images(&images[..2 * MNIST_PIXELS], 2, 28);
    let lab = idx_labels(&labels[..2], 2);
    let check_pair = |(i, l): &(Vec<u8>, Vec<u8>)| {
        assert_eq!(i.len(), l.len() * MNIST_PIXELS);
        assert!(l.iter().all(|&d| d <= 9));
    };
    for (seed, (name, bytes)) in [
        ("train-images-idx3-ubyte", img.clone()),
        ("train-labels-idx1-ubyte", lab.clone()),
        ("train-images-idx3-ubyte.gz", gzip(&img)),
        ("train-labels-idx1-ubyte.gz", gzip(&lab)),
    ]
    .into_iter()
    .enumerate()
    {
        let (image_name, label_name) = if name.ends_with(".gz") {
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
        } else {
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        };
        let folder = TempDir::new(&format!("fuzz-idx-{seed}"));
        folder.write(
            image_name,
            if image_name.ends_with(".gz") {
                gzip(&img)
            } else {
                img.clone()
            },
        );
        folder.write(
            label_name,
            if label_name.ends_with(".gz") {
                gzip(&lab)
            } else {
                lab.clone()
            },
        );
        let path = folder.path(name);
        let (errors, _) = fuzz(
            name,
            20 + seed as u64,
            250,
            &bytes,
            &path,
            || load_mnist_idx(&folder.0),
            check_pair,
        );
        assert!(errors > 0, "{name}");
    }
    let csv = [csv_row(0, 3), csv_row(200, 7)].join("\n");
    let path = dir.path("sample.csv");
    let (errors, accepted) = fuzz(
        "mnist csv",
        30,
        250,
        csv.as_bytes(),
        &path,
        || load_mnist_sample(&path),
        check_pair,
    );
    assert_eq!(errors + accepted, 250);
}
