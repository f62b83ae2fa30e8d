//! The per-step objectives of the training loop, and the state they carry.
//!
//! On a batch `B` with logits `z = f(x_B)` and labels `y_B`:
//!
//! - [`Objective::Mean`] (ERM, SUBG): `(1/|B|) Σ_{i∈B} CE(z_i, y_i)`;
//! - [`Objective::Shifted`] (MAT): `(1/|B|) Σ_{i∈B} CE(z_i + s_i, y_i)` with the constant rows
//!   `s_i` of MAT's shift; the fused kernel computes loss and gradient in one pass;
//! - [`Objective::Weighted`] (JTT, RWG): `(1/|B|) Σ_{i∈B} w_i CE(z_i, y_i)`;
//! - [`Objective::GroupDro`]: per-row losses `l_i`, group means `L_g` over the groups present
//!   in the batch (on the host, from the `|B|` row losses), `q_g ← q_g exp(η L_g)` for those
//!   groups, `q ← q / Σ q`, then `Σ_{i∈B} w_i l_i` with `w_i = q_{g_i} / n_{g_i}(B)` as a
//!   constant: that is `Σ_g q_g L_g`, and `q` stays a distribution (see [`GroupDroState`]).
//!
//! The model computes the loss ([`Module::loss_and_logits`]), so a linear model trains through
//! the fused linear + cross-entropy op whatever the objective.

use crate::backend::Device;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::ops::Reduction;
use crate::tensor::{Indices, Tensor};

/// The per-step loss of [`train`](super::train::train) (see the module docs).
#[derive(Clone, Debug)]
pub enum Objective {
    /// Mean cross-entropy.
    Mean,
    /// Mean cross-entropy of `logits + shift`; the shift is `n_tr × K` on the run's device,
    /// indexed by training row.
    Shifted(Tensor),
    /// Mean of `w_i · CE`, one weight per training row (finite, `>= 0`, not all zero).
    Weighted(Vec<f32>),
    /// GroupDRO over `groups` (one id in `0..n_groups` per training row) with step size `eta`.
    GroupDro {
        groups: Vec<u32>,
        n_groups: usize,
        eta: f32,
    },
}

impl Objective {
    /// Checks that the objective fits the training set of `ds` and the run's `device`.
    pub(crate) fn check(&self, ds: &Dataset, device: &Device) -> Result<()> {
        let (n, k) = (ds.train.n, ds.classes);
        match self {
            Objective::Mean => {}
            Objective::Shifted(s) => {
                if s.dims() != [n, k] {
                    return Err(Error::shape_detail(
                        "train: MAT shift",
                        s.dims(),
                        &[n, k],
                        "one row of K shifts per training example",
                    ));
                }
                if s.device() != device {
                    return Err(Error::Device(
                        "train: the MAT shift is on another device than the run".into(),
                    ));
                }
            }
            Objective::Weighted(w) => {
                if w.len() != n {
                    return Err(Error::shape_detail(
                        "train: row weights",
                        &[w.len()],
                        &[n],
                        "one weight per training example",
                    ));
                }
                if let Some((i, v)) = w
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
                {
                    return Err(Error::arg(
                        "weights",
                        format!("weight {v} of training row {i} is not finite and >= 0"),
                    ));
                }
                if w.iter().all(|&v| v == 0.0) {
                    return Err(Error::arg("weights", "every row weight is zero"));
                }
            }
            Objective::GroupDro {
                groups,
                n_groups,
                eta,
            } => {
                GroupDroState::new(*n_groups, *eta)?;
                if groups.len() != n {
                    return Err(Error::shape_detail(
                        "train: GroupDRO groups",
                        &[groups.len()],
                        &[n],
                        "one group id per training example",
                    ));
                }
                if let Some((position, &g)) = groups
                    .iter()
                    .enumerate()
                    .find(|(_, &g)| g as usize >= *n_groups)
                {
                    return Err(Error::IndexOutOfRange {
                        op: "train: GroupDRO groups",
                        position,
                        index: g as usize,
                        size: *n_groups,
                    });
                }
            }
        }
        Ok(())
    }
}

/// An objective ready to train with: its per-row data for the fitted rows (on the device),
/// and GroupDRO's state.
pub(crate) struct StepLoss {
    shift: Option<Tensor>,
    weights: Option<Tensor>,
    groups: Option<Vec<u32>>,
    dro: Option<GroupDroState>,
}

