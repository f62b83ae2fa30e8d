//! Held-out predictions brought from outside (a PyTorch run, say) as MAT's phase-1 output,
//! and how well any phase-1 output's inferred groups find the true minority.
//!
//! The paper asks only that each training example be predicted by a model that never saw it;
//! XRM ([`super::xrm`]) and K-fold cross-fitting ([`super::kfold`]) compute such predictions
//! here. [`external_output`] reads them from a file instead and builds the same
//! [`XrmOutput`], so MAT's shift, XRM + GroupDRO's groups and `va_gi_wga` read it as they read
//! XRM's.
//!
//! # The held-out file
//!
//! One `.safetensors` file with these tensors (any other name is an error, so a misspelt name
//! is not silently ignored):
//!
//! | tensor      | shape               | dtype                          | required |
//! |-------------|---------------------|--------------------------------|----------|
//! | `tr.logits` | `n_tr × K`          | F32, F16, BF16 or F64          | yes      |
//! | `tr.ids`    | `n_tr` or `n_tr × 1` | any integer type               | no       |
//! | `tr.m`      | `n_tr` or `n_tr × 1` | any integer type or BOOL, 0/1  | no       |
//! | `tr.y`      | `n_tr` or `n_tr × 1` | any integer type               | no       |
//! | `va.logits` | `n_va × K`          | as `tr.logits`                 | no       |
//! | `va.ids`, `va.m`, `va.y` | `n_va` or `n_va × 1` | as for `tr.`      | no       |
//!
//! or NumPy: a single `.npy` file holding `tr.logits` alone, or a folder holding
//! `tr.logits.npy` and any of `tr.ids.npy`, `tr.m.npy`, `tr.y.npy`, `va.logits.npy`,
//! `va.ids.npy`, `va.m.npy`, `va.y.npy` (C order; logits `<f4 <f2 <f8`, integers `<i8 <i4
//! |u1`; other `.npy` files in the folder are an error, other files are ignored).
//!
//! **Keys.** With `tr.ids`, rows are matched to the data set's training examples by example
//! id ([`crate::data::Split::ids`]: the `tr.ids` tensor or the `id` column of a features
//! file, the row number for built-in data sets): the ids must be exactly the training ids,
//! each once, in any order, and the data set's own training ids must be distinct. Without
//! `tr.ids`, row `i` of the file is row `i` of the training split. The same holds for the
//! `va.` tensors and the validation split.
//!
//! **Checks** (each an [`Error::File`] naming the file, the tensor and the problem): a missing
//! `tr.logits`; an unknown tensor; a dtype that does not fit; a rank or row count that does not
//! match the split (`n_tr`, `n_va`), or a per-example tensor whose length differs from its
//! logits' rows; a class count other than the data set's `K`; a NaN or infinite logit (named
//! by row, id and class); ids that are duplicated, unknown or missing; bits other than 0/1;
//! labels `tr.y`/`va.y` that differ from the data set's (a file of another data set, seed or
//! row order).
//!
//! # The phase-1 output it makes
//!
//! - `heldout_logits` = `tr.logits`, in training order (MAT's shift reads only these);
//! - inferred training bits `m_i`: `tr.m` when given (say, the groups the official XRM code
//!   inferred), else the held-out error `1[argmax tr.logits_i ≠ y_i]`, K-fold's rule (the
//!   file holds one prediction per example, not XRM's two twins);
//! - inferred validation bits: `va.m` when given, else the held-out error of `va.logits` when
//!   given (held-out here means: from a model that never trained on validation data, as any
//!   model trained on the training split is). **With neither, there is no honest way to infer
//!   validation groups**: every validation example gets bit 0, so the inferred validation
//!   groups are the classes and `va_gi_wga` reads as worst-*class* validation accuracy (the
//!   official "no group labels" setting); the output is marked degenerate with that reason.
//! - `final_flip_rate` (and the one `flip_rate_history` entry): the training held-out error
//!   rate of `tr.logits`, as for K-fold; no flips, `y_dyn = y`; `assignment` all 0 (unknown);
//! - `config`: `steps = 0`, `batch_size = 0`, plain SGD with `lr = 0`, seed 0, `log_every =
//!   1`: nothing was trained here; `model_spec` is the one the caller names (a sweep's model),
//!   the file's own model being unknown;
//! - `heldout_acc_by_group` from `tr.logits`, as for XRM; `degenerate` by XRM's rule (some
//!   class present in a split lacks a bit value there) or the missing-validation reason above.
//!
//! # Inferred-group precision and recall ([`inference_quality`])
//!
//! The inferred minority group of class `y` is `(y, m = 1)`. The **true** minority of class
//! `y` is every example of class `y` whose attribute is not the class's majority attribute,
//! the attribute value `a` with the most training examples `(y, a)` (ties to the lower value).
//! For each split and class: `precision = |m = 1 ∧ true minority| / |m = 1|`, `recall = |m = 1
//! ∧ true minority| / |true minority|` (absent when the denominator is 0), and both pooled over
//! the classes. On ColorMNIST the training attribute is the environment, not the colour that
//! defines the groups, so the true groups there are (label, colour) in every split (colours
//! read back from the features, [`crate::data::colormnist::colours`]). A data set with one
//! attribute value has no true minority: no precision or recall.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::model::{ModelSpec, OptimizerSpec};
use super::xrm::{XrmConfig, XrmLoss, XrmOutput};
use crate::backend::Device;
use crate::data::features::read_npy_f32;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::{argmax_rows, split_metrics};
use crate::io::Digest;

