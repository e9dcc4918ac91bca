//! Convolution kernels, op by op: time and GFLOP/s of candle's plain CPU conv2d (forward, and
//! its backward as candle's autograd computes it: `conv_transpose2d` for the input gradient, a
//! conv with an `HxW` kernel for the weight gradient) against the fast kernels
//! (`guided_diffusion::kernels`), on the shapes of the small Fashion-MNIST model (batch 32) and,
//! with `GD_BENCH_BIG=1`, of the released 64x64 model (batch 1 and 8); then GroupNorm + AdaGN
//! scale/shift + SiLU, and QKV attention, candle's composed ops vs the fused kernels, forward
//! and backward.
//! Medians of repeated runs. `cargo bench -p guided-diffusion --bench kernels`.
mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{flag, median_secs};
use guided_diffusion::kernels::{self, ConvParams, KernelPolicy};
use guided_diffusion::models::layers::{Exec, GroupNorm32};

/// The fast kernels (the default policy), or candle's ops.
fn policy(fast: bool) -> KernelPolicy {
    if fast {
        KernelPolicy::default()
    } else {
        KernelPolicy::candle()
    }
}

struct Shape {
    n: usize,
    c: usize,
    hw: usize,
    co: usize,
    k: usize,
    stride: usize,
}

/// candle's input gradient exactly as its backprop of `Conv2D` computes it.
fn candle_input_grad(gy: &Tensor, w: &Tensor, p: ConvParams, h: usize) -> Tensor {
    let k = w.dim(2).unwrap();
    let out = (gy.dim(2).unwrap() - 1) * p.stride + k - 2 * p.padding;
    gy.conv_transpose2d(w, p.padding, h - out, p.stride, 1).unwrap()
}

/// candle's weight gradient exactly as its backprop of `Conv2D` computes it.
fn candle_weight_grad(x: &Tensor, gy: &Tensor, p: ConvParams, k: usize) -> Tensor {
    let g = x
        .transpose(0, 1)
        .unwrap()
        .conv2d(&gy.transpose(0, 1).unwrap(), p.padding, 1, p.stride, 1)
        .unwrap();
    let g = g.transpose(0, 1).unwrap();
    let (_, _, gk0, gk1) = g.dims4().unwrap();
    if gk0 != k || gk1 != k {
        g.narrow(2, 0, k).unwrap().narrow(3, 0, k).unwrap()
    } else {
        g
    }
}

fn row(label: &str, s: &Shape, reps: (usize, usize, f64)) {
    let dev = Device::Cpu;
    let pad = s.k / 2;
    let p = ConvParams { stride: s.stride, padding: pad };
    let x = Tensor::randn(0f32, 1.0, (s.n, s.c, s.hw, s.hw), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.1, (s.co, s.c, s.k, s.k), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.1, s.co, &dev).unwrap();
    let ho = (s.hw + 2 * pad - s.k) / s.stride + 1;
    let gy = Tensor::randn(0f32, 1.0, (s.n, s.co, ho, ho), &dev).unwrap();
    let gflop = 2.0 * (s.n * s.co * ho * ho * s.c * s.k * s.k) as f64 * 1e-9;
    let (min_r, max_r, budget) = reps;
    let t = |f: &mut dyn FnMut()| median_secs(min_r, max_r, budget, f);

    let c_fwd = t(&mut || {
        kernels::conv2d(&policy(false), &x, &w, Some(&b), s.stride, pad, None).unwrap();
    });
    let c_dx = t(&mut || {
        candle_input_grad(&gy, &w, p, s.hw);
    });
    let c_dw = t(&mut || {
        candle_weight_grad(&x, &gy, p, s.k);
    });
    let fast = policy(true);
    let f_fwd = t(&mut || {
        kernels::conv2d(&fast, &x, &w, Some(&b), s.stride, pad, None).unwrap();
    });
    let f_dx = t(&mut || {
        kernels::conv2d_input_grad(&fast, &gy, &w, p, (s.hw, s.hw), None).unwrap();
    });
    let f_dw = t(&mut || {
        kernels::conv2d_weight_grad(&fast, &x, &gy, p, s.k, s.k).unwrap();
    });
    let gf = |secs: f64| gflop / secs;
    println!(
        "{label:<10} n{:<2} {:>4}->{:<4} {:>2}x{:<2} k{} s{} {:>6.2} GF | fwd {:>8.2} {:>8.2} ms {:>6.1} {:>6.1} GF/s x{:>4.1} | dx {:>8.2} {:>8.2} ms {:>6.1} {:>6.1} GF/s x{:>5.1} | dw {:>8.2} {:>8.2} ms {:>6.1} {:>6.1} GF/s x{:>4.1}",
        s.n, s.c, s.co, s.hw, s.hw, s.k, s.stride, gflop,
        c_fwd * 1e3, f_fwd * 1e3, gf(c_fwd), gf(f_fwd), c_fwd / f_fwd,
        c_dx * 1e3, f_dx * 1e3, gf(c_dx), gf(f_dx), c_dx / f_dx,
        c_dw * 1e3, f_dw * 1e3, gf(c_dw), gf(f_dw), c_dw / f_dw,
    );
}

