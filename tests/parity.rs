//! Parity with PyTorch: literals printed by PyTorch 2.15 (CPU, float32), with the snippet that
//! printed each above it. Shared helper used by the snippets:
//!
//! ```python
//! import math, numpy as np, torch, torch.nn.functional as F
//! def f(t):  # shortest round-trip float32 text of every element, row-major
//!     return "[" + ", ".join(str(np.float32(v)) for v in t.detach().flatten().tolist()) + "]"
//! ```
//!
//! Tolerances: the optimizers run PyTorch's exact sequence of f32 operations, so each
//! parameter must be within 4 ulps of PyTorch's (the rest of the difference being the
//! rounding of a scalar or `pow` in f64). The cross-entropy uses different (vectorized) exp
//! and sum code than PyTorch's, so there `|ours - torch| ≤ 1e-6·|torch| + 1e-7` (about 8 ulps).

use memaware::nn::{Activation, Init, Linear, Mlp};
use memaware::optim::{Adam, Optimizer, Sgd};
use memaware::{Device, GradStore, Indices, Reduction, Rng, Tensor};

const REL: f32 = 1e-6;
const ABS: f32 = 1e-7;

fn tensor(values: &[f32], shape: impl Into<memaware::Shape>) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).expect("literal matches its shape")
}

/// Largest gap between parameters and PyTorch's, in units in the last place.
const OPTIMIZER_ULPS: u32 = 4;

fn assert_matches_torch(what: &str, ours: &[f32], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len(), "{what}: lengths");
    for (i, (&o, &t)) in ours.iter().zip(torch).enumerate() {
        let tol = REL * t.abs() + ABS;
        assert!(
            (o - t).abs() <= tol,
            "{what}: element {i}: ours {o:e} vs PyTorch {t:e} (difference {:e}, allowed {tol:e})",
            (o - t).abs()
        );
    }
}

/// Same sign and at most `OPTIMIZER_ULPS` representable f32 values apart.
fn assert_within_ulps(what: &str, ours: &[f32], torch: &[f32]) {
    assert_eq!(ours.len(), torch.len(), "{what}: lengths");
    for (i, (&o, &t)) in ours.iter().zip(torch).enumerate() {
        let same_sign = o.is_sign_negative() == t.is_sign_negative();
        let ulps = (o.to_bits() as i64 - t.to_bits() as i64).unsigned_abs();
        assert!(
            same_sign && ulps <= OPTIMIZER_ULPS as u64,
            "{what}: element {i}: ours {o:e} vs PyTorch {t:e} ({ulps} ulps apart, allowed \
             {OPTIMIZER_ULPS})"
        );
    }
}

// ---------------------------------------------------------------------------------- init

// torch.manual_seed(0)
// lin = torch.nn.Linear(1800, 2)
// fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(lin.weight)
// gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
// print(repr(gain * math.sqrt(3.0 / fan_in)), repr(1 / math.sqrt(fan_in)))
//   # kaiming_uniform_(a=√5) weight bound, bias bound
// print(lin.weight.abs().max().item(), lin.bias.abs().max().item())
// -> 0.023570226039551584 0.023570226039551584
// -> 0.02356646955013275 0.022664375603199005
const TORCH_LINEAR_1800_WEIGHT_BOUND: f64 = 0.023570226039551584;
const TORCH_LINEAR_1800_BIAS_BOUND: f64 = 0.023570226039551584;
const TORCH_LINEAR_1800_MAX_ABS_WEIGHT: f64 = 0.02356646955013275;

// w = torch.empty(2, 1800); torch.nn.init.xavier_uniform_(w)
// print(repr(math.sqrt(6.0 / (1800 + 2))), w.abs().max().item())
// -> 0.057702978608461526 0.057685837149620056
// w = torch.empty(390, 392); torch.nn.init.xavier_uniform_(w)
// print(repr(math.sqrt(6.0 / (392 + 390))), w.abs().max().item())
// -> 0.08759357437106756 0.08759238570928574
const TORCH_XAVIER_1800_2_BOUND: f64 = 0.057702978608461526;
const TORCH_XAVIER_392_390_BOUND: f64 = 0.08759357437106756;