/// Every tensor name a held-out file may hold.
pub const HELDOUT_TENSORS: [&str; 8] = [
    "tr.logits",
    "tr.ids",
    "tr.m",
    "tr.y",
    "va.logits",
    "va.ids",
    "va.m",
    "va.y",
];

/// One tensor as read: its shape and its values, floating point or integer.
enum Values {
    Float(Vec<f32>),
    Int(Vec<i128>),
}

struct Raw {
    shape: Vec<usize>,
    values: Values,
}

fn file_error(path: &Path, tensor: &str, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        problem: problem.into(),
    }
}

/// What a held-out file holds, validated and put in the data set's row order.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldoutFile {
    pub path: PathBuf,
    /// `n_tr × K`, row-major, in training order.
    pub tr_logits: Vec<f32>,
    /// `n_va × K`, in validation order, when the file has `va.logits`.
    pub va_logits: Option<Vec<f32>>,
    /// Inferred bits given by the file (`tr.m`, `va.m`), in split order.
    pub tr_m: Option<Vec<u32>>,
    pub va_m: Option<Vec<u32>>,
    /// Whether the training (validation) rows were matched by id (`tr.ids`, `va.ids`) rather
    /// than by row index.
    pub tr_by_id: bool,
    pub va_by_id: bool,
}

fn decode<const W: usize, T>(bytes: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(W)
        .map(|c| f(c.try_into().expect("chunks_exact gives W bytes")))
        .collect()
}