impl StepLoss {
    /// `objective` restricted to the training rows `rows` (all of them for `None`), in order.
    pub(crate) fn new(
        objective: &Objective,
        rows: Option<&[usize]>,
        device: &Device,
    ) -> Result<Self> {
        let idx = rows.map(|r| Indices::from_usize(r, device)).transpose()?;
        let pick = |t: Tensor| -> Result<Tensor> {
            match &idx {
                Some(idx) => t.index_select(idx),
                None => Ok(t),
            }
        };
        let mut loss = StepLoss {
            shift: None,
            weights: None,
            groups: None,
            dro: None,
        };
        match objective {
            Objective::Mean => {}
            Objective::Shifted(s) => loss.shift = Some(pick(s.clone())?),
            Objective::Weighted(w) => {
                loss.weights = Some(pick(Tensor::from_slice(w, w.len(), device)?)?)
            }
            Objective::GroupDro {
                groups,
                n_groups,
                eta,
            } => {
                loss.groups = Some(match rows {
                    Some(r) => r.iter().map(|&i| groups[i]).collect(),
                    None => groups.clone(),
                });
                loss.dro = Some(GroupDroState::new(*n_groups, *eta)?);
            }
        }
        Ok(loss)
    }

    /// The objective on one batch and the model's logits. `batch` holds the positions among
    /// the fitted rows (`None`: all of them, in order) and the same positions on the device.
    pub(crate) fn on_batch(
        &mut self,
        model: &dyn Module,
        x: &Tensor,
        y: &Indices,
        batch: Option<(&[usize], &Indices)>,
    ) -> Result<(Tensor, Tensor)> {
        let pick = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            match (t, batch) {
                (Some(t), Some((_, idx))) => t.index_select(idx).map(Some),
                (t, _) => Ok(t.clone()),
            }
        };
        let (Some(dro), Some(groups)) = (self.dro.as_mut(), &self.groups) else {
            let (shift, weights) = (pick(&self.shift)?, pick(&self.weights)?);
            return model.loss_and_logits(x, y, shift.as_ref(), weights.as_ref(), Reduction::Mean);
        };
        let (rows, logits) = model.loss_and_logits(x, y, None, None, Reduction::None)?;
        let batch_groups: Vec<u32> = match batch {
            Some((positions, _)) => positions.iter().map(|&p| groups[p]).collect(),
            None => groups.clone(),
        };
        let w = dro.update(&rows.to_vec()?, &batch_groups)?;
        let w = Tensor::from_vec(w, batch_groups.len(), x.device())?;
        Ok((rows.mul(&w)?.sum_all()?, logits))
    }

    /// GroupDRO's group weights.
    pub(crate) fn group_dro_q(&self) -> Option<Vec<f64>> {
        self.dro.as_ref().map(|d| d.q().to_vec())
    }

    /// Puts back GroupDRO's `q` (from [`StepLoss::group_dro_q`] of the same objective);
    /// `None` for an objective without one.
    pub(crate) fn set_group_dro_q(&mut self, q: Option<&[f64]>) -> Result<()> {
        match (self.dro.as_mut(), q) {
            (None, None) => Ok(()),
            (Some(d), Some(q)) if q.len() == d.q.len() => {
                d.q = q.to_vec();
                Ok(())
            }
            _ => Err(Error::Data(
                "saved GroupDRO weights do not fit the objective".into(),
            )),
        }
    }
}

/// GroupDRO's adversarial group weights `q` (Sagawa et al. 2020), kept in f64 on the host.
///
/// One batch: `L_g` = mean row loss of group `g` over its rows in the batch; for every group
/// present, `q_g ← q_g · exp(η L_g)`; then `q ← q / Σ q`. The update runs in log space
/// (`ln q_g + η L_g`, max-subtracted before `exp`), which is the same map without overflow.
/// The returned row weights `w_i = q_{g_i} / n_{g_i}` make `Σ_i w_i l_i = Σ_g q_g L_g`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDroState {
    q: Vec<f64>,
    eta: f64,
}

