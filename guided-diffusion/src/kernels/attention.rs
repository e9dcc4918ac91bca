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

use super::policy::KernelPolicy;
use super::scratch;
use super::sgemm::{sgemm_scaled, MatMut, MatRef};
use super::softmax::{softmax_bwd_row_inplace, softmax_row_inplace};

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
    let bf16 = policy.bf16().then(|| policy.uses_amx());
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

    /// `w = softmax(q^T k * scale)`, `[T, T]`.
    fn scores(&self, q: *const f32, k: *const f32, w: &mut [f32]) {
        let t = self.t;
        unsafe {
            sgemm_scaled(
                t,
                t,
                self.ch,
                MatMut::rows(w.as_mut_ptr(), t),
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

/// A raw pointer that may cross threads; the tasks below write disjoint blocks through it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn f32_arg<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{op}: expected f32 data") };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{op}: expected a contiguous tensor") };
    Ok(&v[a..b])
}

/// `bf16`: made in a bf16 policy, `Some(amx)` (the forward's two products in bf16, on AMX
/// with `amx`; the backward f32).
struct Attn {
    heads: usize,
    new_order: bool,
    bf16: Option<bool>,
}

impl CustomOp1 for Attn {
    fn name(&self) -> &'static str {
        "gd-qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let hd = Heads::new(l.dims(), self.heads, self.new_order, self.name())?;
        let x = f32_arg(s, l, self.name())?;
        let (t, ch) = (hd.t, hd.ch);
        let mut out = vec![0f32; hd.b * hd.heads * ch * t];
        if let (Some(amx), true) = (self.bf16, t > 0 && ch > 0) {
            forward_bf16(&hd, x, &mut out, amx);
        } else if t > 0 && ch > 0 {
            // Tasks are (image, head, block of query rows): a block's scores stay in cache
            // between the three passes over them (scores, softmax, product with v).
            let rows = ROW_BLOCK.min(t);
            let blocks = t.div_ceil(rows);
            let optr = SendPtr(out.as_mut_ptr());
            (0..hd.b * hd.heads * blocks).into_par_iter().for_each_init(
                || scratch::take(rows * t),
                |w, task| {
                    let (i, r0) = (task / blocks, (task % blocks) * rows);
                    let nr = rows.min(t - r0);
                    let [q, k, v] = hd.qkv(i).map(|o| x[o..].as_ptr());
                    let w = &mut w[..nr * t];
                    // w[r, s] = softmax_s(scale * sum_c q[c, r0 + r] k[c, s])
                    unsafe {
                        let lhs = MatRef::rows_t(q.add(r0), t);
                        sgemm_scaled(
                            nr,
                            t,
                            ch,
                            MatMut::rows(w.as_mut_ptr(), t),
                            false,
                            lhs,
                            MatRef::rows(k, t),
                            hd.scale(),
                            1,
                        )
                    };
                    for row in w.chunks_mut(t) {
                        softmax_row_inplace(row);
                    }
                    // a[c, r0 + r] = sum_s v[c, s] w[r, s]; this task's columns of head i.
                    // SAFETY: tasks write disjoint column blocks of their head's output.
                    let dst = MatMut::rows(unsafe { optr.get().add(i * ch * t + r0) }, t);
                    let (lhs, rhs) = (MatRef::rows(v, t), MatRef::rows_t(w.as_ptr(), t));
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
        let (x, da) = (f32_arg(s1, l1, op)?, f32_arg(s2, l2, op)?);
        let (t, ch) = (hd.t, hd.ch);
        if l2.dims() != [hd.b, hd.heads * ch, t] {
            bail!("{op}: gradient {:?} does not match qkv {:?}", l2.dims(), l1.dims());
        }
        let mut dx = vec![0f32; x.len()];
        let dptr = SendPtr(dx.as_mut_ptr());
        if t > 0 && ch > 0 {
            (0..hd.b * hd.heads).into_par_iter().for_each_init(
                || (scratch::take(t * t), scratch::take(t * t)),
                |(w, dw), i| {
                    let offs = hd.qkv(i);
                    let [q, k, v] = offs.map(|o| x[o..].as_ptr());
                    // SAFETY: each task writes only its own head's q, k, v blocks.
                    let [dq, dk, dv] = offs.map(|o| unsafe { dptr.get().add(o) });
                    let g = da[i * ch * t..].as_ptr();
                    hd.scores(q, k, w);
                    let s = hd.scale();
                    unsafe {
                        // dv = da w ; dw = da^T v
                        sgemm_scaled(
                            ch,
                            t,
                            t,
                            MatMut::rows(dv, t),
                            false,
                            MatRef::rows(g, t),
                            MatRef::rows(w.as_ptr(), t),
                            1.0,
                            1,
                        );
                        sgemm_scaled(
                            t,
                            t,
                            ch,
                            MatMut::rows(dw.as_mut_ptr(), t),
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
                    unsafe {
                        // dq = s k ds^T ; dk = s q ds
                        sgemm_scaled(
                            ch,
                            t,
                            t,
                            MatMut::rows(dq, t),
                            false,
                            MatRef::rows(k, t),
                            MatRef::rows_t(dw.as_ptr(), t),
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
                            MatRef::rows(dw.as_ptr(), t),
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
/// rows go in blocks; without it (`amx` false), the same rounding goes through the f32
/// products.
fn forward_bf16(hd: &Heads, x: &[f32], out: &mut [f32], amx: bool) {
    use super::bf16::{self, PackedB, PackedWeight, Rhs};
    let (t, ch) = (hd.t, hd.ch);
    let rows = ROW_BLOCK.min(t);
    let optr = SendPtr(out.as_mut_ptr());
    (0..hd.b * hd.heads).into_par_iter().for_each(|i| {
        let [q, k, v] = hd.qkv(i).map(|o| &x[o..o + ch * t]);
        let head = optr.get().wrapping_add(i * ch * t);
        let mut w = scratch::take(rows * t);
        if amx {
            let pk = PackedB::new(&Rhs::Rows { b: k, ld: t }, ch, t);
            let pv = PackedWeight::new(v, ch, t, true);
            let (zr, zc) = (vec![0f32; rows], vec![0f32; ch]);
            for r0 in (0..t).step_by(rows) {
                let nr = rows.min(t - r0);
                let pq = PackedWeight::from_rows(nr, ch, true, |r, row| {
                    for (c, d) in row.iter_mut().enumerate() {
                        *d = q[c * t + r0 + r];
                    }
                });
                // SAFETY: `w` holds nr x t values; the head's output columns r0.. are this
                // task's alone.
                unsafe {
                    bf16::gemm_packed(
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
                unsafe {
                    bf16::gemm(
                        &pv,
                        &Rhs::Cols { b: &w[..nr * t], ld: t },
                        nr,
                        &zc,
                        head.add(r0),
                        t,
                        1,
                    )
                };
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
                unsafe {
                    let lhs = MatRef::rows_t(qr.as_ptr().add(r0), t);
                    sgemm_scaled(
                        nr,
                        t,
                        ch,
                        MatMut::rows(w.as_mut_ptr(), t),
                        false,
                        lhs,
                        MatRef::rows(kr.as_ptr(), t),
                        1.0,
                        1,
                    )
                };
                for row in w.chunks_mut(t) {
                    scaled_softmax(row, hd.scale());
                    bf16::round_slice(row);
                }
                let dst = MatMut::rows(unsafe { head.add(r0) }, t);
                unsafe {
                    sgemm_scaled(
                        ch,
                        nr,
                        t,
                        dst,
                        false,
                        MatRef::rows(vr.as_ptr(), t),
                        MatRef::rows_t(w.as_ptr(), t),
                        1.0,
                        1,
                    )
                };
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
