//! User feature files: precomputed features (say, frozen ResNet-50 or BERT embeddings) with
//! labels and group attributes, in one of two layouts.
//!
//! # One safetensors file
//!
//! | tensor            | shape          | dtype                                  | required |
//! |-------------------|----------------|----------------------------------------|----------|
//! | `tr.x` `va.x` `te.x` | `n × d`     | F32, F16, BF16 or F64 (stored as f32)  | yes      |
//! | `tr.y` `va.y` `te.y` | `n` or `n × 1` | any integer type or BOOL, `>= 0`    | yes      |
//! | `tr.a` `va.a` `te.a` | `n` or `n × 1` | the same                            | no (0)   |
//! | `tr.ids` ...      | `n` or `n × 1` | the same                               | no (row) |
//!
//! Optional header metadata `classes` and `n_attr` (decimal strings) declare the number of
//! classes and attribute values; without them they are inferred as `max + 1` over the three
//! splits (at least 1 attribute value). [`save_features_safetensors`] writes this layout
//! (F32 features, I64 labels, attributes and ids, both metadata keys).
//!
//! # A directory of NumPy files
//!
//! - `x.npy`: every example of every split, `N × d`, C order, one of `<f4 <f2 <f8 <i8 <i4 |u1`
//!   (NPY format versions 1–3);
//! - `meta.csv`: UTF-8 text (a leading byte-order mark is ignored), a header naming the columns
//!   `id,split,y,a` (any order, `a` optional, other columns ignored, none of these four
//!   twice), then one row per row of `x.npy`, in the same order; `split` is `tr`, `va` or
//!   `te`; plain values, no quoting.
//!
//! Classes and attribute values are inferred as above. [`save_features_npy`] writes it.
//!
//! # Errors
//!
//! Every problem with a file's contents is an [`Error::File`] naming the file, the tensor (or
//! the CSV column and line) and what is wrong: a missing tensor, a wrong dtype, a wrong rank
//! or shape, lengths that disagree between x, y, a and ids or features counts between splits,
//! negative or out-of-range labels or attributes, NaN or infinite features, an empty split, a
//! truncated file. Labels and attribute values are limited to `0..2^20` so that a corrupt
//! label cannot make later per-class tables enormous.
//!
//! Before the `safetensors` crate reads a file, its structure is checked so that each problem
//! names its tensor: the header length against the file size, the header as UTF-8 JSON, every
//! tensor name (and metadata key) listed once — JSON maps keep the last of two equal keys,
//! which would hide a duplicate or blame another tensor's offsets —, each entry's `dtype`,
//! `shape` and `data_offsets`, the bytes each shape needs against the bytes its offsets span,
//! offsets that tile the data without gaps, and the data against the end of the file. NPY
//! headers are checked the same way. No size declared in a header is allocated before it has
//! been compared with the bytes the file holds, and the f32 conversion reserves its memory
//! fallibly.
//!
//! **A class absent from training is an error.** The number of classes is declared
//! (`classes`) or inferred over the three splits; when the training split has no example of
//! some class, the file is refused with an error naming the missing classes and the ones
//! present: a model cannot learn a class it never sees, and the usual cause is a wrong split
//! or a wrong `classes`. (In-memory data sets are not held to this; see
//! [`Dataset::validate`].)
//!
//! # From XRM's `features.pt`
//!
//! The XRM repository stores featurized data sets as a `torch.save`d dict
//! `{split: {"x": n × d float, "y": labels, "m": group attribute}}` with splits `tr`, `va`,
//! `te`. Convert it with:
//!
//! ```python
//! import torch
//! from safetensors.torch import save_file
//!
//! pt = torch.load("features.pt")
//! out = {}
//! for s in ("tr", "va", "te"):
//!     out[f"{s}.x"] = pt[s]["x"].float().contiguous()
//!     out[f"{s}.y"] = pt[s]["y"].reshape(-1).long().contiguous()
//!     out[f"{s}.a"] = pt[s]["m"].reshape(-1).long().contiguous()
//! save_file(out, "waterbirds.safetensors", metadata={"classes": "2", "n_attr": "2"})
//! ```
//!
//! # Memory: files are mapped, not read
//!
//! Both layouts are mapped read-only ([`MappedFile`]) and their structure is checked against
//! the mapped length before any byte it declares is touched. Little-endian F32 (`<f4`)
//! features are then used in place as the splits' feature buffers, and as the CPU tensors a
//! run makes from them: opening a 1.7 GB file reads its header, scans the features once for
//! NaN and infinities, and copies nothing, and the pages are shared with the page cache (and
//! with every other run of the same file). F16, BF16 and F64 features (and `<f2 <f8 <i8 <i4
//! |u1` NPY data) are converted to f32 once, into a buffer that every tensor and clone then
//! shares; so are F32 features at an offset that is not a multiple of 4. An NPY split whose
//! rows are not consecutive in `x.npy` is gathered into a buffer of its own. Labels,
//! attributes and ids are always copied (they are small). What a mapping cannot guard against
//! — the file truncated or rewritten by another process while it is mapped — is described in
//! [`crate::buffer`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{try_with_capacity, Dataset, Split, SplitKind};
use crate::buffer::{F32Buffer, MappedFile};
use crate::error::{Error, Result};

