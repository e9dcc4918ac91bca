//! `gdiff super-res`: `super_res_sample.py` — upsample `--base_samples` with a super-resolution
//! model. Unlike the reference, the sampler flags are honoured (`--use_ddim True`, `--sampler
//! dpm-solver++ ...`; the reference always runs DDPM), and `--cfg_scale` guides a
//! class-conditional upsampler trained with label dropout.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use guided_diffusion::load::Checkpoint;
use guided_diffusion::models::NetConfig;
use guided_diffusion::sample::{images, Classes, GuidanceSettings, Request, Sampling};

use super::sample::{guidance_flags, read_init_noise, run_and_write, seed_or_random};
use crate::cli::args::{DiffusionArgs, ModelArgs, SamplingArgs};
use crate::cli::sampler::{check_builds, sampler_spec};
use crate::cli::shard;
use crate::cli::{output, resolve};
use crate::commands::sample::DEFAULT_NUM_SAMPLES;
use guided_diffusion::dist::Distributed;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SuperResArgs {
    /// Low-resolution samples: .npz with arr_0 uint8 NHWC (and arr_1 labels for class-conditional models)
    #[arg(long)]
    pub base_samples: PathBuf,
    /// Output side [default: 256]
    #[arg(long)]
    pub large_size: Option<usize>,
    /// Input side [default: 64]
    #[arg(long)]
    pub small_size: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

pub fn run(a: &SuperResArgs) -> Result<()> {
    let dist = shard::init()?;
    shard::run_or_abort(dist.as_ref(), || run_with(a, dist.as_ref()))
}

fn run_with(a: &SuperResArgs, dist: &dyn Distributed) -> Result<()> {
    let device = output::device(&a.sampling.device)?;
    let Some(model_path) = &a.sampling.model_path else {
        bail!("--model_path is required for super-res");
    };
    if !model_path.exists() {
        bail!("--model_path {}: no such file", model_path.display());
    }
    let large =
        a.large_size.unwrap_or(guided_diffusion::models::defaults::sr_create_model::LARGE_SIZE);
    let small =
        a.small_size.unwrap_or(guided_diffusion::models::defaults::sr_create_model::SMALL_SIZE);
    let ckpt = Checkpoint::read(model_path, &device)?;
    let cfg = resolve::super_res_config(&a.model, large, small, ckpt.info.net.as_ref())?;
    let s = &a.sampling;
    let policy = crate::cli::policy::with_precision(&s.precision, &device, &s.device, s.quiet)?;
    let info = ckpt.info.clone();
    let model = ckpt.into_network(&NetConfig::SuperRes(cfg.clone()))?;
    let model = crate::cli::policy::prepare(model, policy);
    let dcfg = resolve::diffusion_config(&a.diffusion, info.diffusion.clone(), cfg.learns_sigma())?;
    let spec = sampler_spec(
        &a.sampling.sampler,
        a.diffusion.timestep_respacing.as_deref(),
        a.sampling.clip_denoised,
        "ddpm",
    )?;
    check_builds(&spec, &dcfg, &a.sampling.sampler, a.diffusion.timestep_respacing.as_deref())?;
    let g = guidance_flags(&a.sampling, &info, cfg.num_classes, false)?;

    let base = output::read_npz_array(&a.base_samples, "arr_0")?;
    if base.dtype() != DType::U8 || base.rank() != 4 {
        bail!(
            "{}: arr_0 must be uint8 NHWC images, got {:?} {:?}",
            a.base_samples.display(),
            base.dtype(),
            base.dims()
        );
    }
    let (n, h, w, c) = base.dims4()?;
    if c != cfg.trunk.in_channels || h != small || w != small {
        bail!(
            "{}: arr_0 holds {h}x{w}x{c} images; --small_size {small} with {} channels was expected",
            a.base_samples.display(),
            cfg.trunk.in_channels
        );
    }
    let classes = if cfg.num_classes.is_some() {
        let labels = output::read_npz_array(&a.base_samples, "arr_1").map_err(|e| {
            anyhow::anyhow!("{e} (a class-conditional super-res model needs the labels in arr_1)")
        })?;
        let l: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        if l.len() != n || l.iter().any(|&v| v < 0) {
            bail!("{}: arr_1 must hold {n} non-negative labels", a.base_samples.display());
        }
        Classes::Cycle(l.into_iter().map(|v| v as usize).collect())
    } else {
        Classes::Random
    };
    let low_res = images::from_uint8_nhwc(&base)?;
    if let Some(k) = a.sampling.num_samples {
        guided_diffusion::limits::check_num_samples("--num_samples", k)?;
    }
    guided_diffusion::limits::check_batch_size("--batch_size", a.sampling.batch_size)?;
    let num_samples = a.sampling.num_samples.unwrap_or(DEFAULT_NUM_SAMPLES).min(n);
    let init_noise = a.sampling.init_noise.as_deref().map(read_init_noise).transpose()?;
    // Every rank draws the same run: rank 0's seed when none is given.
    let seed = shard::same_seed(dist, seed_or_random(a.sampling.seed))?;
    let s = Sampling {
        model: &model,
        diffusion: &dcfg,
        sampler: &spec,
        guidance: GuidanceSettings {
            classifier: None,
            classifier_free: g.classifier_free,
            interval: g.interval,
            null_branch: None,
        },
        clip_denoised: a.sampling.clip_denoised.unwrap_or(true),
        shape: [cfg.trunk.in_channels, large, large],
        num_classes: cfg.num_classes,
        null_class: g.null_class,
        device,
    };
    let req = Request {
        num_samples,
        batch_size: a.sampling.batch_size,
        classes,
        seed,
        init_noise: init_noise.as_ref(),
        keep_float: false,
        shard: Default::default(),
        low_res: Some(&low_res),
    };
    run_and_write(&s, &req, &a.sampling, None, dist)
}
