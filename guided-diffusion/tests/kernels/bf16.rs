//! bf16 policies (`kernels::bf16`): with one, a convolution's forward equals the f32
//! convolution of its inputs and weights rounded to bf16 (up to the order of the f32 sums),
//! through AMX where the CPU has it and through the rounding + f32 product everywhere; so does
//! the input gradient of a stride-1 convolution (classifier guidance), while other input
//! gradients stay f32; attention's forward products are bf16 and its backward f32; with an
//! f32 policy nothing changes.
use candle_core::{Device, Tensor, Var};
use guided_diffusion::kernels::{self, amx, bf16, KernelPolicy, Precision, WeightForms};
use rand::{rngs::StdRng, SeedableRng};

use crate::support::rand_tensor;
use crate::FAST;

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f32> = vals(t).into_iter().map(bf16::round).collect();
    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
}

/// (y, dx) of `sum(conv(x, w, b) * r)` with `policy`, and `forms` kept for a frozen weight.
fn run_with(
    policy: &KernelPolicy,
    x: &Var,
    (w, b): (&Tensor, &Tensor),
    r: &Tensor,
    (stride, pad): (usize, usize),
    forms: Option<&WeightForms>,
) -> (Vec<f32>, Vec<f32>) {
    let kept = forms.and_then(|f| f.for_call(w, Some(1)));
    let y = kernels::conv2d(policy, x, w, Some(b), stride, pad, kept).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&y), vals(g.get(x).unwrap()))
}

/// [`run_with`] without kept forms.
#[allow(clippy::too_many_arguments)]
fn run(
    policy: &KernelPolicy,
    x: &Var,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> (Vec<f32>, Vec<f32>) {
    run_with(policy, x, (w, b), r, (stride, pad), None)
}

/// The weight gradient of `sum(conv(x, w, b) * r)` for a variable weight.
#[allow(clippy::too_many_arguments)]
fn run_dw(
    policy: &KernelPolicy,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let wv = Var::from_tensor(w).unwrap();
    let y = kernels::conv2d(policy, x, &wv, Some(b), stride, pad, None).unwrap();
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
fn kernels_bf16_policy_rounds_convolution_inputs_and_stride1_input_gradients() {
    let direct = KernelPolicy { winograd: false, ..FAST };
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
        let plain = run(&FAST, &x, &w, &b, &r, stride, pad);
        // The definition: f32 (direct, not Winograd) of the rounded input and weight.
        let xr = Var::from_tensor(&rounded(x.as_tensor())).unwrap();
        let want = run(&direct, &xr, &rounded(&w), &b, &r, stride, pad).0;
        // The output gradient of sum(y * r) is r: the bf16 input gradient rounds it and w.
        let want_dx = run(&direct, &xr, &rounded(&w), &b, &rounded(&r), stride, pad).1;
        let bf16_dx = stride == 1 && k > 1;
        let plain_dw = run_dw(&FAST, x.as_tensor(), &w, &b, &r, stride, pad);
        let want_dw = run_dw(&direct, &rounded(x.as_tensor()), &w, &b, &rounded(&r), stride, pad);
        for &use_amx in amx_modes {
            let policy = KernelPolicy { amx: use_amx, ..FAST }.with_precision(Precision::Bf16);
            let got = run(&policy, &x, &w, &b, &r, stride, pad);
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
            assert!(
                c == 0 || rel_err(&got.0, &plain.0) > 0.0,
                "case {i}: the policy did not round"
            );
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
            let got_dw = run_dw(&policy, x.as_tensor(), &w, &b, &r, stride, pad);
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
            let forms = WeightForms::default();
            for _ in 0..2 {
                let kept = run_with(&policy, &x, (&w, &b), &r, (stride, pad), Some(&forms));
                assert_eq!(kept, got, "case {i}: frozen bf16 differs");
            }
        }
        assert_eq!(
            run(&FAST, &x, &w, &b, &r, stride, pad).0,
            plain.0,
            "case {i}: with an f32 policy, f32 again"
        );
    }
}

/// (out, dqkv) of `sum(attention(qkv) * r)` with `policy`.
fn run_attention(
    policy: &KernelPolicy,
    qkv: &Var,
    heads: usize,
    new_order: bool,
    r: &Tensor,
) -> (Vec<f32>, Vec<f32>) {
    let a = kernels::qkv_attention(policy, qkv, heads, new_order)
        .unwrap()
        .expect("the fast attention applies");
    let g = (&a * r).unwrap().sum_all().unwrap().backward().unwrap();
    (vals(&a), vals(g.get(qkv).unwrap()))
}

/// Attention in a bf16 policy: both products in bf16 (AMX and the rounding path agree), its
/// backward f32.
#[test]
fn kernels_bf16_policy_rounds_attention_forward_products() {
    let mut rng = StdRng::seed_from_u64(12);
    let rng = &mut rng;
    let amx_modes: &[bool] = if amx::hardware() { &[true, false] } else { &[false] };
    // (batch, heads, ch, T): T not a multiple of 16, 32 or the 64-row blocks; ch not of 32.
    for (i, &(n, heads, ch, t)) in
        [(2, 2, 24, 100), (1, 3, 64, 64), (1, 1, 8, 17)].iter().enumerate()
    {
        for new_order in [false, true] {
            let qkv = Var::from_tensor(&rand_tensor(rng, &[n, 3 * heads * ch, t])).unwrap();
            let r = rand_tensor(rng, &[n, heads * ch, t]);
            let plain = run_attention(&FAST, &qkv, heads, new_order, &r);
            let mut outs = Vec::new();
            for &use_amx in amx_modes {
                let policy = KernelPolicy { amx: use_amx, ..FAST }.with_precision(Precision::Bf16);
                let got = run_attention(&policy, &qkv, heads, new_order, &r);
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
}