/// Largest accepted number of classes or attribute values.
pub const MAX_LABEL_VALUES: usize = 1 << 20;

const KINDS: [SplitKind; 3] = [SplitKind::Train, SplitKind::Valid, SplitKind::Test];

fn file_error(path: &Path, tensor: &str, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        problem: problem.into(),
    }
}

/// Loads features from a `.safetensors` file or from a directory holding `x.npy` and
/// `meta.csv` (see the module docs); `name` names the data set in reports.
pub fn load_features(path: impl AsRef<Path>, name: &str) -> Result<Dataset> {
    let path = path.as_ref();
    if path.is_dir() {
        return load_features_npy(path, name);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => load_features_safetensors(path, name),
        _ => {
            if !path.exists() {
                return Err(file_error(path, "", "no such file or directory"));
            }
            Err(file_error(
                path,
                "",
                "unknown feature format: expected a .safetensors file or a directory with x.npy and meta.csv",
            ))
        }
    }
}

/// One split as read from a file, before ranges are checked.
struct RawSplit {
    x: F32Buffer,
    n: usize,
    d: usize,
    y: Vec<u64>,
    a: Option<Vec<u64>>,
    ids: Option<Vec<u64>>,
}

/// Where each part of a split came from, for error messages.
struct Origin {
    path: PathBuf,
    x: String,
    y: String,
    a: String,
    /// The 1-based line of every row, for a text file (`None`: rows are tensor rows).
    lines: Option<Vec<usize>>,
}

impl Origin {
    /// Where row `row` of the split is: `row 3` of a tensor, or `line 7` of a text file.
    fn place(&self, row: usize) -> String {
        match self.lines.as_ref().and_then(|l| l.get(row)) {
            Some(line) => format!("line {line}"),
            None => format!("row {row}"),
        }
    }
}

/// Up to 8 values joined with `, `, and how many more there are.
fn fmt_values(values: &[usize]) -> String {
    let shown: Vec<String> = values.iter().take(8).map(|v| v.to_string()).collect();
    match values.len() {
        0 => "none".into(),
        n if n > 8 => format!("{} and {} more", shown.join(", "), n - 8),
        _ => shown.join(", "),
    }
}

/// The features at `bytes` (a tensor's data inside `file`) as f32, checked finite: F32 data
/// is used in place in the mapping (copied once only when misaligned), F16, BF16 and F64 are
/// converted once into a shared buffer.
fn features_to_f32(
    file: &Arc<MappedFile>,
    tensor: &str,
    dtype: Dtype,
    bytes: &[u8],
    d: usize,
) -> Result<F32Buffer> {
    let path = file.path();
    let x = match dtype {
        Dtype::F32 => {
            let offset = bytes.as_ptr() as usize - file.bytes().as_ptr() as usize;
            F32Buffer::from_mapped(file, offset, bytes.len() / 4)
                .map_err(|e| file_error(path, tensor, e))?
        }
        Dtype::F16 => decode_f32(path, tensor, bytes, |c| {
            half::f16::from_le_bytes(c).to_f32()
        })?
        .into(),
        Dtype::BF16 => decode_f32(path, tensor, bytes, |c| {
            half::bf16::from_le_bytes(c).to_f32()
        })?
        .into(),
        Dtype::F64 => decode_f32(path, tensor, bytes, |c| f64::from_le_bytes(c) as f32)?.into(),
        other => {
            return Err(file_error(
                path,
                tensor,
                format!("dtype {other:?}: features must be F32, F16, BF16 or F64"),
            ))
        }
    };
    let x = x.into_shared();
    check_finite(path, tensor, &x, d)?;
    Ok(x)
}

/// Little-endian `W`-byte values converted to f32, into memory reserved fallibly.
fn decode_f32<const W: usize>(
    path: &Path,
    tensor: &str,
    bytes: &[u8],
    f: impl Fn([u8; W]) -> f32,
) -> Result<Vec<f32>> {
    let mut x = try_with_capacity(bytes.len() / W).map_err(|e| file_error(path, tensor, e))?;
    x.extend(
        bytes
            .chunks_exact(W)
            .map(|c| f(c.try_into().expect("chunks_exact yields W bytes"))),
    );
    Ok(x)
}

fn check_finite(path: &Path, tensor: &str, x: &F32Buffer, d: usize) -> Result<()> {
    if let Some(i) = x.first_non_finite() {
        return Err(file_error(
            path,
            tensor,
            format!(
                "non-finite value {} at row {}, feature {}",
                x[i],
                i / d.max(1),
                i % d.max(1)
            ),
        ));
    }
    Ok(())
}

/// Little-endian `W`-byte integers, widened to i128 so every integer dtype fits.
fn decode_ints<const W: usize>(bytes: &[u8], f: impl Fn([u8; W]) -> i128) -> Vec<i128> {
    bytes
        .chunks_exact(W)
        .map(|c| f(c.try_into().expect("chunks_exact yields W bytes")))
        .collect()
}

