//! The slice-level CPU algorithms of the fused GroupNorm op:
//! `y = act(GN(x) * gamma + beta) * (1 + scale) + shift)` with `act` = SiLU or identity, in one
//! pass per (image, group) for the forward, and three passes (statistics, sums, input gradient)
//! for the backward, which recomputes the statistics instead of storing them.
//!
//! Per channel `c` of image `n` the forward is the affine map `z = a x + b` with
//! `a = rstd * gamma_c * (1 + scale_nc)` and `b = (beta_c - mean * rstd * gamma_c) * (1 + scale_nc)
//! + shift_nc`, so the whole op is one read and one write of the tensor.
use rayon::prelude::*;

use super::scratch;
use super::vmath;

/// Shapes and options of one fused GroupNorm call. `x` is `[n, c, hw]`; `gb` is `[2, c]`
/// (gamma, then beta); `ss` is `[n, 2c]` (scale, then shift) or all zeros.
#[derive(Clone, Copy, Debug)]
pub struct Gn {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl Gn {
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn group_len(&self) -> usize {
        self.cg() * self.hw
    }
    /// `(mean, rstd)` of one group's values.
    #[inline(always)]
    fn stats(&self, xg: &[f32]) -> (f32, f32) {
        let len = xg.len().max(1) as f64;
        let mean = (vmath::sum(xg) / len) as f32;
        let var = vmath::sum_sq_dev(xg, mean) / len;
        (mean, (1.0 / (var + self.eps).sqrt()) as f32)
    }
    /// `(a, b, k)` of channel `c` of image `n`: `z = a x + b`, `du/dz`-factor `k = gamma (1 + s)`.
    #[inline(always)]
    fn coeffs(
        &self,
        gb: &[f32],
        ss: &[f32],
        n: usize,
        c: usize,
        mean: f32,
        rstd: f32,
    ) -> (f32, f32, f32) {
        let (gamma, beta) = (gb[c], gb[self.c + c]);
        let (s1, shift) = (1.0 + ss[n * 2 * self.c + c], ss[n * 2 * self.c + self.c + c]);
        let k = gamma * s1;
        (rstd * k, (beta - mean * rstd * gamma) * s1 + shift, k)
    }
}

/// Forward into `y` (same layout as `x`), a few (image, group) blocks per task.
pub fn forward(p: &Gn, x: &[f32], gb: &[f32], ss: &[f32], y: &mut [f32]) {
    let gl = p.group_len().max(1);
    let per = blocks_per_task(gl);
    if p.n * p.c * p.hw == 0 {
        return;
    }
    y[..p.n * p.c * p.hw].par_chunks_mut(gl * per).enumerate().for_each(|(i, ys)| {
        for (j, yg) in ys.chunks_mut(gl).enumerate() {
            let t = i * per + j;
            forward_group(p, t, &x[t * gl..(t + 1) * gl], gb, ss, yg);
        }
    });
}

/// Groups of ~16 Ki values per rayon task at least, so that small groups do not drown in
/// task overhead.
fn blocks_per_task(group_len: usize) -> usize {
    (16 * 1024 / group_len).max(1)
}

vmath::avx2_fn! {
    /// One (image, group) block `t` of the forward.
    fn forward_group(p: &Gn, t: usize, xg: &[f32], gb: &[f32], ss: &[f32], yg: &mut [f32]) {
        let (n, g) = (t / p.groups, t % p.groups);
        let (cg, hw) = (p.cg(), p.hw);
        let (mean, rstd) = p.stats(xg);
        for j in 0..cg {
            let (a, b, _) = p.coeffs(gb, ss, n, g * cg + j, mean, rstd);
            let (xs, ys) = (&xg[j * hw..(j + 1) * hw], &mut yg[j * hw..(j + 1) * hw]);
            if p.silu {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    let z = a * v + b;
                    *o = z * vmath::sigmoid(z);
                }
            } else {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    *o = a * v + b;
                }
            }
        }
    }
}

