//! bf16 inference scopes (`kernels::bf16`): inside one, a convolution's forward equals the f32
//! convolution of its inputs and weights rounded to bf16 (up to the order of the f32 sums),
//! through AMX where the CPU has it and through the rounding + f32 product everywhere; so does
//! the input gradient of a stride-1 convolution (classifier guidance), while other input
//! gradients stay f32; attention's forward products are bf16 and its backward f32; outside the
//! scope nothing changes. One test function, because the scope
//! and the AMX switch are process-wide.
mod support;

use candle_core::{Device, Tensor, Var};
use guided_diffusion::kernels::{self, amx, bf16};
use rand::{rngs::StdRng, SeedableRng};
use support::rand_tensor;

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f32> = vals(t).into_iter().map(bf16::round).collect();
    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
}

/// (y, dx) of `sum(conv(x, w, b) * r)`.
fn run(
    x: &Var,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> (Vec<f32>, Vec<f32>) {
    let y = kernels::conv2d(x, w, Some(b), stride, pad).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&y), vals(g.get(x).unwrap()))
}

/// The weight gradient of `sum(conv(x, w, b) * r)` for a variable weight.
fn run_dw(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, stride: usize, pad: usize) -> Vec<f32> {
    let wv = Var::from_tensor(w).unwrap();
    let y = kernels::conv2d(x, &wv, Some(b), stride, pad).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    vals(g.get(&wv).unwrap())
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn kernels_bf16_scope_rounds_convolution_inputs_and_stride1_input_gradients() {
    kernels::set_enabled(true);
    kernels::set_winograd(true);
    let mut rng = StdRng::seed_from_u64(11);
    // (n, c, hw, co, k, stride, pad): a Winograd-sized 3x3 (f32 path), odd channel counts
    // (rows and depth not multiples of 16/32), the output conv's 3 channels, stride 2, 1x1,
    // a one-tile 8x8 layer whose product is split over threads by rows, batch 3; with AMX the
    // rows of >= 16 pixels (cases 0, 2, 7, 8) take the shifted-window form, incl. a partial
    // last pixel block (21 and 17 wide) and an odd channel count; no input channels at all;
    // 128 and 144 output channels (cases 5, 10), whose weight gradients are bf16 on AMX.
    let cases = [
        (1, 32, 32, 48, 3, 1, 1),
        (2, 7, 9, 35, 3, 1, 1),
        (1, 64, 16, 3, 3, 1, 1),
        (1, 6, 11, 7, 3, 2, 1),
        (2, 40, 8, 24, 1, 1, 0),
        (1, 96, 8, 128, 3, 1, 1),
        (3, 16, 13, 33, 3, 1, 0),
        (1, 35, 21, 40, 3, 1, 1),
        (2, 12, 19, 20, 3, 1, 0),
        (1, 0, 16, 8, 3, 1, 1),
        (2, 20, 10, 144, 3, 2, 1),
    ];
    let amx_modes: &[bool] = if amx::hardware() { &[true, false] } else { &[false] };
    println!("AMX on this CPU: {}", amx::hardware());
    for (i, &(n, c, hw, co, k, stride, pad)) in cases.iter().enumerate() {
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, hw, hw])).unwrap();
        let w = rand_tensor(&mut rng, &[co, c, k, k]);
        let b = rand_tensor(&mut rng, &[co]);
        let ho = (hw + 2 * pad - k) / stride + 1;
        let r = rand_tensor(&mut rng, &[n, co, ho, ho]);
        let plain = run(&x, &w, &b, &r, stride, pad);
        // The definition: f32 (direct, not Winograd) of the rounded input and weight.
        kernels::set_winograd(false);
        let xr = Var::from_tensor(&rounded(x.as_tensor())).unwrap();
        let want = run(&xr, &rounded(&w), &b, &r, stride, pad).0;
        // The output gradient of sum(y * r) is r: the bf16 input gradient rounds it and w.
        let want_dx = run(&xr, &rounded(&w), &b, &rounded(&r), stride, pad).1;
        let bf16_dx = stride == 1 && k > 1;
        let plain_dw = run_dw(x.as_tensor(), &w, &b, &r, stride, pad);
        let want_dw = run_dw(&rounded(x.as_tensor()), &w, &b, &rounded(&r), stride, pad);
        kernels::set_winograd(true);
        for &use_amx in amx_modes {
            kernels::set_amx(use_amx);
            let got = {
                let _scope = kernels::bf16();
                assert!(bf16::active());
                run(&x, &w, &b, &r, stride, pad)
            };
            let e = rel_err(&got.0, &want);
            println!(
                "case {i} amx {use_amx}: bf16 vs rounded f32 {e:.2e}, vs f32 {:.2e}",
                rel_err(&got.0, &plain.0)
            );
            assert!(
                e < 2e-6 * ((c * k * k) as f32).sqrt().max(1.0) + 1e-6,
                "case {i} amx {use_amx}: {e}"
            );
            assert!(rel_err(&got.0, &plain.0) < 2e-2, "case {i}: bf16 too far from f32");
            // (No input channels: the bias alone, in either precision.)
            assert!(c == 0 || rel_err(&got.0, &plain.0) > 0.0, "case {i}: the scope did not round");
            if bf16_dx {
                let e = rel_err(&got.1, &want_dx);
                println!("case {i} amx {use_amx}: input gradient vs rounded f32 {e:.2e}");
                assert!(
                    e < 2e-6 * ((co * k * k) as f32).sqrt().max(1.0) + 1e-6,
                    "case {i} amx {use_amx}: dx {e}"
                );
                assert!(rel_err(&got.1, &plain.1) < 2e-2, "case {i}: bf16 dx too far from f32");
            } else {
                assert_eq!(got.1, plain.1, "case {i}: this input gradient must stay f32");
            }
            // The weight gradient (training): bf16 x and output gradient, f32 sums.
            let got_dw = {
                let _scope = kernels::bf16();
                run_dw(x.as_tensor(), &w, &b, &r, stride, pad)
            };
            // (bf16 on AMX for layers with >= 128 output channels; f32 otherwise.)
            if c > 0 && n * ho * ho > 0 && co >= 128 && use_amx {
                let e = rel_err(&got_dw, &want_dw);
                println!("case {i} amx {use_amx}: weight gradient vs rounded f32 {e:.2e}");
                assert!(
                    e < 4e-6 * ((n * ho * ho) as f32).sqrt().max(1.0) + 1e-6,
                    "case {i} amx {use_amx}: dw {e}"
                );
                assert!(rel_err(&got_dw, &plain_dw) < 2e-2, "case {i}: bf16 dw too far from f32");
            } else if c > 0 && n * ho * ho > 0 {
                let e = rel_err(&got_dw, &plain_dw);
                assert!(
                    e < 1e-5,
                    "case {i} amx {use_amx}: this weight gradient must stay f32 ({e})"
                );
            }
            // Frozen weights keep the packed form: same values.
            let _frozen = kernels::freeze();
            let _scope = kernels::bf16();
            for _ in 0..2 {
                assert_eq!(run(&x, &w, &b, &r, stride, pad), got, "case {i}: frozen bf16 differs");
            }
        }
        assert!(!bf16::active());
        assert_eq!(
            run(&x, &w, &b, &r, stride, pad).0,
            plain.0,
            "case {i}: after the scope, f32 again"
        );
    }
    kernels::set_amx(true);
    attention(&mut rng, amx_modes);
}