/// Converts an integer (or BOOL) tensor to non-negative values; rejects floats and negatives.
fn ints_to_u64(path: &Path, tensor: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<u64>> {
    let values: Vec<i128> = match dtype {
        Dtype::BOOL | Dtype::U8 => decode_ints::<1>(bytes, |c| c[0].into()),
        Dtype::I8 => decode_ints::<1>(bytes, |c| i8::from_le_bytes(c).into()),
        Dtype::I16 => decode_ints::<2>(bytes, |c| i16::from_le_bytes(c).into()),
        Dtype::U16 => decode_ints::<2>(bytes, |c| u16::from_le_bytes(c).into()),
        Dtype::I32 => decode_ints::<4>(bytes, |c| i32::from_le_bytes(c).into()),
        Dtype::U32 => decode_ints::<4>(bytes, |c| u32::from_le_bytes(c).into()),
        Dtype::I64 => decode_ints::<8>(bytes, |c| i64::from_le_bytes(c).into()),
        Dtype::U64 => decode_ints::<8>(bytes, |c| u64::from_le_bytes(c).into()),
        other => {
            return Err(file_error(
                path,
                tensor,
                format!("dtype {other:?}: labels, attributes and ids must be integers"),
            ))
        }
    };
    values
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            u64::try_from(v)
                .map_err(|_| file_error(path, tensor, format!("negative value {v} at row {row}")))
        })
        .collect()
}

/// A per-example vector: shape `[n]` or `[n, 1]`.
fn per_example_len(path: &Path, tensor: &str, shape: &[usize]) -> Result<usize> {
    match shape {
        [n] | [n, 1] => Ok(*n),
        _ => Err(file_error(
            path,
            tensor,
            format!("shape {shape:?}: expected one value per example, [n] or [n, 1]"),
        )),
    }
}

fn st_tensor<'a>(
    path: &Path,
    st: &'a SafeTensors<'a>,
    key: &str,
) -> Result<Option<TensorView<'a>>> {
    match st.tensor(key) {
        Ok(view) => Ok(Some(view)),
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
        Err(e) => Err(file_error(path, key, e.to_string())),
    }
}

fn st_ints(
    path: &Path,
    st: &SafeTensors<'_>,
    key: &str,
    n: usize,
    x_key: &str,
) -> Result<Option<Vec<u64>>> {
    let Some(view) = st_tensor(path, st, key)? else {
        return Ok(None);
    };
    let len = per_example_len(path, key, view.shape())?;
    if len != n {
        return Err(file_error(
            path,
            key,
            format!("{len} values, but {x_key} has {n} rows"),
        ));
    }
    ints_to_u64(path, key, view.dtype(), view.data()).map(Some)
}

fn parse_declared(
    path: &Path,
    meta: Option<&HashMap<String, String>>,
    key: &str,
) -> Result<Option<usize>> {
    let Some(value) = meta.and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    let v: usize = value.trim().parse().map_err(|_| {
        file_error(
            path,
            "__metadata__",
            format!("`{key}` = `{value}` is not a non-negative integer"),
        )
    })?;
    if v == 0 || v > MAX_LABEL_VALUES {
        return Err(file_error(
            path,
            "__metadata__",
            format!("`{key}` = {v} is outside 1..={MAX_LABEL_VALUES}"),
        ));
    }
    Ok(Some(v))
}

/// One value of a safetensors header: the `__metadata__` map (entries in file order,
/// duplicates kept) or a tensor's entry.
enum HeaderValue {
    /// `None` for `"__metadata__": null`, which the format allows.
    Metadata(Option<Entries<serde_json::Value>>),
    Tensor(serde_json::Value),
}

/// The entries of a JSON object in file order, duplicate keys kept (a `HashMap` would keep
/// only the last of two equal keys, silently).
struct Entries<V>(Vec<(String, V)>);

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The top level of a safetensors header: `__metadata__` parsed as [`Entries`], every other
/// key as a tensor entry.
struct Header(Vec<(String, HeaderValue)>);

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Header, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = if key == "__metadata__" {
                        HeaderValue::Metadata(map.next_value()?)
                    } else {
                        HeaderValue::Tensor(map.next_value()?)
                    };
                    out.push((key, value));
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The safetensors dtypes (the names the `safetensors` crate knows).
const SAFETENSORS_DTYPES: [&str; 22] = [
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
];

/// Bytes per element of the safetensors dtypes whose size is a whole number of bytes (`None`
/// for the others, which the `safetensors` crate checks on its own).
fn dtype_bytes(dtype: &str) -> Option<u64> {
    match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => Some(1),
        "I16" | "U16" | "F16" | "BF16" => Some(2),
        "I32" | "U32" | "F32" => Some(4),
        "I64" | "U64" | "F64" | "C64" => Some(8),
        _ => None,
    }
}

