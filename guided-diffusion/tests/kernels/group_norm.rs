//! Parity of the fused GroupNorm kernel (`kernels::group_norm`) with candle's composed ops
//! (`candle_nn::GroupNorm`, broadcast scale/shift, `silu`) and their autograd: output and the
//! gradients of the input, gamma, beta, scale and shift, with and without SiLU / scale-shift,
//! on 4-D and 3-D inputs; plus the model-facing `GroupNorm32` methods.
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use guided_diffusion::kernels;
use guided_diffusion::models::layers::{Exec, GroupNorm32};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::FAST;

fn rand_tensor(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, rtol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= rtol * scale + 1e-6, "{what}: max abs diff {diff:e} vs scale {scale:e}");
}

/// `dims`: the input shape; `ss`: with AdaGN scale/shift; `silu`: with SiLU.
fn check(dims: &[usize], groups: usize, ss: bool, silu: bool, seed: u64) {
    let name = format!("{dims:?} g{groups} ss={ss} silu={silu}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (n, c) = (dims[0], dims[1]);
    // An offset mean and a spread scale, as activations have.
    let x = Var::from_tensor(&(rand_tensor(&mut rng, dims, -2.0, 2.0) + 0.7).unwrap()).unwrap();
    let gamma = Var::from_tensor(&rand_tensor(&mut rng, &[c], 0.5, 1.5)).unwrap();
    let beta = Var::from_tensor(&rand_tensor(&mut rng, &[c], -0.5, 0.5)).unwrap();
    let sst = Var::from_tensor(&rand_tensor(&mut rng, &[n, 2 * c], -0.5, 0.5)).unwrap();

    let mut bshape = vec![1; dims.len()];
    bshape[0] = n;
    bshape[1] = c;
    let reference = {
        let gn = candle_nn::GroupNorm::new(
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            c,
            groups,
            1e-5,
        )
        .unwrap();
        let mut h = gn.forward(&x).unwrap();
        if ss {
            let scale = sst.narrow(1, 0, c).unwrap().reshape(bshape.as_slice()).unwrap();
            let shift = sst.narrow(1, c, c).unwrap().reshape(bshape.as_slice()).unwrap();
            h = h.broadcast_mul(&(scale + 1.0).unwrap()).unwrap().broadcast_add(&shift).unwrap();
        }
        if silu {
            h = h.silu().unwrap();
        }
        h
    };
    let fast = kernels::group_norm(
        &FAST,
        &x,
        &gamma,
        &beta,
        groups,
        1e-5,
        ss.then_some(sst.as_tensor()),
        silu,
    )
    .unwrap()
    .expect("fast path applies");
    assert_close(&format!("{name}: forward"), &fast, &reference, 2e-5);

    let r = rand_tensor(&mut rng, dims, -1.0, 1.0);
    let gr = (reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gf = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut vars = vec![("input", &x), ("gamma", &gamma), ("beta", &beta)];
    if ss {
        vars.push(("scale/shift", &sst));
    }
    for (what, v) in vars {
        assert_close(&format!("{name}: {what} grad"), gf.get(v).unwrap(), gr.get(v).unwrap(), 1e-4);
    }
}

#[test]
fn kernels_group_norm_matches_candle() {
    let mut seed = 0;
    for dims in
        [&[2usize, 64, 8, 8][..], &[1, 32, 5, 7], &[3, 96, 4, 4], &[2, 64, 64], &[1, 128, 16, 16]]
    {
        for (ss, silu) in [(false, false), (false, true), (true, false), (true, true)] {
            check(dims, 32, ss, silu, seed);
            seed += 1;
        }
    }
}

#[test]
fn kernels_group_norm_other_group_counts() {
    check(&[2, 12, 6, 6], 4, true, true, 40);
    check(&[2, 12, 6, 6], 1, false, true, 41);
    check(&[1, 12, 3, 3], 12, false, false, 42);
}

#[test]
fn kernels_group_norm_not_applicable_is_none() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_tensor(&mut rng, &[2, 30, 4, 4], -1.0, 1.0);
    let g = Tensor::ones(30, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(30, DType::F32, &Device::Cpu).unwrap();
    // 30 channels in 32 groups; f64 input; 2-D input.
    assert!(kernels::group_norm(&FAST, &x, &g, &b, 32, 1e-5, None, true).unwrap().is_none());
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(kernels::group_norm(&FAST, &x64, &g, &b, 2, 1e-5, None, true).unwrap().is_none());
    assert!(kernels::group_norm(&FAST, &x.flatten_from(1).unwrap(), &g, &b, 2, 1e-5, None, true)
        .unwrap()
        .is_none());
}

/// The model-facing methods agree with the plain candle composition they replace.
#[test]
fn kernels_group_norm32_methods() {
    let mut rng = StdRng::seed_from_u64(6);
    let vm = VarMap::new();
    let gn = GroupNorm32::new(64, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let x = rand_tensor(&mut rng, &[2, 64, 6, 6], -1.0, 3.0);
    let scale = rand_tensor(&mut rng, &[2, 64, 1, 1], -0.5, 0.5);
    let shift = rand_tensor(&mut rng, &[2, 64, 1, 1], -0.5, 0.5);
    let plain = candle_nn::GroupNorm::new(
        Tensor::ones(64, DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
        64,
        32,
        1e-5,
    )
    .unwrap()
    .forward(&x)
    .unwrap();
    let ex = Exec::new(FAST);
    assert_close("forward", &gn.forward(&ex, &x).unwrap(), &plain, 2e-5);
    assert_close("forward_silu", &gn.forward_silu(&ex, &x).unwrap(), &plain.silu().unwrap(), 2e-5);
    let ada = plain.broadcast_mul(&(&scale + 1.0).unwrap()).unwrap().broadcast_add(&shift).unwrap();
    assert_close(
        "forward_scale_shift",
        &gn.forward_scale_shift(&ex, &x, &scale, &shift).unwrap(),
        &ada,
        2e-5,
    );
    assert_close(
        "forward_scale_shift_silu",
        &gn.forward_scale_shift_silu(&ex, &x, &scale, &shift).unwrap(),
        &ada.silu().unwrap(),
        2e-5,
    );
}
