//! The bf16 convolution forward ([`super::bf16`]): the bf16 product (AMX, or rounding + f32
//! gemm without it) of the weight with the column matrix, which goes from the image straight
//! into AMX's packed form two rows at a time, with the bias as the product's starting value.
//!
//! Winograd is not used here: its transforms scale and mix the inputs before the product,
//! which would round transformed values instead of the inputs (larger errors than the bf16
//! inputs alone), and AMX's direct product is already faster than f32 Winograd.
use std::sync::OnceLock;

use rayon::prelude::*;

use super::bf16::{self, PackedWeight, Rhs};
use super::conv_cpu::{Conv, SendPtr};

/// `out[n, co, ho, wo] = conv(x, w) + bias` with bf16 inputs and weights, f32 sums.
/// `packed`, when given, keeps the packed weight across calls (a frozen weight's).
pub fn forward(cv: &Conv, x: &[f32], w: &[f32], bias: &[f32], out: &mut [f32], packed: Option<&OnceLock<PackedWeight>>) {
    let g = cv.g;
    let (k, px) = (g.k(), g.out_px());
    assert!(x.len() >= cv.n * g.in_len() && w.len() >= cv.co * k && bias.len() == cv.co && out.len() >= cv.n * cv.co * px);
    let own;
    let pw = match packed {
        Some(p) => p.get_or_init(|| PackedWeight::new(w, cv.co, k)),
        None => {
            own = PackedWeight::new(w, cv.co, k);
            &own
        }
    };
    let plan = cv.plan();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |t: usize| {
        let (img, oy0, oy1) = cv.tile(&plan, t);
        let tp = (oy1 - oy0) * g.wo;
        let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
        // SAFETY: tiles write disjoint output columns of their own image.
        let dst = unsafe { out_ptr.get().add(img * cv.co * px + oy0 * g.wo) };
        let rhs = if g.is_pointwise() {
            Rhs::Rows { b: &xi[oy0 * g.wo..], ld: px }
        } else {
            Rhs::Im2col { x: xi, g: &g, oy0, oy1 }
        };
        unsafe { bf16::gemm(pw, &rhs, tp, bias, dst, px, plan.gemm_threads) };
    };
    if plan.par_tiles {
        (0..plan.tiles).into_par_iter().for_each(run);
    } else {
        (0..plan.tiles).for_each(run);
    }
}