/// The values of a safetensors view: floating dtypes as f32, integer dtypes and BOOL as i128.
fn st_values(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Values> {
    let b = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => Values::Float(decode(b, f32::from_le_bytes)),
        Dtype::F64 => Values::Float(decode(b, |c| f64::from_le_bytes(c) as f32)),
        Dtype::F16 => Values::Float(decode(b, |c| half::f16::from_le_bytes(c).to_f32())),
        Dtype::BF16 => Values::Float(decode(b, |c| half::bf16::from_le_bytes(c).to_f32())),
        Dtype::BOOL | Dtype::U8 => Values::Int(b.iter().map(|&x| x as i128).collect()),
        Dtype::I8 => Values::Int(b.iter().map(|&x| x as i8 as i128).collect()),
        Dtype::I16 => Values::Int(decode(b, |c| i16::from_le_bytes(c) as i128)),
        Dtype::U16 => Values::Int(decode(b, |c| u16::from_le_bytes(c) as i128)),
        Dtype::I32 => Values::Int(decode(b, |c| i32::from_le_bytes(c) as i128)),
        Dtype::U32 => Values::Int(decode(b, |c| u32::from_le_bytes(c) as i128)),
        Dtype::I64 => Values::Int(decode(b, |c| i64::from_le_bytes(c) as i128)),
        Dtype::U64 => Values::Int(decode(b, |c| u64::from_le_bytes(c) as i128)),
        other => {
            return Err(file_error(
                path,
                name,
                format!("dtype {other:?} is not supported (floats for logits, integers for ids, bits and labels)"),
            ))
        }
    })
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Raw>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        file_error(
            path,
            "",
            format!("not a complete safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let values = st_values(path, &name, &view)?;
        out.insert(
            name,
            Raw {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// The `descr` of an NPY file whose header [`read_npy_f32`] has already accepted.
fn npy_descr(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (len, start) = match bytes.get(6) {
        Some(1) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = String::from_utf8_lossy(&bytes[start..start + len]).into_owned();
    for d in ["<f4", "<f2", "<f8", "<i8", "<i4", "|u1"] {
        if header.contains(d) {
            return Ok(d.to_string());
        }
    }
    Err(file_error(path, "", "unknown NPY dtype"))
}

fn read_npy(path: &Path, name: &str) -> Result<Raw> {
    let array = read_npy_f32(path, name)?;
    let descr = npy_descr(path)?;
    let values = if descr.starts_with("<f") {
        Values::Float(array.data)
    } else {
        // Integers exactly: the data are the file's last `count × width` bytes (the reader
        // has checked that nothing trails them).
        let count = array.data.len();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Values::Int(match descr.as_str() {
            "<i8" => decode(&bytes[bytes.len() - 8 * count..], |c| {
                i64::from_le_bytes(c) as i128
            }),
            "<i4" => decode(&bytes[bytes.len() - 4 * count..], |c| {
                i32::from_le_bytes(c) as i128
            }),
            _ => bytes[bytes.len() - count..]
                .iter()
                .map(|&b| b as i128)
                .collect(),
        })
    };
    Ok(Raw {
        shape: array.shape,
        values,
    })
}

/// The `.npy` file names in `dir`, sorted.
fn npy_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".npy"))
        .collect();
    names.sort();
    Ok(names)
}

fn read_npy_folder(dir: &Path) -> Result<HashMap<String, Raw>> {
    let mut out = HashMap::new();
    for file in npy_names(dir).map_err(|e| Error::io(dir, e))? {
        let name = file.trim_end_matches(".npy").to_string();
        let path = dir.join(&file);
        let raw = read_npy(&path, &name)?;
        out.insert(name, raw);
    }
    Ok(out)
}

/// Reads the raw tensors of a held-out file (any layout), unchecked.
fn read_raw(path: &Path) -> Result<HashMap<String, Raw>> {
    if path.is_dir() {
        return read_npy_folder(path);
    }
    if !path.exists() {
        return Err(file_error(path, "", "no such file or folder"));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => read_safetensors(path),
        Some("npy") => {
            let raw = read_npy(path, "tr.logits")?;
            Ok(HashMap::from([("tr.logits".to_string(), raw)]))
        }
        _ => Err(file_error(
            path,
            "",
            "unknown held-out file format: expected a .safetensors file, a .npy file (training \
             logits) or a folder of .npy files",
        )),
    }
}

/// Where a tensor of the file lives, for error messages: the file, or `DIR/NAME.npy`.
fn place(path: &Path, name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(format!("{name}.npy"))
    } else {
        path.to_path_buf()
    }
}

/// One split's part of the file, checked against `split` and put in its order.
struct SplitPart {
    logits: Option<Vec<f32>>,
    m: Option<Vec<u32>>,
    by_id: bool,
}

fn check_split(
    path: &Path,
    raws: &mut HashMap<String, Raw>,
    s: &str,
    split: &Split,
    k: usize,
) -> Result<SplitPart> {
    let n = split.n;
    let key = |t: &str| format!("{s}.{t}");
    let logits_key = key("logits");
    // The rows the file holds: from the logits, else from any per-example tensor.
    let logits = raws.remove(&logits_key);
    let mut rows = None;
    let logits = match logits {
        None => None,
        Some(raw) => {
            let at = place(path, &logits_key);
            let (r, c) = match raw.shape.as_slice() {
                [r, c] => (*r, *c),
                shape => {
                    return Err(file_error(
                        &at,
                        &logits_key,
                        format!("shape {shape:?}: held-out logits must be a matrix [n, K]"),
                    ))
                }
            };
            if c != k {
                return Err(file_error(
                    &at,
                    &logits_key,
                    format!(
                        "{c} classes (shape [{r}, {c}]), but the data set has K = {k}: the \
                         logits must have one column per class"
                    ),
                ));
            }
            if r != n {
                return Err(file_error(
                    &at,
                    &logits_key,
                    format!(
                        "{r} rows, but the data set's {} split has {n} examples: give one row \
                         per example",
                        if s == "tr" { "training" } else { "validation" }
                    ),
                ));
            }
            let Values::Float(v) = raw.values else {
                return Err(file_error(
                    &at,
                    &logits_key,
                    "integer dtype: held-out logits must be floating point (F32, F16, BF16, F64)",
                ));
            };
            rows = Some(r);
            Some(v)
        }
    };
    // Per-example integer tensors: checked for shape and range, kept in file order.
    let mut per_example = |t: &str| -> Result<Option<Vec<i128>>> {
        let name = key(t);
        let Some(raw) = raws.remove(&name) else {
            return Ok(None);
        };
        let at = place(path, &name);
        let len = match raw.shape.as_slice() {
            [r] | [r, 1] => *r,
            shape => {
                return Err(file_error(
                    &at,
                    &name,
                    format!("shape {shape:?}: expected one value per example, [n] or [n, 1]"),
                ))
            }
        };
        let want = rows.unwrap_or(n);
        if len != want {
            return Err(file_error(
                &at,
                &name,
                match rows {
                    Some(r) => format!("{len} values, but {logits_key} has {r} rows"),
                    None => format!("{len} values, but the data set's split has {n} examples"),
                },
            ));
        }
        match raw.values {
            Values::Int(v) => Ok(Some(v)),
            Values::Float(_) => Err(file_error(
                &at,
                &name,
                "floating-point dtype: ids, bits and labels must be integers",
            )),
        }
    };
    let ids = per_example("ids")?;
    let m = per_example("m")?;
    let y = per_example("y")?;
    // The data set's row of each file row.
    let by_id = ids.is_some();
    let order: Vec<usize> = match &ids {
        None => (0..n).collect(),
        Some(ids) => {
            let ids_key = key("ids");
            let at = place(path, &ids_key);
            let mut row_of: HashMap<u64, usize> = HashMap::with_capacity(n);
            for (i, &id) in split.ids.iter().enumerate() {
                if let Some(first) = row_of.insert(id, i) {
                    return Err(file_error(
                        &at,
                        &ids_key,
                        format!(
                            "the data set's own ids are not distinct (id {id} at rows {first} \
                             and {i}), so rows cannot be matched by id: leave out {ids_key} to \
                             match rows by position"
                        ),
                    ));
                }
            }
            let mut seen: HashMap<i128, usize> = HashMap::with_capacity(n);
            let mut order = Vec::with_capacity(n);
            for (r, &id) in ids.iter().enumerate() {
                if let Some(first) = seen.insert(id, r) {
                    return Err(file_error(
                        &at,
                        &ids_key,
                        format!("id {id} appears twice, at rows {first} and {r}"),
                    ));
                }
                let row = u64::try_from(id)
                    .ok()
                    .and_then(|id| row_of.get(&id))
                    .ok_or_else(|| {
                        file_error(
                            &at,
                            &ids_key,
                            format!(
                                "id {id} at row {r} is not an example id of the data set's {} \
                                 split",
                                if s == "tr" { "training" } else { "validation" }
                            ),
                        )
                    })?;
                order.push(*row);
            }
            // n distinct ids, each one of the split's n distinct ids: a bijection.
            order
        }
    };
    let id_of = |r: usize| split.ids[order[r]];
    let put = |v: &[f32], width: usize| -> Vec<f32> {
        let mut out = vec![0f32; n * width];
        for (r, chunk) in v.chunks_exact(width).enumerate() {
            out[order[r] * width..(order[r] + 1) * width].copy_from_slice(chunk);
        }
        out
    };
    let logits = match logits {
        None => None,
        Some(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(file_error(
                    &place(path, &logits_key),
                    &logits_key,
                    format!(
                        "non-finite value {} at row {} (example id {}), class {} (NaN, \
                         infinite, or beyond f32's range)",
                        v[i],
                        i / k,
                        id_of(i / k),
                        i % k
                    ),
                ));
            }
            Some(put(&v, k))
        }
    };
    let m = match m {
        None => None,
        Some(bits) => {
            let name = key("m");
            let mut out = vec![0u32; n];
            for (r, &b) in bits.iter().enumerate() {
                if b != 0 && b != 1 {
                    return Err(file_error(
                        &place(path, &name),
                        &name,
                        format!(
                            "value {b} at row {r} (example id {}) is not 0 or 1",
                            id_of(r)
                        ),
                    ));
                }
                out[order[r]] = b as u32;
            }
            Some(out)
        }
    };
    if let Some(labels) = y {
        let name = key("y");
        for (r, &label) in labels.iter().enumerate() {
            let want = split.y[order[r]];
            if label != want as i128 {
                return Err(file_error(
                    &place(path, &name),
                    &name,
                    format!(
                        "label {label} at row {r} (example id {}) differs from the data set's \
                         {want} (held-out predictions of another data set, seed or row order?)",
                        id_of(r)
                    ),
                ));
            }
        }
    }
    Ok(SplitPart { logits, m, by_id })
}

