use memaware::autograd::check::check_gradients;
use memaware::nn::{Activation, Init, Mlp, Module};
use memaware::optim::{Adam, Optimizer};
use memaware::*;

#[test]
fn smoke_grad_and_train() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(0);
    let a = Tensor::randn(&mut rng, (5, 4), 1.0, &dev).unwrap();
    let b = Tensor::randn(&mut rng, (4, 3), 1.0, &dev).unwrap();
    let y = Indices::new(vec![0, 1, 2, 1, 0], &dev).unwrap();
    let s = Tensor::randn(&mut rng, (5, 3), 1.0, &dev).unwrap();
    let r = check_gradients(
        |x| {
            let z = x[0].matmul(&x[1])?.tanh()?;
            z.shifted_cross_entropy(&y, Some(&s), None, Reduction::Mean)
        },
        &[a.clone(), b.clone()],
        1e-3,
        1e-3,
        1e-2,
    )
    .unwrap();
    println!("{r:?}");
    assert!(r.passed());
    let r = check_gradients(
        |x| x[0].matmul(&x[1])?.log_softmax()?.gather(&y)?.mean_all(),
        &[a, b],
        1e-3,
        1e-3,
        1e-2,
    )
    .unwrap();
    assert!(r.passed(), "{r:?}");
    let mlp = Mlp::new(
        &[4, 16, 3],
        Activation::Relu,
        true,
        Init::PyTorchDefault,
        &mut rng,
        &dev,
    )
    .unwrap();
    let x = Tensor::randn(&mut rng, (5, 4), 1.0, &dev).unwrap();
    let mut opt = Adam::new(mlp.parameters(), 1e-2, 0.0).unwrap();
    let mut last = 0.0;
    for _ in 0..200 {
        let loss = mlp
            .forward(&x)
            .unwrap()
            .shifted_cross_entropy(&y, None, None, Reduction::Mean)
            .unwrap();
        last = loss.to_scalar().unwrap();
        let g = loss.backward().unwrap();
        opt.step(&g).unwrap();
    }
    assert!(last < 0.05, "{last}");
}
