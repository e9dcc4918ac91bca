//! `gdiff sample`: `image_sample.py` and `classifier_sample.py` in one. Guidance is on when a
//! classifier is given: DDPM shifts the mean, DDIM corrects the score.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use guided_diffusion::models::{Net, NetConfig};
use guided_diffusion::sample::{self, Classes, Method, Progress, Request, Sampling};

use crate::cli::args::{ClassifierArgs, DiffusionArgs, ModelArgs, SamplingArgs};
use crate::cli::{output, policy, resolve};

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SampleArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub classifier: ClassifierArgs,
}

/// `--num_samples` when not given: the reference's default...
pub const DEFAULT_NUM_SAMPLES: usize = 10000;
/// ...and with the built-in model (two rows of a 10-class grid, well under a minute).
pub const BUILTIN_NUM_SAMPLES: usize = 20;

/// The built-in model shipped with the project, if present.
pub fn builtin_model() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("GDIFF_MODELS").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("fashion-mnist"))
        .find(|d| d.join("model.safetensors").exists())
}

/// Parses `--classes 3,7` (names the flag in errors).
pub fn parse_classes(s: &str) -> Result<Vec<usize>> {
    Ok(guided_diffusion::models::flags::parse_list::<usize>(s, "classes")?)
}

/// Reads `--init_noise`: float32 NCHW `.npy`.
pub fn read_init_noise(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        bail!("--init_noise {}: no such file", path.display());
    }
    let t = Tensor::read_npy(path).map_err(|e| {
        anyhow::anyhow!("--init_noise {}: not a readable .npy: {e}", path.display())
    })?;
    if t.rank() != 4 {
        bail!(
            "--init_noise {}: expected a float32 NCHW array, got shape {:?}",
            path.display(),
            t.dims()
        );
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// A random seed when none is given (printed so the run can be repeated).
pub fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    })
}

/// Loads the classifier for guidance, if asked for.
pub fn load_classifier(
    c: &ClassifierArgs,
    image_size: usize,
    num_classes: Option<usize>,
    device: &Device,
    policy: guided_diffusion::kernels::KernelPolicy,
) -> Result<Option<(Net, f64)>> {
    let Some(path) = &c.classifier_path else {
        return Ok(None);
    };
    if !path.exists() {
        bail!("--classifier_path {}: no such file", path.display());
    }
    let cfg = resolve::classifier_config(c, image_size, num_classes, path)?;
    let net =
        policy::prepare(Net::load_with_config(&NetConfig::Classifier(cfg), path, device)?, policy);
    Ok(Some((net, c.classifier_scale.unwrap_or(1.0))))
}

/// The class names a checkpoint of ours records (`gdiff.classes`, from the training data).
pub fn class_names(path: &Path) -> Option<Vec<String>> {
    let meta = guided_diffusion::checkpoint::read_metadata(path).ok()?;
    serde_json::from_str(meta.get(guided_diffusion::train::ckpt::meta::CLASSES)?).ok()
}

