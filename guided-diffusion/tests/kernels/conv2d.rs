//! Parity of the fast CPU convolution (`kernels::conv2d`) with candle's plain `conv2d` and its
//! autograd: forward, input gradient, weight gradient, bias gradient and a second derivative,
//! on random shapes including stride 2, odd sizes, batch 1 and 1x1 kernels; plus the fallback
//! rules (other dtypes; fast kernels off: `policy`).
use candle_core::{DType, Tensor, Var};
use guided_diffusion::kernels::{self, KernelPolicy};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::support::rand_tensor;
use crate::FAST;

/// Max |a - b| must stay within `rtol` of max |b| (plus a tiny floor).
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

struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

/// Forward and first-order gradients of `sum(conv(x, w) + b) * r)`, fast vs candle.
fn check(case: &Case, seed: u64) {
    let Case { n, c, h, w, co, k, stride, pad } = *case;
    let name = format!("n{n} c{c} {h}x{w} co{co} k{k} s{stride} p{pad}");
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, h, w])).unwrap();
    let wt = Var::from_tensor(&rand_tensor(&mut rng, &[co, c, k, k])).unwrap();
    let b = Var::from_tensor(&rand_tensor(&mut rng, &[co])).unwrap();

    let want = x
        .conv2d(&wt, pad, stride, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
        .unwrap();
    let got = kernels::conv2d(&FAST, &x, &wt, Some(&b), stride, pad, None).unwrap();
    assert_close(&format!("{name}: forward"), &got, &want, 1e-5);

    let r = rand_tensor(&mut rng, want.dims());
    let gw = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gg = (got * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (what, v) in [("input grad", &x), ("weight grad", &wt), ("bias grad", &b)] {
        assert_close(&format!("{name}: {what}"), gg.get(v).unwrap(), gw.get(v).unwrap(), 1e-5);
    }
}

#[test]
fn kernels_conv2d_matches_candle_on_model_shapes() {
    for (i, case) in [
        Case { n: 2, c: 32, h: 32, w: 32, co: 32, k: 3, stride: 1, pad: 1 },
        Case { n: 1, c: 64, h: 16, w: 16, co: 128, k: 3, stride: 1, pad: 1 },
        Case { n: 3, c: 1, h: 32, w: 32, co: 32, k: 3, stride: 1, pad: 1 },
        Case { n: 2, c: 96, h: 8, w: 8, co: 64, k: 3, stride: 1, pad: 1 },
        Case { n: 2, c: 32, h: 32, w: 32, co: 32, k: 3, stride: 2, pad: 1 },
        Case { n: 2, c: 64, h: 16, w: 16, co: 32, k: 1, stride: 1, pad: 0 },
    ]
    .iter()
    .enumerate()
    {
        check(case, i as u64);
    }
}

/// A direct f64 definition of the convolution and its two gradients, independent of candle
/// (whose own conv2d backward mishandles stride > 1 on non-square inputs with uneven
/// remainders): returns `(y, dx, dw)` for the output gradient `r`.
fn naive(x: &[f32], w: &[f32], r: &[f32], case: &Case) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Case { n, c, h, w: wd, co, k, stride, pad } = *case;
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    let mut y = vec![0f64; n * co * ho * wo];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    for b in 0..n {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let yi = ((b * co + o) * ho + oy) * wo + ox;
                    for ci in 0..c {
                        for i in 0..k {
                            for j in 0..k {
                                let iy = (oy * stride + i) as isize - pad as isize;
                                let ix = (ox * stride + j) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xi = ((b * c + ci) * h + iy as usize) * wd + ix as usize;
                                let wi = ((o * c + ci) * k + i) * k + j;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += r[yi] as f64 * w[wi] as f64;
                                dw[wi] += r[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn assert_close_f64(what: &str, a: &Tensor, b: &[f64], rtol: f64) {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    assert!(diff <= rtol * scale + 1e-6, "{what}: max abs diff {diff:e} vs scale {scale:e}");
}

/// Random shapes (non-square, odd sizes, stride 2, kernels 1..5) against the direct definition.
#[test]
fn kernels_conv2d_matches_definition_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..60 {
        let k = [1, 3, 3, 3, 2, 5][rng.gen_range(0..6)];
        let pad = rng.gen_range(0..=k / 2);
        let case = Case {
            n: [1, 1, 2, 3, 5][rng.gen_range(0..5)],
            c: rng.gen_range(1..=9),
            h: rng.gen_range(k..=13),
            w: rng.gen_range(k..=13),
            co: rng.gen_range(1..=11),
            k,
            stride: rng.gen_range(1..=2),
            pad,
        };
        let Case { n, c, h, w, co, stride, .. } = case;
        let name = format!("#{i} n{n} c{c} {h}x{w} co{co} k{k} s{stride} p{pad}");
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, h, w])).unwrap();
        let wt = Var::from_tensor(&rand_tensor(&mut rng, &[co, c, k, k])).unwrap();
        let y = kernels::conv2d(&FAST, &x, &wt, None, stride, pad, None).unwrap();
        let r = rand_tensor(&mut rng, y.dims());
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (wy, wdx, wdw) = naive(&flat(&x), &flat(&wt), &flat(&r), &case);
        assert_close_f64(&format!("{name}: forward"), &y, &wy, 1e-5);
        assert_close_f64(&format!("{name}: input grad"), g.get(&x).unwrap(), &wdx, 1e-5);
        assert_close_f64(&format!("{name}: weight grad"), g.get(&wt).unwrap(), &wdw, 1e-5);
    }
}

#[test]
fn kernels_conv2d_odd_sizes_stride2_batch1() {
    for (i, case) in [
        Case { n: 1, c: 3, h: 7, w: 9, co: 5, k: 3, stride: 2, pad: 1 },
        Case { n: 1, c: 4, h: 15, w: 15, co: 6, k: 3, stride: 2, pad: 1 },
        Case { n: 1, c: 2, h: 5, w: 5, co: 3, k: 1, stride: 2, pad: 0 },
        Case { n: 1, c: 8, h: 1, w: 1, co: 4, k: 3, stride: 1, pad: 1 },
        Case { n: 1, c: 8, h: 3, w: 17, co: 4, k: 3, stride: 1, pad: 0 },
    ]
    .iter()
    .enumerate()
    {
        check(case, 50 + i as u64);
    }
}

/// Training-size batch: exercises the tile-parallel weight-gradient reduction.
#[test]
fn kernels_conv2d_large_batch() {
    check(&Case { n: 9, c: 16, h: 20, w: 20, co: 24, k: 3, stride: 1, pad: 1 }, 3);
    check(&Case { n: 8, c: 16, h: 20, w: 20, co: 24, k: 3, stride: 2, pad: 1 }, 4);
}

/// A second derivative through the gradient ops: d/dw of <dL/dx, s>.
#[test]
fn kernels_conv2d_second_derivative_matches_candle() {
    for (i, &(stride, pad)) in [(1, 1), (2, 1)].iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(900 + i as u64);
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[2, 3, 8, 8])).unwrap();
        let wt = Var::from_tensor(&rand_tensor(&mut rng, &[4, 3, 3, 3])).unwrap();
        let r = rand_tensor(&mut rng, &[2, 4, 8 / stride, 8 / stride]);
        let s = rand_tensor(&mut rng, &[2, 3, 8, 8]);
        let second = |fast: bool| {
            let y = if fast {
                kernels::conv2d(&FAST, &x, &wt, None, stride, pad, None).unwrap()
            } else {
                x.conv2d(&wt, pad, stride, 1, 1).unwrap()
            };
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(&x).unwrap().clone();
            let g2 = (gx * &s).unwrap().sum_all().unwrap().backward().unwrap();
            g2.get(&wt).unwrap().clone()
        };
        assert_close(&format!("s{stride}: d/dw <dx, s>"), &second(true), &second(false), 1e-5);
    }
}