/// All `|v| ≤ bound`, and the largest `|v|` within `slack·bound` of it: of n independent
/// U(-b, b) draws, the chance that all fall inside (1 - slack)·b is (1 - slack)^n.
fn assert_uniform_bound(what: &str, values: &[f32], bound: f64, slack: f64) {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    // f32 rounding of the bound itself may put a draw one ulp past the f64 bound.
    let bound_f32 = bound as f32 as f64 * (1.0 + f32::EPSILON as f64);
    assert!(
        max <= bound_f32,
        "{what}: max |w| {max} exceeds the bound {bound}"
    );
    assert!(
        max >= bound * (1.0 - slack),
        "{what}: max |w| {max} is implausibly far below the bound {bound}"
    );
}

#[test]
fn pytorch_default_init_bounds() {
    let mut rng = Rng::new(0);
    let lin = Linear::new(1800, 2, true, Init::PyTorchDefault, &mut rng, &Device::Cpu).unwrap();
    let w = lin.weight.to_vec().unwrap();
    let b = lin.bias.as_ref().unwrap().to_vec().unwrap();
    // 3600 draws: (1 - 0.005)^3600 ≈ 1.5e-8.
    assert_uniform_bound(
        "Linear(1800, 2).weight",
        &w,
        TORCH_LINEAR_1800_WEIGHT_BOUND,
        0.005,
    );
    // Our largest draw and PyTorch's (both within 0.5% of the bound) agree to 0.5%.
    let ours_max = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    assert!(
        (ours_max - TORCH_LINEAR_1800_MAX_ABS_WEIGHT).abs()
            <= 0.005 * TORCH_LINEAR_1800_WEIGHT_BOUND,
        "max |w|: ours {ours_max}, PyTorch's {TORCH_LINEAR_1800_MAX_ABS_WEIGHT}"
    );
    // Two bias draws: only the bound can be checked.
    assert!(b
        .iter()
        .all(|v| (v.abs() as f64) <= TORCH_LINEAR_1800_BIAS_BOUND));
    // Both signs and a spread like U(-b, b): the mean of 3600 draws is within 4σ of 0.
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let sigma = TORCH_LINEAR_1800_WEIGHT_BOUND / 3f64.sqrt() / (w.len() as f64).sqrt();
    assert!(mean.abs() < 4.0 * sigma, "mean {mean}");

    // Bias bounds at a small fan-in, where many draws let the bias bound be approached.
    let mut rng = Rng::new(1);
    let mlp = Mlp::new(
        &[4, 2000, 1],
        Activation::Relu,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &Device::Cpu,
    )
    .unwrap();
    let b0 = mlp.layers[0].bias.as_ref().unwrap().to_vec().unwrap();
    assert_uniform_bound("Linear(4, 2000).bias", &b0, 0.5, 0.005);
    let w1 = mlp.layers[1].weight.to_vec().unwrap();
    assert_uniform_bound("Linear(2000, 1).weight", &w1, 1.0 / 2000f64.sqrt(), 0.005);
}

#[test]
fn xavier_uniform_bounds() {
    let mut rng = Rng::new(2);
    let lin = Linear::new(1800, 2, true, Init::XavierUniform, &mut rng, &Device::Cpu).unwrap();
    assert_uniform_bound(
        "xavier 1800→2",
        &lin.weight.to_vec().unwrap(),
        TORCH_XAVIER_1800_2_BOUND,
        0.005,
    );
    // Xavier leaves the bias at zero (PyTorch users zero it explicitly).
    assert!(lin
        .bias
        .as_ref()
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    let lin = Linear::new(392, 390, false, Init::XavierUniform, &mut rng, &Device::Cpu).unwrap();
    assert_uniform_bound(
        "xavier 392→390",
        &lin.weight.to_vec().unwrap(),
        TORCH_XAVIER_392_390_BOUND,
        0.001,
    );
}

// ---------------------------------------------------------------------------------- SGD

const P0: [f32; 6] = [0.5, -1.25, 2.0, 0.75, -0.3, 1.1];
const B0: [f32; 3] = [0.1, -0.2, 0.3];

/// Gradients of `Σ p ⊙ g` are exactly `g`: a way to hand fixed gradients to an optimizer.
fn grads_equal_to(params_and_grads: &[(&Tensor, &[f32])]) -> GradStore {
    let mut loss: Option<Tensor> = None;
    for (p, g) in params_and_grads {
        let g = tensor(g, p.shape().clone());
        let term = p.mul(&g).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            Some(l) => l.add(&term).unwrap(),
            None => term,
        });
    }
    let grads = loss.expect("at least one parameter").backward().unwrap();
    for (p, g) in params_and_grads {
        assert_eq!(
            grads.require(p).unwrap().to_vec().unwrap(),
            g.to_vec(),
            "gradient literal"
        );
    }
    grads
}

