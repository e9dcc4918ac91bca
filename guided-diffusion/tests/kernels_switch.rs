//! The kernels switch, in its own test binary (and one test function) because it flips
//! process-wide state: with the fast kernels off, `kernels::conv2d` is candle's op (same
//! results, same errors), and the layers built on the kernels agree on and off.
mod support;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use guided_diffusion::kernels;
use guided_diffusion::models::layers::Conv1x1;
use rand::{rngs::StdRng, SeedableRng};
use support::rand_tensor;

#[test]
fn kernels_switch_on_off() {
    conv2d_off_is_candle();
    conv1x1_on_matches_off();
    upsample_off_is_correct();
}

/// Off the fast path, `kernels::upsample_nearest2x` is plain candle ops with an accumulating
/// gradient (not candle's `upsample_nearest2d`, whose backward overwrites).
fn upsample_off_is_correct() {
    kernels::set_enabled(false);
    let mut rng = StdRng::seed_from_u64(4);
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[2, 3, 4, 5])).unwrap();
    let up = kernels::upsample_nearest2x(&x).unwrap();
    assert_eq!(max_diff(&up, &x.upsample_nearest2d(8, 10).unwrap()), 0.0);
    let g = (up.sum_all().unwrap() + (x.sum_all().unwrap() * 10.0).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let got: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(got.iter().all(|&v| v == 14.0));
    kernels::set_enabled(true);
}

fn conv2d_off_is_candle() {
    kernels::set_enabled(false);
    assert!(!kernels::enabled());
    let dev = Device::Cpu;
    let x =
        Var::from_tensor(&Tensor::arange(0f32, 50.0, &dev).unwrap().reshape((1, 2, 5, 5)).unwrap())
            .unwrap();
    let w = Tensor::arange(0f32, 54.0, &dev)
        .unwrap()
        .affine(0.01, -0.2)
        .unwrap()
        .reshape((3, 2, 3, 3))
        .unwrap();
    let b = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
    let off = kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    let g_off = off.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let want =
        x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap();
    let d = (&off - &want).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "off: exactly candle's result");
    let big = Tensor::zeros((3, 2, 9, 9), DType::F32, &dev).unwrap();
    assert!(kernels::conv2d(&x, &big, None, 1, 1).is_err());

    kernels::set_enabled(true);
    assert!(kernels::enabled());
    let on = kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    let g_on = on.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let d = (&on - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    let d = (&g_on - &g_off).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
}

/// `Conv1x1` on the fast path (a 1x1 convolution) against its matmul path.
fn conv1x1_on_matches_off() {
    let mut rng = StdRng::seed_from_u64(3);
    let vm = VarMap::new();
    let conv =
        Conv1x1::new(12, 7, 1, false, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
            .unwrap();
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[3, 12, 10])).unwrap();
    let r = rand_tensor(&mut rng, &[3, 7, 10]);
    let mut outs = Vec::new();
    for on in [true, false] {
        kernels::set_enabled(on);
        let y = conv.forward(&x).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let vars = vm.all_vars();
        let mut grads: Vec<Tensor> = vars.iter().map(|v| g.get(v).unwrap().clone()).collect();
        grads.push(g.get(&x).unwrap().clone());
        outs.push((y, grads));
    }
    kernels::set_enabled(true);
    assert!(max_diff(&outs[0].0, &outs[1].0) < 1e-5);
    for (a, b) in outs[0].1.iter().zip(&outs[1].1) {
        assert!(max_diff(a, b) < 1e-4);
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
