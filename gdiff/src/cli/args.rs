//! The reference scripts' flags, by their own names (`--num_channels 192`, `--class_cond True`),
//! grouped as the scripts group them. Every flag is optional so that resolution can tell "not
//! given" (take the preset's, the embedded config's or the reference default) from "given"; the
//! network flags are the library's own flag structs (`models::flags`), flattened in.
use clap::Args;
use guided_diffusion::models::{ClassifierFlags, ModelFlags};

/// Booleans as the reference's `str2bool`: yes/true/t/y/1, no/false/f/n/0.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    guided_diffusion::models::flags::bool_value(s)
}

/// Network flags of `create_model` / `sr_create_model` (`model_and_diffusion_defaults`; the
/// library's one flag struct, [`ModelFlags`]) and a config file.
#[derive(Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct ModelArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    /// JSON file with the network's constructor arguments ({"builder", "kwargs"} or kwargs)
    #[arg(long)]
    pub model_config: Option<std::path::PathBuf>,
}

/// Flags of `create_gaussian_diffusion`.
#[derive(Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct DiffusionArgs {
    /// Steps of the training process [default: 1000]
    #[arg(long)]
    pub diffusion_steps: Option<usize>,
    /// linear or cosine [default: linear]
    #[arg(long)]
    pub noise_schedule: Option<String>,
    /// Sampling steps: "250", "10,15,20" or "ddim25"; "" = all [default: ""]
    #[arg(long)]
    pub timestep_respacing: Option<String>,
    /// RESCALED_KL loss [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub use_kl: Option<bool>,
    /// The model predicts x_0 instead of the noise [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub predict_xstart: Option<bool>,
    /// Feed the model t * 1000 / T [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub rescale_timesteps: Option<bool>,
    /// RESCALED_MSE loss [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub rescale_learned_sigmas: Option<bool>,
    /// FIXED_SMALL instead of FIXED_LARGE variance without learn_sigma [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub sigma_small: Option<bool>,
}

/// Flags of `create_classifier` ([`ClassifierFlags`]) plus the checkpoint, a config file and
/// the guidance scale.
#[derive(Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct ClassifierArgs {
    /// Noisy-image classifier checkpoint; guidance is on when given
    #[arg(long)]
    pub classifier_path: Option<std::path::PathBuf>,
    /// Guidance scale [default: 1.0]
    #[arg(long, allow_negative_numbers = true)]
    pub classifier_scale: Option<f64>,
    #[command(flatten)]
    pub flags: ClassifierFlags,
    /// JSON file with the classifier's constructor arguments
    #[arg(long)]
    pub classifier_config: Option<std::path::PathBuf>,
}

/// What every sampling command shares.
#[derive(Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct SamplingArgs {
    /// Diffusion model checkpoint (.pt or .safetensors) [default: the built-in model]
    #[arg(long)]
    pub model_path: Option<std::path::PathBuf>,
    /// Clamp the x_0 prediction to [-1, 1] (ddpm, ddim) [default: True]
    #[arg(long, value_parser = parse_bool)]
    pub clip_denoised: Option<bool>,
    /// Number of images to produce [default: 10000; 20 with the built-in model]
    #[arg(long)]
    pub num_samples: Option<usize>,
    /// Images per model call
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Classifier-free guidance scale S: eps_uncond + S * (eps_cond - eps_uncond), one network
    /// call on a double batch per step; 1 = conditional. Needs a model trained with
    /// --class_dropout_prob (or --null_class)
    #[arg(long, allow_negative_numbers = true)]
    pub cfg_scale: Option<f64>,
    /// The null (unconditional) label of classifier-free guidance [default: the checkpoint's]
    #[arg(long)]
    pub null_class: Option<usize>,
    /// Guide only at timesteps in [LO, HI] of the original process (e.g. 0,700), using the
    /// conditional output alone elsewhere (Kynkäänniemi et al. 2024) [default: 0,400 on the
    /// built-in model, where it keeps the samples as diverse as real images
    /// (models/fashion-mnist); every step otherwise]
    #[arg(long)]
    pub guidance_interval: Option<String>,
    /// Labels to sample, cycled over the samples, e.g. "3,7" [default: random]
    #[arg(long)]
    pub classes: Option<String>,
    /// Seed; sample i gets the same noise whatever the batch size [default: random]
    #[arg(long)]
    pub seed: Option<u64>,
    /// x_T for every sample: a float32 NCHW .npy
    #[arg(long)]
    pub init_noise: Option<std::path::PathBuf>,
    /// Output .npz (arr_0 uint8 NHWC, arr_1 int64 labels) [default: samples_{N}x{H}x{W}x3.npz]
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Also write the final x_0 as float32 NCHW .npy, before the uint8 conversion
    #[arg(long)]
    pub output_float: Option<std::path::PathBuf>,
    /// PNG grid of the samples [default: beside the npz]
    #[arg(long)]
    pub grid: Option<std::path::PathBuf>,
    /// Do not write the PNG grid
    #[arg(long)]
    pub no_grid: bool,
    /// Fill the flags of a released checkpoint family: imagenet64, imagenet128, imagenet256,
    /// imagenet256-uncond, imagenet512, upsample64-256, upsample128-512, lsun
    #[arg(long)]
    pub preset: Option<String>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    /// cpu, or cuda / cuda:N (with the cuda build feature)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision on the CPU: f32, or bf16 (convolutions and attention products take operands
    /// rounded to bfloat16 and sum in f32; on Intel AMX or AVX512_BF16, whichever the CPU has;
    /// a CPU with neither runs f32 and says so). The reference's --use_fp16 runs its
    /// convolutions in float16; here --use_fp16 keeps f32 and this flag is the counterpart
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
}