/// GroupNorm32 (+ scale/shift) + SiLU on `[n, c, hw, hw]`: forward and forward+backward ms,
/// candle's composition vs the fused kernel; GB/s of the forward (one read + one write).
fn gn_row(label: &str, n: usize, c: usize, hw: usize, ss: bool, reps: (usize, usize, f64)) {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let gn = GroupNorm32::new(c, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, hw, hw), &dev).unwrap()).unwrap();
    let scale = Var::from_tensor(&Tensor::randn(0f32, 0.1, (n, c, 1, 1), &dev).unwrap()).unwrap();
    let shift = Var::from_tensor(&Tensor::randn(0f32, 0.1, (n, c, 1, 1), &dev).unwrap()).unwrap();
    let (min_r, max_r, budget) = reps;
    let mut out = Vec::new();
    for on in [false, true] {
        let ex = Exec::new(policy(on));
        let f = || {
            if ss {
                gn.forward_scale_shift_silu(&ex, &x, &scale, &shift).unwrap()
            } else {
                gn.forward_silu(&ex, &x).unwrap()
            }
        };
        let fwd = median_secs(min_r, max_r, budget, || {
            f();
        });
        let both = median_secs(min_r, max_r, budget, || {
            f().backward().unwrap();
        });
        out.push((fwd, both));
    }
    let gbs = |s: f64| 2.0 * 4.0 * (n * c * hw * hw) as f64 / s * 1e-9;
    let name = if ss { "GN+ss+SiLU" } else { "GN+SiLU" };
    println!(
        "{label:<10} {name:<10} n{n:<2} c{c:<4} {hw:>2}x{hw:<2} | fwd {:>8.2} {:>8.2} ms ({:>5.1} {:>5.1} GB/s) x{:>5.1} | fwd+bwd {:>8.2} {:>8.2} ms x{:>5.1}",
        out[0].0 * 1e3, out[1].0 * 1e3, gbs(out[0].0), gbs(out[1].0), out[0].0 / out[1].0,
        out[0].1 * 1e3, out[1].1 * 1e3, out[0].1 / out[1].1,
    );
}