/// Reads and validates the held-out file at `path` against `ds` (see the module docs).
pub fn read_heldout_file(path: impl AsRef<Path>, ds: &Dataset) -> Result<HeldoutFile> {
    let path = path.as_ref();
    let mut raws = read_raw(path)?;
    let mut unknown: Vec<&String> = raws
        .keys()
        .filter(|n| !HELDOUT_TENSORS.contains(&n.as_str()))
        .collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(file_error(
            &place(path, name),
            name,
            format!(
                "unknown tensor (a held-out file holds {})",
                HELDOUT_TENSORS.join(", ")
            ),
        ));
    }
    if !raws.contains_key("tr.logits") {
        let mut names: Vec<&String> = raws.keys().collect();
        names.sort();
        return Err(file_error(
            &place(path, "tr.logits"),
            "tr.logits",
            format!(
                "missing: the training examples' held-out logits are required (the file holds: \
                 {})",
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ));
    }
    let k = ds.classes;
    let tr = check_split(path, &mut raws, "tr", &ds.train, k)?;
    let va = check_split(path, &mut raws, "va", &ds.valid, k)?;
    Ok(HeldoutFile {
        path: path.to_path_buf(),
        tr_logits: tr.logits.expect("checked above: tr.logits is present"),
        va_logits: va.logits,
        tr_m: tr.m,
        va_m: va.m,
        tr_by_id: tr.by_id,
        va_by_id: va.by_id,
    })
}

