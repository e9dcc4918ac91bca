//! QKV self-attention (`QKVAttention` / `QKVAttentionLegacy` of the reference) as one custom op
//! per direction, with no transposed copies: the scores `q^T k / sqrt(ch)` go straight from
//! strided gemm views into scratch, the softmax runs in place, and `v W^T` is written into the
//! output. The forward pass works on blocks of 64 query rows per task, so a block's scores
//! (256 KiB at T = 1024) stay in cache and a single image with few heads still spreads over the
//! threads; measured the same speed as whole `[T, T]` matrices at T = 1024 (9.7 vs 10.0 ms for 6
//! heads), where the gemms (7.1 ms) and the softmax's exponentials (2.6 ms) dominate. The
//! backward recomputes the scores (no `[T, T]` tensor is kept between passes) and produces the
//! packed q, k, v gradient.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bf16::Unit;
use super::disjoint::Disjoint;
use super::policy::KernelPolicy;
use super::scratch;
use super::sgemm::{sgemm_scaled, MatMut, MatRef};
use super::softmax::{softmax_bwd_row_inplace, softmax_row_inplace};
use super::storage::f32_values;

type Result<T> = candle_core::Result<T>;

/// Query rows per forward task: a `[ROW_BLOCK, T]` block of scores is 256 KiB at T = 1024.
const ROW_BLOCK: usize = 64;

/// `qkv: [B, 3 * heads * ch, T] -> [B, heads * ch, T]` with the legacy head layout (per head
/// `[q, k, v]` blocks) or the new one (`q`, `k`, `v` for all heads, then split); `None` where
/// the fast kernels do not apply (off in `policy`, not f32 on the CPU, width not divisible).
/// The forward's two products are bf16 in a bf16 policy.
pub fn qkv_attention(
    policy: &KernelPolicy,
    qkv: &Tensor,
    heads: usize,
    new_order: bool,
) -> Result<Option<Tensor>> {
    let Ok((_, width, _)) = qkv.dims3() else { return Ok(None) };
    if !policy.applies_to(&[qkv]) || heads == 0 || width % (3 * heads) != 0 {
        return Ok(None);
    }
    let bf16 = policy.bf16().then(|| policy.bf16_unit());
    Ok(Some(qkv.contiguous()?.apply_op1(Attn { heads, new_order, bf16 })?))
}

/// Where the q, k, v blocks (`[ch, T]`, contiguous) of one (image, head) start in `qkv`.
#[derive(Clone, Copy)]
struct Heads {
    b: usize,
    heads: usize,
    ch: usize,
    t: usize,
    new_order: bool,
}

impl Heads {
    fn new(d: &[usize], heads: usize, new_order: bool, op: &str) -> Result<Heads> {
        let &[b, width, t] = d else {
            bail!("{op}: qkv must be [B, 3 * heads * ch, T], got {d:?}")
        };
        if heads == 0 || width % (3 * heads) != 0 {
            bail!("{op}: qkv width {width} is not divisible by 3 * {heads} heads");
        }
        Ok(Heads { b, heads, ch: width / (3 * heads), t, new_order })
    }

    /// Offsets of q, k, v of task `i = image * heads + head`.
    fn qkv(&self, i: usize) -> [usize; 3] {
        let block = self.ch * self.t;
        if self.new_order {
            let (img, h) = (i / self.heads, i % self.heads);
            let base = img * 3 * self.heads * block + h * block;
            [base, base + self.heads * block, base + 2 * self.heads * block]
        } else {
            let base = i * 3 * block;
            [base, base + block, base + 2 * block]
        }
    }

    fn scale(&self) -> f32 {
        // (ch^-1/4)^2 on q and k.
        1.0 / (self.ch as f32).sqrt()
    }

    /// `w = softmax(q^T k * scale)`, `[T, T]`, for the `[ch, T]` blocks `q` and `k`.
    fn scores(&self, q: &[f32], k: &[f32], w: &mut [f32]) {
        let (t, ch) = (self.t, self.ch);
        assert!(q.len() >= ch * t && k.len() >= ch * t && w.len() >= t * t);
        // SAFETY: `q` and `k` hold `ch x T` values, `w` holds `T x T` (checked above) and is
        // ours.
        unsafe {
            sgemm_scaled(
                t,
                t,
                ch,
                MatMut::rows(w, t),
                false,
                MatRef::rows_t(q, t),
                MatRef::rows(k, t),
                self.scale(),
                1,
            )
        };
        for row in w.chunks_mut(t.max(1)) {
            softmax_row_inplace(row);
        }
    }
}

/// `bf16`: made in a bf16 policy, `Some(unit)` (the forward's two products in bf16, on the
/// policy's unit; the backward f32).
struct Attn {
    heads: usize,
    new_order: bool,
    bf16: Option<Unit>,
}

