//! The binary carries what it needs: the bundled MNIST sample is inside it, so ColorMNIST
//! builds from any working directory (as after `cargo install --path .`).

mod common;

use std::path::Path;
use std::process::Command;

use memaware::data::colormnist::{bundled_mnist_sample, load_mnist_sample};

#[test]
fn the_bundled_sample_is_the_file_in_the_repository() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist_5k.csv.gz");
    let (images, labels) = bundled_mnist_sample().unwrap();
    assert_eq!((images.len(), labels.len()), (5000 * 784, 5000));
    assert_eq!((images, labels), load_mnist_sample(&file).unwrap());
}

#[test]
fn colormnist_trains_from_another_working_directory() {
    let elsewhere = common::scratch("install-elsewhere");
    let out = Command::new(env!("CARGO_BIN_EXE_memaware"))
        .current_dir(&elsewhere)
        .args(["train", "--method", "erm", "--data", "colormnist"])
        .args(["--steps", "2", "--checkpoint-freq", "1", "--out", "runs"])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<_> = std::fs::read_dir(elsewhere.join("runs"))
        .expect("a runs folder")
        .collect();
    assert_eq!(runs.len(), 1, "one run folder");
}