/// `1[argmax row ≠ y]` per row.
fn held_out_errors(logits: &[f32], y: &[u32], k: usize) -> Vec<u32> {
    argmax_rows(logits, k)
        .iter()
        .zip(y)
        .map(|(&p, &y)| u32::from(p != y))
        .collect()
}

/// The phase-1 output of a validated held-out file (see the module docs); `model_spec` is
/// recorded as the output's model.
pub fn output_from_file(file: &HeldoutFile, ds: &Dataset, model_spec: &ModelSpec) -> XrmOutput {
    let (n, k) = (ds.train.n, ds.classes);
    let errors_tr = held_out_errors(&file.tr_logits, &ds.train.y, k);
    let inferred_tr = file.tr_m.clone().unwrap_or_else(|| errors_tr.clone());
    let (inferred_va, no_va) = match (&file.va_m, &file.va_logits) {
        (Some(m), _) => (m.clone(), false),
        (None, Some(l)) => (held_out_errors(l, &ds.valid.y, k), false),
        (None, None) => (vec![0; ds.valid.n], true),
    };
    let error_rate = errors_tr.iter().sum::<u32>() as f64 / n.max(1) as f64;
    let pred = argmax_rows(&file.tr_logits, k);
    let heldout_acc_by_group = split_metrics(
        &pred,
        &ds.train.y,
        &ds.train.groups(ds.n_attr),
        ds.n_groups(),
        k,
    )
    .map(|m| m.group_acc)
    .unwrap_or_default();
    let by = ("by the held-out predictions", "by the held-out predictions");
    let degenerate = super::xrm::degeneracy(ds, &inferred_tr, &inferred_va, by)
        .filter(|why| !(no_va && why.starts_with("validation")))
        .or_else(|| {
            no_va.then(|| {
                format!(
                    "validation split: the held-out file `{}` has neither va.logits nor va.m, so \
                     every validation example gets inferred bit 0: the inferred validation \
                     groups are the classes and va_gi_wga reads as worst-class validation \
                     accuracy",
                    file.path.display()
                )
            })
        });
    XrmOutput {
        dataset: ds.name.clone(),
        classes: k,
        model_spec: model_spec.clone(),
        config: XrmConfig {
            steps: 0,
            batch_size: 0,
            optimizer: OptimizerSpec::plain_sgd(0.0),
            loss: XrmLoss::Mean,
            seed: 0,
            device: Device::Cpu,
            log_every: 1,
        },
        heldout_logits: file.tr_logits.clone(),
        assignment: vec![0; n],
        y_dyn: ds.train.y.clone(),
        flip_rate_history: vec![(0, error_rate)],
        final_flip_rate: error_rate,
        inferred_tr,
        inferred_va,
        degenerate,
        heldout_acc_by_group,
        steps_per_s: 0.0,
    }
}

