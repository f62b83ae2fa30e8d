//! K-fold cross-fitting: a second held-out estimator for MAT's first step.
//!
//! The paper asks only that each training example be predicted by a model that never saw it;
//! XRM ([`super::xrm`]) is one way. Cross-fitting is the plainest other one:
//!
//! - The training set is cut into `K` folds **stratified by class**: the rows of each class,
//!   in a seeded random order, are dealt to the folds in turn, continuing from where the
//!   previous class stopped, so fold sizes differ by at most one overall and each class's
//!   counts per fold by at most one.
//! - Model `k` (a fresh [`ModelSpec`] from its own stream) trains with the plain mean
//!   cross-entropy ([`Objective::Mean`]) on the other `K − 1` folds, for `steps` steps of
//!   `optimizer` on batches of `batch_size` (`>=` the rows means full batch), with no
//!   checkpoints; it then predicts its held-out fold: `heldout_logits[i] = f_k(x_i)` for the
//!   rows `i` of fold `k`.
//! - Inferred bits, from held-out errors: on training, `m_i = 1[argmax heldout_logits[i] ≠
//!   y_i]`. On validation, every model is held out, so each validation example is dealt to a
//!   fold the same stratified way (its own stream) and judged by that fold's model alone:
//!   every example, training or validation, is then judged by one model trained on a
//!   `(K − 1)/K` share of the training set, so the two splits' error rates are comparable.
//!   (XRM's rule, "either twin errs", would mark far more examples with `K` models.)
//!
//! The result is an [`XrmOutput`], so everything that reads XRM's phase-1 output (MAT's
//! shift, XRM + GroupDRO's groups, `va_gi_wga`, [`XrmOutput::save`]) reads this one. Fields
//! that mean something else here:
//! - `assignment[i]`: the fold of example `i` (the model that did **not** train on it);
//! - `y_dyn` = `y` and no flips: `final_flip_rate` (and the one `flip_rate_history` entry) is
//!   the **held-out error rate** `mean_i m_i`, the quantity XRM's flip rate tracks, so
//!   [`XrmOutput::selection_flip_rate`] can pick among hyperparameter draws as for XRM;
//! - `config`: `steps`, `batch_size`, `optimizer` and `seed` of every fold model, loss
//!   [`XrmLoss::Mean`], `log_every = steps`; the fold count is in [`KfoldConfig`] (and in
//!   the largest `assignment` value plus one).
//!
//! Cost: `K` models of `steps` steps each (XRM: one pair of twins, `steps` steps).

use std::time::Instant;

use super::model::{ModelSpec, OptimizerSpec};
use super::objective::Objective;
use super::train::{train, TrainConfig, TrainSetup};
use super::xrm::{XrmConfig, XrmLoss, XrmOutput};
use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

const STREAM_FOLDS_TR: u64 = 1;
const STREAM_FOLDS_VA: u64 = 2;
const STREAM_MODELS: u64 = 3;

/// How K-fold cross-fitting runs.
#[derive(Clone, Debug)]
pub struct KfoldConfig {
    /// Number of folds `K`, at least 2 and at most 255.
    pub folds: usize,
    /// Optimizer steps of each fold model.
    pub steps: usize,
    /// Examples per batch; `>=` the fold model's training rows means full batch.
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    /// Seeds the folds and every fold model.
    pub seed: u64,
    pub device: Device,
}

