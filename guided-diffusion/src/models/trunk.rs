//! The shared encoder trunk of the UNet and the classifier: time embedding, input blocks and
//! middle block, built exactly as `UNetModel.__init__` / `EncoderUNetModel.__init__` do, so that
//! the state-dict indices (`input_blocks.4.0.op.weight`, ...) come out the same.
use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use super::attention::AttentionBlock;
use super::config::TrunkConfig;
use super::layers::{linear, timestep_embedding, Conv2d, Exec};
use super::resblock::{Downsample, ResBlock, Resample, Upsample};
use crate::Result;

/// One layer of a `TimestepEmbedSequential`.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attn(AttentionBlock),
    Down(Downsample),
    Up(Upsample),
}

/// `TimestepEmbedSequential`: layers applied in order, ResBlocks also get the embedding.
#[derive(Debug, Clone, Default)]
pub struct Sequential(pub Vec<Layer>);

impl Sequential {
    pub fn forward(&self, ex: &Exec, x: &Tensor, emb: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.0 {
            h = match layer {
                Layer::Conv(c) => c.forward(ex, &h)?,
                Layer::Res(r) => r.forward(ex, &h, emb, train)?,
                Layer::Attn(a) => a.forward(ex, &h)?,
                Layer::Down(d) => d.forward(ex, &h)?,
                Layer::Up(u) => u.forward(ex, &h)?,
            };
        }
        Ok(h)
    }
}

/// `time_embed = Linear(mc, 4mc) -> SiLU -> Linear(4mc, 4mc)` applied to the sinusoidal
/// embedding of the timesteps.
#[derive(Debug, Clone)]
pub struct TimeEmbed {
    l0: candle_nn::Linear,
    l2: candle_nn::Linear,
    model_channels: usize,
}

impl TimeEmbed {
    pub fn new(model_channels: usize, vb: VarBuilder) -> Result<Self> {
        let d = 4 * model_channels;
        Ok(TimeEmbed {
            l0: linear(model_channels, d, vb.pp("0"))?,
            l2: linear(d, d, vb.pp("2"))?,
            model_channels,
        })
    }

    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let e = timestep_embedding(t, self.model_channels, t.device())?;
        Ok(self.l2.forward(&self.l0.forward(&e)?.silu()?)?)
    }
}

/// The built trunk plus the bookkeeping the decoder / pooling heads need.
#[derive(Debug, Clone)]
pub struct Trunk {
    pub input_blocks: Vec<Sequential>,
    pub middle_block: Sequential,
    /// Channels of every input block's output, in order (the UNet's skip connections).
    pub input_block_chans: Vec<usize>,
    /// Channels at the bottom of the trunk.
    pub ch: usize,
    /// Downsample factor at the bottom of the trunk.
    pub ds: usize,
    /// Sum of the channels of every input block and the middle block (`_feature_size`).
    pub feature_size: usize,
}

impl Trunk {
    pub(crate) fn new(cfg: &TrunkConfig, emb_dim: usize, vb: VarBuilder) -> Result<Self> {
        let level_ch = cfg.level_channels();
        let vbi = vb.pp("input_blocks");
        let mut ch = level_ch[0];
        let mut input_blocks = vec![Sequential(vec![Layer::Conv(Conv2d::k3(
            cfg.in_channels,
            ch,
            false,
            vbi.pp("0.0"),
        )?)])];
        let mut input_block_chans = vec![ch];
        let mut feature_size = ch;
        let mut ds = 1;
        for (level, &out_ch) in level_ch.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vbi.pp(input_blocks.len());
                let mut layers = vec![Layer::Res(ResBlock::new(
                    ch,
                    emb_dim,
                    cfg.dropout,
                    out_ch,
                    cfg.use_scale_shift_norm,
                    Resample::None,
                    vbb.pp("0"),
                )?)];
                ch = out_ch;
                if cfg.attention_resolutions.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        ch,
                        cfg.num_heads,
                        cfg.num_head_channels,
                        cfg.use_new_attention_order,
                        vbb.pp("1"),
                    )?));
                }
                input_blocks.push(Sequential(layers));
                feature_size += ch;
                input_block_chans.push(ch);
            }
            if level != level_ch.len() - 1 {
                let vbb = vbi.pp(input_blocks.len()).pp("0");
                let layer = if cfg.resblock_updown {
                    Layer::Res(ResBlock::new(
                        ch,
                        emb_dim,
                        cfg.dropout,
                        ch,
                        cfg.use_scale_shift_norm,
                        Resample::Down,
                        vbb,
                    )?)
                } else {
                    Layer::Down(Downsample::new(ch, cfg.conv_resample, ch, vbb)?)
                };
                input_blocks.push(Sequential(vec![layer]));
                input_block_chans.push(ch);
                ds *= 2;
                feature_size += ch;
            }
        }
        let middle_block = middle(cfg, ch, emb_dim, vb.pp("middle_block"))?;
        feature_size += ch;
        Ok(Trunk { input_blocks, middle_block, input_block_chans, ch, ds, feature_size })
    }
}

fn middle(cfg: &TrunkConfig, ch: usize, emb_dim: usize, vb: VarBuilder) -> Result<Sequential> {
    let res = |vb: VarBuilder| {
        ResBlock::new(ch, emb_dim, cfg.dropout, ch, cfg.use_scale_shift_norm, Resample::None, vb)
    };
    Ok(Sequential(vec![
        Layer::Res(res(vb.pp("0"))?),
        Layer::Attn(AttentionBlock::new(
            ch,
            cfg.num_heads,
            cfg.num_head_channels,
            cfg.use_new_attention_order,
            vb.pp("1"),
        )?),
        Layer::Res(res(vb.pp("2"))?),
    ]))
}

/// The decoder's up block at the end of a level: an up ResBlock or an `Upsample`.
pub(crate) fn up_layer(
    cfg: &TrunkConfig,
    ch: usize,
    emb_dim: usize,
    vb: VarBuilder,
) -> Result<Layer> {
    Ok(if cfg.resblock_updown {
        Layer::Res(ResBlock::new(
            ch,
            emb_dim,
            cfg.dropout,
            ch,
            cfg.use_scale_shift_norm,
            Resample::Up,
            vb,
        )?)
    } else {
        Layer::Up(Upsample::new(ch, cfg.conv_resample, ch, vb)?)
    })
}