/// Reads the held-out file at `path`, validates it against `ds` and builds the phase-1
/// output (see the module docs): what `--estimator external:PATH` runs.
pub fn external_output(
    path: impl AsRef<Path>,
    ds: &Dataset,
    model_spec: &ModelSpec,
) -> Result<XrmOutput> {
    let file = read_heldout_file(path, ds)?;
    Ok(output_from_file(&file, ds, model_spec))
}

/// Writes a held-out file (safetensors) from a phase-1 output: `tr.ids`, `tr.y`,
/// `tr.logits` (the held-out logits), and with `bits` also `tr.m`, `va.ids`, `va.y` and `va.m`
/// (the inferred bits), so that [`external_output`] gives back the same shift and the same
/// inferred groups. What a user's PyTorch script writes looks the same.
pub fn write_heldout_file(
    path: impl AsRef<Path>,
    out: &XrmOutput,
    ds: &Dataset,
    bits: bool,
) -> Result<()> {
    let path = path.as_ref();
    out.check_matches(ds)?;
    let (n, k, n_va) = (ds.train.n, ds.classes, ds.valid.n);
    let i64s =
        |v: &mut dyn Iterator<Item = i64>| -> Vec<u8> { v.flat_map(|x| x.to_le_bytes()).collect() };
    let ids = |s: &Split| -> Result<Vec<u8>> {
        let v = s
            .ids
            .iter()
            .map(|&id| {
                i64::try_from(id).map_err(|_| {
                    file_error(path, "ids", format!("id {id} does not fit an I64 tensor"))
                })
            })
            .collect::<Result<Vec<i64>>>()?;
        Ok(i64s(&mut v.into_iter()))
    };
    let mut data: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "tr.logits",
            Dtype::F32,
            vec![n, k],
            out.heldout_logits
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        ("tr.ids", Dtype::I64, vec![n], ids(&ds.train)?),
        (
            "tr.y",
            Dtype::I64,
            vec![n],
            i64s(&mut ds.train.y.iter().map(|&y| y as i64)),
        ),
    ];
    if bits {
        let u8s = |v: &[u32]| v.iter().map(|&b| b as u8).collect::<Vec<u8>>();
        data.push(("tr.m", Dtype::U8, vec![n], u8s(&out.inferred_tr)));
        data.push(("va.ids", Dtype::I64, vec![n_va], ids(&ds.valid)?));
        data.push((
            "va.y",
            Dtype::I64,
            vec![n_va],
            i64s(&mut ds.valid.y.iter().map(|&y| y as i64)),
        ));
        data.push(("va.m", Dtype::U8, vec![n_va], u8s(&out.inferred_va)));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| file_error(path, name, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| file_error(path, "", e.to_string()))?;
    crate::io::write_atomic(&[(path, &bytes)])
}

