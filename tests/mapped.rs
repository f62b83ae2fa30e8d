//! Feature files are mapped, not copied: their f32 features are used in place as tensor
//! storage, and a run from a mapped file is bitwise the run from an in-memory copy.

use std::path::PathBuf;

use memaware::algo::model::{ModelSpec, OptimizerSpec};
use memaware::algo::xrm::{run_xrm, XrmConfig, XrmLoss};
use memaware::algo::{run_method, Method, MethodOutcome, TrainConfig};
use memaware::buffer::F32Buffer;
use memaware::data::features::{load_features, save_features_npy, save_features_safetensors};
use memaware::data::synthetic::{waterbirds_like, WaterbirdsLikeConfig};
use memaware::data::{Dataset, Split};
use memaware::{Device, Error, Tensor};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("memaware-mapped-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data() -> Dataset {
    waterbirds_like(&WaterbirdsLikeConfig {
        d: 96,
        train_counts: [120, 10, 12, 110],
        valid_counts: [30, 6, 6, 30],
        test_counts: [30, 6, 6, 30],
        seed: 3,
        ..Default::default()
    })
    .unwrap()
}

/// The same data set with every feature matrix copied into a vector of its own.
fn in_memory_copy(ds: &Dataset) -> Dataset {
    let copy = |s: &Split| Split {
        x: F32Buffer::new(s.x.to_vec()),
        ..s.clone()
    };
    Dataset {
        train: copy(&ds.train),
        valid: copy(&ds.valid),
        test: copy(&ds.test),
        ..ds.clone()
    }
}

/// Checkpoints (as JSON, every float's bits) and final parameters (as bits) of a run.
fn fingerprint(out: &MethodOutcome) -> (String, Vec<Vec<u32>>) {
    let checkpoints = serde_json::to_string(&out.outcome.checkpoints).unwrap();
    let params = out
        .outcome
        .model
        .parameters()
        .iter()
        .map(|p| p.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect();
    (checkpoints, params)
}

/// ERM, then XRM and MAT, minibatch SGD with momentum and weight decay.
fn runs(ds: &Dataset) -> Vec<(String, Vec<Vec<u32>>)> {
    let spec = ModelSpec::linear(true);
    let optimizer = OptimizerSpec::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let cfg = TrainConfig::minibatch(60, 32, optimizer.clone(), 10);
    let erm = run_method(ds, &Method::Erm, &spec, &cfg, None).unwrap();
    let xrm = run_xrm(
        ds,
        &spec,
        &XrmConfig {
            steps: 40,
            batch_size: 32,
            optimizer,
            loss: XrmLoss::ClassBalanced,
            seed: 1,
            device: Device::Cpu,
            log_every: 10,
        },
    )
    .unwrap();
    let mat = run_method(ds, &Method::Mat { tau: 0.5 }, &spec, &cfg, Some(&xrm)).unwrap();
    let xrm_bits = (
        format!("{:?} {:?}", xrm.y_dyn, xrm.inferred_tr),
        vec![xrm.heldout_logits.iter().map(|v| v.to_bits()).collect()],
    );
    vec![fingerprint(&erm), xrm_bits, fingerprint(&mat)]
}

#[test]
fn safetensors_features_are_mapped_and_runs_match_an_in_memory_copy() {
    let dir = TempDir::new("st");
    let ds = data();
    let path = dir.0.join("wb.safetensors");
    save_features_safetensors(&ds, &path).unwrap();
    let mapped = load_features(&path, &ds.name).unwrap();
    for s in [&mapped.train, &mapped.valid, &mapped.test] {
        assert!(s.x.is_mapped(), "f32 features are used in place");
    }
    assert_eq!(mapped.train.x, ds.train.x);
    let copy = in_memory_copy(&mapped);
    assert!(!copy.train.x.is_mapped());
    assert_eq!(runs(&mapped), runs(&copy));
}

#[test]
fn npy_features_are_mapped_and_runs_match_an_in_memory_copy() {
    let dir = TempDir::new("npy");
    let ds = data();
    save_features_npy(&ds, &dir.0).unwrap();
    let mapped = load_features(&dir.0, &ds.name).unwrap();
    for s in [&mapped.train, &mapped.valid, &mapped.test] {
        assert!(
            s.x.is_mapped(),
            "consecutive rows of x.npy are used in place"
        );
    }
    assert_eq!(mapped.test.x, ds.test.x);
    assert_eq!(runs(&mapped), runs(&in_memory_copy(&mapped)));
}

#[test]
fn a_tensor_over_mapped_features_does_not_copy_them_and_writes_copy_on_write() {
    let dir = TempDir::new("tensor");
    let ds = data();
    let path = dir.0.join("wb.safetensors");
    save_features_safetensors(&ds, &path).unwrap();
    let mapped = load_features(&path, &ds.name).unwrap();
    let s = &mapped.valid;
    let x = Tensor::from_buffer(s.x.clone(), (s.n, s.d), &Device::Cpu).unwrap();
    assert_eq!(x.to_vec().unwrap(), s.x.to_vec());
    // Writing through a clone copies: the mapping and the data set keep their values.
    let mut split = s.clone();
    split.x[0] = 123.0;
    assert!(!split.x.is_mapped() && s.x.is_mapped());
    assert_ne!(split.x[0], s.x[0]);
}

#[test]
fn a_file_truncated_before_it_is_mapped_is_an_error_naming_it() {
    let dir = TempDir::new("trunc");
    let ds = data();
    let path = dir.0.join("wb.safetensors");
    save_features_safetensors(&ds, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match load_features(&path, &ds.name) {
            Err(e @ Error::File { .. }) => {
                assert!(e.to_string().contains("wb.safetensors"), "{e}")
            }
            other => panic!("{keep} bytes: expected a file error, got {other:?}"),
        }
    }
    // An NPY file cut short.
    save_features_npy(&ds, &dir.0).unwrap();
    let x = dir.0.join("x.npy");
    let bytes = std::fs::read(&x).unwrap();
    std::fs::write(&x, &bytes[..bytes.len() - 3]).unwrap();
    let e = load_features(&dir.0, &ds.name).unwrap_err();
    assert!(
        e.to_string().contains("x.npy") && e.to_string().contains("truncated"),
        "{e}"
    );
}

#[test]
fn non_f32_and_misaligned_features_are_converted_once_and_shared() {
    let dir = TempDir::new("f16");
    let ds = data();
    // F64 features: converted to f32 once, then shared by every tensor and clone.
    let mut tensors = Vec::new();
    for (s, split) in [("tr", &ds.train), ("va", &ds.valid), ("te", &ds.test)] {
        let x: Vec<u8> = split
            .x
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect();
        tensors.push((format!("{s}.x"), "F64", vec![split.n, split.d], x));
        let y: Vec<u8> = split
            .y
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        tensors.push((format!("{s}.y"), "I64", vec![split.n], y));
        let a: Vec<u8> = split
            .a
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        tensors.push((format!("{s}.a"), "I64", vec![split.n], a));
    }
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    let path = dir.0.join("f64.safetensors");
    std::fs::write(&path, file).unwrap();
    let loaded = load_features(&path, "f64").unwrap();
    assert!(!loaded.train.x.is_mapped() && loaded.train.x.is_shared());
    assert_eq!(loaded.train.x, ds.train.x);
}