/// Checks the structure of a safetensors file before the `safetensors` crate reads it, so
/// that every problem names the tensor it concerns: the 8-byte header length against the file
/// size, the header as UTF-8 JSON, each tensor listed once (and each metadata key), each entry's
/// `dtype`, `shape` and `data_offsets`, the bytes a shape needs against the bytes its offsets
/// span, offsets that tile the data without gaps, and the data against the file's end.
/// Nothing is allocated from a declared size.
fn check_safetensors_structure(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |tensor: &str, problem: String| file_error(path, tensor, problem);
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(bad(
            "",
            format!(
                "not a valid safetensors file: {} bytes, too short for the 8-byte header length",
                bytes.len()
            ),
        ));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let available = (bytes.len() - 8) as u64;
    if header_len > available {
        return Err(bad(
            "",
            format!(
                "not a valid safetensors file: the header length field says {header_len} bytes, \
                 but only {available} bytes follow it (a truncated file, or another format)"
            ),
        ));
    }
    let header_end = 8 + header_len as usize;
    let text = std::str::from_utf8(&bytes[8..header_end]).map_err(|e| {
        bad(
            "",
            format!(
                "not a valid safetensors file: the header is not UTF-8 text (at byte {})",
                8 + e.valid_up_to()
            ),
        )
    })?;
    let header: Header = serde_json::from_str(text).map_err(|e| {
        bad(
            "",
            format!("not a valid safetensors file: the header is not a JSON object: {e}"),
        )
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for (name, value) in &header.0 {
        if !seen.insert(name.as_str()) {
            return Err(bad(
                name,
                "listed twice in the header; each tensor name must appear once".into(),
            ));
        }
        let entry = match value {
            HeaderValue::Metadata(entries) => {
                let mut keys = std::collections::HashSet::new();
                for (key, v) in entries.iter().flat_map(|e| &e.0) {
                    if !keys.insert(key.as_str()) {
                        return Err(bad("__metadata__", format!("key `{key}` is listed twice")));
                    }
                    if !v.is_string() {
                        return Err(bad(
                            "__metadata__",
                            format!("the value of `{key}` is {v}, not a string"),
                        ));
                    }
                }
                continue;
            }
            HeaderValue::Tensor(entry) => entry,
        };
        let field = |key: &str| entry.get(key);
        let dtype = field("dtype").and_then(|v| v.as_str()).ok_or_else(|| {
            bad(
                name,
                format!("the header entry {entry} has no `dtype` string"),
            )
        })?;
        if !SAFETENSORS_DTYPES.contains(&dtype) {
            return Err(bad(
                name,
                format!("dtype `{dtype}` is not a safetensors dtype"),
            ));
        }
        let shape = field("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| {
                bad(
                    name,
                    format!(
                        "the header entry {entry} has no `shape` list of non-negative integers"
                    ),
                )
            })?;
        let offsets = field("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| match a.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| {
                bad(
                    name,
                    format!("the header entry {entry} has no `data_offsets` pair [begin, end]"),
                )
            })?;
        if offsets.1 < offsets.0 {
            return Err(bad(
                name,
                format!(
                    "data_offsets [{}, {}] end before they begin",
                    offsets.0, offsets.1
                ),
            ));
        }
        if let Some(size) = dtype_bytes(dtype) {
            let need = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(name, format!("shape {shape:?} of {dtype} is too large")))?;
            if need != offsets.1 - offsets.0 {
                return Err(bad(
                    name,
                    format!(
                        "shape {shape:?} of {dtype} needs {need} bytes, but data_offsets [{}, {}] \
                         span {}",
                        offsets.0,
                        offsets.1,
                        offsets.1 - offsets.0
                    ),
                ));
            }
        }
        spans.push((offsets.0, offsets.1, name));
    }
    spans.sort_unstable();
    let mut end = 0u64;
    for &(b, e, name) in &spans {
        if b != end {
            let what = if b < end {
                "overlap"
            } else {
                "leave a gap after"
            };
            return Err(bad(
                name,
                format!(
                    "data_offsets [{b}, {e}] {what} the data before them, which ends at byte {end}"
                ),
            ));
        }
        end = e;
    }
    let data_len = (bytes.len() - header_end) as u64;
    if end > data_len {
        return Err(bad(
            "",
            format!(
                "truncated: the header's tensors need {end} data bytes, the file holds {data_len}"
            ),
        ));
    }
    if end < data_len {
        return Err(bad(
            "",
            format!(
                "{} trailing bytes after the {end} data bytes the header's tensors use",
                data_len - end
            ),
        ));
    }
    Ok(())
}