/// A digest of the held-out file's bytes (every `.npy` file of a folder, by name), so that a
/// sweep's records change when the file does; `missing` when it cannot be read (the load
/// then names the problem).
pub fn file_digest(path: &Path) -> String {
    let mut d = Digest::new();
    let read = |d: &mut Digest, p: &Path| -> bool {
        match std::fs::read(p) {
            Ok(b) => {
                d.bytes(&b);
                true
            }
            Err(_) => false,
        }
    };
    let ok = if path.is_dir() {
        match npy_names(path) {
            Ok(names) => names.iter().all(|n| {
                d.str(n);
                read(&mut d, &path.join(n))
            }),
            Err(_) => false,
        }
    } else {
        read(&mut d, path)
    };
    if ok {
        d.hex()
    } else {
        "missing".into()
    }
}

// -------------------------------------------------------------------------------------------
// Inferred-group precision and recall.

/// How one inferred minority group `(y, m = 1)` (or all of them, pooled) matches the true
/// minority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRecovery {
    /// The class `y`; `None` for all classes pooled.
    pub class: Option<u32>,
    /// Examples with inferred bit 1.
    pub inferred: usize,
    /// Examples of the true minority.
    pub minority: usize,
    /// Examples in both.
    pub hits: usize,
    /// `hits / inferred` (absent when nothing is inferred).
    pub precision: Option<f64>,
    /// `hits / minority` (absent when there is no true minority).
    pub recall: Option<f64>,
}

impl GroupRecovery {
    fn new(class: Option<u32>, inferred: usize, minority: usize, hits: usize) -> Self {
        let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
        GroupRecovery {
            class,
            inferred,
            minority,
            hits,
            precision: ratio(hits, inferred),
            recall: ratio(hits, minority),
        }
    }
}

/// Per split: every class's inferred minority group, then all pooled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRecovery {
    pub per_class: Vec<GroupRecovery>,
    pub pooled: GroupRecovery,
}

/// Inferred-group precision and recall on training and validation (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceQuality {
    /// What defines the true groups: `attribute` or `colour` (ColorMNIST).
    pub truth: String,
    /// The majority attribute value of each class (from the training counts).
    pub majority: Vec<u32>,
    pub train: SplitRecovery,
    pub valid: SplitRecovery,
}

fn recovery(split: &Split, truth: &[u32], bits: &[u32], majority: &[u32]) -> SplitRecovery {
    let k = majority.len();
    let mut counts = vec![(0usize, 0usize, 0usize); k];
    for ((&y, &a), &m) in split.y.iter().zip(truth).zip(bits) {
        let minority = a != majority[y as usize];
        let c = &mut counts[y as usize];
        c.0 += (m == 1) as usize;
        c.1 += minority as usize;
        c.2 += (m == 1 && minority) as usize;
    }
    let per_class: Vec<GroupRecovery> = counts
        .iter()
        .enumerate()
        .map(|(y, &(i, t, h))| GroupRecovery::new(Some(y as u32), i, t, h))
        .collect();
    let sum = |f: fn(&(usize, usize, usize)) -> usize| counts.iter().map(f).sum::<usize>();
    let pooled = GroupRecovery::new(None, sum(|c| c.0), sum(|c| c.1), sum(|c| c.2));
    SplitRecovery { per_class, pooled }
}