/// The sampler: a name (or a whole spec) and its parameters as flags. Each flag is checked
/// against the chosen sampler: one that does not apply is an error, never ignored.
#[derive(Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct SamplerArgs {
    /// ddpm, ddim, dpm-solver, dpm-solver++ or sde-dpm-solver++, or a whole spec ("dpm-solver++
    /// steps=20 order=3") [default: ddpm, ddim with --use_ddim True; for the built-in model
    /// "sde-dpm-solver++20 clip_denoised=true", SDE-DPM-Solver++(2M), 20 steps, x_0 clamped,
    /// or its ODE form "dpm-solver++20 clip_denoised=true" with --method, --atol, --rtol or
    /// --order 3]
    #[arg(long)]
    pub sampler: Option<String>,
    /// DDIM instead of ancestral (DDPM) sampling (the reference's flag; = --sampler ddim)
    #[arg(long, value_parser = parse_bool)]
    pub use_ddim: Option<bool>,
    /// Sampling steps: a number. DDPM/DDIM respace to N steps (--timestep_respacing takes the
    /// reference's strings, "250" or "ddim25"); DPM-Solver's model evaluations
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM stochasticity in [0, 1] (0 = deterministic) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    pub eta: Option<f64>,
    /// DPM-Solver order: 1, 2 or 3 [default: 2]
    #[arg(long)]
    pub order: Option<usize>,
    /// DPM-Solver method: multistep, singlestep, singlestep_fixed or adaptive [default: multistep]
    #[arg(long)]
    pub method: Option<String>,
    /// DPM-Solver time steps: time_uniform, logSNR or time_quadratic [default: time_uniform]
    #[arg(long)]
    pub skip_type: Option<String>,
    /// DPM-Solver higher-order form: dpmsolver or taylor [default: dpmsolver]
    #[arg(long)]
    pub solver_type: Option<String>,
    /// DPM-Solver multistep: lower orders for the last steps below 10 steps [default: True]
    #[arg(long, value_parser = parse_bool)]
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: dynamic thresholding of x_0 (ratio 0.995, max 1) [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub thresholding: Option<bool>,
    /// DPM-Solver: one more data-prediction step to t = 0 at the end [default: False]
    #[arg(long, value_parser = parse_bool)]
    pub denoise_to_zero: Option<bool>,
    /// DPM-Solver adaptive: absolute tolerance [default: 0.0078]
    #[arg(long, allow_negative_numbers = true)]
    pub atol: Option<f64>,
    /// DPM-Solver adaptive: relative tolerance [default: 0.05]
    #[arg(long, allow_negative_numbers = true)]
    pub rtol: Option<f64>,
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};
    use guided_diffusion::models::{ClassifierFlags, ModelFlags};

    use super::{ClassifierArgs, ModelArgs};

    /// A default as the help text writes it: Python's spelling.
    fn spelled(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Bool(true) => "True".into(),
            serde_json::Value::Bool(false) => "False".into(),
            serde_json::Value::String(s) if s.is_empty() => "\"\"".into(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// Every `[default: X]` in the help of a flag is the value the library starts from, so the
    /// defaults stay in one place (`models::defaults`).
    #[test]
    fn help_defaults_are_the_library_defaults() {
        let cases = [
            (
                ModelArgs::augment_args(Command::new("m")),
                serde_json::to_value(ModelFlags::script_defaults()),
            ),
            (
                ClassifierArgs::augment_args(Command::new("c")),
                serde_json::to_value(ClassifierFlags::script_defaults()),
            ),
        ];
        let mut checked = 0;
        for (cmd, defaults) in cases {
            let defaults = defaults.unwrap();
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let Some(d) = help.split("[default: ").nth(1) else { continue };
                let id = arg.get_id().as_str();
                let Some(want) = defaults.get(id) else { continue };
                assert_eq!(d.trim_end_matches(']'), spelled(want), "--{id}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} defaults checked");
    }
}
