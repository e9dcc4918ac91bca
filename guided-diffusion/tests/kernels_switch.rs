//! The kernels switch, in its own test binary because it flips process-wide state:
//! with the fast kernels off, `kernels::conv2d` is candle's op (same results, same errors).
use candle_core::{Device, Tensor, Var};
use guided_diffusion::kernels;

#[test]
fn kernels_switch_off_uses_candle() {
    kernels::set_enabled(false);
    assert!(!kernels::enabled());
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 50.0, &dev).unwrap().reshape((1, 2, 5, 5)).unwrap()).unwrap();
    let w = Tensor::arange(0f32, 54.0, &dev).unwrap().affine(0.01, -0.2).unwrap().reshape((3, 2, 3, 3)).unwrap();
    let b = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
    let off = kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    let g_off = off.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let want = x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap();
    let d = (&off - &want).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "off: exactly candle's result");
    let big = Tensor::zeros((3, 2, 9, 9), candle_core::DType::F32, &dev).unwrap();
    assert!(kernels::conv2d(&x, &big, None, 1, 1).is_err());

    kernels::set_enabled(true);
    assert!(kernels::enabled());
    let on = kernels::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
    let g_on = on.sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let d = (&on - &want).unwrap().abs().unwrap().max_keepdim(3).unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    let d = (&g_on - &g_off).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
}