/// Loads the safetensors layout (see the module docs).
pub fn load_features_safetensors(path: impl AsRef<Path>, name: &str) -> Result<Dataset> {
    let path = path.as_ref();
    let file = MappedFile::open(path)?;
    let bytes = file.bytes();
    check_safetensors_structure(path, bytes)?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(path, "", format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| file_error(path, "__metadata__", e.to_string()))?;
    let meta = header.metadata().as_ref();
    let declared_classes = parse_declared(path, meta, "classes")?;
    let declared_attr = parse_declared(path, meta, "n_attr")?;

    let mut raws = Vec::with_capacity(3);
    let mut origins = Vec::with_capacity(3);
    for kind in KINDS {
        let s = kind.short();
        let (x_key, y_key, a_key, ids_key) = (
            format!("{s}.x"),
            format!("{s}.y"),
            format!("{s}.a"),
            format!("{s}.ids"),
        );
        let missing = |key: &str| {
            let mut names = st.names();
            names.sort_unstable();
            file_error(
                path,
                key,
                format!("missing (the file holds: {})", names.join(", ")),
            )
        };
        let xv = st_tensor(path, &st, &x_key)?.ok_or_else(|| missing(&x_key))?;
        let (n, d) = match xv.shape() {
            [n, d] => (*n, *d),
            shape => {
                return Err(file_error(
                    path,
                    &x_key,
                    format!("shape {shape:?}: features must be a matrix [n, d]"),
                ))
            }
        };
        let x = features_to_f32(&file, &x_key, xv.dtype(), xv.data(), d)?;
        let y = st_ints(path, &st, &y_key, n, &x_key)?.ok_or_else(|| missing(&y_key))?;
        let a = st_ints(path, &st, &a_key, n, &x_key)?;
        let ids = st_ints(path, &st, &ids_key, n, &x_key)?;
        raws.push(RawSplit { x, n, d, y, a, ids });
        origins.push(Origin {
            path: path.to_path_buf(),
            x: x_key,
            y: y_key,
            a: a_key,
            lines: None,
        });
    }
    assemble(name, raws, &origins, declared_classes, declared_attr)
}

/// Number of classes (`attributes == false`) or attribute values: the declared count, after
/// checking every value against it, or `max + 1` over the splits (1 when no split has values).
fn value_count(
    raws: &[RawSplit],
    origins: &[Origin],
    declared: Option<usize>,
    attributes: bool,
) -> Result<usize> {
    let what = if attributes {
        "attribute values"
    } else {
        "classes"
    };
    let limit = declared.unwrap_or(MAX_LABEL_VALUES) as u64;
    let mut max_seen = None::<u64>;
    for (raw, origin) in raws.iter().zip(origins) {
        let (values, tensor) = if attributes {
            (raw.a.as_deref(), &origin.a)
        } else {
            (Some(raw.y.as_slice()), &origin.y)
        };
        let Some(values) = values else { continue };
        if let Some((row, &v)) = values.iter().enumerate().find(|(_, &v)| v >= limit) {
            let bound = match declared {
                Some(c) => format!("the {c} {what} the file declares"),
                None => format!("at most {MAX_LABEL_VALUES} {what}"),
            };
            return Err(file_error(
                &origin.path,
                tensor,
                format!(
                    "value {v} at {} is out of range for {bound}",
                    origin.place(row)
                ),
            ));
        }
        max_seen = max_seen.max(values.iter().copied().max());
    }
    Ok(declared.unwrap_or(max_seen.map_or(1, |m| m as usize + 1)))
}

/// Checks ranges and shapes across splits and builds the data set.
fn assemble(
    name: &str,
    raws: Vec<RawSplit>,
    origins: &[Origin],
    declared_classes: Option<usize>,
    declared_attr: Option<usize>,
) -> Result<Dataset> {
    let d = raws[0].d;
    for (raw, origin) in raws.iter().zip(origins) {
        if raw.n == 0 {
            return Err(file_error(
                &origin.path,
                &origin.x,
                "the split has no examples",
            ));
        }
        if raw.d == 0 {
            return Err(file_error(
                &origin.path,
                &origin.x,
                "0 features per example",
            ));
        }
        if raw.d != d {
            return Err(file_error(
                &origin.path,
                &origin.x,
                format!(
                    "{} features per example, but {} has {d}",
                    raw.d, origins[0].x
                ),
            ));
        }
    }
    let classes = value_count(&raws, origins, declared_classes, false)?;
    let n_attr = value_count(&raws, origins, declared_attr, true)?;
    if classes < 2 {
        return Err(file_error(
            &origins[0].path,
            &origins[0].y,
            "every label is 0: at least two classes are needed",
        ));
    }
    let train_counts = Split::counts(
        &raws[0].y.iter().map(|&v| v as u32).collect::<Vec<u32>>(),
        classes,
    );
    let (present, absent): (Vec<usize>, Vec<usize>) =
        (0..classes).partition(|&k| train_counts[k] > 0);
    if !absent.is_empty() {
        let why = match declared_classes {
            Some(_) => "the `classes` metadata".to_string(),
            None => format!("the largest label over the three splits is {}", classes - 1),
        };
        let (noun, verb) = if absent.len() == 1 {
            ("class", "has")
        } else {
            ("classes", "have")
        };
        return Err(file_error(
            &origins[0].path,
            &origins[0].y,
            format!(
                "{noun} {} {verb} no training example, but there are {classes} classes ({why}); \
                 the training labels are {}. A class the model never sees cannot be learned: \
                 check that the splits are right, or declare fewer classes",
                fmt_values(&absent),
                fmt_values(&present)
            ),
        ));
    }
    let mut splits = Vec::with_capacity(3);
    for raw in raws {
        let to_u32 = |v: Vec<u64>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
        let mut split = Split::with_features(raw.x, raw.d, to_u32(raw.y), raw.a.map(to_u32))?;
        if let Some(ids) = raw.ids {
            split.ids = ids;
        }
        splits.push(split);
    }
    let test = splits.pop().expect("three splits were pushed");
    let valid = splits.pop().expect("three splits were pushed");
    let train = splits.pop().expect("three splits were pushed");
    let ds = Dataset {
        name: name.to_string(),
        classes,
        n_attr,
        train,
        valid,
        test,
    };
    ds.validate()
        .map_err(|e| file_error(&origins[0].path, "", e.to_string()))?;
    Ok(ds)
}