impl CustomOp1 for Attn {
    fn name(&self) -> &'static str {
        "gd-qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let hd = Heads::new(l.dims(), self.heads, self.new_order, self.name())?;
        let x = f32_values(s, l, self.name())?;
        let (t, ch) = (hd.t, hd.ch);
        let mut out = vec![0f32; hd.b * hd.heads * ch * t];
        if let (Some(unit), true) = (self.bf16, t > 0 && ch > 0) {
            forward_bf16(&hd, x, &mut out, unit);
        } else if t > 0 && ch > 0 {
            // Tasks are (image, head, block of query rows): a block's scores stay in cache
            // between the three passes over them (scores, softmax, product with v).
            let rows = ROW_BLOCK.min(t);
            let blocks = t.div_ceil(rows);
            let out = Disjoint::new(&mut out);
            (0..hd.b * hd.heads * blocks).into_par_iter().for_each_init(
                || scratch::take(rows * t),
                |w, task| {
                    let (i, r0) = (task / blocks, (task % blocks) * rows);
                    let nr = rows.min(t - r0);
                    // The `[ch, T]` blocks of head `i` (inside `x`: `Heads::new` checked).
                    let [q, k, v] = hd.qkv(i).map(|o| &x[o..o + ch * t]);
                    let w = &mut w[..nr * t];
                    // w[r, s] = softmax_s(scale * sum_c q[c, r0 + r] k[c, s])
                    let (lhs, rhs) = (MatRef::rows_t(&q[r0..], t), MatRef::rows(k, t));
                    // SAFETY: `lhs` reads query columns r0..r0 + nr of `q`, `rhs` all of `k`,
                    // `dst` is this task's `nr x T` scores `w`.
                    unsafe {
                        sgemm_scaled(nr, t, ch, MatMut::rows(w, t), false, lhs, rhs, hd.scale(), 1)
                    };
                    for row in w.chunks_mut(t) {
                        softmax_row_inplace(row);
                    }
                    // a[c, r0 + r] = sum_s v[c, s] w[r, s]; this task's columns of head i.
                    let dst = MatMut::rows_in(out, i * ch * t + r0, t);
                    let (lhs, rhs) = (MatRef::rows(v, t), MatRef::rows_t(w, t));
                    // SAFETY: `dst` is columns r0..r0 + nr of head `i`'s `[ch, T]` output,
                    // which no other task writes; `v` is `ch x T`, `w` `nr x T`.
                    unsafe { sgemm_scaled(ch, nr, t, dst, false, lhs, rhs, 1.0, 1) };
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((hd.b, hd.heads * ch, t))))
    }

    fn bwd(&self, qkv: &Tensor, _a: &Tensor, da: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &da.contiguous()?,
            &AttnBwd { heads: self.heads, new_order: self.new_order },
        )?))
    }
}

/// `(qkv, da) -> dqkv`.
struct AttnBwd {
    heads: usize,
    new_order: bool,
}

