//! Layer parameter names, and parameter files: a bitwise round trip, and loads that fail on a
//! missing tensor, a wrong shape or dtype, or a truncated file — naming the file and the
//! tensor, and leaving the parameters as they were.

mod common;

use std::path::{Path, PathBuf};

use common::param_bits;

use memaware::nn::{load_parameters, save_parameters, Activation, Init, Linear, Mlp, Module};
use memaware::{Device, Error, Rng, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A fresh path for one file, in a folder of its own.
fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("nn_io-{name}")).join(name)
}

fn mlp(seed: u64, widths: &[usize]) -> Mlp {
    let mut rng = Rng::new(seed);
    Mlp::new(
        widths,
        Activation::Tanh,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &Device::Cpu,
    )
    .unwrap()
}

fn linear(seed: u64, i: usize, o: usize, bias: bool) -> Linear {
    let mut rng = Rng::new(seed);
    Linear::new(i, o, bias, Init::PyTorchDefault, &mut rng, &Device::Cpu).unwrap()
}

/// An `Error::File` naming `path` and `tensor`, whose problem mentions `problem`.
fn assert_file_error(e: &Error, path: &Path, tensor: &str, problem: &str) {
    match e {
        Error::File {
            path: p,
            tensor: t,
            problem: pr,
        } => {
            assert_eq!(p, path, "{e}");
            assert_eq!(t, tensor, "{e}");
            assert!(pr.contains(problem), "`{pr}` should mention `{problem}`");
        }
        other => panic!("expected a File error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("`{tensor}`")), "{msg}");
}

#[test]
fn linear_parameter_names_and_shapes() {
    let l = linear(0, 5, 3, true);
    let named = l.named_parameters();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["weight", "bias"]);
    assert_eq!(
        named[0].1.dims(),
        &[3, 5],
        "weight is out × in, as PyTorch stores it"
    );
    assert_eq!(named[1].1.dims(), &[3]);
    assert!(named.iter().all(|(_, t)| t.is_variable()));
    assert_eq!((l.in_dim(), l.out_dim()), (5, 3));
    let names: Vec<String> = linear(0, 5, 3, false)
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["weight"]);
}

#[test]
fn mlp_parameter_names_and_shapes() {
    let m = mlp(0, &[4, 8, 6, 2]);
    let named = m.named_parameters();
    let got: Vec<(&str, &[usize])> = named.iter().map(|(n, t)| (n.as_str(), t.dims())).collect();
    let want: Vec<(&str, &[usize])> = vec![
        ("layers.0.weight", &[8, 4]),
        ("layers.0.bias", &[8]),
        ("layers.1.weight", &[6, 8]),
        ("layers.1.bias", &[6]),
        ("layers.2.weight", &[2, 6]),
        ("layers.2.bias", &[2]),
    ];
    assert_eq!(got, want);
    // `parameters` is the same tensors in the same order.
    let ids: Vec<_> = m.parameters().iter().map(|t| t.id()).collect();
    assert_eq!(ids, named.iter().map(|(_, t)| t.id()).collect::<Vec<_>>());
}

#[test]
fn save_then_load_is_bitwise() {
    let path = scratch("roundtrip.safetensors");
    let a = mlp(1, &[7, 9, 3]);
    save_parameters(&a.named_parameters(), &path).unwrap();
    assert!(
        !path.with_extension("safetensors.partial").exists(),
        "temporary file left behind"
    );

    let b = mlp(2, &[7, 9, 3]);
    assert_ne!(
        param_bits(&a.named_parameters()),
        param_bits(&b.named_parameters())
    );
    load_parameters(&b.named_parameters(), &path).unwrap();
    assert_eq!(
        param_bits(&a.named_parameters()),
        param_bits(&b.named_parameters())
    );
    // Loaded parameters stay the model's variables: the model computes what `a` computes.
    let x = Tensor::randn(&mut Rng::new(3), (4, 7), 1.0, &Device::Cpu).unwrap();
    let (ya, yb) = (
        a.forward(&x).unwrap().to_vec().unwrap(),
        b.forward(&x).unwrap().to_vec().unwrap(),
    );
    assert_eq!(
        ya.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        yb.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );

    // The file is plain safetensors: F32, PyTorch's names and shapes, little-endian values.
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in a.named_parameters() {
        let view = file.tensor(&name).unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        assert_eq!(view.shape(), t.dims());
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(values, t.to_vec().unwrap());
    }
    // Saving again over an existing file works.
    save_parameters(&b.named_parameters(), &path).unwrap();
}