const SGD_GRADS: [[f32; 6]; 2] = [
    [0.2, -0.4, 1.5, -0.7, 0.05, 0.3],
    [-0.1, 0.6, 0.25, 0.9, -0.35, -1.2],
];

// p0 = [[0.5, -1.25, 2.0], [0.75, -0.3, 1.1]]
// gs = [[[0.2, -0.4, 1.5], [-0.7, 0.05, 0.3]], [[-0.1, 0.6, 0.25], [0.9, -0.35, -1.2]]]
// for nest in [False, True]:
//     p = torch.tensor(p0, requires_grad=True)
//     opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0, weight_decay=1e-2,
//                           nesterov=nest)
//     for g in gs:
//         p.grad = torch.tensor(g); opt.step(); print(f(p))
const TORCH_SGD: [[[f32; 6]; 2]; 2] = [
    [
        [0.4795, -1.20875, 1.848, 0.81925, -0.30470002, 1.0689],
        [
            0.4705705, -1.2304163, 1.684352, 0.79075575, -0.2736253, 1.1598411,
        ],
    ],
    [
        [0.46105, -1.171625, 1.7112, 0.881575, -0.30893, 1.04091],
        [
            0.462569,
            -1.2499864,
            1.5373287,
            0.7649925,
            -0.24565005,
            1.2417413,
        ],
    ],
];

#[test]
fn sgd_momentum_step_matches_pytorch() {
    for (nesterov, expected) in [false, true].into_iter().zip(TORCH_SGD) {
        let p = tensor(&P0, (2, 3)).variable();
        let mut opt = Sgd::with_options(vec![p.clone()], 0.1, 0.9, 0.0, 1e-2, nesterov).unwrap();
        // The first step (buffer = d) is the one the issue names; the second checks the
        // blend b = μ·b + d.
        for (step, (g, want)) in SGD_GRADS.iter().zip(expected).enumerate() {
            let grads = grads_equal_to(&[(&p, g)]);
            opt.step(&grads).unwrap();
            assert_within_ulps(
                &format!("SGD nesterov={nesterov} after step {}", step + 1),
                &p.to_vec().unwrap(),
                &want,
            );
        }
    }
}

// ---------------------------------------------------------------------------------- Adam

const ADAM_GRADS: [([f32; 6], [f32; 3]); 3] = [
    ([0.2, -0.4, 1.5, -0.7, 0.05, 0.3], [0.5, -0.25, 0.01]),
    ([-0.1, 0.6, 0.25, 0.9, -0.35, -1.2], [-0.3, 0.4, 0.02]),
    ([0.3, 0.1, -0.8, 0.2, 0.7, -0.05], [0.1, -0.6, -0.03]),
];