impl GroupDroState {
    /// Uniform `q` over `n_groups` groups. Errors: no groups, `eta` negative or not finite.
    pub fn new(n_groups: usize, eta: f32) -> Result<Self> {
        if n_groups == 0 {
            return Err(Error::arg("n_groups", "GroupDRO needs at least one group"));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::arg(
                "eta",
                format!("GroupDRO's step size must be finite and >= 0, got {eta}"),
            ));
        }
        Ok(GroupDroState {
            q: vec![1.0 / n_groups as f64; n_groups],
            eta: eta as f64,
        })
    }

    /// The current group weights (a distribution).
    pub fn q(&self) -> &[f64] {
        &self.q
    }

    /// Updates `q` from one batch's row losses and group ids and returns the row weights
    /// `q_{g_i} / n_{g_i}` (see the type docs).
    pub fn update(&mut self, row_losses: &[f32], groups: &[u32]) -> Result<Vec<f32>> {
        if row_losses.len() != groups.len() {
            return Err(Error::shape_detail(
                "group_dro",
                &[row_losses.len()],
                &[groups.len()],
                "one group id per row loss",
            ));
        }
        let n_groups = self.q.len();
        let mut sum = vec![0.0f64; n_groups];
        let mut count = vec![0usize; n_groups];
        for (position, (&l, &g)) in row_losses.iter().zip(groups).enumerate() {
            let g = g as usize;
            if g >= n_groups {
                return Err(Error::IndexOutOfRange {
                    op: "group_dro",
                    position,
                    index: g,
                    size: n_groups,
                });
            }
            if !l.is_finite() {
                return Err(Error::NonFinite {
                    op: "group_dro",
                    what: format!("row loss {l} at batch position {position}"),
                });
            }
            sum[g] += l as f64;
            count[g] += 1;
        }
        let log_q: Vec<f64> = (0..n_groups)
            .map(|g| {
                let lq = self.q[g].ln();
                if count[g] > 0 {
                    lq + self.eta * sum[g] / count[g] as f64
                } else {
                    lq
                }
            })
            .collect();
        let max = log_q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let unnormalised: Vec<f64> = log_q.iter().map(|&v| (v - max).exp()).collect();
        // The largest entry contributes exp(0) = 1, so the total is at least 1.
        let total: f64 = unnormalised.iter().sum();
        for (q, u) in self.q.iter_mut().zip(&unnormalised) {
            *q = u / total;
        }
        Ok(groups
            .iter()
            .map(|&g| (self.q[g as usize] / count[g as usize] as f64) as f32)
            .collect())
    }
}

/// JTT's per-example weights: `lambda_up` on the rows in `errors`, 1 elsewhere.
///
/// With mean reduction over uniform batches, `E[(1/|B|) Σ_{i∈B} w_i l_i] = (1/n) Σ_i w_i l_i`,
/// while JTT's upsampling (each error example repeated `lambda_up` times, set size
/// `n' = n + (lambda_up − 1)|E|`) gives `(1/n') Σ_i w_i l_i`: the same objective up to the
/// constant factor `n'/n`, i.e. the same per-example weighting with the learning rate scaled
/// by `n'/n`. Weights avoid repeated rows in a batch and keep epochs the size of the data.
pub fn jtt_weights(n: usize, errors: &[usize], lambda_up: f32) -> Result<Vec<f32>> {
    if !(lambda_up.is_finite() && lambda_up > 0.0) {
        return Err(Error::arg(
            "lambda_up",
            format!("must be positive and finite, got {lambda_up}"),
        ));
    }
    let mut w = vec![1.0f32; n];
    for (position, &i) in errors.iter().enumerate() {
        *w.get_mut(i).ok_or(Error::IndexOutOfRange {
            op: "jtt_weights",
            position,
            index: i,
            size: n,
        })? = lambda_up;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use approx::assert_abs_diff_eq;

    use super::*;

    #[test]
    fn group_dro_weights_reproduce_the_group_weighted_loss() {
        let mut dro = GroupDroState::new(3, 0.5).unwrap();
        let losses = [1.0f32, 3.0, 0.5, 0.5, 2.0];
        let groups = [0u32, 0, 2, 2, 2];
        let w = dro.update(&losses, &groups).unwrap();
        let q = dro.q().to_vec();
        assert_abs_diff_eq!(q.iter().sum::<f64>(), 1.0, epsilon = 1e-12);
        // By hand: L0 = 2, L2 = 1; q ∝ (e^{1}, 1, e^{0.5}).
        let z = 1f64.exp() + 1.0 + 0.5f64.exp();
        assert_abs_diff_eq!(q[0], 1f64.exp() / z, epsilon = 1e-12);
        assert_abs_diff_eq!(q[1], 1.0 / z, epsilon = 1e-12);
        let weighted: f64 = w
            .iter()
            .zip(&losses)
            .map(|(&w, &l)| w as f64 * l as f64)
            .sum();
        assert_abs_diff_eq!(weighted, q[0] * 2.0 + q[2] * 1.0, epsilon = 1e-6);
        assert!(dro.update(&[1.0], &[3]).is_err());
        assert!(dro.update(&[f32::NAN], &[0]).is_err());
        assert!(GroupDroState::new(2, -1.0).is_err());
    }

    #[test]
    fn jtt_weights_mark_exactly_the_errors() {
        let w = jtt_weights(5, &[1, 3], 20.0).unwrap();
        assert_eq!(w, vec![1.0, 20.0, 1.0, 20.0, 1.0]);
        assert!(jtt_weights(2, &[2], 5.0).is_err());
        assert!(jtt_weights(2, &[], 0.0).is_err());
    }
}