impl KfoldConfig {
    fn validate(&self) -> Result<()> {
        if !(2..=255).contains(&self.folds) {
            return Err(Error::arg(
                "folds",
                format!("K-fold needs 2 to 255 folds, got {}", self.folds),
            ));
        }
        if self.steps == 0 {
            return Err(Error::arg("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// The fold (`0..folds`) of each example, stratified by class (see the module docs).
///
/// Errors: fewer than 2 folds, a label `>= classes`.
pub fn stratified_folds(y: &[u32], classes: usize, folds: usize, rng: &mut Rng) -> Result<Vec<u8>> {
    if !(2..=255).contains(&folds) {
        return Err(Error::arg(
            "folds",
            format!("K-fold needs 2 to 255 folds, got {folds}"),
        ));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in y.iter().enumerate() {
        by_class
            .get_mut(c as usize)
            .ok_or(Error::IndexOutOfRange {
                op: "stratified_folds",
                position: i,
                index: c as usize,
                size: classes,
            })?
            .push(i);
    }
    let mut fold = vec![0u8; y.len()];
    let mut next = 0usize;
    for rows in &by_class {
        for p in rng.permutation(rows.len()) {
            fold[rows[p]] = (next % folds) as u8;
            next += 1;
        }
    }
    Ok(fold)
}

/// Row positions whose fold is (`inside`) or is not (`!inside`) `k`.
fn rows_where(fold: &[u8], k: u8, inside: bool) -> Vec<usize> {
    (0..fold.len())
        .filter(|&i| (fold[i] == k) == inside)
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best as u32
}

/// Rows gathered per block by [`logits_on`] where a row's logits do not depend on the batch.
const GATHER_BLOCK_ROWS: usize = 1024;

/// Logits of `model` on `rows` of `split`, row-major `rows.len() × K`: the bits of one pass
/// over those rows gathered together. Where the backend promises that a row's logits do not
/// depend on the rows beside it ([`crate::nn::Module::rows_independent`]) the rows are gathered
/// [`GATHER_BLOCK_ROWS`] at a time, so a fold's held-out features (a `1/K` share of the
/// split) are never copied at once.
fn logits_on(
    model: &dyn crate::nn::Module,
    split: &Split,
    rows: &[usize],
    device: &Device,
) -> Result<Vec<f32>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let d = split.d;
    let block = if model.rows_independent(device) {
        GATHER_BLOCK_ROWS
    } else {
        rows.len()
    };
    let mut logits = Vec::new();
    for part in rows.chunks(block) {
        let mut x = Vec::with_capacity(part.len() * d);
        for &i in part {
            x.extend_from_slice(&split.x[i * d..(i + 1) * d]);
        }
        let x = Tensor::from_vec(x, (part.len(), d), device)?;
        logits.extend(no_grad(|| model.forward(&x))?.to_vec()?);
    }
    Ok(logits)
}

/// Runs K-fold cross-fitting on `ds` (see the module docs).
///
/// Errors: an invalid data set or config, a fold model's training failing (a non-finite
/// loss), a fold with no training rows left.
pub fn run_kfold(ds: &Dataset, model_spec: &ModelSpec, cfg: &KfoldConfig) -> Result<XrmOutput> {
    ds.validate()?;
    cfg.validate()?;
    let (n, k) = (ds.train.n, ds.classes);
    if n < cfg.folds {
        return Err(Error::Data(format!(
            "`{}`: {n} training examples cannot fill {} folds",
            ds.name, cfg.folds
        )));
    }
    let root = Rng::new(cfg.seed);
    let fold_tr = stratified_folds(&ds.train.y, k, cfg.folds, &mut root.fork(STREAM_FOLDS_TR))?;
    let fold_va = stratified_folds(&ds.valid.y, k, cfg.folds, &mut root.fork(STREAM_FOLDS_VA))?;
    let models = root.fork(STREAM_MODELS);
    let started = Instant::now();

    let mut heldout_logits = vec![0f32; n * k];
    let mut predicted_va = vec![0u32; ds.valid.n];
    for f in 0..cfg.folds {
        let fold = f as u8;
        let train_rows = rows_where(&fold_tr, fold, false);
        let tcfg = TrainConfig {
            steps: cfg.steps,
            batch_size: cfg.batch_size,
            optimizer: cfg.optimizer.clone(),
            checkpoint_freq: cfg.steps,
            seed: models.fork(f as u64).next_u64(),
            device: cfg.device.clone(),
            eval_valid: false,
            ..Default::default()
        };
        let setup = TrainSetup {
            objective: Objective::Mean,
            rows: Some(train_rows),
            va_inferred_groups: None,
            evaluate: false,
        };
        let outcome = train(ds, model_spec, &tcfg, &setup, &mut |_| Ok(()))
            .map_err(|e| Error::Data(format!("K-fold: the model of fold {f} failed: {e}")))?;
        let held = rows_where(&fold_tr, fold, true);
        let logits = logits_on(outcome.model.as_ref(), &ds.train, &held, &cfg.device)?;
        for (r, &i) in held.iter().enumerate() {
            heldout_logits[i * k..(i + 1) * k].copy_from_slice(&logits[r * k..(r + 1) * k]);
        }
        let va_rows = rows_where(&fold_va, fold, true);
        let logits = logits_on(outcome.model.as_ref(), &ds.valid, &va_rows, &cfg.device)?;
        for (r, &i) in va_rows.iter().enumerate() {
            predicted_va[i] = argmax(&logits[r * k..(r + 1) * k]);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let inferred_tr: Vec<u32> = (0..n)
        .map(|i| u32::from(argmax(&heldout_logits[i * k..(i + 1) * k]) != ds.train.y[i]))
        .collect();
    let inferred_va: Vec<u32> = predicted_va
        .iter()
        .zip(&ds.valid.y)
        .map(|(&p, &y)| u32::from(p != y))
        .collect();
    let error_rate = inferred_tr.iter().sum::<u32>() as f64 / n as f64;
    let groups = ds.train.groups(ds.n_attr);
    let mut right = vec![0usize; ds.n_groups()];
    let mut total = vec![0usize; ds.n_groups()];
    for (i, &g) in groups.iter().enumerate() {
        total[g as usize] += 1;
        right[g as usize] += usize::from(inferred_tr[i] == 0);
    }
    let heldout_acc_by_group = right
        .iter()
        .zip(&total)
        .map(|(&r, &t)| (t > 0).then(|| r as f64 / t as f64))
        .collect();
    let by = ("by its held-out model", "by its held-out model");
    let degenerate = super::xrm::degeneracy(ds, &inferred_tr, &inferred_va, by);
    Ok(XrmOutput {
        dataset: ds.name.clone(),
        classes: k,
        model_spec: model_spec.clone(),
        config: XrmConfig {
            steps: cfg.steps,
            batch_size: cfg.batch_size,
            optimizer: cfg.optimizer.clone(),
            loss: XrmLoss::Mean,
            seed: cfg.seed,
            device: cfg.device.clone(),
            log_every: cfg.steps,
        },
        heldout_logits,
        assignment: fold_tr,
        y_dyn: ds.train.y.clone(),
        flip_rate_history: vec![(cfg.steps - 1, error_rate)],
        final_flip_rate: error_rate,
        inferred_tr,
        inferred_va,
        degenerate,
        heldout_acc_by_group,
        steps_per_s: if elapsed > 0.0 {
            (cfg.folds * cfg.steps) as f64 / elapsed
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{interpretable, InterpretableConfig};

    fn data(seed: u64) -> Dataset {
        interpretable(&InterpretableConfig {
            n: 200,
            d: 40,
            sigma_eps: 0.1,
            seed,
            ..Default::default()
        })
        .unwrap()
    }

    fn config(folds: usize) -> KfoldConfig {
        KfoldConfig {
            folds,
            steps: 60,
            batch_size: usize::MAX,
            optimizer: OptimizerSpec::plain_sgd(0.5),
            seed: 3,
            device: Device::Cpu,
        }
    }

    #[test]
    fn folds_are_stratified_balanced_and_seeded() {
        let y: Vec<u32> = (0..103).map(|i| u32::from(i % 7 < 2)).collect();
        for k in [2usize, 3, 5] {
            let fold = stratified_folds(&y, 2, k, &mut Rng::new(9)).unwrap();
            let sizes: Vec<usize> = (0..k)
                .map(|f| fold.iter().filter(|&&v| v as usize == f).count())
                .collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            for c in 0..2 {
                let per: Vec<usize> = (0..k)
                    .map(|f| {
                        fold.iter()
                            .zip(&y)
                            .filter(|(&v, &yy)| v as usize == f && yy == c)
                            .count()
                    })
                    .collect();
                assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1);
            }
            assert_eq!(stratified_folds(&y, 2, k, &mut Rng::new(9)).unwrap(), fold);
        }
        assert_ne!(
            stratified_folds(&y, 2, 5, &mut Rng::new(1)).unwrap(),
            stratified_folds(&y, 2, 5, &mut Rng::new(2)).unwrap()
        );
        assert!(stratified_folds(&y, 2, 1, &mut Rng::new(0)).is_err());
        assert!(stratified_folds(&[0, 2], 2, 2, &mut Rng::new(0)).is_err());
    }

    #[test]
    fn every_logit_comes_from_a_model_that_never_saw_the_example() {
        let ds = data(0);
        let cfg = config(4);
        let out = run_kfold(&ds, &ModelSpec::linear(true), &cfg).unwrap();
        out.check_matches(&ds).unwrap();
        assert!(out.assignment.iter().all(|&f| (f as usize) < 4));
        // Move one training example far away: the held-out logits of the other rows of its
        // fold come from the one model that did not train on it and keep their bits; rows of
        // the other folds come from models that did, and move.
        let j = 17;
        let mut moved = ds.clone();
        for v in &mut moved.train.x[j * ds.train.d..(j + 1) * ds.train.d] {
            *v = 50.0;
        }
        let again = run_kfold(&moved, &ModelSpec::linear(true), &cfg).unwrap();
        assert_eq!(again.assignment, out.assignment);
        let k = ds.classes;
        let row = |o: &XrmOutput, i: usize| o.heldout_logits[i * k..(i + 1) * k].to_vec();
        let (mut same, mut changed) = (0, 0);
        for i in (0..ds.train.n).filter(|&i| i != j) {
            if out.assignment[i] == out.assignment[j] {
                assert_eq!(row(&out, i), row(&again, i), "row {i}");
                same += 1;
            } else if row(&out, i) != row(&again, i) {
                changed += 1;
            }
        }
        assert!(same > 0 && changed > 0, "{same} {changed}");
        // The same seed gives the same bits.
        let twice = run_kfold(&ds, &ModelSpec::linear(true), &cfg).unwrap();
        assert_eq!(twice.heldout_logits, out.heldout_logits);
        assert_eq!(twice.inferred_va, out.inferred_va);
    }

    #[test]
    fn held_out_errors_find_the_minority_and_the_output_saves_as_xrm_does() {
        let ds = data(1);
        // Few small steps: the models have picked up the (large) spurious feature, not yet
        // the core one.
        let cfg = KfoldConfig {
            steps: 10,
            optimizer: OptimizerSpec::plain_sgd(0.01),
            ..config(2)
        };
        let out = run_kfold(&ds, &ModelSpec::linear(true), &cfg).unwrap();
        // Training bits are the held-out errors; the rate is what `final_flip_rate` reports.
        let k = ds.classes;
        for i in 0..ds.train.n {
            let wrong = argmax(&out.heldout_logits[i * k..(i + 1) * k]) != ds.train.y[i];
            assert_eq!(out.inferred_tr[i], u32::from(wrong));
        }
        let rate = out.inferred_tr.iter().sum::<u32>() as f64 / ds.train.n as f64;
        assert_eq!(out.final_flip_rate, rate);
        assert_eq!(out.y_dyn, ds.train.y);
        // With the spurious feature five times the core one, the held-out models follow it:
        // the examples they get wrong are mostly the minority (groups 1 and 2).
        let groups = ds.train.groups(ds.n_attr);
        let flagged: Vec<usize> = (0..ds.train.n)
            .filter(|&i| out.inferred_tr[i] == 1)
            .collect();
        assert!(!flagged.is_empty());
        let minority = flagged
            .iter()
            .filter(|&&i| groups[i] == 1 || groups[i] == 2)
            .count();
        assert!(
            minority * 2 > flagged.len(),
            "{minority} of {} flagged rows are minority",
            flagged.len()
        );
        assert!(out.degenerate.is_none(), "{:?}", out.degenerate);
        assert!(out.selection_flip_rate() > 0.0);

        let dir = std::env::temp_dir().join(format!("memaware-kfold-{}", std::process::id()));
        out.save(&dir, &ds).unwrap();
        let back = XrmOutput::load(&dir, &ds).unwrap();
        assert_eq!(back.heldout_logits, out.heldout_logits);
        assert_eq!(back.assignment, out.assignment);
        assert_eq!(back.inferred_tr, out.inferred_tr);
        assert_eq!(back.inferred_va, out.inferred_va);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configs_are_named_errors() {
        let ds = data(0);
        let spec = ModelSpec::linear(true);
        for (cfg, name) in [
            (
                KfoldConfig {
                    folds: 1,
                    ..config(2)
                },
                "folds",
            ),
            (
                KfoldConfig {
                    folds: 256,
                    ..config(2)
                },
                "folds",
            ),
            (
                KfoldConfig {
                    steps: 0,
                    ..config(2)
                },
                "steps",
            ),
            (
                KfoldConfig {
                    batch_size: 0,
                    ..config(2)
                },
                "batch_size",
            ),
        ] {
            match run_kfold(&ds, &spec, &cfg) {
                Err(Error::InvalidArgument { name: n, .. }) => assert_eq!(n, name),
                other => panic!("expected an error naming {name}, got {other:?}"),
            }
        }
    }
}
