//! 3x3 convolutions, direct (im2col + packed gemm) vs Winograd F(4x4, 3x3): forward time,
//! effective GFLOP/s (the direct convolution's FLOPs over the time, so the two columns compare
//! as speeds) and the share of the machine's f32 peak, on the 3x3 stride-1 shapes of the small
//! Fashion-MNIST model (batch 32) and of the released 64x64 model (batch 1, 2). Then, as in a
//! sampling run (weights frozen, so their derived forms are made once): the f32 path
//! (Winograd where it applies) against the bf16 policy (`kernels::bf16`, on AMX or
//! AVX512_BF16, whichever the CPU has; with AVX512_BF16 the policy keeps f32 Winograd on the
//! layers where it is faster) and against the bf16 product forced on every layer.
//! `cargo bench -p guided-diffusion --bench conv3x3` (`GD_PEAK_GFLOPS=x` sets the peak used
//! for the percentages; by default it is measured with an FMA loop).
mod common;

use candle_core::{Device, Tensor};
use common::median_secs;
use guided_diffusion::kernels::{self, KernelPolicy, Precision, WeightForms};

fn time_conv(x: &Tensor, w: &Tensor, b: &Tensor, winograd: bool) -> f64 {
    let policy = KernelPolicy { winograd, ..KernelPolicy::default() };
    median_secs(3, 20, 1.0, || {
        kernels::conv2d(&policy, x, w, Some(b), 1, 1, None).unwrap();
    })
}

/// Forward time with the weight frozen (its derived forms kept), in f32 or bf16; `winograd`
/// off makes a bf16 policy take the bf16 product on every layer (with AVX512_BF16 it keeps
/// f32 Winograd where that is faster, `conv_bf16::pays`).
fn time_frozen(x: &Tensor, w: &Tensor, b: &Tensor, bf16: bool, winograd: bool) -> f64 {
    let precision = if bf16 { Precision::Bf16 } else { Precision::F32 };
    let policy = KernelPolicy { winograd, ..KernelPolicy::default() }.with_precision(precision);
    let forms = WeightForms::default();
    median_secs(3, 20, 1.0, || {
        kernels::conv2d(&policy, x, w, Some(b), 1, 1, forms.for_call(w, Some(1))).unwrap();
    })
}

fn main() {
    common::tune_process();
    let peak = common::peak_gflops();
    println!("threads {}, f32 peak {peak:.0} GFLOP/s; per conv: direct ms, Winograd ms, effective GFLOP/s and % of peak, speed-up", rayon::current_num_threads());
    let shapes: &[(&str, usize, usize, usize, usize)] = &[
        ("small", 32, 32, 32, 32),
        ("small", 32, 64, 32, 64),
        ("small", 32, 96, 32, 32),
        ("small", 32, 64, 16, 64),
        ("small", 32, 128, 16, 64),
        ("small", 32, 64, 8, 64),
        ("imagenet64", 1, 192, 64, 192),
        ("imagenet64", 1, 384, 32, 384),
        ("imagenet64", 1, 576, 16, 576),
        ("imagenet64", 1, 768, 8, 768),
        ("imagenet64", 2, 192, 64, 192),
        ("imagenet64", 2, 384, 32, 384),
    ];
    let mut frozen_rows = Vec::new();
    for &(set, n, c, hw, co) in shapes {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (n, c, hw, hw), &dev).unwrap();
        let w = (Tensor::randn(0f32, 1.0, (co, c, 3, 3), &dev).unwrap()
            * (1.0 / (9.0 * c as f64).sqrt()))
        .unwrap();
        let b = Tensor::zeros(co, candle_core::DType::F32, &dev).unwrap();
        let flop = 2.0 * (n * co * hw * hw * c * 9) as f64;
        let d = time_conv(&x, &w, &b, false);
        let wg = time_conv(&x, &w, &b, true);
        let (gd, gw) = (flop / d / 1e9, flop / wg / 1e9);
        println!(
            "{set:<10} n{n:<2} {c:>3}->{co:<3} {hw:>2}x{hw:<2} | {:8.2} {:8.2} ms | {gd:6.0} ({:3.0}%) {gw:6.0} ({:3.0}%) GF/s | x{:.2}",
            d * 1e3,
            wg * 1e3,
            100.0 * gd / peak,
            100.0 * gw / peak,
            d / wg
        );
        let f32t = time_frozen(&x, &w, &b, false, true);
        let bf16t = time_frozen(&x, &w, &b, true, true);
        let every = time_frozen(&x, &w, &b, true, false);
        frozen_rows.push(format!(
            "{set:<10} n{n:<2} {c:>3}->{co:<3} {hw:>2}x{hw:<2} | {:8.2} {:8.2} {:8.2} ms | {:6.0} {:6.0} GF/s | x{:.2} (bf16 product x{:.2})",
            f32t * 1e3,
            bf16t * 1e3,
            every * 1e3,
            flop / f32t / 1e9,
            flop / bf16t / 1e9,
            f32t / bf16t,
            f32t / every
        ));
    }
    let unit = KernelPolicy::default().bf16_unit();
    println!("\nfrozen weights (as in sampling): f32 (Winograd where it applies) ms, bf16 policy ms, bf16 product on every layer ms (bf16 unit: {unit:?}), effective GFLOP/s of f32 and the bf16 policy, f32 / bf16 policy (f32 / bf16 product)");
    for r in frozen_rows {
        println!("{r}");
    }
}