impl CustomOp2 for AttnBwd {
    fn name(&self) -> &'static str {
        "gd-qkv-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let hd = Heads::new(l1.dims(), self.heads, self.new_order, op)?;
        let (x, da) = (f32_values(s1, l1, op)?, f32_values(s2, l2, op)?);
        let (t, ch) = (hd.t, hd.ch);
        if l2.dims() != [hd.b, hd.heads * ch, t] {
            bail!("{op}: gradient {:?} does not match qkv {:?}", l2.dims(), l1.dims());
        }
        let mut dx = vec![0f32; x.len()];
        let dxd = Disjoint::new(&mut dx);
        if t > 0 && ch > 0 {
            (0..hd.b * hd.heads).into_par_iter().for_each_init(
                || (scratch::take(t * t), scratch::take(t * t)),
                |(w, dw), i| {
                    let offs = hd.qkv(i);
                    // The `[ch, T]` blocks of head `i` (inside `x`: `Heads::new` checked).
                    let [q, k, v] = offs.map(|o| &x[o..o + ch * t]);
                    // SAFETY: each task writes only its own head's three blocks, which are
                    // disjoint.
                    let [dq, dk, dv] = offs.map(|o| unsafe { dxd.slice(o, ch * t) });
                    let g = &da[i * ch * t..(i + 1) * ch * t];
                    hd.scores(q, k, w);
                    let (w, dw) = (&w[..t * t], &mut dw[..t * t]);
                    let s = hd.scale();
                    // SAFETY: `g`, `v`, `dv` are `ch x T`, `w` and `dw` `T x T`; `dv` and `dw`
                    // are this task's.
                    unsafe {
                        // dv = da w ; dw = da^T v
                        sgemm_scaled(
                            ch,
                            t,
                            t,
                            MatMut::rows(dv, t),
                            false,
                            MatRef::rows(g, t),
                            MatRef::rows(w, t),
                            1.0,
                            1,
                        );
                        sgemm_scaled(
                            t,
                            t,
                            ch,
                            MatMut::rows(dw, t),
                            false,
                            MatRef::rows_t(g, t),
                            MatRef::rows(v, t),
                            1.0,
                            1,
                        );
                    }
                    // ds = w * (dw - rowsum(dw * w)), in place of dw.
                    for (wr, gr) in w.chunks(t).zip(dw.chunks_mut(t)) {
                        softmax_bwd_row_inplace(wr, gr);
                    }
                    // SAFETY: `k`, `q`, `dq`, `dk` are `ch x T`, `dw` `T x T`; `dq` and `dk`
                    // are this task's.
                    unsafe {
                        // dq = s k ds^T ; dk = s q ds
                        sgemm_scaled(
                            ch,
                            t,
                            t,
                            MatMut::rows(dq, t),
                            false,
                            MatRef::rows(k, t),
                            MatRef::rows_t(dw, t),
                            s,
                            1,
                        );
                        sgemm_scaled(
                            ch,
                            t,
                            t,
                            MatMut::rows(dk, t),
                            false,
                            MatRef::rows(q, t),
                            MatRef::rows(dw, t),
                            s,
                            1,
                        );
                    }
                },
            );
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The forward pass in bf16 ([`super::bf16`]): the scores are the f32 sums of products of
/// bf16-rounded q and k, scaled and softmaxed in f32; the output is the f32 sum of products of
/// bf16-rounded v and softmax weights. On AMX, k and v are packed once per head and the query
/// rows go in blocks; without a bf16 unit ([`Unit::Rounding`]), the same rounding goes
/// through the f32 products.
fn forward_bf16(hd: &Heads, x: &[f32], out: &mut [f32], unit: Unit) {
    use super::bf16::{self, PackedB, PackedWeight, Rhs};
    let (t, ch) = (hd.t, hd.ch);
    let rows = ROW_BLOCK.min(t);
    let out = &mut out[..hd.b * hd.heads * ch * t];
    out.par_chunks_mut(ch * t).enumerate().for_each(|(i, head)| {
        // Head `i`'s `[ch, T]` blocks (inside `x`: `Heads::new` checked) and output.
        let [q, k, v] = hd.qkv(i).map(|o| &x[o..o + ch * t]);
        let mut w = scratch::take(rows * t);
        if unit.packs() {
            let pk = PackedB::new(&Rhs::Rows { b: k, ld: t }, ch, t);
            let pv = PackedWeight::new(v, ch, t, unit);
            let (zr, zc) = (vec![0f32; rows], vec![0f32; ch]);
            for r0 in (0..t).step_by(rows) {
                let nr = rows.min(t - r0);
                let pq = PackedWeight::from_rows(nr, ch, unit, |r, row| {
                    for (c, d) in row.iter_mut().enumerate() {
                        *d = q[c * t + r0 + r];
                    }
                });
                // SAFETY: `pq` is packed for `unit` (the policy's, which the CPU has) with `ch`
                // depth, as `pk`; `w` holds the `nr x T` scores, ours alone.
                unsafe {
                    bf16::gemm_packed(
                        unit,
                        &pq,
                        &pk,
                        super::amx::Start::Bias(&zr[..nr]),
                        w.as_mut_ptr(),
                        t,
                        1,
                    )
                };
                for row in w[..nr * t].chunks_mut(t) {
                    scaled_softmax(row, hd.scale());
                }
                let rhs = Rhs::Cols { b: &w[..nr * t], ld: t };
                // SAFETY: columns r0..r0 + nr of this task's head output (`ch` rows `T`
                // apart); `rhs` has `T` rows of `nr` values; one (zero) bias per row of `pv`;
                // `pv` is packed for `unit`, which the CPU has.
                unsafe { bf16::gemm(unit, &pv, &rhs, nr, &zc, head[r0..].as_mut_ptr(), t, 1) };
            }
        } else {
            let mut qkv = scratch::take(3 * ch * t);
            for (dst, src) in qkv.chunks_mut(ch * t).zip([q, k, v]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = bf16::round(*s);
                }
            }
            let (qr, rest) = qkv.split_at(ch * t);
            let (kr, vr) = rest.split_at(ch * t);
            for r0 in (0..t).step_by(rows) {
                let nr = rows.min(t - r0);
                let w = &mut w[..nr * t];
                let (lhs, rhs) = (MatRef::rows_t(&qr[r0..], t), MatRef::rows(kr, t));
                // SAFETY: query columns r0..r0 + nr of `qr` and all of `kr` (`ch x T`), into
                // this task's `nr x T` scores `w`.
                unsafe { sgemm_scaled(nr, t, ch, MatMut::rows(w, t), false, lhs, rhs, 1.0, 1) };
                for row in w.chunks_mut(t) {
                    scaled_softmax(row, hd.scale());
                    bf16::round_slice(row);
                }
                let (lhs, rhs) = (MatRef::rows(vr, t), MatRef::rows_t(w, t));
                let dst = MatMut::rows(&mut head[r0..], t);
                // SAFETY: `vr` is `ch x T`, `w` `nr x T`; `dst` is columns r0..r0 + nr of this
                // task's head output.
                unsafe { sgemm_scaled(ch, nr, t, dst, false, lhs, rhs, 1.0, 1) };
            }
        }
    });
}

/// `row <- softmax(row * scale)`.
fn scaled_softmax(row: &mut [f32], scale: f32) {
    for v in row.iter_mut() {
        *v *= scale;
    }
    softmax_row_inplace(row);
}