// b0 = [0.1, -0.2, 0.3]
// ag = [([[0.2, -0.4, 1.5], [-0.7, 0.05, 0.3]], [0.5, -0.25, 0.01]),
//       ([[-0.1, 0.6, 0.25], [0.9, -0.35, -1.2]], [-0.3, 0.4, 0.02]),
//       ([[0.3, 0.1, -0.8], [0.2, 0.7, -0.05]], [0.1, -0.6, -0.03])]
// for cls in [torch.optim.Adam, torch.optim.AdamW]:
//     p = torch.tensor(p0, requires_grad=True); b = torch.tensor(b0, requires_grad=True)
//     opt = cls([p, b], lr=0.05, weight_decay=0.1)  # betas (0.9, 0.999), eps 1e-8
//     for gp, gb in ag:
//         p.grad = torch.tensor(gp); b.grad = torch.tensor(gb); opt.step()
//         print(f(p), f(b))
#[allow(clippy::type_complexity)]
const TORCH_ADAM_L2: [([f32; 6], [f32; 3]); 3] = [
    (
        [0.45000002, -1.2, 1.95, 0.8, -0.35, 1.0500001],
        [0.050000012, -0.15, 0.25000003],
    ),
    (
        [
            0.42527848, -1.2003925, 1.9081638, 0.78663373, -0.3145804, 1.0731038,
        ],
        [0.039639376, -0.16123736, 0.19993326],
    ),
    (
        [
            0.38825166, -1.1997956, 1.8880823, 0.76913553, -0.3285814, 1.089377,
        ],
        [0.0261975, -0.14110859, 0.16699639],
    ),
];
#[allow(clippy::type_complexity)]
const TORCH_ADAMW: [([f32; 6], [f32; 3]); 3] = [
    (
        [0.4475, -1.19375, 1.94, 0.79625005, -0.34849998, 1.0445001],
        [0.049500007, -0.149, 0.24850005],
    ),
    (
        [
            0.43194565,
            -1.2001665,
            1.8911338,
            0.7834564,
            -0.31465992,
            1.0672529,
        ],
        [0.039677605, -0.16206066, 0.19899847],
    ),
    (
        [
            0.3980199,
            -1.2080387,
            1.8697721,
            0.76730746,
            -0.33041874,
            1.0848145,
        ],
        [0.026780961, -0.14272718, 0.20133342],
    ),
];

fn three_adam_steps(decoupled: bool, expected: &[([f32; 6], [f32; 3]); 3]) {
    let name = if decoupled { "AdamW" } else { "Adam (L2)" };
    let p = tensor(&P0, (2, 3)).variable();
    let b = tensor(&B0, 3).variable();
    let params = vec![p.clone(), b.clone()];
    let mut opt = if decoupled {
        Adam::adamw(params, 0.05, 0.1).unwrap()
    } else {
        Adam::new(params, 0.05, 0.1).unwrap()
    };
    for (step, ((gp, gb), (want_p, want_b))) in ADAM_GRADS.iter().zip(expected).enumerate() {
        let grads = grads_equal_to(&[(&p, gp), (&b, gb)]);
        opt.step(&grads).unwrap();
        let at = format!("{name} after step {}", step + 1);
        assert_within_ulps(&format!("{at}: weight"), &p.to_vec().unwrap(), want_p);
        assert_within_ulps(&format!("{at}: bias"), &b.to_vec().unwrap(), want_b);
    }
}

#[test]
fn adam_l2_three_steps_match_pytorch() {
    three_adam_steps(false, &TORCH_ADAM_L2);
}

#[test]
fn adamw_three_steps_match_pytorch() {
    three_adam_steps(true, &TORCH_ADAMW);
}

// ------------------------------------------------------------ a parameter with no gradient

