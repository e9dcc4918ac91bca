//! `EncoderUNetModel`: the noise-aware classifier used for guidance — the UNet's trunk (time
//! embedding, input blocks, middle block; no class embedding) and one of four heads:
//! - `adaptive`: GN, SiLU, global average pool, 1x1 conv;
//! - `attention`: GN, SiLU, `AttentionPool2d` (mean token + learned positions, new head order);
//! - `spatial`: the spatial means of every input block's and the middle block's output,
//!   concatenated, then `Linear(feature_size, 2048) -> ReLU -> Linear(2048, out)`;
//! - `spatial_v2`: as spatial with `GN(2048) -> SiLU` in place of the ReLU.
use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use super::attention::AttentionPool2d;
use super::config::{EncoderConfig, Pool};
use super::layers::{linear, Conv1x1, Exec, GroupNorm32};
use super::trunk::{TimeEmbed, Trunk};
use crate::kernels::KernelPolicy;
use crate::{bail, Result};

#[derive(Debug, Clone)]
enum Head {
    Adaptive { norm: GroupNorm32, conv: Conv1x1 },
    Attention { norm: GroupNorm32, pool: AttentionPool2d },
    Spatial { l0: candle_nn::Linear, l2: candle_nn::Linear },
    SpatialV2 { l0: candle_nn::Linear, norm: GroupNorm32, l3: candle_nn::Linear },
}

#[derive(Debug, Clone)]
pub struct EncoderUNetModel {
    config: EncoderConfig,
    time_embed: TimeEmbed,
    trunk: Trunk,
    head: Head,
    training: bool,
    exec: Exec,
}

impl EncoderUNetModel {
    pub fn new(config: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let tc = &config.trunk;
        tc.validate()?;
        let emb_dim = 4 * tc.model_channels;
        let time_embed = TimeEmbed::new(tc.model_channels, vb.pp("time_embed"))?;
        let trunk = Trunk::new(tc, emb_dim, vb.clone())?;
        let ch = trunk.ch;
        let out = vb.pp("out");
        let head = match config.pool {
            Pool::Adaptive => Head::Adaptive {
                norm: GroupNorm32::new(ch, out.pp("0"))?,
                // zero_module in the reference.
                conv: Conv1x1::new(ch, tc.out_channels, 2, true, out.pp("3"))?,
            },
            Pool::Attention => {
                if tc.num_head_channels == -1 {
                    bail!("pool=attention needs num_head_channels != -1");
                }
                Head::Attention {
                    norm: GroupNorm32::new(ch, out.pp("0"))?,
                    pool: AttentionPool2d::new(
                        tc.image_size / trunk.ds,
                        ch,
                        tc.num_head_channels as usize,
                        tc.out_channels,
                        out.pp("2"),
                    )?,
                }
            }
            Pool::Spatial => Head::Spatial {
                l0: linear(trunk.feature_size, 2048, out.pp("0"))?,
                l2: linear(2048, tc.out_channels, out.pp("2"))?,
            },
            Pool::SpatialV2 => Head::SpatialV2 {
                l0: linear(trunk.feature_size, 2048, out.pp("0"))?,
                norm: GroupNorm32::new(2048, out.pp("1"))?,
                l3: linear(2048, tc.out_channels, out.pp("3"))?,
            },
        };
        Ok(EncoderUNetModel {
            config: config.clone(),
            time_embed,
            trunk,
            head,
            training: false,
            exec: Exec::default(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// How calls run: the kernel policy and whether the weights are frozen.
    pub fn exec(&self) -> &Exec {
        &self.exec
    }

    pub fn exec_mut(&mut self) -> &mut Exec {
        &mut self.exec
    }

    /// The kernel policy calls run with (the default until set).
    pub fn set_policy(&mut self, policy: KernelPolicy) {
        self.exec.policy = policy;
    }

    /// `classifier(x, timesteps)`: logits `[N, out_channels]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, t, false)?.0)
    }

    /// Logits and the penultimate features `[N, D]`: for the `adaptive` and `attention` heads
    /// the spatial mean of the normalised, activated trunk output (`D` = the trunk's last
    /// width; what the adaptive head's 1x1 conv sees), for the spatial heads the activated
    /// 2048-wide hidden layer. Used to judge samples with a clean classifier (Fréchet distance
    /// and precision/recall in its feature space).
    pub fn forward_with_features(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (logits, features) = self.run(x, t, true)?;
        Ok((logits, features.expect("features were asked for")))
    }

    fn run(&self, x: &Tensor, t: &Tensor, want_features: bool) -> Result<(Tensor, Option<Tensor>)> {
        let n = x.dim(0)?;
        if t.dims() != [n] {
            bail!("timesteps must have shape [{n}] (one per image), got {:?}", t.dims());
        }
        let emb = self.time_embed.forward(t)?;
        let spatial = matches!(self.head, Head::Spatial { .. } | Head::SpatialV2 { .. });
        let ex = &self.exec;
        let mut means = Vec::new();
        let mut h = x.clone();
        for block in &self.trunk.input_blocks {
            h = block.forward(ex, &h, &emb, self.training)?;
            if spatial {
                means.push(h.mean((2, 3))?);
            }
        }
        h = self.trunk.middle_block.forward(ex, &h, &emb, self.training)?;
        match &self.head {
            Head::Adaptive { norm, conv } => {
                let p = norm.forward_silu(ex, &h)?.mean_keepdim((2, 3))?;
                let features = if want_features { Some(p.flatten_from(1)?) } else { None };
                Ok((conv.forward_2d(ex, &p)?.flatten_from(1)?, features))
            }
            Head::Attention { norm, pool } => {
                let a = norm.forward_silu(ex, &h)?;
                let features = if want_features { Some(a.mean((2, 3))?) } else { None };
                Ok((pool.forward(ex, &a)?, features))
            }
            Head::Spatial { l0, l2 } => {
                means.push(h.mean((2, 3))?);
                let f = Tensor::cat(&means, 1)?;
                let hidden = l0.forward(&f)?.relu()?;
                Ok((l2.forward(&hidden)?, want_features.then_some(hidden)))
            }
            Head::SpatialV2 { l0, norm, l3 } => {
                means.push(h.mean((2, 3))?);
                let f = Tensor::cat(&means, 1)?;
                // GroupNorm over [N, 2048] needs a trailing spatial axis.
                let g = norm.forward_silu(ex, &l0.forward(&f)?.unsqueeze(2)?)?.squeeze(2)?;
                Ok((l3.forward(&g)?, want_features.then_some(g)))
            }
        }
    }
}