/// The precision and recall of `inferred_tr` / `inferred_va` (bits, in split order) against
/// the true minority of `ds` (see the module docs); `None` when the data set has one
/// attribute value, or the bits do not fit the splits.
pub fn inference_quality_of(
    ds: &Dataset,
    inferred_tr: &[u32],
    inferred_va: &[u32],
) -> Option<InferenceQuality> {
    if inferred_tr.len() != ds.train.n || inferred_va.len() != ds.valid.n {
        return None;
    }
    let colour = ds.name == "colormnist";
    let (truth_tr, truth_va, n_attr) = if colour {
        let tr = crate::data::colormnist::colours(&ds.train).ok()?;
        let va = crate::data::colormnist::colours(&ds.valid).ok()?;
        (tr, va, 2)
    } else {
        (ds.train.a.clone(), ds.valid.a.clone(), ds.n_attr)
    };
    if n_attr < 2 {
        return None;
    }
    let mut by_group = vec![0usize; ds.classes * n_attr];
    for (&y, &a) in ds.train.y.iter().zip(&truth_tr) {
        if let Some(c) = by_group.get_mut(y as usize * n_attr + a as usize) {
            *c += 1;
        }
    }
    let majority: Vec<u32> = by_group
        .chunks_exact(n_attr)
        .map(|row| {
            let mut best = 0;
            for (a, &c) in row.iter().enumerate() {
                if c > row[best] {
                    best = a;
                }
            }
            best as u32
        })
        .collect();
    Some(InferenceQuality {
        truth: if colour { "colour" } else { "attribute" }.into(),
        train: recovery(&ds.train, &truth_tr, inferred_tr, &majority),
        valid: recovery(&ds.valid, &truth_va, inferred_va, &majority),
        majority,
    })
}

/// [`inference_quality_of`] for a phase-1 output's inferred bits.
pub fn inference_quality(out: &XrmOutput, ds: &Dataset) -> Option<InferenceQuality> {
    inference_quality_of(ds, &out.inferred_tr, &out.inferred_va)
}

impl InferenceQuality {
    /// Lines for a terminal: per split, each class's and the pooled precision and recall.
    pub fn lines(&self) -> Vec<String> {
        let f = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        let mut out = vec![format!(
            "inferred-group precision / recall vs the true minority (by {}; majority value per \
             class {:?}):",
            self.truth, self.majority
        )];
        out.push(format!(
            "  {:>10} {:>6} {:>9} {:>9} {:>5} {:>9} {:>7}",
            "split", "class", "inferred", "minority", "hits", "precision", "recall"
        ));
        for (name, s) in [("train", &self.train), ("validation", &self.valid)] {
            for g in s.per_class.iter().chain(std::iter::once(&s.pooled)) {
                out.push(format!(
                    "  {:>10} {:>6} {:>9} {:>9} {:>5} {:>9} {:>7}",
                    name,
                    g.class.map_or("all".to_string(), |c| c.to_string()),
                    g.inferred,
                    g.minority,
                    g.hits,
                    f(g.precision),
                    f(g.recall)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(y: Vec<u32>, a: Vec<u32>) -> Split {
        let n = y.len();
        Split::new(vec![0.0; n], 1, y, Some(a)).unwrap()
    }

    #[test]
    fn precision_and_recall_count_the_inferred_minority() {
        // Class 0: majority a = 0 (3 of 4); class 1: majority a = 1.
        let tr = split(vec![0, 0, 0, 0, 1, 1, 1], vec![0, 0, 0, 1, 1, 1, 0]);
        let va = split(vec![0, 1], vec![1, 1]);
        let ds = Dataset {
            name: "t".into(),
            classes: 2,
            n_attr: 2,
            train: tr.clone(),
            valid: va,
            test: tr,
        };
        let q = inference_quality_of(&ds, &[0, 1, 0, 1, 0, 0, 1], &[1, 1]).unwrap();
        assert_eq!(q.majority, vec![0, 1]);
        let c0 = &q.train.per_class[0];
        assert_eq!((c0.inferred, c0.minority, c0.hits), (2, 1, 1));
        assert_eq!((c0.precision, c0.recall), (Some(0.5), Some(1.0)));
        let c1 = &q.train.per_class[1];
        assert_eq!((c1.inferred, c1.minority, c1.hits), (1, 1, 1));
        assert_eq!(q.train.pooled.precision, Some(2.0 / 3.0));
        // Validation: class 0's example is minority and inferred; class 1's is majority.
        assert_eq!(q.valid.per_class[0].precision, Some(1.0));
        assert_eq!(q.valid.per_class[1].precision, Some(0.0));
        assert_eq!(q.valid.per_class[1].recall, None);
        assert!(inference_quality_of(&ds, &[0], &[1, 1]).is_none());
    }
}
