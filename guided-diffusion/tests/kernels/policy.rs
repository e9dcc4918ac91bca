//! The kernel policy as a value: with the fast kernels off, `kernels::conv2d` is candle's op
//! (same results, same errors), the layers built on the kernels agree on and off, and two
//! networks with different policies (f32 and bf16) run at the same time on two threads, each
//! giving what it gives alone.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use guided_diffusion::kernels::{self, KernelPolicy, Precision};
use guided_diffusion::models::init::seeded_var_builder;
use guided_diffusion::models::layers::{Conv1x1, Exec};
use guided_diffusion::models::{ModelFlags, Net, NetConfig};
use rand::{rngs::StdRng, SeedableRng};

use crate::support::rand_tensor;
use crate::FAST;

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

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// Off the fast path, `kernels::upsample_nearest2x` is plain candle ops with an accumulating
/// gradient (not candle's `upsample_nearest2d`, whose backward overwrites).
#[test]
fn kernels_policy_upsample_off_is_correct() {
    let mut rng = StdRng::seed_from_u64(4);
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[2, 3, 4, 5])).unwrap();
    let up = kernels::upsample_nearest2x(&KernelPolicy::candle(), &x).unwrap();
    assert_eq!(max_diff(&up, &x.upsample_nearest2d(8, 10).unwrap()), 0.0);
    let g = (up.sum_all().unwrap() + (x.sum_all().unwrap() * 10.0).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let got: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(got.iter().all(|&v| v == 14.0));
}

#[test]
fn kernels_policy_off_is_candle() {
    let dev = Device::Cpu;
    let off_policy = KernelPolicy::candle();
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
    let off = kernels::conv2d(&off_policy, &x, &w, Some(&b), 1, 1, None).unwrap();
    let g_off = off.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let want =
        x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap();
    let d = (&off - &want).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "off: exactly candle's result");
    let big = Tensor::zeros((3, 2, 9, 9), DType::F32, &dev).unwrap();
    assert!(kernels::conv2d(&off_policy, &x, &big, None, 1, 1, None).is_err());

    let on = kernels::conv2d(&FAST, &x, &w, Some(&b), 1, 1, None).unwrap();
    let g_on = on.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    assert!(max_diff(&on, &want) < 1e-4);
    assert!(max_diff(&g_on, &g_off) < 1e-4);
}

/// `Conv1x1` on the fast path (a 1x1 convolution) against its matmul path.
#[test]
fn kernels_policy_conv1x1_on_matches_off() {
    let mut rng = StdRng::seed_from_u64(3);
    let vm = VarMap::new();
    let conv =
        Conv1x1::new(12, 7, 1, false, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
            .unwrap();
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[3, 12, 10])).unwrap();
    let r = rand_tensor(&mut rng, &[3, 7, 10]);
    let mut outs = Vec::new();
    for policy in [FAST, KernelPolicy::candle()] {
        let y = conv.forward(&Exec::new(policy), &x).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let vars = vm.all_vars();
        let mut grads: Vec<Tensor> = vars.iter().map(|v| g.get(v).unwrap().clone()).collect();
        grads.push(g.get(&x).unwrap().clone());
        outs.push((y, grads));
    }
    assert!(max_diff(&outs[0].0, &outs[1].0) < 1e-5);
    for (a, b) in outs[0].1.iter().zip(&outs[1].1) {
        assert!(max_diff(a, b) < 1e-4);
    }
}

/// A 32x32 UNet wide enough for Winograd (32 channels, 64 tiles per image) with attention at
/// 16x16, its weights plain tensors (not variables, so a frozen network keeps their forms),
/// random everywhere (also where the reference initialises with zeros).
fn unet() -> Net {
    let mut f = ModelFlags::script_defaults();
    f.image_size = Some(32);
    f.num_channels = Some(32);
    f.num_res_blocks = Some(1);
    f.channel_mult = Some("1,2".into());
    f.attention_resolutions = Some("16".into());
    f.num_head_channels = Some(32);
    let cfg = NetConfig::UNet(f.to_config().unwrap());
    let vm = VarMap::new();
    Net::new(&cfg, seeded_var_builder(&vm, 5, &Device::Cpu)).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    let data = vm.data().lock().unwrap();
    let tensors: HashMap<String, Tensor> = names
        .iter()
        .map(|n| {
            let v = data[n].as_tensor();
            let noise = (rand_tensor(&mut rng, v.dims()) * 0.05).unwrap();
            (n.clone(), (v + noise).unwrap().detach())
        })
        .collect();
    Net::from_tensors(&cfg, tensors, "the test UNet", &Device::Cpu).unwrap()
}

/// The forward output and the input gradient of `sum(net(x) * r)` (the input gradient goes
/// through the backward ops the forward made, which carry the policy).
fn run(net: &Net, x: &Tensor, r: &Tensor) -> (Vec<u32>, Vec<u32>) {
    let xv = Var::from_tensor(x).unwrap();
    let t = Tensor::new(&[10f32, 700.0], &Device::Cpu).unwrap();
    let y = net.forward(&xv, &t, None, None).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (bits(&y), bits(g.get(&xv).unwrap()))
}

/// An f32 network and a bf16 network (the same weights) on two threads at once, each three
/// times, give exactly what each gives alone: nothing of one policy leaks into the other, and
/// both keep their own derived weight forms.
#[test]
fn kernels_policy_concurrent_f32_and_bf16_networks() {
    let mut f32_net = unet();
    f32_net.freeze();
    let mut bf16_net = f32_net.clone().with_policy(FAST.with_precision(Precision::Bf16));
    bf16_net.freeze();
    let mut rng = StdRng::seed_from_u64(7);
    let x = rand_tensor(&mut rng, &[2, 3, 32, 32]);
    let r = rand_tensor(&mut rng, &[2, 3, 32, 32]);
    let alone_f32 = run(&f32_net, &x, &r);
    let alone_bf16 = run(&bf16_net, &x, &r);
    assert!(alone_f32.0 != alone_bf16.0, "bf16 must round (forward)");
    assert!(alone_f32.1 != alone_bf16.1, "bf16 must round (input gradient)");
    let (together_f32, together_bf16) = std::thread::scope(|s| {
        let a = s.spawn(|| (0..3).map(|_| run(&f32_net, &x, &r)).collect::<Vec<_>>());
        let b = s.spawn(|| (0..3).map(|_| run(&bf16_net, &x, &r)).collect::<Vec<_>>());
        (a.join().unwrap(), b.join().unwrap())
    });
    for (i, (a, b)) in together_f32.iter().zip(&together_bf16).enumerate() {
        assert!(*a == alone_f32, "f32 network, concurrent call {i}: differs from alone");
        assert!(*b == alone_bf16, "bf16 network, concurrent call {i}: differs from alone");
    }
    // And against the plain path: the f32 network is the f32 result of candle's ops.
    let candle = run(&f32_net.clone().with_policy(KernelPolicy::candle()), &x, &r);
    let to_t = |v: &[u32]| {
        let f: Vec<f32> = v.iter().map(|&b| f32::from_bits(b)).collect();
        Tensor::from_vec(f, (2, 3, 32, 32), &Device::Cpu).unwrap()
    };
    assert!(max_diff(&to_t(&alone_f32.0), &to_t(&candle.0)) < 1e-4);
}