/// QKV attention (`models::attention::qkv_attention`, candle's ops and softmax when the kernels
/// are off) vs `kernels::qkv_attention`: forward and forward+backward ms, GFLOP/s of the forward.
fn attn_row(label: &str, b: usize, heads: usize, ch: usize, t: usize, reps: (usize, usize, f64)) {
    use guided_diffusion::models::attention::{qkv_attention, HeadOrder};
    let qkv =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, 3 * heads * ch, t), &Device::Cpu).unwrap())
            .unwrap();
    let (min_r, max_r, budget) = reps;
    let mut out = Vec::new();
    for on in [false, true] {
        let f = || {
            if on {
                kernels::qkv_attention(&policy(true), &qkv, heads, true).unwrap().unwrap()
            } else {
                qkv_attention(&policy(false), &qkv, heads, HeadOrder::New).unwrap()
            }
        };
        let fwd = median_secs(min_r, max_r, budget, || {
            f();
        });
        let both = median_secs(min_r, max_r, budget, || {
            f().backward().unwrap();
        });
        out.push((fwd, both));
    }
    let gflop = 4.0 * (b * heads * ch * t * t) as f64 * 1e-9;
    println!(
        "{label:<10} attention  b{b:<2} {heads:>2} heads x{ch:<3} T{t:<5} {:>5.2} GF | fwd {:>8.2} {:>8.2} ms ({:>5.1} {:>5.1} GF/s) x{:>4.1} | fwd+bwd {:>8.2} {:>8.2} ms x{:>4.1}",
        gflop, out[0].0 * 1e3, out[1].0 * 1e3, gflop / out[0].0, gflop / out[1].0, out[0].0 / out[1].0,
        out[0].1 * 1e3, out[1].1 * 1e3, out[0].1 / out[1].1,
    );
}

fn main() {
    common::tune_process();
    println!(
        "threads {}; each op: candle ms, fast ms, candle GF/s, fast GF/s, speed-up (medians)",
        rayon::current_num_threads()
    );
    let small = [
        Shape { n: 32, c: 1, hw: 32, co: 32, k: 3, stride: 1 },
        Shape { n: 32, c: 32, hw: 32, co: 32, k: 3, stride: 1 },
        Shape { n: 32, c: 64, hw: 32, co: 64, k: 3, stride: 1 },
        Shape { n: 32, c: 96, hw: 32, co: 32, k: 3, stride: 1 },
        Shape { n: 32, c: 32, hw: 32, co: 2, k: 3, stride: 1 },
        Shape { n: 32, c: 64, hw: 16, co: 64, k: 3, stride: 1 },
        Shape { n: 32, c: 128, hw: 16, co: 64, k: 3, stride: 1 },
        Shape { n: 32, c: 64, hw: 8, co: 64, k: 3, stride: 1 },
        Shape { n: 32, c: 32, hw: 32, co: 32, k: 3, stride: 2 },
        Shape { n: 32, c: 64, hw: 16, co: 64, k: 1, stride: 1 },
    ];
    for s in &small {
        row("small", s, (3, 15, 1.0));
    }
    println!("GroupNorm: candle ms, fused ms (forward GB/s), speed-up");
    for (c, hw) in [(32, 32), (64, 16), (64, 8), (128, 16)] {
        for ss in [false, true] {
            gn_row("small", 32, c, hw, ss, (3, 15, 1.0));
        }
    }
    println!("attention: candle ms, fused ms (forward GFLOP/s), speed-up");
    attn_row("small", 32, 2, 32, 64, (3, 15, 1.0));
    for (b, heads, t) in [(1, 6, 1024), (1, 9, 256), (1, 12, 64), (8, 6, 1024)] {
        attn_row("imagenet64", b, heads, 64, t, (2, 10, 1.0));
    }
    if flag("GD_BENCH_BIG") {
        for (n, c, hw) in [(1, 192, 64), (8, 192, 64), (1, 384, 32), (8, 384, 32)] {
            gn_row("imagenet64", n, c, hw, true, (2, 10, 1.0));
        }
        for n in [1, 8] {
            for s in [
                Shape { n, c: 192, hw: 64, co: 192, k: 3, stride: 1 },
                Shape { n, c: 384, hw: 32, co: 384, k: 3, stride: 1 },
                Shape { n, c: 768, hw: 8, co: 768, k: 3, stride: 1 },
                Shape { n, c: 192, hw: 64, co: 192, k: 3, stride: 2 },
            ] {
                row("imagenet64", &s, (1, 5, 2.0));
            }
        }
    }
}
