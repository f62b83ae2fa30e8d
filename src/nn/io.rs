//! Parameters to and from safetensors files (f32, little-endian, names as in
//! [`Module::named_parameters`](super::Module::named_parameters)).

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Writes `params` to `path` atomically ([`crate::io::write_atomic`]), so an existing file is
/// never left half-written.
pub fn save_parameters(params: &[(String, Tensor)], path: &Path) -> Result<()> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = params
        .iter()
        .map(|(n, t)| {
            let bytes = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((n.clone(), bytes, t.dims().to_vec()))
        })
        .collect::<Result<_>>()?;
    let views = data
        .iter()
        .map(|(n, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::File {
                    path: path.to_path_buf(),
                    tensor: n.clone(),
                    problem: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::File {
        path: path.to_path_buf(),
        tensor: String::new(),
        problem: e.to_string(),
    })?;
    crate::io::write_atomic(&[(path, &bytes)])
}

/// Loads `path` into `params` in place; every parameter must be present with its shape and
/// dtype F32. Nothing is changed unless every tensor checks out.
pub fn load_parameters(params: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        let (tensor, problem) = match truncated_tensor(&bytes) {
            Some(name) => (
                name,
                format!("its data lies past the end of the file (truncated?): {e}"),
            ),
            None => (String::new(), format!("not a safetensors file: {e}")),
        };
        Error::File {
            path: path.to_path_buf(),
            tensor,
            problem,
        }
    })?;
    let bad = |tensor: &str, problem: String| Error::File {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        problem,
    };
    let mut staged = Vec::with_capacity(params.len());
    for (name, t) in params {
        let view = file.tensor(name).map_err(|_| bad(name, "missing".into()))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(name, format!("dtype {:?}, expected F32", view.dtype())));
        }
        if view.shape() != t.dims() {
            return Err(bad(
                name,
                format!("shape {:?}, expected {:?}", view.shape(), t.dims()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        staged.push(Tensor::from_vec(values, t.shape().clone(), t.device())?);
    }
    for ((_, t), v) in params.iter().zip(&staged) {
        t.assign(v)?;
    }
    Ok(())
}

/// For a file whose header is intact but whose data was cut short, the tensor stored first
/// among those whose bytes are missing. The header is the 8-byte little-endian length `n`,
/// then `n` bytes of JSON mapping each name to `{dtype, shape, data_offsets: [start, end]}`
/// relative to the data that follows.
fn truncated_tensor(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header_end = n.checked_add(8)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..header_end)?).ok()?;
    let available = (bytes.len() - header_end) as u64;
    header
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(name, info)| {
            let offsets = info.get("data_offsets")?;
            let (start, end) = (offsets.get(0)?.as_u64()?, offsets.get(1)?.as_u64()?);
            (end > available).then_some((start, name))
        })
        .min()
        .map(|(_, name)| name.clone())
}
