//! `DiffusionConfig`: the flags of the reference's `create_gaussian_diffusion` (the same names as
//! its keyword arguments and the golden fixtures' `params.diffusion`), and how they pick the
//! schedule, respacing, mean/variance types and loss.
use super::gaussian::{GaussianDiffusion, LossType, ModelMeanType, ModelVarType, ProcessKind};
use super::respace::space_timesteps;
use super::schedule::{get_named_beta_schedule, NoiseSchedule};
use crate::Result;

/// The keyword arguments of `create_gaussian_diffusion`, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    pub steps: usize,
    /// The model outputs 2C channels; variance type LEARNED_RANGE.
    pub learn_sigma: bool,
    /// FIXED_SMALL instead of FIXED_LARGE variance (without learn_sigma).
    pub sigma_small: bool,
    pub noise_schedule: NoiseSchedule,
    /// Loss RESCALED_KL.
    pub use_kl: bool,
    /// Mean type START_X instead of EPSILON.
    pub predict_xstart: bool,
    pub rescale_timesteps: bool,
    /// Loss RESCALED_MSE (unless use_kl).
    pub rescale_learned_sigmas: bool,
    /// `""` (none), `"250"`, `"10,15,20"` or `"ddimN"`.
    pub timestep_respacing: String,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            learn_sigma: false,
            sigma_small: false,
            noise_schedule: NoiseSchedule::Linear,
            use_kl: false,
            predict_xstart: false,
            rescale_timesteps: false,
            rescale_learned_sigmas: false,
            timestep_respacing: String::new(),
        }
    }
}

impl DiffusionConfig {
    /// The process kind these flags select.
    pub fn kind(&self) -> ProcessKind {
        let loss_type = if self.use_kl {
            LossType::RescaledKl
        } else if self.rescale_learned_sigmas {
            LossType::RescaledMse
        } else {
            LossType::Mse
        };
        ProcessKind {
            model_mean_type: if self.predict_xstart {
                ModelMeanType::StartX
            } else {
                ModelMeanType::Epsilon
            },
            model_var_type: if self.learn_sigma {
                ModelVarType::LearnedRange
            } else if self.sigma_small {
                ModelVarType::FixedSmall
            } else {
                ModelVarType::FixedLarge
            },
            loss_type,
            rescale_timesteps: self.rescale_timesteps,
        }
    }

    /// `create_gaussian_diffusion(**self)`.
    pub fn build(&self) -> Result<GaussianDiffusion> {
        if self.steps == 0 {
            crate::bail!("diffusion_steps 0: expected at least 1 (--diffusion_steps)");
        }
        crate::limits::check(
            "diffusion_steps (--diffusion_steps)",
            self.steps,
            crate::limits::MAX_DIFFUSION_STEPS,
        )?;
        let betas = get_named_beta_schedule(self.noise_schedule, self.steps);
        let use_timesteps = space_timesteps(self.steps, &self.timestep_respacing)?;
        GaussianDiffusion::spaced(betas, &use_timesteps, self.kind())
    }
}