// An XRM twin with no row in a batch is in the graph but not in the loss: PyTorch gives it a
// zero gradient and its optimizer step still applies weight decay, momentum and Adam's step
// count. `q` below has no gradient at steps 1 and 3.
// p0 as above; q0 = [0.1, -0.2, 0.3]
// gp = ag's weight gradients above; gq = [None, [-0.3, 0.4, 0.02], None]
// for name, mk in [("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2)),
//                  ("adam", lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1)),
//                  ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1))]:
//     p = torch.tensor(p0, requires_grad=True); q = torch.tensor(q0, requires_grad=True)
//     opt = mk([p, q])
//     for a, b in zip(gp, gq):
//         opt.zero_grad()
//         loss = (p * torch.tensor(a)).sum() + (q * torch.tensor(b or [0.0] * 3)).sum()
//         loss.backward(); opt.step(); print(f(q))
const ZERO_GRAD_Q: [Option<[f32; 3]>; 3] = [None, Some([-0.3, 0.4, 0.02]), None];
const TORCH_ZERO_GRAD_SGD: [[f32; 3]; 3] = [
    [0.0999, -0.1998, 0.29970002],
    [0.12971011, -0.2394202, 0.29713032],
    [0.15640949, -0.27483895, 0.29452047],
];
const TORCH_ZERO_GRAD_ADAM: [[f32; 3]; 3] = [
    [0.05000006, -0.15000004, 0.25000003],
    [0.08605109, -0.18541962, 0.20045967],
    [0.11297555, -0.2112322, 0.15344766],
];
const TORCH_ZERO_GRAD_ADAMW: [[f32; 3]; 3] = [
    [0.0995, -0.199, 0.2985],
    [0.13620934, -0.23521185, 0.25980067],
    [0.1642893, -0.2627968, 0.22974071],
];

#[test]
fn a_parameter_without_a_gradient_takes_a_zero_gradient_step_as_in_pytorch() {
    type Build = fn(Vec<Tensor>) -> Box<dyn Optimizer>;
    let cases: [(&str, Build, [[f32; 3]; 3]); 3] = [
        (
            "SGD",
            |ps| Box::new(Sgd::with_options(ps, 0.1, 0.9, 0.0, 1e-2, false).unwrap()),
            TORCH_ZERO_GRAD_SGD,
        ),
        (
            "Adam (L2)",
            |ps| Box::new(Adam::new(ps, 0.05, 0.1).unwrap()),
            TORCH_ZERO_GRAD_ADAM,
        ),
        (
            "AdamW",
            |ps| Box::new(Adam::adamw(ps, 0.05, 0.1).unwrap()),
            TORCH_ZERO_GRAD_ADAMW,
        ),
    ];
    for (name, build, expected) in cases {
        let p = tensor(&P0, (2, 3)).variable();
        let q = tensor(&B0, 3).variable();
        let mut opt = build(vec![p.clone(), q.clone()]);
        for (step, ((gp, gq), want)) in ADAM_GRADS
            .iter()
            .map(|(gp, _)| gp)
            .zip(ZERO_GRAD_Q)
            .zip(expected)
            .enumerate()
        {
            let grads = match &gq {
                Some(gq) => grads_equal_to(&[(&p, gp), (&q, gq)]),
                None => grads_equal_to(&[(&p, gp)]),
            };
            assert_eq!(grads.get(&q).is_some(), gq.is_some());
            opt.step_all(&grads).unwrap();
            assert_within_ulps(
                &format!(
                    "{name}: the parameter without a gradient after step {}",
                    step + 1
                ),
                &q.to_vec().unwrap(),
                &want,
            );
        }
    }
    // `step` keeps skipping a parameter without a gradient (PyTorch's `.grad is None`).
    let p = tensor(&P0, (2, 3)).variable();
    let q = tensor(&B0, 3).variable();
    let mut opt =
        Sgd::with_options(vec![p.clone(), q.clone()], 0.1, 0.9, 0.0, 1e-2, false).unwrap();
    opt.step(&grads_equal_to(&[(&p, &ADAM_GRADS[0].0)]))
        .unwrap();
    assert_eq!(q.to_vec().unwrap(), B0.to_vec());
}

// ---------------------------------------------------------------------------------- xent

const XENT_Z: [f32; 12] = [
    1.5, -0.3, 0.2, 0.1, 2.2, -1.0, -0.5, 0.4, 0.9, 3.0, -2.0, 0.5,
];
const XENT_S: [f32; 12] = [
    0.2, -0.1, 0.0, -1.3, 0.4, 0.7, 0.05, -0.6, 1.1, -0.9, 0.3, 0.2,
];
const XENT_Y: [u32; 4] = [0, 2, 1, 0];
const XENT_W: [f32; 4] = [0.5, 2.0, 1.0, 1.5];

