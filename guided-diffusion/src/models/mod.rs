//! The ADM networks: the UNet denoiser, the super-resolution UNet and the noise-aware
//! classifier, built by the reference's parameter names so released checkpoints load as is.
//!
//! - [`config`]: typed constructor arguments (`TrunkConfig` shared by `UNetConfig` and
//!   `EncoderConfig`; `NetConfig`).
//! - [`flags`]: the reference scripts' flags (one optional-field struct per network kind, with
//!   a merge) and `create_model` / `create_classifier` / `sr_create_model` semantics.
//! - [`defaults`]: every default value of the reference, in one place.
//! - [`describe`]: `{"builder", "kwargs"}` model descriptions into a `NetConfig`.
//! - [`layers`], [`resblock`], [`attention`], [`trunk`]: the blocks.
//! - [`unet`], [`classifier`]: the three networks; [`Net`] holds any of them.
//!
//! A network holds how its calls run ([`Exec`]): the kernel policy the program chose
//! ([`Net::set_policy`]) and whether its weights are frozen ([`Net::freeze`]: their derived
//! forms are kept by the layers). Networks are built from a config and a `VarBuilder`; loading
//! them from checkpoint files (`Net::load*`, `Net::from_tensors`) is the layer above,
//! [`crate::load`], which freezes what it loads (the file's weights are held by nothing
//! else).
pub mod attention;
pub mod classifier;
pub mod config;
pub mod defaults;
pub mod describe;
pub mod flags;
pub mod init;
pub mod layers;
pub mod resblock;
pub mod trunk;
pub mod unet;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

pub use classifier::EncoderUNetModel;
pub use config::{EncoderConfig, NetConfig, Pool, TrunkConfig, UNetConfig};
pub use flags::{ClassifierFlags, ModelFlags};
pub use layers::Exec;
pub use unet::{SuperResModel, UNetModel};

use crate::kernels::KernelPolicy;
use crate::{bail, Error, Result};

/// Any of the three networks.
#[derive(Debug, Clone)]
pub enum Net {
    UNet(UNetModel),
    SuperRes(SuperResModel),
    Classifier(EncoderUNetModel),
}

impl Net {
    /// Builds the network described by `config`, taking parameters from `vb`.
    pub fn new(config: &NetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(match config {
            NetConfig::UNet(c) => Net::UNet(UNetModel::new(c, vb)?),
            NetConfig::SuperRes(c) => Net::SuperRes(SuperResModel::new(c, vb)?),
            NetConfig::Classifier(c) => Net::Classifier(EncoderUNetModel::new(c, vb)?),
        })
    }

    pub fn config(&self) -> NetConfig {
        match self {
            Net::UNet(m) => NetConfig::UNet(m.config().clone()),
            Net::SuperRes(m) => NetConfig::SuperRes(m.config().clone()),
            Net::Classifier(m) => NetConfig::Classifier(m.config().clone()),
        }
    }

    /// Classes the network is conditioned on (UNets with `num_classes`) or predicts
    /// (classifiers); `None` for an unconditional UNet.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Net::UNet(m) => m.config().num_classes,
            Net::SuperRes(m) => m.config().num_classes,
            Net::Classifier(m) => Some(m.config().trunk.out_channels),
        }
    }

    /// Whether `forward` takes class labels (a class-conditional UNet).
    pub fn takes_labels(&self) -> bool {
        !matches!(self, Net::Classifier(_)) && self.num_classes().is_some()
    }

    pub fn set_training(&mut self, training: bool) {
        match self {
            Net::UNet(m) => m.set_training(training),
            Net::SuperRes(m) => m.set_training(training),
            Net::Classifier(m) => m.set_training(training),
        }
    }

    /// How calls run: the kernel policy and whether the weights are frozen.
    pub fn exec(&self) -> &Exec {
        match self {
            Net::UNet(m) => m.exec(),
            Net::SuperRes(m) => m.exec(),
            Net::Classifier(m) => m.exec(),
        }
    }

    fn exec_mut(&mut self) -> &mut Exec {
        match self {
            Net::UNet(m) => m.exec_mut(),
            Net::SuperRes(m) => m.exec_mut(),
            Net::Classifier(m) => m.exec_mut(),
        }
    }

    /// The kernel policy the calls run with.
    pub fn policy(&self) -> KernelPolicy {
        self.exec().policy
    }

    /// Sets the kernel policy the calls run with (the default until set).
    pub fn set_policy(&mut self, policy: KernelPolicy) {
        self.exec_mut().policy = policy;
    }

    /// This network with `policy`.
    pub fn with_policy(mut self, policy: KernelPolicy) -> Self {
        self.set_policy(policy);
        self
    }

    /// Declares the weights fixed from now on: the layers keep their derived forms (Winograd
    /// transforms, flipped and packed weights) across calls. Nobody may write the weights while
    /// frozen; after writing them, freeze again (which drops the forms kept before) or
    /// [`thaw`](Self::thaw). A network built on tensors someone else updates in place (the
    /// EMA's, `train::Ema`) is best left unfrozen.
    pub fn freeze(&mut self) {
        self.exec_mut().freeze();
    }

    /// The weights may be written: derived forms are made per call again.
    pub fn thaw(&mut self) {
        self.exec_mut().thaw();
    }

    /// One call of the network: `x [N, C, H, W]` f32, `t [N]` f32 timesteps as the network sees
    /// them, `y [N]` class labels (class-conditional models), `low_res` (super-res models).
    /// A classifier returns logits `[N, classes]` and ignores `y`. Differentiable in `x`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        low_res: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? };
        match self {
            Net::UNet(m) => {
                if low_res.is_some() {
                    bail!("low_res is only for super-resolution models");
                }
                m.forward(x, &t, y)
            }
            Net::SuperRes(m) => {
                let lr =
                    low_res.ok_or_else(|| Error::msg("a super-resolution model needs low_res"))?;
                m.forward(x, &t, lr, y)
            }
            Net::Classifier(m) => m.forward(x, &t),
        }
    }
}
