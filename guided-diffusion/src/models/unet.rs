//! `UNetModel` (the ADM denoiser) and `SuperResModel` (the same UNet fed the bilinearly
//! upsampled low-resolution image as extra input channels).
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::attention::AttentionBlock;
use super::config::UNetConfig;
use super::layers::{embedding, Conv2d, Exec, GroupNorm32};
use super::resblock::{ResBlock, Resample};
use super::trunk::{up_layer, Layer, Sequential, TimeEmbed, Trunk};
use crate::kernels::KernelPolicy;
use crate::{bail, Result};

#[derive(Debug, Clone)]
pub struct UNetModel {
    config: UNetConfig,
    time_embed: TimeEmbed,
    label_emb: Option<Tensor>,
    trunk: Trunk,
    output_blocks: Vec<Sequential>,
    out_norm: GroupNorm32,
    out_conv: Conv2d,
    training: bool,
    exec: Exec,
}

impl UNetModel {
    /// Builds the network, taking parameters from `vb` by the reference's names.
    pub fn new(config: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_input_channels(config, config.trunk.in_channels, vb)
    }

    /// `in_channels` may differ from the config's (the super-res model doubles it).
    pub(crate) fn with_input_channels(
        config: &UNetConfig,
        in_channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.trunk.validate()?;
        let mut tc = config.trunk.clone();
        tc.in_channels = in_channels;
        let emb_dim = 4 * tc.model_channels;
        let time_embed = TimeEmbed::new(tc.model_channels, vb.pp("time_embed"))?;
        let label_emb = match config.num_classes {
            Some(n) => Some(embedding(n, emb_dim, vb.pp("label_emb"))?),
            None => None,
        };
        let trunk = Trunk::new(&tc, emb_dim, vb.clone())?;
        let level_ch = tc.level_channels();
        let heads_up = config.heads_upsample();
        let mut chans = trunk.input_block_chans.clone();
        let mut ch = trunk.ch;
        let mut ds = trunk.ds;
        let mut output_blocks = Vec::new();
        let vbo = vb.pp("output_blocks");
        for level in (0..level_ch.len()).rev() {
            for i in 0..=tc.num_res_blocks {
                let ich = chans.pop().expect("one skip per output block");
                let vbb = vbo.pp(output_blocks.len());
                let out_ch = level_ch[level];
                let mut layers = vec![Layer::Res(ResBlock::new(
                    ch + ich,
                    emb_dim,
                    tc.dropout,
                    out_ch,
                    tc.use_scale_shift_norm,
                    Resample::None,
                    vbb.pp("0"),
                )?)];
                ch = out_ch;
                if tc.attention_resolutions.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(
                        ch,
                        heads_up,
                        tc.num_head_channels,
                        tc.use_new_attention_order,
                        vbb.pp(layers.len()),
                    )?));
                }
                if level > 0 && i == tc.num_res_blocks {
                    layers.push(up_layer(&tc, ch, emb_dim, vbb.pp(layers.len()))?);
                    ds /= 2;
                }
                output_blocks.push(Sequential(layers));
            }
        }
        let out_norm = GroupNorm32::new(ch, vb.pp("out.0"))?;
        // zero_module in the reference.
        let out_conv = Conv2d::k3(level_ch[0], tc.out_channels, true, vb.pp("out.2"))?;
        Ok(UNetModel {
            config: config.clone(),
            time_embed,
            label_emb,
            trunk,
            output_blocks,
            out_norm,
            out_conv,
            training: false,
            exec: Exec::default(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Dropout is active only in training mode (the reference's `model.train()`).
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

    /// Whether the weights' derived forms are kept by `out_conv` (for tests).
    pub fn keeps_weight_forms(&self) -> bool {
        self.out_conv.keeps_forms()
    }

    /// The timestep (+ class) embedding.
    fn embed(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        if t.dims() != [n] {
            bail!("timesteps must have shape [{n}] (one per image), got {:?}", t.dims());
        }
        let emb = self.time_embed.forward(t)?;
        match (&self.label_emb, y) {
            (Some(table), Some(y)) => {
                if y.dims() != [n] {
                    bail!("class labels must have shape [{n}], got {:?}", y.dims());
                }
                let classes = table.dim(0)?;
                let ys: Vec<i64> = y.to_dtype(DType::I64)?.to_vec1()?;
                if let Some(bad) = ys.iter().find(|&&c| c < 0 || c as usize >= classes) {
                    bail!("class label {bad} is out of range: the model has {classes} classes (0..{})", classes - 1);
                }
                let idx = y.to_dtype(DType::U32)?;
                Ok((emb + table.index_select(&idx, 0)?)?)
            }
            (None, None) => Ok(emb),
            (Some(_), None) => {
                bail!("the model is class-conditional: class labels (y) are required")
            }
            (None, Some(_)) => {
                bail!("the model is unconditional: class labels (y) must not be given")
            }
        }
    }

    /// `model(x, timesteps, y)`: `x [N, C, H, W]` f32, `t [N]` (float: may be rescaled),
    /// `y [N]` integer labels for class-conditional models.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let expect = self.trunk_in_channels();
        if c != expect {
            bail!("input has {c} channels, the model expects {expect}");
        }
        let down = 1usize << (self.config.trunk.channel_mult.len() - 1);
        if h % down != 0 || w % down != 0 {
            bail!("input size {h}x{w} is not divisible by {down}, the model's total downsampling");
        }
        let emb = self.embed(x, t, y)?;
        let (ex, train) = (&self.exec, self.training);
        let mut hs = Vec::with_capacity(self.trunk.input_blocks.len());
        let mut h = x.clone();
        for block in &self.trunk.input_blocks {
            h = block.forward(ex, &h, &emb, train)?;
            hs.push(h.clone());
        }
        h = self.trunk.middle_block.forward(ex, &h, &emb, train)?;
        for block in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = block.forward(ex, &h, &emb, train)?;
        }
        self.out_conv.forward(ex, &self.out_norm.forward_silu(ex, &h)?)
    }

    fn trunk_in_channels(&self) -> usize {
        match &self.trunk.input_blocks[0].0[0] {
            Layer::Conv(c) => c.in_channels(),
            _ => unreachable!("input block 0 is the input conv"),
        }
    }
}

/// `SuperResModel`: `F.interpolate(low_res, (H, W), mode="bilinear")` (align_corners=False)
/// concatenated after `x`, then the UNet.
#[derive(Debug, Clone)]
pub struct SuperResModel {
    unet: UNetModel,
}

impl SuperResModel {
    pub fn new(config: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Ok(SuperResModel {
            unet: UNetModel::with_input_channels(config, 2 * config.trunk.in_channels, vb)?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        self.unet.config()
    }

    pub fn set_training(&mut self, training: bool) {
        self.unet.set_training(training)
    }

    pub fn exec(&self) -> &Exec {
        self.unet.exec()
    }

    pub fn exec_mut(&mut self) -> &mut Exec {
        self.unet.exec_mut()
    }

    pub fn set_policy(&mut self, policy: KernelPolicy) {
        self.unet.set_policy(policy)
    }

    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        low_res: &Tensor,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let up = upsample_bilinear(low_res, h, w)?;
        let x = Tensor::cat(&[x, &up], 1)?;
        self.unet.forward(&x, t, y)
    }
}

/// Bilinear resize with `align_corners=False`, as `F.interpolate(mode="bilinear")`.
pub fn upsample_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    Ok(x.upsample_bilinear2d(h, w, false)?)
}