/// No gradient is computed (or needed) for a constant input, e.g. the image fed to the model.
#[test]
fn kernels_conv2d_constant_input_gets_no_gradient() {
    let mut rng = StdRng::seed_from_u64(11);
    let x = rand_tensor(&mut rng, &[2, 3, 6, 6]);
    let wt = Var::from_tensor(&rand_tensor(&mut rng, &[4, 3, 3, 3])).unwrap();
    let y = kernels::conv2d(&FAST, &x, &wt, None, 1, 1, None).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    let want = x.conv2d(&wt, 1, 1, 1, 1).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("weight grad", g.get(&wt).unwrap(), want.get(&wt).unwrap(), 1e-5);
}

/// Non-f32 inputs and mismatched shapes go to candle (same result / same error kind).
#[test]
fn kernels_conv2d_falls_back_where_it_does_not_apply() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = rand_tensor(&mut rng, &[1, 2, 5, 5]);
    let w = rand_tensor(&mut rng, &[3, 2, 3, 3]);
    let x64 = x.to_dtype(DType::F64).unwrap();
    let w64 = w.to_dtype(DType::F64).unwrap();
    let got = kernels::conv2d(&FAST, &x64, &w64, None, 1, 1, None).unwrap();
    assert_eq!(got.dtype(), DType::F64);
    assert_close(
        "f64 fallback",
        &got.to_dtype(DType::F32).unwrap(),
        &x.conv2d(&w, 1, 1, 1, 1).unwrap(),
        1e-5,
    );
    // Channel mismatch: an error, not a panic.
    let bad = rand_tensor(&mut rng, &[3, 4, 3, 3]);
    assert!(kernels::conv2d(&FAST, &x, &bad, None, 1, 1, None).is_err());
    // Kernel larger than the padded input: an error, not a panic.
    let big = rand_tensor(&mut rng, &[3, 2, 9, 9]);
    assert!(kernels::conv2d(&FAST, &x, &big, None, 1, 1, None).is_err());
    // The gradient ops reject wrong shapes with errors.
    let gy = rand_tensor(&mut rng, &[1, 3, 4, 4]);
    let p = kernels::ConvParams { stride: 1, padding: 1 };
    assert!(kernels::conv2d_input_grad(&FAST, &gy, &w, p, (5, 5), None).is_err());
    assert!(kernels::conv2d_weight_grad(&FAST, &x, &gy, p, 3, 3).is_err());
}