/// (out, dqkv) of `sum(attention(qkv) * r)`.
fn run_attention(qkv: &Var, heads: usize, new_order: bool, r: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let a =
        kernels::qkv_attention(qkv, heads, new_order).unwrap().expect("the fast attention applies");
    let g = (&a * r).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&a), vals(g.get(qkv).unwrap()))
}

/// Attention in a bf16 scope: both products in bf16 (AMX and the rounding path agree), its
/// backward f32.
fn attention(rng: &mut StdRng, amx_modes: &[bool]) {
    // (batch, heads, ch, T): T not a multiple of 16, 32 or the 64-row blocks; ch not of 32.
    for (i, &(n, heads, ch, t)) in
        [(2, 2, 24, 100), (1, 3, 64, 64), (1, 1, 8, 17)].iter().enumerate()
    {
        for new_order in [false, true] {
            let qkv = Var::from_tensor(&rand_tensor(rng, &[n, 3 * heads * ch, t])).unwrap();
            let r = rand_tensor(rng, &[n, heads * ch, t]);
            let plain = run_attention(&qkv, heads, new_order, &r);
            let mut outs = Vec::new();
            for &use_amx in amx_modes {
                kernels::set_amx(use_amx);
                let got = {
                    let _scope = kernels::bf16();
                    run_attention(&qkv, heads, new_order, &r)
                };
                let e = rel_err(&got.0, &plain.0);
                println!("attention {i} new_order {new_order} amx {use_amx}: bf16 vs f32 {e:.2e}");
                assert!(e > 0.0 && e < 2e-2, "attention case {i}: bf16 vs f32 {e}");
                assert_eq!(got.1, plain.1, "attention case {i}: the backward must stay f32");
                outs.push(got.0);
            }
            if let [a, b] = &outs[..] {
                let e = rel_err(a, b);
                println!("attention {i} new_order {new_order}: AMX vs rounding path {e:.2e}");
                assert!(e < 1e-5, "attention case {i}: AMX and the rounding path differ by {e}");
            }
        }
    }
    kernels::set_amx(true);
}
