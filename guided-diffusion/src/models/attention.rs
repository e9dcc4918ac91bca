//! Self-attention over spatial positions: `AttentionBlock`, the two QKV head layouts, and the
//! classifier's `AttentionPool2d`.
//!
//! Head layouts (both scale q and k by `1/sqrt(sqrt(ch))` and take the softmax in float32):
//! - legacy (`QKVAttentionLegacy`, the default): reshape `qkv` to `[B*H, 3*ch, T]`, then split,
//!   so each head's channels are `[q_h, k_h, v_h]`;
//! - new order (`QKVAttention`): split q, k, v first, then view each as `[B*H, ch, T]`.
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::layers::{softmax_last_f32, Conv1x1, Exec, GroupNorm32};
use crate::kernels::KernelPolicy;
use crate::{bail, Result};

/// Which QKV head layout a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOrder {
    Legacy,
    New,
}

/// `qkv: [B, 3*H*ch, T] -> [B, H*ch, T]`; the fast kernel where `policy` has it.
pub fn qkv_attention(
    policy: &KernelPolicy,
    qkv: &Tensor,
    heads: usize,
    order: HeadOrder,
) -> Result<Tensor> {
    let (b, width, t) = qkv.dims3()?;
    if width % (3 * heads) != 0 {
        bail!("attention: qkv width {width} is not divisible by 3 * {heads} heads");
    }
    if let Some(fast) =
        crate::kernels::attention::qkv_attention(policy, qkv, heads, order == HeadOrder::New)?
    {
        return Ok(fast);
    }
    let ch = width / (3 * heads);
    let (q, k, v) = match order {
        HeadOrder::Legacy => {
            let r = qkv.reshape((b * heads, 3 * ch, t))?;
            (r.narrow(1, 0, ch)?, r.narrow(1, ch, ch)?, r.narrow(1, 2 * ch, ch)?)
        }
        HeadOrder::New => {
            let part = |i: usize| -> Result<Tensor> {
                Ok(qkv.narrow(1, i * heads * ch, heads * ch)?.reshape((b * heads, ch, t))?)
            };
            (part(0)?, part(1)?, part(2)?)
        }
    };
    let scale = 1.0 / (ch as f64).sqrt().sqrt();
    let q = (q * scale)?;
    let k = (k * scale)?;
    // weight[b, t, s] = sum_c q[b, c, t] k[b, c, s]
    let weight = q.transpose(1, 2)?.contiguous()?.matmul(&k.contiguous()?)?;
    let weight = softmax_last_f32(policy, &weight)?;
    // a[b, c, t] = sum_s weight[b, t, s] v[b, c, s]
    let a = v.contiguous()?.matmul(&weight.transpose(1, 2)?.contiguous()?)?;
    Ok(a.reshape((b, heads * ch, t))?)
}

/// Number of heads: `channels // num_head_channels` when that is set, else `num_heads`.
pub fn head_count(channels: usize, num_heads: usize, num_head_channels: i64) -> Result<usize> {
    if num_head_channels == -1 {
        if num_heads == 0 || !channels.is_multiple_of(num_heads) {
            bail!(
                "attention: {channels} channels cannot be split into num_heads={num_heads} heads"
            );
        }
        Ok(num_heads)
    } else {
        let hc = num_head_channels as usize;
        if hc == 0 || !channels.is_multiple_of(hc) {
            bail!(
                "attention: q,k,v channels {channels} are not divisible by \
                 num_head_channels={num_head_channels}"
            );
        }
        Ok(channels / hc)
    }
}

/// `AttentionBlock`: `x + proj_out(attention(qkv(GN(x))))` over the flattened positions.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: GroupNorm32,
    qkv: Conv1x1,
    proj_out: Conv1x1,
    heads: usize,
    order: HeadOrder,
}

impl AttentionBlock {
    pub fn new(
        channels: usize,
        num_heads: usize,
        num_head_channels: i64,
        use_new_attention_order: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let heads = head_count(channels, num_heads, num_head_channels)?;
        Ok(AttentionBlock {
            norm: GroupNorm32::new(channels, vb.pp("norm"))?,
            qkv: Conv1x1::new(channels, 3 * channels, 1, false, vb.pp("qkv"))?,
            // zero_module in the reference.
            proj_out: Conv1x1::new(channels, channels, 1, true, vb.pp("proj_out"))?,
            heads,
            order: if use_new_attention_order { HeadOrder::New } else { HeadOrder::Legacy },
        })
    }

    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let x = x.reshape((b, c, h * w))?;
        let qkv = self.qkv.forward(ex, &self.norm.forward(ex, &x)?)?;
        let a = qkv_attention(&ex.policy, &qkv, self.heads, self.order)?;
        let out = (x + self.proj_out.forward(ex, &a)?)?;
        Ok(out.reshape((b, c, h, w))?)
    }
}

/// `AttentionPool2d` (from CLIP): prepend the spatial mean as token 0, add a learned positional
/// embedding, attend with the *new* head order (whatever the trunk uses) and return token 0.
#[derive(Debug, Clone)]
pub struct AttentionPool2d {
    positional_embedding: Tensor,
    qkv_proj: Conv1x1,
    c_proj: Conv1x1,
    heads: usize,
}

impl AttentionPool2d {
    pub fn new(
        spatial: usize,
        embed_dim: usize,
        num_head_channels: usize,
        output_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let tokens = spatial * spatial + 1;
        let stdev = 1.0 / (embed_dim as f64).sqrt();
        let positional_embedding = vb.get_with_hints(
            (embed_dim, tokens),
            "positional_embedding",
            Init::Randn { mean: 0.0, stdev },
        )?;
        let heads = head_count(embed_dim, 1, num_head_channels as i64)?;
        Ok(AttentionPool2d {
            positional_embedding,
            qkv_proj: Conv1x1::new(embed_dim, 3 * embed_dim, 1, false, vb.pp("qkv_proj"))?,
            c_proj: Conv1x1::new(embed_dim, output_dim, 1, false, vb.pp("c_proj"))?,
            heads,
        })
    }

    /// `[B, C, H, W] -> [B, output_dim]`
    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let x = x.reshape((b, c, h * w))?;
        let mean = x.mean_keepdim(2)?;
        let x = Tensor::cat(&[&mean, &x], 2)?;
        let x = x.broadcast_add(&self.positional_embedding.unsqueeze(0)?)?;
        let qkv = self.qkv_proj.forward(ex, &x)?;
        let a = qkv_attention(&ex.policy, &qkv, self.heads, HeadOrder::New)?;
        let out = self.c_proj.forward(ex, &a)?;
        Ok(out.narrow(2, 0, 1)?.squeeze(2)?)
    }
}
