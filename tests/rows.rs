//! The backend's row-independence promise ([`Device::row_independent_columns`], stated on
//! `BackendStorage::matmul`): within it, row `i` of `x · Wᵀ` has the same bits whatever batch
//! it is computed in (its size, the other rows, their order). XRM's final held-out logits
//! (each twin's pass over all training rows instead of a gathered subset) and the row-blocked
//! checkpoint evaluation rely on it to change no bit.

use memaware::algo::model::{ModelSpec, OptimizerKind, OptimizerSpec};
use memaware::algo::xrm::{run_xrm_with_twins, XrmConfig, XrmLoss};
use memaware::buffer::F32Buffer;
use memaware::data::synthetic::{waterbirds_like, WaterbirdsLikeConfig};
use memaware::nn::{Init, Linear, Module};
use memaware::{no_grad, Device, Indices, Rng, Tensor};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Row `i` of a `? × n` row-major matrix.
fn row(v: &[f32], n: usize, i: usize) -> &[f32] {
    &v[i * n..(i + 1) * n]
}

#[test]
fn a_rows_product_has_the_same_bits_in_any_batch_within_the_promise() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(7);
    for k in [1, 7, 32, 33, 511, 512, 2048] {
        let width = dev.row_independent_columns(k);
        assert!(width >= 4, "k = {k}: the CPU promises at least 4 columns");
        // Enough rows that the wide products run on several threads (2^21 multiply-adds).
        let m = if k >= 512 { 400 } else { 1500 };
        let x = Tensor::from_vec(rng.normal_vec(m * k), (m, k), &dev).unwrap();
        for n in [1, 2, 3, 4, 5, 33, 64].into_iter().filter(|&n| n <= width) {
            let what = format!("k = {k}, n = {n}");
            let w = Tensor::from_vec(rng.normal_vec(n * k), (n, k), &dev).unwrap();
            let full = x.matmul_t(&w).unwrap().to_vec().unwrap();
            // Each row alone.
            for i in (0..m).step_by(97).chain([1, 2, m - 1]) {
                let alone = x
                    .rows(i, 1)
                    .unwrap()
                    .matmul_t(&w)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(row(&full, n, i)),
                    "{what}: row {i} alone"
                );
            }
            // Blocks of every size class: odd, one short of a register block, the blocks of
            // the parallel split and the thresholds of the small kernels.
            for (start, len) in [(0, 2), (3, 3), (5, 5), (0, 32), (1, 33), (7, 64), (2, 65)]
                .into_iter()
                .chain([(0, m - 1), (m / 3, m - m / 3)])
            {
                let block = x
                    .rows(start, len)
                    .unwrap()
                    .matmul_t(&w)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                for r in 0..len {
                    assert_eq!(
                        bits(row(&block, n, r)),
                        bits(row(&full, n, start + r)),
                        "{what}: row {} in a block of {len} from {start}",
                        start + r
                    );
                }
            }
            // A shuffled subset with a repeated row.
            let mut idx: Vec<usize> = rng.permutation(m)[..m / 3].to_vec();
            idx.push(idx[0]);
            let sub = x
                .index_select(&Indices::from_usize(&idx, &dev).unwrap())
                .unwrap()
                .matmul_t(&w)
                .unwrap()
                .to_vec()
                .unwrap();
            for (r, &i) in idx.iter().enumerate() {
                assert_eq!(
                    bits(row(&sub, n, r)),
                    bits(row(&full, n, i)),
                    "{what}: row {i} at position {r} of a shuffled subset"
                );
            }
        }
    }
}

#[test]
fn a_linear_layers_logits_of_a_row_do_not_depend_on_its_batch() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(11);
    for (d, k) in [(96, 2), (768, 3), (2048, 2), (600, 40)] {
        assert!(k <= dev.row_independent_columns(d));
        let layer = Linear::new(d, k, true, Init::PyTorchDefault, &mut rng, &dev).unwrap();
        let n = 777;
        let x = Tensor::from_vec(rng.normal_vec(n * d), (n, d), &dev).unwrap();
        let full = no_grad(|| layer.forward(&x)).unwrap().to_vec().unwrap();
        for (start, len) in [(0, 1), (1, 2), (100, 333), (776, 1)] {
            let part = no_grad(|| layer.forward(&x.rows(start, len).unwrap()))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_eq!(
                bits(&part),
                bits(&full[start * k..(start + len) * k]),
                "d = {d}, K = {k}: rows {start}..{}",
                start + len
            );
        }
    }
}

#[test]
fn rows_are_the_rows_detached_over_shared_and_owned_storage() {
    let dev = Device::Cpu;
    let values: Vec<f32> = (0..60).map(|v| v as f32).collect();
    let shared = F32Buffer::new(values.clone()).into_shared();
    let owned = Tensor::from_vec(values.clone(), (10, 6), &dev).unwrap();
    let over_shared = Tensor::from_buffer(shared, (10, 6), &dev).unwrap();
    for t in [&owned, &over_shared] {
        let r = t.rows(3, 4).unwrap();
        assert_eq!(r.dims(), &[4, 6]);
        assert_eq!(r.to_vec().unwrap(), values[18..42].to_vec());
        assert!(!r.tracks_grad());
        assert!(t.rows(8, 3).is_err(), "rows past the end");
    }
    let v = owned.variable();
    assert!(!v.rows(0, 2).unwrap().tracks_grad(), "rows are detached");
}

/// XRM's held-out logits, now read from each twin's pass over every training row, are bit
/// for bit the logits of the other twin's pass over the gathered rows each twin held in
/// (what they were computed from before): minibatch and full-batch runs, K = 2 and the
/// dot path's wide case (d ≥ 512).
#[test]
fn xrm_heldout_logits_equal_the_other_twins_pass_over_its_gathered_rows() {
    let dev = Device::Cpu;
    for (d, batch_size) in [(96, 32), (96, usize::MAX), (600, 50)] {
        let ds = waterbirds_like(&WaterbirdsLikeConfig {
            d,
            train_counts: [150, 12, 14, 140],
            valid_counts: [30, 6, 6, 30],
            test_counts: [30, 6, 6, 30],
            seed: 5,
            ..Default::default()
        })
        .unwrap();
        let cfg = XrmConfig {
            steps: 40,
            batch_size,
            optimizer: OptimizerSpec::new(OptimizerKind::Sgd, 0.05, 0.9, 1e-3).unwrap(),
            loss: XrmLoss::ClassBalanced,
            seed: 3,
            device: dev.clone(),
            log_every: 10,
        };
        let (out, twins) = run_xrm_with_twins(&ds, &ModelSpec::linear(true), &cfg).unwrap();
        let (n, k) = (ds.train.n, ds.classes);
        let x = Tensor::from_buffer(ds.train.x.clone(), (n, d), &dev).unwrap();
        for (held_in_by, other) in [(0u8, &twins.b), (1u8, &twins.a)] {
            let rows: Vec<usize> = (0..n)
                .filter(|&i| out.assignment[i] == held_in_by)
                .collect();
            let gathered = x
                .index_select(&Indices::from_usize(&rows, &dev).unwrap())
                .unwrap();
            let logits = no_grad(|| other.forward(&gathered))
                .unwrap()
                .to_vec()
                .unwrap();
            for (r, &i) in rows.iter().enumerate() {
                assert_eq!(
                    bits(row(&logits, k, r)),
                    bits(row(&out.heldout_logits, k, i)),
                    "d = {d}, batch {batch_size}: training row {i}"
                );
            }
        }
    }
}