/// Non-contiguous inputs are accepted (made contiguous first).
#[test]
fn kernels_conv2d_non_contiguous_input() {
    let mut rng = StdRng::seed_from_u64(13);
    let x = rand_tensor(&mut rng, &[2, 3, 6, 7]).transpose(2, 3).unwrap();
    let w = rand_tensor(&mut rng, &[4, 3, 3, 3]);
    let got = kernels::conv2d(&FAST, &x, &w, None, 1, 1, None).unwrap();
    assert_close("transposed input", &got, &x.conv2d(&w, 1, 1, 1, 1).unwrap(), 1e-5);
}

/// Shapes that take the Winograd F(4x4, 3x3) path (3x3, stride 1, at least 32 channels in
/// and out and 64 tiles), against the f64 definition: outputs not a multiple of 4, paddings
/// 0..2, several images per block and one image in several. Checks the forward pass, the
/// input gradient (a forward convolution with the flipped weight) and the weight gradient
/// (`winograd_wgrad`, thin and wide); reports the worst error relative to the largest value,
/// next to the direct path's.
#[test]
fn kernels_conv2d_winograd_matches_definition() {
    let mut rng = StdRng::seed_from_u64(11);
    for case in [
        Case { n: 1, c: 48, h: 32, w: 32, co: 40, k: 3, stride: 1, pad: 1 },
        Case { n: 3, c: 32, h: 17, w: 23, co: 33, k: 3, stride: 1, pad: 1 },
        Case { n: 2, c: 35, h: 26, w: 30, co: 32, k: 3, stride: 1, pad: 0 },
        Case { n: 2, c: 32, h: 23, w: 25, co: 36, k: 3, stride: 1, pad: 2 },
        Case { n: 8, c: 64, h: 12, w: 12, co: 32, k: 3, stride: 1, pad: 1 },
        // Wide: the weight gradient's blocks of the whole batch and one P (36 co c floats).
        Case { n: 1, c: 176, h: 30, w: 30, co: 184, k: 3, stride: 1, pad: 1 },
    ] {
        let Case { n, c, h, w, co, pad, .. } = case;
        let name = format!("n{n} c{c} {h}x{w} co{co} p{pad}");
        // Weights scaled as the models initialise them, so outputs are O(1).
        let x = Var::from_tensor(&rand_tensor(&mut rng, &[n, c, h, w])).unwrap();
        let wt = Var::from_tensor(
            &(rand_tensor(&mut rng, &[co, c, 3, 3]) * (3.0 / (9.0 * c as f64)).sqrt()).unwrap(),
        )
        .unwrap();
        let y = kernels::conv2d(&FAST, &x, &wt, None, 1, pad, None).unwrap();
        let r = rand_tensor(&mut rng, y.dims());
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (wy, wdx, wdw) = naive(&flat(&x), &flat(&wt), &flat(&r), &case);
        let rel = |a: &Tensor, b: &[f64]| {
            let a = flat(a);
            let d = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
            d / b.iter().map(|y| y.abs()).fold(0.0, f64::max)
        };
        let (ey, edx, edw) =
            (rel(&y, &wy), rel(g.get(&x).unwrap(), &wdx), rel(g.get(&wt).unwrap(), &wdw));
        let direct = KernelPolicy { winograd: false, ..FAST };
        let yd = kernels::conv2d(&direct, &x, &wt, None, 1, pad, None).unwrap();
        let gd = (&yd * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (dy, ddx, ddw) =
            (rel(&yd, &wy), rel(gd.get(&x).unwrap(), &wdx), rel(gd.get(&wt).unwrap(), &wdw));
        println!(
            "{name}: max error / max |value|, Winograd vs direct: output {ey:.1e} vs {dy:.1e}, \
             input grad {edx:.1e} vs {ddx:.1e}, weight grad {edw:.1e} vs {ddw:.1e}"
        );
        // Rounding errors add up over the channels summed: 1e-5 up to 64 channels, growing as
        // their square root beyond.
        let bound = 1e-5 * (c.max(co) as f64 / 64.0).sqrt().max(1.0);
        assert!(
            ey < bound && edx < bound && edw < bound,
            "{name}: Winograd error {ey:e} / {edx:e} / {edw:e} (bound {bound:e})"
        );
    }
}
