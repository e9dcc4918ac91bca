//! The residual block of ADM (`ResBlock`) and the plain resamplers (`Upsample`, `Downsample`).
//!
//! A ResBlock is `in_layers = [GN, SiLU, conv3x3]`, `emb_layers = [SiLU, Linear]`,
//! `out_layers = [GN, SiLU, Dropout, conv3x3]` (state-dict indices 0/2, 1, 0/3). With
//! `use_scale_shift_norm` (AdaGN) the embedding gives `scale, shift` (scale first) and
//! `h = GN(h) * (1 + scale) + shift`; otherwise it is added before the output layers. BigGAN-style
//! up/down blocks resample between the input activation and the input conv, and resample the
//! skip path the same way.
use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use super::layers::{dropout, linear, Conv1x1, Conv2d, Exec, GroupNorm32};
use crate::Result;

/// Nearest-neighbour x2 upsampling (`F.interpolate(scale_factor=2, mode="nearest")`).
/// Not candle's `upsample_nearest2d`: its backward overwrites instead of accumulating the input
/// gradient (candle 0.11), which would drop the skip path's gradient in up-sampling ResBlocks.
pub fn upsample_nearest2x(ex: &Exec, x: &Tensor) -> Result<Tensor> {
    Ok(crate::kernels::upsample_nearest2x(&ex.policy, x)?)
}

/// 2x2 average pooling with stride 2 (`AvgPool2d(2, 2)`).
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    Ok(x.avg_pool2d(2)?)
}

/// Resampling inside a ResBlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    Up,
    Down,
}

impl Resample {
    fn apply(self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        match self {
            Resample::None => Ok(x.clone()),
            Resample::Up => upsample_nearest2x(ex, x),
            Resample::Down => avg_pool2x(x),
        }
    }
}

#[derive(Debug, Clone)]
enum Skip {
    Identity,
    Conv1x1(Conv1x1),
}

#[derive(Debug, Clone)]
pub struct ResBlock {
    in_norm: GroupNorm32,
    in_conv: Conv2d,
    emb_linear: candle_nn::Linear,
    out_norm: GroupNorm32,
    out_conv: Conv2d,
    skip: Skip,
    resample: Resample,
    scale_shift: bool,
    dropout: f64,
}

impl ResBlock {
    pub fn new(
        channels: usize,
        emb_channels: usize,
        dropout: f64,
        out_channels: usize,
        use_scale_shift_norm: bool,
        resample: Resample,
        vb: VarBuilder,
    ) -> Result<Self> {
        let in_norm = GroupNorm32::new(channels, vb.pp("in_layers.0"))?;
        let in_conv = Conv2d::k3(channels, out_channels, false, vb.pp("in_layers.2"))?;
        let emb_out = if use_scale_shift_norm { 2 * out_channels } else { out_channels };
        let emb_linear = linear(emb_channels, emb_out, vb.pp("emb_layers.1"))?;
        let out_norm = GroupNorm32::new(out_channels, vb.pp("out_layers.0"))?;
        // zero_module in the reference.
        let out_conv = Conv2d::k3(out_channels, out_channels, true, vb.pp("out_layers.3"))?;
        // `use_conv` (a 3x3 skip) is never used by the UNet or the encoder.
        let skip = if out_channels == channels {
            Skip::Identity
        } else {
            Skip::Conv1x1(Conv1x1::new(channels, out_channels, 2, false, vb.pp("skip_connection"))?)
        };
        Ok(ResBlock {
            in_norm,
            in_conv,
            emb_linear,
            out_norm,
            out_conv,
            skip,
            resample,
            scale_shift: use_scale_shift_norm,
            dropout,
        })
    }

    /// `x: [N, C, H, W]`, `emb: [N, E]`.
    pub fn forward(&self, ex: &Exec, x: &Tensor, emb: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.in_norm.forward_silu(ex, x)?;
        let h = self.resample.apply(ex, &h)?;
        let x = self.resample.apply(ex, x)?;
        let h = self.in_conv.forward(ex, &h)?;
        let emb_out = self.emb_linear.forward(&emb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = if self.scale_shift {
            let half = emb_out.dim(1)? / 2;
            let scale = emb_out.narrow(1, 0, half)?;
            let shift = emb_out.narrow(1, half, half)?;
            self.out_norm.forward_scale_shift_silu(ex, &h, &scale, &shift)?
        } else {
            self.out_norm.forward_silu(ex, &h.broadcast_add(&emb_out)?)?
        };
        let h = dropout(&h, self.dropout, train)?;
        let h = self.out_conv.forward(ex, &h)?;
        let skip = match &self.skip {
            Skip::Identity => x,
            Skip::Conv1x1(c) => c.forward_2d(ex, &x)?,
        };
        Ok((skip + h)?)
    }
}

/// `Downsample`: a stride-2 3x3 conv (`op`) with `conv_resample`, else 2x2 average pooling.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Option<Conv2d>,
}

impl Downsample {
    pub fn new(
        channels: usize,
        use_conv: bool,
        out_channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = if use_conv {
            Some(Conv2d::new(channels, out_channels, 3, 2, 1, false, vb.pp("op"))?)
        } else {
            None
        };
        Ok(Downsample { conv })
    }

    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        match &self.conv {
            Some(c) => c.forward(ex, x),
            None => avg_pool2x(x),
        }
    }
}

/// `Upsample`: nearest x2, then a 3x3 conv (`conv`) with `conv_resample`.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Option<Conv2d>,
}

impl Upsample {
    pub fn new(
        channels: usize,
        use_conv: bool,
        out_channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = if use_conv {
            Some(Conv2d::k3(channels, out_channels, false, vb.pp("conv"))?)
        } else {
            None
        };
        Ok(Upsample { conv })
    }

    pub fn forward(&self, ex: &Exec, x: &Tensor) -> Result<Tensor> {
        let h = upsample_nearest2x(ex, x)?;
        match &self.conv {
            Some(c) => c.forward(ex, &h),
            None => Ok(h),
        }
    }
}