/// Writes `ds` in the safetensors layout (F32 features; I64 labels, attributes and ids;
/// `classes` and `n_attr` in the metadata).
pub fn save_features_safetensors(ds: &Dataset, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for kind in KINDS {
        let split = ds.split(kind);
        let s = kind.short();
        let x: Vec<u8> = split.x.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((format!("{s}.x"), Dtype::F32, vec![split.n, split.d], x));
        let int_bytes = |v: &mut dyn Iterator<Item = i64>| -> Vec<u8> {
            v.flat_map(i64::to_le_bytes).collect()
        };
        buffers.push((
            format!("{s}.y"),
            Dtype::I64,
            vec![split.n],
            int_bytes(&mut split.y.iter().map(|&v| v as i64)),
        ));
        buffers.push((
            format!("{s}.a"),
            Dtype::I64,
            vec![split.n],
            int_bytes(&mut split.a.iter().map(|&v| v as i64)),
        ));
        let ids = split
            .ids
            .iter()
            .map(|&id| {
                i64::try_from(id).map_err(|_| {
                    Error::Data(format!(
                        "split `{s}`: id {id} does not fit the I64 ids tensor"
                    ))
                })
            })
            .collect::<Result<Vec<i64>>>()?;
        buffers.push((
            format!("{s}.ids"),
            Dtype::I64,
            vec![split.n],
            int_bytes(&mut ids.into_iter()),
        ));
    }
    let views = buffers
        .iter()
        .map(|(key, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (key.clone(), v))
                .map_err(|e| file_error(path, key, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([
        ("classes".to_string(), ds.classes.to_string()),
        ("n_attr".to_string(), ds.n_attr.to_string()),
        ("name".to_string(), ds.name.clone()),
    ]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| file_error(path, "", e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// An array read from an NPY file, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Extracts the value of `key` from an NPY header dict (`{'descr': '<f4', ...}`).
fn header_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = ["'", "\""].iter().find_map(|q| {
        header
            .find(&format!("{q}{key}{q}"))
            .map(|i| i + key.len() + 2)
    })?;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = &rest[1..];
        return body.find(q).map(|end| &body[..end]);
    }
    if rest.starts_with('(') {
        return rest.find(')').map(|end| &rest[1..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// An NPY file mapped, its header checked against its size.
struct NpyFile {
    file: Arc<MappedFile>,
    shape: Vec<usize>,
    descr: &'static str,
    /// Byte offset of the data.
    data_start: usize,
}

impl NpyFile {
    /// The data's bytes (exactly as many as the shape needs).
    fn body(&self) -> &[u8] {
        &self.file.bytes()[self.data_start..]
    }

    /// Values `start..start + len` as f32: `<f4` data in place in the mapping, other dtypes
    /// converted (into memory reserved fallibly).
    fn values(&self, tensor: &str, start: usize, len: usize) -> Result<F32Buffer> {
        let path = self.file.path();
        let item = npy_item_bytes(self.descr);
        let bytes = &self.body()[start * item..(start + len) * item];
        Ok(match self.descr {
            "<f4" => F32Buffer::from_mapped(&self.file, self.data_start + 4 * start, len)
                .map_err(|e| file_error(path, tensor, e))?,
            "<f2" => decode_f32(path, tensor, bytes, |c| {
                half::f16::from_le_bytes(c).to_f32()
            })?
            .into(),
            "<f8" => decode_f32(path, tensor, bytes, |c| f64::from_le_bytes(c) as f32)?.into(),
            "<i8" => decode_f32(path, tensor, bytes, |c| i64::from_le_bytes(c) as f32)?.into(),
            "<i4" => decode_f32(path, tensor, bytes, |c| i32::from_le_bytes(c) as f32)?.into(),
            _ => decode_f32(path, tensor, bytes, |c: [u8; 1]| c[0] as f32)?.into(),
        })
    }
}

/// Bytes per value of a supported NPY dtype.
fn npy_item_bytes(descr: &str) -> usize {
    match descr {
        "<f4" | "<i4" => 4,
        "<f2" => 2,
        "<f8" | "<i8" => 8,
        _ => 1,
    }
}

/// Reads an NPY file (versions 1–3, little-endian `<f4 <f2 <f8 <i8 <i4 |u1`, C order) as f32.
pub fn read_npy_f32(path: impl AsRef<Path>, tensor: &str) -> Result<NpyArray> {
    let npy = open_npy(path.as_ref(), tensor)?;
    let count = npy.shape.iter().product();
    let data = npy.values(tensor, 0, count)?.into_vec();
    Ok(NpyArray {
        shape: npy.shape,
        data,
    })
}

/// Maps an NPY file and checks its header (see [`read_npy_f32`]) and its size.
fn open_npy(path: &Path, tensor: &str) -> Result<NpyFile> {
    let file = MappedFile::open(path)?;
    let bytes = file.bytes();
    let bad = |problem: String| file_error(path, tensor, problem);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an NPY file (missing the \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err(bad("truncated NPY header".into())),
        v => {
            return Err(bad(format!(
                "NPY format version {v} is not supported (1, 2 or 3)"
            )))
        }
    };
    let data_start = start + header_len;
    if bytes.len() < data_start {
        return Err(bad(format!(
            "truncated: the header needs {header_len} bytes, the file holds {}",
            bytes.len() - start
        )));
    }
    let header = std::str::from_utf8(&bytes[start..data_start])
        .map_err(|_| bad("the NPY header is not text".into()))?;
    let shown = header.trim_end();
    let descr = header_value(header, "descr")
        .ok_or_else(|| bad(format!("no `descr` in the header `{shown}`")))?;
    match header_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err(bad(
                "Fortran order is not supported; save with C order (np.ascontiguousarray)".into(),
            ))
        }
        Some(other) => {
            return Err(bad(format!(
                "`fortran_order` is `{other}`, expected True or False"
            )))
        }
        None => return Err(bad(format!("no `fortran_order` in the header `{shown}`"))),
    }
    let shape_text = header_value(header, "shape")
        .ok_or_else(|| bad(format!("no `shape` in the header `{shown}`")))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("cannot read the shape ({shape_text})")))?;
    let (item, descr) = match descr {
        "<f4" => (4, "<f4"),
        "<i4" => (4, "<i4"),
        "<f2" => (2, "<f2"),
        "<f8" => (8, "<f8"),
        "<i8" => (8, "<i8"),
        "|u1" => (1, "|u1"),
        d if d.starts_with('>') => {
            return Err(bad(format!(
                "dtype {d} is big-endian; convert with astype('<f4')"
            )))
        }
        d => {
            return Err(bad(format!(
                "dtype {d} is not supported (<f4, <f2, <f8, <i8, <i4 or |u1)"
            )))
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let want = count
        .checked_mul(item)
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let body = &bytes[data_start..];
    if body.len() < want {
        return Err(bad(format!(
            "truncated: shape {shape:?} of {descr} needs {want} data bytes, the file holds {}",
            body.len()
        )));
    }
    if body.len() > want {
        return Err(bad(format!(
            "{} trailing bytes after the {want} data bytes of shape {shape:?}",
            body.len() - want
        )));
    }
    Ok(NpyFile {
        shape,
        descr,
        data_start,
        file,
    })
}

/// Writes a C-order `<f4` NPY (version 1) file; `shape` must match `data.len()`.
pub fn write_npy_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::bad_shape(
            "write_npy_f32",
            shape,
            format!("{} values do not fill the shape", data.len()),
        ));
    }
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad with spaces so the data starts on a 64-byte boundary, as NumPy does.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| {
        Error::bad_shape("write_npy_f32", shape, "header too long for NPY version 1")
    })?;
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// One row of `meta.csv`: (row of `x.npy`, 1-based line, id, y, a).
type MetaRow = (usize, usize, u64, u64, u64);

/// Loads the NumPy-directory layout (`x.npy` + `meta.csv`, see the module docs).
pub fn load_features_npy(dir: impl AsRef<Path>, name: &str) -> Result<Dataset> {
    let dir = dir.as_ref();
    let x_path = dir.join("x.npy");
    let meta_path = dir.join("meta.csv");
    for (p, t) in [(&x_path, "x"), (&meta_path, "")] {
        if !p.is_file() {
            return Err(file_error(
                p,
                t,
                "missing file (a feature folder holds x.npy and meta.csv)",
            ));
        }
    }
    let x = open_npy(&x_path, "x")?;
    let (n_rows, d) = match x.shape[..] {
        [n, d] => (n, d),
        _ => {
            return Err(file_error(
                &x_path,
                "x",
                format!("shape {:?}: features must be a matrix [N, d]", x.shape),
            ))
        }
    };
    if d == 0 {
        return Err(file_error(
            &x_path,
            "x",
            format!("shape {:?}: 0 features per example", x.shape),
        ));
    }

    let raw_text = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let text = std::str::from_utf8(&raw_text).map_err(|e| {
        let line = 1 + raw_text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        file_error(
            &meta_path,
            &format!("line {line}"),
            format!(
                "not UTF-8 text (byte {}); save the file as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    // A byte-order mark (as some spreadsheet programs write) is not part of the first column.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| file_error(&meta_path, "", "empty file: expected a header id,split,y,a"))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            file_error(
                &meta_path,
                &format!("column `{name}`"),
                format!("no `{name}` column in the header `{header}`"),
            )
        })
    };
    let (c_id, c_split, c_y) = (need("id")?, need("split")?, need("y")?);
    let c_a = col("a");
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) && ["id", "split", "y", "a"].contains(c) {
            return Err(file_error(
                &meta_path,
                &format!("column `{c}`"),
                format!("listed twice in the header `{header}`"),
            ));
        }
    }

    let mut per_split: [Vec<MetaRow>; 3] = Default::default();
    let mut row_count = 0usize;
    for (line_no, line) in lines {
        let line_no = line_no + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            return Err(file_error(
                &meta_path,
                &format!("line {line_no}"),
                format!(
                    "{} fields, the header has {} ({})",
                    fields.len(),
                    columns.len(),
                    columns.join(",")
                ),
            ));
        }
        let int = |c: usize, what: &str| -> Result<u64> {
            let f = fields[c];
            let column = format!("column `{what}`");
            match f.parse::<i64>() {
                Ok(v) if v < 0 => Err(file_error(
                    &meta_path,
                    &column,
                    format!("line {line_no}: negative value {v}"),
                )),
                Ok(v) => Ok(v as u64),
                Err(_) => f.parse::<u64>().map_err(|_| {
                    file_error(
                        &meta_path,
                        &column,
                        format!("line {line_no}: `{f}` is not an integer"),
                    )
                }),
            }
        };
        let kind = match fields[c_split] {
            "tr" => 0,
            "va" => 1,
            "te" => 2,
            other => {
                return Err(file_error(
                    &meta_path,
                    "column `split`",
                    format!("line {line_no}: split `{other}` is not tr, va or te"),
                ))
            }
        };
        let id = int(c_id, "id")?;
        let y = int(c_y, "y")?;
        let a = match c_a {
            Some(c) => int(c, "a")?,
            None => 0,
        };
        per_split[kind].push((row_count, line_no, id, y, a));
        row_count += 1;
    }
    if row_count != n_rows {
        return Err(file_error(
            &meta_path,
            "data rows",
            format!(
                "{row_count} rows, but x.npy has {n_rows}: meta.csv needs one row per row of x.npy"
            ),
        ));
    }
    // `<f4` features are used in place in the mapping (other dtypes converted once); a split
    // whose rows are consecutive in x.npy (as `save_features_npy` writes them) shares them, a
    // split listed out of order is gathered into a buffer of its own.
    let all = x.values("x", 0, n_rows * d)?;
    check_finite(&x_path, "x", &all, d)?;
    let mut raws: Vec<RawSplit> = Vec::with_capacity(3);
    for rows in &per_split {
        let first = rows.first().map_or(0, |r| r.0);
        let consecutive = rows.iter().enumerate().all(|(i, r)| r.0 == first + i);
        let xs = if consecutive {
            all.clone()
                .slice(first * d, rows.len() * d)
                .expect("rows of meta.csv are rows of x.npy")
        } else {
            let mut xs =
                try_with_capacity(rows.len() * d).map_err(|e| file_error(&x_path, "x", e))?;
            for &(r, ..) in rows {
                xs.extend_from_slice(&all[r * d..(r + 1) * d]);
            }
            F32Buffer::new(xs).into_shared()
        };
        raws.push(RawSplit {
            x: xs,
            n: rows.len(),
            d,
            y: rows.iter().map(|r| r.3).collect(),
            a: c_a.map(|_| rows.iter().map(|r| r.4).collect()),
            ids: Some(rows.iter().map(|r| r.2).collect()),
        });
    }
    let origins: Vec<Origin> = KINDS
        .iter()
        .zip(&per_split)
        .map(|(k, rows)| Origin {
            path: meta_path.clone(),
            x: format!("split `{}`", k.short()),
            y: "column `y`".into(),
            a: "column `a`".into(),
            lines: Some(rows.iter().map(|r| r.1).collect()),
        })
        .collect();
    assemble(name, raws, &origins, None, None)
}

/// Writes `ds` as `dir/x.npy` (all splits, train then validation then test, `<f4`) and
/// `dir/meta.csv` (`id,split,y,a`), creating `dir` if needed.
pub fn save_features_npy(ds: &Dataset, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let d = ds.d();
    let mut x = Vec::new();
    let mut meta = String::from("id,split,y,a\n");
    for kind in KINDS {
        let split = ds.split(kind);
        if split.d != d {
            return Err(Error::Data(format!(
                "split `{}` has {} features, train has {d}",
                kind.short(),
                split.d
            )));
        }
        x.extend_from_slice(&split.x);
        for i in 0..split.n {
            meta.push_str(&format!(
                "{},{},{},{}\n",
                split.ids[i],
                kind.short(),
                split.y[i],
                split.a[i]
            ));
        }
    }
    let n = x.len() / d.max(1);
    write_npy_f32(dir.join("x.npy"), &[n, d], &x)?;
    let meta_path = dir.join("meta.csv");
    std::fs::write(&meta_path, meta).map_err(|e| Error::io(&meta_path, e))
}