/// Runs a sampling job and writes the npz and the grid (captioned with `class_names` when the
/// samples have labels).
pub fn run_and_write(
    s: &Sampling,
    req: &Request,
    a: &SamplingArgs,
    class_names: Option<&[String]>,
) -> Result<()> {
    let steps = s.diffusion.num_timesteps();
    let num_batches = req.num_samples.div_ceil(req.batch_size.max(1));
    let pb = output::progress_bar((steps * num_batches) as u64, a.quiet);
    let mut on_step = |p: Progress| {
        pb.set_position((p.batch * p.steps_per_batch + p.step) as u64);
        pb.set_message(format!(
            "batch {}/{} samples {}/{}",
            p.batch + 1,
            p.num_batches,
            p.samples_done,
            p.num_samples
        ));
    };
    let out = s.run(req, &mut on_step)?;
    pb.finish_and_clear();
    let dims = out.images.dims().to_vec();
    let npz = a.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "samples_{}.npz",
            dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
        ))
    });
    let labels = match &out.labels {
        Some(l) => Some(Tensor::new(l.as_slice(), &Device::Cpu)?),
        None => None,
    };
    let mut arrays = vec![("arr_0", &out.images)];
    if let Some(l) = &labels {
        arrays.push(("arr_1", l));
    }
    output::write_npz(&npz, &arrays)?;
    let grid = if a.no_grid {
        None
    } else {
        Some(a.grid.clone().unwrap_or_else(|| npz.with_extension("png")))
    };
    if let Some(g) = &grid {
        let cols = (out.images.dim(0)? as f64).sqrt().ceil() as usize;
        let cols = if out.labels.is_some() && req.num_samples >= 10 {
            10.max(cols).min(req.num_samples)
        } else {
            cols
        };
        match &out.labels {
            // Labelled samples: every image captioned with its class (name when known).
            Some(l) => {
                let captions: Vec<String> = l
                    .iter()
                    .map(|&k| {
                        class_names
                            .and_then(|n| n.get(k as usize).cloned())
                            .unwrap_or_else(|| format!("class {k}"))
                    })
                    .collect();
                crate::cli::plot::write_captioned_grid(g, &out.images, &captions, cols)
            }
            None => Ok(sample::images::write_grid(g, &out.images, cols)?),
        }
        .with_context(|| format!("writing the grid {}", g.display()))?;
    }
    if !a.quiet {
        eprintln!(
            "wrote {} ({} samples of {}x{}){}",
            npz.display(),
            dims[0],
            dims[1],
            dims[2],
            grid.map(|g| format!(" and {}", g.display())).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn run(a: &SampleArgs) -> Result<()> {
    let device = output::device(&a.sampling.device)?;
    let model_path = match &a.sampling.model_path {
        Some(p) => p.clone(),
        None => builtin_model()
            .map(|d| d.join("model.safetensors"))
            .context("no --model_path given and no built-in model found (models/fashion-mnist)")?,
    };
    if !model_path.exists() {
        bail!("--model_path {}: no such file", model_path.display());
    }
    let builtin = a.sampling.model_path.is_none();
    let ucfg = resolve::unet_config(&a.model, Some(&model_path))?;
    let s = &a.sampling;
    let policy = policy::with_precision(&s.precision, &device, &s.device, s.quiet)?;
    let model = Net::load_with_config(&NetConfig::UNet(ucfg.clone()), &model_path, &device)?;
    let model = policy::prepare(model, policy);
    let (_, emb_diffusion) = resolve::embedded(&model_path)?;
    let dcfg = resolve::diffusion_config(&a.diffusion, emb_diffusion, ucfg.learns_sigma())?;
    let diffusion = dcfg
        .build()
        .map_err(|e| anyhow::anyhow!("--timestep_respacing / --diffusion_steps: {e}"))?;

    let mut clf_args = a.classifier.clone();
    if builtin && clf_args.classifier_path.is_none() && a.classifier.classifier_scale.is_some() {
        // The built-in model comes with its guidance classifier.
        clf_args.classifier_path =
            builtin_model().map(|d| d.join("classifier.safetensors")).filter(|p| p.exists());
    }
    let classifier =
        load_classifier(&clf_args, ucfg.image_size, ucfg.num_classes, &device, policy)?;
    let num_classes =
        ucfg.num_classes.or_else(|| classifier.as_ref().and_then(|(c, _)| c.num_classes()));
    let classes = match &a.sampling.classes {
        Some(s) => Classes::Cycle(parse_classes(s)?),
        None => Classes::Random,
    };
    let init_noise = a.sampling.init_noise.as_deref().map(read_init_noise).transpose()?;
    // The reference's 10000 would keep a new user waiting for an hour on the built-in model.
    let num_samples = a.sampling.num_samples.unwrap_or(if builtin {
        BUILTIN_NUM_SAMPLES
    } else {
        DEFAULT_NUM_SAMPLES
    });
    let seed = seed_or_random(a.sampling.seed);
    if a.sampling.seed.is_none() && !a.sampling.quiet {
        eprintln!("seed {seed} (give --seed {seed} to repeat this run)");
    }
    let s = Sampling {
        model: &model,
        diffusion: &diffusion,
        classifier: classifier.as_ref().map(|(c, s)| (c, *s)),
        method: if a.sampling.use_ddim {
            Method::Ddim { eta: a.sampling.eta }
        } else {
            Method::Ddpm
        },
        clip_denoised: a.sampling.clip_denoised,
        shape: [ucfg.in_channels, ucfg.image_size, ucfg.image_size],
        num_classes,
        device,
    };
    let req = Request {
        num_samples,
        batch_size: a.sampling.batch_size,
        classes,
        seed,
        init_noise: init_noise.as_ref(),
        low_res: None,
    };
    let names = class_names(&model_path)
        .or_else(|| clf_args.classifier_path.as_deref().and_then(class_names));
    run_and_write(&s, &req, &a.sampling, names.as_deref())
}