/// Backward: `dx` (layout of `x`), `dgb` (`[2, c]`: d gamma, d beta) and `dss` (`[n, 2c]`:
/// d scale, d shift) from the output gradient `dy`.
pub fn backward(
    p: &Gn,
    x: &[f32],
    gb: &[f32],
    ss: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgb: &mut [f32],
    dss: &mut [f32],
) {
    let gl = p.group_len().max(1);
    let (cg, c) = (p.cg(), p.c);
    let per = blocks_per_task(gl);
    dgb[..2 * c].fill(0.0);
    dss[..p.n * 2 * c].fill(0.0);
    if p.n * c * p.hw == 0 {
        return;
    }
    // Per (n, channel): [sum dz, sum dz * u], written by the task of its group.
    let mut sums = scratch::take(p.n * c * 2);
    dx[..p.n * c * p.hw]
        .par_chunks_mut(gl * per)
        .zip(sums.par_chunks_mut(cg * 2 * per))
        .enumerate()
        .for_each_init(
            || scratch::take(gl),
            |dz, (i, (dxs, sgs))| {
                for (j, (dxg, sg)) in dxs.chunks_mut(gl).zip(sgs.chunks_mut(cg * 2)).enumerate() {
                    let t = i * per + j;
                    let r = t * gl..(t + 1) * gl;
                    backward_group(p, t, &x[r.clone()], gb, ss, &dy[r], dz, dxg, sg);
                }
            },
        );
    // Parameter gradients from the per-(n, c) sums.
    for n in 0..p.n {
        for ch in 0..c {
            let (sum_dz, sum_dzu) = (sums[(n * c + ch) * 2], sums[(n * c + ch) * 2 + 1]);
            let s1 = 1.0 + ss[n * 2 * c + ch];
            let (gamma, beta) = (gb[ch], gb[c + ch]);
            dgb[ch] += s1 * sum_dzu;
            dgb[c + ch] += s1 * sum_dz;
            // z = (gamma u + beta) (1 + scale) + shift
            dss[n * 2 * c + ch] = gamma * sum_dzu + beta * sum_dz;
            dss[n * 2 * c + c + ch] = sum_dz;
        }
    }
}

vmath::avx2_fn! {
    /// One (image, group) block `t` of the backward: `dx` into `dxg`, the per-channel sums
    /// `[sum dz, sum dz u]` into `sg`; `dz` is scratch of the block's size.
    fn backward_group(p: &Gn, t: usize, xg: &[f32], gb: &[f32], ss: &[f32], dyg: &[f32], dz: &mut [f32], dxg: &mut [f32], sg: &mut [f32]) {
        let (n, g) = (t / p.groups, t % p.groups);
        let (cg, hw) = (p.cg(), p.hw);
        let (mean, rstd) = p.stats(xg);
        let (mut s1, mut s2) = (0f64, 0f64);
        for j in 0..cg {
            let (a, b, k) = p.coeffs(gb, ss, n, g * cg + j, mean, rstd);
            let r = j * hw..(j + 1) * hw;
            let (xs, dys, dzs) = (&xg[r.clone()], &dyg[r.clone()], &mut dz[r]);
            if p.silu {
                for ((d, &v), &gy) in dzs.iter_mut().zip(xs).zip(dys) {
                    let z = a * v + b;
                    let s = vmath::sigmoid(z);
                    *d = gy * s * (1.0 + z * (1.0 - s));
                }
            } else {
                dzs.copy_from_slice(dys);
            }
            let sum_dz = vmath::sum(dzs);
            let sum_dzu = vmath::sum_prod_dev(dzs, xs, mean) * rstd as f64;
            sg[2 * j] = sum_dz as f32;
            sg[2 * j + 1] = sum_dzu as f32;
            s1 += k as f64 * sum_dz;
            s2 += k as f64 * sum_dzu;
        }
        let len = (cg * hw).max(1) as f64;
        let (m1, m2) = ((s1 / len) as f32, (s2 / len) as f32);
        for j in 0..cg {
            let (_, _, k) = p.coeffs(gb, ss, n, g * cg + j, mean, rstd);
            let r = j * hw..(j + 1) * hw;
            // dx = rstd * (k dz - m1 - u m2), u = (x - mean) rstd
            let (ka, c0, cx) = (rstd * k, -rstd * (m1 - mean * rstd * m2), -rstd * rstd * m2);
            for ((o, &v), &d) in dxg[r.clone()].iter_mut().zip(&xg[r.clone()]).zip(&dz[r]) {
                *o = ka * d + c0 + cx * v;
            }
        }
    }
}