// z = torch.tensor([[1.5, -0.3, 0.2], [0.1, 2.2, -1.0], [-0.5, 0.4, 0.9], [3.0, -2.0, 0.5]],
//                  requires_grad=True)
// s = torch.tensor([[0.2, -0.1, 0.0], [-1.3, 0.4, 0.7], [0.05, -0.6, 1.1], [-0.9, 0.3, 0.2]])
// y = torch.tensor([0, 2, 1, 0]); wt = torch.tensor([0.5, 2.0, 1.0, 1.5])
// for fn in [lambda: F.cross_entropy(z + s, y),
//            lambda: F.cross_entropy(z + s, y, reduction="sum"),
//            lambda: F.cross_entropy(z + s, y, reduction="none"),
//            lambda: (F.cross_entropy(z + s, y, reduction="none") * wt).sum() / wt.sum()]:
//     z.grad = None; l = fn(); l.sum().backward(); print(f(l), f(z.grad))
const TORCH_XENT_MEAN: ([f32; 1], [f32; 12]) = (
    [1.4723697],
    [
        -0.064207405,
        0.022751495,
        0.041455932,
        0.0051909443,
        0.23204139,
        -0.23723234,
        0.01802143,
        -0.22686002,
        0.2088386,
        -0.052989498,
        0.004407278,
        0.0485822,
    ],
);
const TORCH_XENT_SUM: ([f32; 1], [f32; 12]) = (
    [5.8894787],
    [
        -0.25682962,
        0.09100598,
        0.16582373,
        0.020763777,
        0.92816556,
        -0.94892937,
        0.07208572,
        -0.90744007,
        0.8353544,
        -0.21195799,
        0.017629111,
        0.1943288,
    ],
);
const TORCH_XENT_NONE: ([f32; 4], [f32; 12]) = (
    [0.29683, 2.9745452, 2.3798993, 0.23820387],
    [
        -0.25682962,
        0.09100598,
        0.16582373,
        0.020763777,
        0.92816556,
        -0.94892937,
        0.07208572,
        -0.90744007,
        0.8353544,
        -0.21195799,
        0.017629111,
        0.1943288,
    ],
);
const TORCH_XENT_WEIGHTED_MEAN: ([f32; 1], [f32; 12]) = (
    [1.766942],
    [
        -0.025682962,
        0.009100598,
        0.016582374,
        0.008305511,
        0.37126622,
        -0.37957174,
        0.0144171445,
        -0.18148802,
        0.16707088,
        -0.0635874,
        0.0052887336,
        0.058298644,
    ],
);

#[test]
fn shifted_cross_entropy_matches_pytorch() {
    let s = tensor(&XENT_S, (4, 3));
    let w = tensor(&XENT_W, 4);
    let y = Indices::new(XENT_Y.to_vec(), &Device::Cpu).unwrap();
    // (reduction, per-row weights, PyTorch's loss, PyTorch's gradient)
    type Case<'a> = (Reduction, Option<&'a Tensor>, &'a [f32], &'a [f32]);
    let cases: [Case; 4] = [
        (
            Reduction::Mean,
            None,
            &TORCH_XENT_MEAN.0,
            &TORCH_XENT_MEAN.1,
        ),
        (Reduction::Sum, None, &TORCH_XENT_SUM.0, &TORCH_XENT_SUM.1),
        (
            Reduction::None,
            None,
            &TORCH_XENT_NONE.0,
            &TORCH_XENT_NONE.1,
        ),
        (
            Reduction::WeightedMean,
            Some(&w),
            &TORCH_XENT_WEIGHTED_MEAN.0,
            &TORCH_XENT_WEIGHTED_MEAN.1,
        ),
    ];
    for (r, weights, want_loss, want_grad) in cases {
        let z = tensor(&XENT_Z, (4, 3)).variable();
        let loss = z.shifted_cross_entropy(&y, Some(&s), weights, r).unwrap();
        assert_matches_torch(&format!("{r:?} loss"), &loss.to_vec().unwrap(), want_loss);
        // l.sum().backward(), as the snippet does for the per-row losses.
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g = grads.require(&z).unwrap().to_vec().unwrap();
        assert_matches_torch(&format!("{r:?} gradient"), &g, want_grad);
    }
}
