//! Branch-free elementwise math that LLVM vectorizes (AVX2/FMA or AVX-512): `exp`, `sigmoid`
//! and blocked sums. `f32::exp` is a libm call per element and does not vectorize, which makes
//! SiLU cost more than the GroupNorm around it.

/// `e^x` for f32, relative error below 3e-7 on the clamped range `[-87.3, 88.7]` (beyond it the
/// result saturates at about `1e-38` / `3e38`, which is what SiLU and sigmoid need).
/// Written without `mul_add` / `round` (libm calls without FMA / SSE4.1) so that it vectorizes
/// on any x86-64; callers compile their loops for AVX2+FMA via [`with_avx2`].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest (Cody-Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // max/min (not clamp) turn NaN into a finite value, so the int conversion below is
    // defined; a NaN input still gives NaN out of SiLU / sigmoid through the `x *` around them.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.3).min(88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| <= ln2/2: degree-6 minimax polynomial (Cephes expf).
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n from the exponent bits; n in [-126, 128] after the clamp, 2^128 as 2^127 * 2.
    // SAFETY: n is an integer in [-126, 128].
    let ni: i32 = unsafe { n.to_int_unchecked() };
    let scale = f32::from_bits(((ni.min(127) + 127) as u32) << 23);
    let scale2 = if ni > 127 { 2.0 } else { 1.0 };
    p * scale * scale2
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Defines `fn name(args)` that runs its body compiled for AVX2+FMA when the CPU has them (the
/// crate itself is built for baseline x86-64, SSE2), else compiled for the baseline. Everything
/// the body calls in its hot loops must be `#[inline(always)]` to inherit the features.
/// `unsafe fn name(args)` defines an unsafe function the same way (its `# Safety` section goes
/// with its doc comment; its body marks its own unsafe operations).
macro_rules! avx2_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled for AVX2 and FMA.
                ///
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) {
            /// The body.
            ///
            /// # Safety
            /// The contract of the function it is the body of.
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled for AVX2 and FMA.
                ///
                /// # Safety
                /// The CPU must have AVX2 and FMA, and the body's contract holds.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    // SAFETY: this function's contract, which is the body's.
                    unsafe { body($($arg),*) }
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected; the rest is this function's
                    // contract, which is the body's.
                    return unsafe { avx2($($arg),*) };
                }
            }
            // SAFETY: this function's contract, which is the body's.
            unsafe { body($($arg),*) }
        }
    };
    // `avx512: unsafe fn ...`: as above, with AVX-512 (F, BW, VL) tried first, for bodies whose
    // 16-lane arrays then become single registers. The same operations in the same order, so
    // the same bits, whichever runs.
    (avx512: $(#[$m:meta])* $vis:vis unsafe fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) {
            /// The body.
            ///
            /// # Safety
            /// The contract of the function it is the body of.
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled for AVX-512.
                ///
                /// # Safety
                /// The CPU must have AVX-512 F, BW and VL, AVX2 and FMA, and the body's
                /// contract holds.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) {
                    // SAFETY: this function's contract, which is the body's.
                    unsafe { body($($arg),*) }
                }
                /// The body compiled for AVX2 and FMA.
                ///
                /// # Safety
                /// The CPU must have AVX2 and FMA, and the body's contract holds.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    // SAFETY: this function's contract, which is the body's.
                    unsafe { body($($arg),*) }
                }
                if $crate::kernels::vmath::has_avx512() {
                    // SAFETY: the features were just detected; the rest is this function's
                    // contract, which is the body's.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected; the rest is this function's
                    // contract, which is the body's.
                    return unsafe { avx2($($arg),*) };
                }
            }
            // SAFETY: this function's contract, which is the body's.
            unsafe { body($($arg),*) }
        }
    };
}
pub(crate) use avx2_fn;

/// Whether the CPU has AVX-512 F, BW and VL, with AVX2 and FMA (what `avx2_fn!`'s `avx512:`
/// bodies are compiled for).
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sum of a slice, accumulated in 16 f32 lanes over blocks of 1024 and across blocks in f64.
#[inline(always)]
pub fn sum(v: &[f32]) -> f64 {
    let mut total = 0f64;
    for block in v.chunks(1024) {
        let mut acc = [0f32; 16];
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                acc[i] += c[i];
            }
        }
        let tail: f32 = it.remainder().iter().sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// `sum((v - m)^2)`, blocked as [`sum`].
#[inline(always)]
pub fn sum_sq_dev(v: &[f32], m: f32) -> f64 {
    let mut total = 0f64;
    for block in v.chunks(1024) {
        let mut acc = [0f32; 16];
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                let d = c[i] - m;
                acc[i] += d * d;
            }
        }
        let tail: f32 = it.remainder().iter().map(|&x| (x - m) * (x - m)).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// `sum(a * (b - m))`, blocked as [`sum`].
#[inline(always)]
pub fn sum_prod_dev(a: &[f32], b: &[f32], m: f32) -> f64 {
    let mut total = 0f64;
    for (ba, bb) in a.chunks(1024).zip(b.chunks(1024)) {
        let mut acc = [0f32; 16];
        let mut ia = ba.chunks_exact(16);
        let mut ib = bb.chunks_exact(16);
        for (ca, cb) in (&mut ia).zip(&mut ib) {
            for i in 0..16 {
                acc[i] += ca[i] * (cb[i] - m);
            }
        }
        let tail: f32 = ia.remainder().iter().zip(ib.remainder()).map(|(&x, &y)| x * (y - m)).sum();
        total += acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
        assert!(exp(200.0) > 1e38 && exp(200.0).is_finite());
        assert!((sigmoid(-200.0)).abs() < 1e-30 && sigmoid(200.0) == 1.0);
    }

    #[test]
    fn sums() {
        let v: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.01).sin()).collect();
        let want: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum(&v) - want).abs() < 1e-3);
        let m = 0.25f32;
        let want: f64 = v.iter().map(|&x| ((x - m) as f64).powi(2)).sum();
        assert!((sum_sq_dev(&v, m) - want).abs() < 1e-2);
        let w: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.03).cos()).collect();
        let want: f64 = w.iter().zip(&v).map(|(&a, &b)| a as f64 * (b - m) as f64).sum();
        assert!((sum_prod_dev(&w, &v, m) - want).abs() < 1e-2);
    }
}
