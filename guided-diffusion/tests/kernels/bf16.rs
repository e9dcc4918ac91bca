//! bf16 policies (`kernels::bf16`): with one, a convolution's forward equals the f32
//! convolution of its inputs and weights rounded to bf16 (up to the order of the f32 sums),
//! through AMX and AVX512_BF16 where the CPU has them and through the rounding + f32 product
//! everywhere (each unit the CPU has is tested, the policy picking it); so does
//! the input gradient of a stride-1 convolution (classifier guidance), while other input
//! gradients stay f32; attention's forward products are bf16 and its backward f32; with an
//! f32 policy nothing changes.
use candle_core::{Device, Tensor, Var};
use guided_diffusion::kernels::{self, bf16, Bf16Unit, KernelPolicy, Precision, WeightForms};
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

/// The bf16 policies of every unit this CPU has (AMX, AVX512_BF16, the rounding path), each
/// with the unit its policy picks.
fn unit_policies() -> Vec<(Bf16Unit, KernelPolicy)> {
    let bf16 = |amx, avx512_bf16| {
        KernelPolicy { amx, avx512_bf16, ..FAST }.with_precision(Precision::Bf16)
    };
    let all = [
        (Bf16Unit::Amx, bf16(true, false)),
        (Bf16Unit::Avx512Bf16, bf16(false, true)),
        (Bf16Unit::Rounding, bf16(false, false)),
    ];
    let have: Vec<_> = all.into_iter().filter(|(u, p)| p.bf16_unit() == *u).collect();
    println!("bf16 units on this CPU: {:?}", have.iter().map(|(u, _)| *u).collect::<Vec<_>>());
    have
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
    // 128 and 144 output channels (cases 5, 10), whose weight gradients are bf16 on AMX;
    // layers that stay f32 with AVX512_BF16 (`conv_bf16::pays`): a wide Winograd layer
    // (case 11) and a Winograd layer of 8-pixel rows (case 12).
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
        (4, 128, 16, 128, 3, 1, 1),
        (16, 32, 8, 32, 3, 1, 1),
    ];
    let units = unit_policies();
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
        // Layers Winograd takes (3x3, stride 1, >= 32 channels both ways, >= 64 tiles) that
        // are wide or have rows under 16 pixels: f32 with AVX512_BF16 (faster there).
        let tiles = n * ho.div_ceil(4) * ho.div_ceil(4);
        let winograd = k == 3 && stride == 1 && c.min(co) >= 32 && tiles >= 64;
        let stays_f32 = winograd && (c.min(co) >= 128 || ho < 16);
        for &(unit, policy) in &units {
            let got = run(&policy, &x, &w, &b, &r, stride, pad);
            if unit == Bf16Unit::Avx512Bf16 && stays_f32 {
                println!("case {i} {unit:?}: f32 (Winograd is faster)");
                assert_eq!(got, plain, "case {i}: with AVX512_BF16 this layer stays f32");
                continue;
            }
            let e = rel_err(&got.0, &want);
            println!(
                "case {i} {unit:?}: bf16 vs rounded f32 {e:.2e}, vs f32 {:.2e}",
                rel_err(&got.0, &plain.0)
            );
            assert!(
                e < 2e-6 * ((c * k * k) as f32).sqrt().max(1.0) + 1e-6,
                "case {i} {unit:?}: {e}"
            );
            assert!(rel_err(&got.0, &plain.0) < 2e-2, "case {i}: bf16 too far from f32");
            // (No input channels: the bias alone, in either precision.)
            assert!(
                c == 0 || rel_err(&got.0, &plain.0) > 0.0,
                "case {i}: the policy did not round"
            );
            if bf16_dx {
                let e = rel_err(&got.1, &want_dx);
                println!("case {i} {unit:?}: input gradient vs rounded f32 {e:.2e}");
                assert!(
                    e < 2e-6 * ((co * k * k) as f32).sqrt().max(1.0) + 1e-6,
                    "case {i} {unit:?}: dx {e}"
                );
                assert!(rel_err(&got.1, &plain.1) < 2e-2, "case {i}: bf16 dx too far from f32");
            } else {
                assert_eq!(got.1, plain.1, "case {i}: this input gradient must stay f32");
            }
            // The weight gradient (training): bf16 x and output gradient, f32 sums.
            let got_dw = run_dw(&policy, x.as_tensor(), &w, &b, &r, stride, pad);
            // (bf16 on AMX for layers with >= 128 output channels; f32 otherwise.)
            if c > 0 && n * ho * ho > 0 && co >= 128 && unit == Bf16Unit::Amx {
                let e = rel_err(&got_dw, &want_dw);
                println!("case {i} {unit:?}: weight gradient vs rounded f32 {e:.2e}");
                assert!(
                    e < 4e-6 * ((n * ho * ho) as f32).sqrt().max(1.0) + 1e-6,
                    "case {i} {unit:?}: dw {e}"
                );
                assert!(rel_err(&got_dw, &plain_dw) < 2e-2, "case {i}: bf16 dw too far from f32");
            } else if c > 0 && n * ho * ho > 0 {
                let e = rel_err(&got_dw, &plain_dw);
                assert!(e < 1e-5, "case {i} {unit:?}: this weight gradient must stay f32 ({e})");
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

/// Attention in a bf16 policy: both products in bf16 (every unit agrees with the rounding
/// path), its backward f32.
#[test]
fn kernels_bf16_policy_rounds_attention_forward_products() {
    let mut rng = StdRng::seed_from_u64(12);
    let rng = &mut rng;
    let units = unit_policies();
    // (batch, heads, ch, T): T not a multiple of 16, 32 or the 64-row blocks; ch not of 32.
    for (i, &(n, heads, ch, t)) in
        [(2, 2, 24, 100), (1, 3, 64, 64), (1, 1, 8, 17)].iter().enumerate()
    {
        for new_order in [false, true] {
            let qkv = Var::from_tensor(&rand_tensor(rng, &[n, 3 * heads * ch, t])).unwrap();
            let r = rand_tensor(rng, &[n, heads * ch, t]);
            let plain = run_attention(&FAST, &qkv, heads, new_order, &r);
            let mut outs = Vec::new();
            for &(unit, policy) in &units {
                let got = run_attention(&policy, &qkv, heads, new_order, &r);
                let e = rel_err(&got.0, &plain.0);
                println!("attention {i} new_order {new_order} {unit:?}: bf16 vs f32 {e:.2e}");
                assert!(e > 0.0 && e < 2e-2, "attention case {i}: bf16 vs f32 {e}");
                assert_eq!(got.1, plain.1, "attention case {i}: the backward must stay f32");
                outs.push((unit, got.0));
            }
            // Every unit against the rounding path (the last): the same up to the sums' order.
            let (_, rounding) = outs.last().unwrap();
            for (unit, out) in &outs {
                let e = rel_err(out, rounding);
                println!("attention {i} new_order {new_order}: {unit:?} vs rounding path {e:.2e}");
                assert!(
                    e < 1e-5,
                    "attention case {i}: {unit:?} and the rounding path differ by {e}"
                );
            }
        }
    }
}

/// The packed product itself, on every bf16 unit this CPU has: starting from a bias and
/// accumulating into `dst` (`Start::Dst`, which the weight gradient uses), on shapes that are
/// no multiple of the 16-row, 16-column or 32-deep blocks, equals the f64 sum of the products
/// of the bf16-rounded operands up to f32 rounding.
#[test]
fn kernels_bf16_packed_products_start_from_bias_or_dst() {
    use guided_diffusion::kernels::amx::Start;
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(21);
    let units: Vec<_> = unit_policies().into_iter().map(|(u, _)| u).filter(|u| u.packs()).collect();
    for &(m, k, n) in &[(40usize, 70usize, 37usize), (16, 32, 16), (3, 5, 1), (33, 96, 50)] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let bias: Vec<f32> = (0..m).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let dst0: Vec<f32> = (0..m * n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        // sum_k round(a[r, k]) round(b[k, c]), in f64.
        let prod = |r: usize, c: usize| -> f64 {
            (0..k)
                .map(|i| bf16::round(a[r * k + i]) as f64 * bf16::round(b[i * n + c]) as f64)
                .sum()
        };
        for &unit in &units {
            let pw = bf16::PackedWeight::new(&a, m, k, unit);
            let pb = bf16::PackedB::new(&bf16::Rhs::Rows { b: &b, ld: n }, k, n);
            let mut from_bias = vec![0f32; m * n];
            let mut acc = dst0.clone();
            // SAFETY: `unit` is one this CPU has (`unit_policies`); `pw` is packed for it with
            // `k` depth, as `pb`; both outputs hold `m` rows of `n` values (row stride `n`),
            // readable and writable, ours alone; `bias` has `m` values.
            unsafe {
                bf16::gemm_packed(unit, &pw, &pb, Start::Bias(&bias), from_bias.as_mut_ptr(), n, 2);
                bf16::gemm_packed(unit, &pw, &pb, Start::Dst, acc.as_mut_ptr(), n, 2);
            }
            let mut worst = 0f64;
            for r in 0..m {
                for c in 0..n {
                    let p = prod(r, c);
                    let tol = 1e-6 * (k as f64).sqrt() * (1.0 + p.abs()) + 1e-6;
                    for (got, start) in
                        [(from_bias[r * n + c], bias[r]), (acc[r * n + c], dst0[r * n + c])]
                    {
                        let e = (got as f64 - (start as f64 + p)).abs();
                        worst = worst.max(e);
                        assert!(e < tol, "{unit:?} {m}x{k}x{n} at ({r}, {c}): error {e}");
                    }
                }
            }
            println!("packed product {m}x{k}x{n} {unit:?}: worst error {worst:.2e}");
        }
    }
}