#[test]
fn missing_tensor_names_it_and_changes_nothing() {
    let path = scratch("missing.safetensors");
    save_parameters(&linear(1, 4, 2, false).named_parameters(), &path).unwrap();
    let target = linear(2, 4, 2, true);
    let before = param_bits(&target.named_parameters());
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert_file_error(&e, &path, "bias", "missing");
    // `weight` was present and valid, but nothing is written unless everything checks out.
    assert_eq!(param_bits(&target.named_parameters()), before);
}

#[test]
fn wrong_shape_names_the_tensor_and_changes_nothing() {
    let path = scratch("shape.safetensors");
    save_parameters(&mlp(1, &[3, 5, 2]).named_parameters(), &path).unwrap();
    let target = mlp(2, &[3, 6, 2]);
    let before = param_bits(&target.named_parameters());
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert_file_error(&e, &path, "layers.0.weight", "[5, 3]");
    assert!(
        e.to_string().contains("[6, 3]"),
        "the expected shape is named too: {e}"
    );
    assert_eq!(param_bits(&target.named_parameters()), before);
}

#[test]
fn wrong_dtype_names_the_tensor_and_changes_nothing() {
    let path = scratch("dtype.safetensors");
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F64, vec![2], &data).unwrap();
    std::fs::write(
        &path,
        safetensors::serialize([("bias", view)], None).unwrap(),
    )
    .unwrap();
    let target = linear(2, 4, 2, true);
    // Only `bias` is in the file; ask for it alone.
    let params: Vec<(String, Tensor)> = vec![("bias".into(), target.bias.clone().unwrap())];
    let before = param_bits(&params);
    let e = load_parameters(&params, &path).unwrap_err();
    assert_file_error(&e, &path, "bias", "F64");
    assert_eq!(param_bits(&params), before);
}

#[test]
fn truncated_file_names_the_file_and_tensor_and_changes_nothing() {
    let path = scratch("truncated.safetensors");
    let source = mlp(1, &[3, 5, 2]);
    save_parameters(&source.named_parameters(), &path).unwrap();
    let full = std::fs::read(&path).unwrap();
    let target = mlp(2, &[3, 5, 2]);
    let before = param_bits(&target.named_parameters());

    // Cut inside the data: the tensors stored last lose their bytes. safetensors lays
    // tensors out in order of dtype alignment then name, so find the last one from the
    // header the full file carries.
    let file = SafeTensors::deserialize(&full).unwrap();
    let last = source
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .max_by_key(|n| file.tensor(n).unwrap().data().as_ptr() as usize)
        .unwrap();
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert_file_error(&e, &path, &last, "truncated");
    assert_eq!(param_bits(&target.named_parameters()), before);

    // Cut inside the header: only the file can be named.
    std::fs::write(&path, &full[..20]).unwrap();
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert!(
        matches!(&e, Error::File { path: p, .. } if p == &path),
        "{e:?}"
    );
    assert_eq!(param_bits(&target.named_parameters()), before);

    // An empty file.
    std::fs::write(&path, []).unwrap();
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert!(
        matches!(&e, Error::File { path: p, .. } if p == &path),
        "{e:?}"
    );
    assert_eq!(param_bits(&target.named_parameters()), before);
}

#[test]
fn absent_file_is_an_io_error_naming_it() {
    let path = scratch("does-not-exist.safetensors");
    let target = linear(2, 4, 2, true);
    let e = load_parameters(&target.named_parameters(), &path).unwrap_err();
    assert!(
        matches!(&e, Error::Io { path: p, .. } if p == &path),
        "{e:?}"
    );
    assert!(e.to_string().contains("does-not-exist.safetensors"), "{e}");
}
