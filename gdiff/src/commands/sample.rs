//! `gdiff sample`: `image_sample.py` and `classifier_sample.py` in one, with any sampler
//! (`--sampler ddpm|ddim|dpm-solver|dpm-solver++|sde-dpm-solver++`), classifier guidance
//! (`--classifier_scale` with a classifier), classifier-free guidance (`--cfg_scale`), both, and
//! a guidance interval.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use guided_diffusion::load::{Checkpoint, CheckpointInfo};
use guided_diffusion::models::{Net, NetConfig};
use guided_diffusion::sample::{
    self, Classes, ClassifierFreeSettings, GuidanceSettings, Progress, Request, Sampling,
};

use crate::cli::args::{ClassifierArgs, DiffusionArgs, ModelArgs, SamplingArgs};
use crate::cli::sampler::{
    check_builds, check_scale, parse_interval, sampler_spec, BUILTIN_GUIDANCE_INTERVAL,
    BUILTIN_SAMPLER,
};
use crate::cli::{output, policy, resolve, shard};
use guided_diffusion::dist::Distributed;

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

/// Reads `--init_noise`: a float NCHW `.npy` (any byte order; its shape is checked against the
/// file's length before anything is allocated), all values finite.
pub fn read_init_noise(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        bail!("--init_noise {}: no such file", path.display());
    }
    let a = guided_diffusion::eval::npz::read_npy_f32(path)
        .map_err(|e| anyhow::anyhow!("--init_noise {e}"))?;
    if a.shape.len() != 4 || a.shape.contains(&0) {
        bail!(
            "--init_noise {}: expected a non-empty float32 NCHW array, got shape {:?}",
            path.display(),
            a.shape
        );
    }
    if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "--init_noise {}: value {} at flat index {i} is not finite; x_T must be finite \
             (Gaussian) noise",
            path.display(),
            a.data[i]
        );
    }
    Ok(Tensor::from_vec(a.data, a.shape, &Device::Cpu)?.to_dtype(DType::F32)?)
}

/// A random seed when none is given (printed so the run can be repeated).
pub fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    })
}

/// Loads the classifier for guidance, if asked for: the network, the scale and what its
/// checkpoint says (class names), the file read once.
pub fn load_classifier(
    c: &ClassifierArgs,
    image_size: usize,
    num_classes: Option<usize>,
    device: &Device,
    policy: guided_diffusion::kernels::KernelPolicy,
) -> Result<Option<(Net, f64, CheckpointInfo)>> {
    let Some(path) = &c.classifier_path else {
        return Ok(None);
    };
    if !path.exists() {
        bail!("--classifier_path {}: no such file", path.display());
    }
    let ckpt = Checkpoint::read(path, device)?;
    let cfg = resolve::classifier_config(c, image_size, num_classes, ckpt.info.net.as_ref())?;
    let info = ckpt.info.clone();
    let net = policy::prepare(ckpt.into_network(&NetConfig::Classifier(cfg))?, policy);
    Ok(Some((net, c.classifier_scale.unwrap_or(1.0), info)))
}

/// The guidance flags of a sampling command, checked against the model: classifier-free
/// guidance needs a class-conditional model with a null class (the checkpoint's, or
/// --null_class), and an interval needs some guidance to limit.
pub struct GuidanceFlags {
    pub classifier_free: Option<ClassifierFreeSettings>,
    pub interval: Option<(f64, f64)>,
    /// The null class (excluded from labels), when the model has one.
    pub null_class: Option<usize>,
}

pub fn guidance_flags(
    a: &SamplingArgs,
    model: &CheckpointInfo,
    label_rows: Option<usize>,
    has_classifier: bool,
) -> Result<GuidanceFlags> {
    let null_class = match a.null_class {
        Some(k) => {
            let Some(rows) = label_rows else {
                bail!("--null_class {k}: {} is not class-conditional", model.source);
            };
            if k >= rows {
                bail!("--null_class {k}: the model has {rows} label rows (0..{})", rows - 1);
            }
            Some(k)
        }
        None => model.null_class.filter(|&k| label_rows.is_some_and(|r| k < r)),
    };
    let classifier_free = match a.cfg_scale {
        None => None,
        Some(scale) => {
            let scale = check_scale("--cfg_scale", scale)?;
            if label_rows.is_none() {
                bail!(
                    "--cfg_scale needs a class-conditional model: {} is unconditional",
                    model.source
                );
            }
            let Some(null) = null_class else {
                bail!(
                    "--cfg_scale: {} has no null class (it was not trained with \
                     --class_dropout_prob); give --null_class K if label K is its unconditional one",
                    model.source
                );
            };
            Some(ClassifierFreeSettings { scale, null_class: null })
        }
    };
    let interval = match &a.guidance_interval {
        None => None,
        Some(s) => {
            if classifier_free.is_none() && !has_classifier {
                bail!("--guidance_interval needs guidance to limit (--cfg_scale or --classifier_scale)");
            }
            Some(parse_interval(s)?)
        }
    };
    Ok(GuidanceFlags { classifier_free, interval, null_class })
}

/// Where a run's files go: the npz, the grid and the float array.
struct Outputs {
    npz: PathBuf,
    grid: Option<PathBuf>,
    float: Option<PathBuf>,
}

/// The output files of a run, checked for writability before any sampling starts.
fn outputs(a: &SamplingArgs, shape: [usize; 3], num_samples: usize) -> Result<Outputs> {
    let [c, h, w] = shape;
    let npz = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("samples_{num_samples}x{h}x{w}x{c}.npz")));
    let grid = if a.no_grid {
        None
    } else {
        Some(a.grid.clone().unwrap_or_else(|| npz.with_extension("png")))
    };
    let o = Outputs { npz, grid, float: a.output_float.clone() };
    for (flag, p) in [
        ("--output", Some(&o.npz)),
        ("--grid", o.grid.as_ref()),
        ("--output_float", o.float.as_ref()),
    ] {
        if let Some(p) = p {
            output::check_writable(p).with_context(|| format!("{flag} {}", p.display()))?;
        }
    }
    Ok(o)
}

/// Runs a sampling job and writes the npz, the grid (captioned with `class_names` when the
/// samples have labels) and the float array if asked, all or nothing.
///
/// Under `mpirun`, every rank samples its share of the batches ([`shard`]), rank 0 gathers
/// them and writes the files; progress shows on rank 0 only.
pub fn run_and_write(
    s: &Sampling,
    req: &Request,
    a: &SamplingArgs,
    class_names: Option<&[String]>,
    dist: &dyn Distributed,
) -> Result<()> {
    let root = dist.rank() == 0;
    // Checked on rank 0 before anyone samples; the others write nothing.
    let files = if root { Some(outputs(a, s.shape, req.num_samples)?) } else { None };
    let pb = output::progress_bar(0, a.quiet || !root);
    let mut on_step = |p: Progress| {
        pb.set_length((p.steps_per_batch * p.num_batches) as u64);
        pb.set_position((p.batch * p.steps_per_batch + p.step) as u64);
        pb.set_message(format!(
            "batch {}/{} samples {}/{}",
            p.batch + 1,
            p.num_batches,
            p.samples_done,
            p.num_samples
        ));
    };
    let mut req = req.clone();
    req.keep_float = a.output_float.is_some();
    req.shard = shard::shard(dist);
    let part = s.run(&req, &mut on_step)?;
    pb.finish_and_clear();
    let (b, total) = (req.batch_size, req.num_samples);
    let rows_of = |k: usize| b.min(total - k * b);
    let Some(out) = shard::gather(dist, part, s.shape, &rows_of)? else {
        return Ok(());
    };
    let files = files.expect("rank 0 has its outputs");
    let dims = out.images.dims().to_vec();
    let labels = match &out.labels {
        Some(l) => Some(Tensor::new(l.as_slice(), &Device::Cpu)?),
        None => None,
    };
    let mut arrays = vec![("arr_0", &out.images)];
    if let Some(l) = &labels {
        arrays.push(("arr_1", l));
    }
    let mut staged = output::Staged::default();
    staged.npz(&files.npz, &arrays)?;
    if let (Some(path), Some(x0)) = (&files.float, &out.float) {
        staged.npy(path, &x0.to_dtype(DType::F32)?)?;
    }
    if let Some(g) = &files.grid {
        let cols = (out.images.dim(0)? as f64).sqrt().ceil() as usize;
        let cols = if out.labels.is_some() && req.num_samples >= 10 {
            10.max(cols).min(req.num_samples)
        } else {
            cols
        };
        let images = &out.images;
        staged
            .file(g, |tmp| match &out.labels {
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
                    crate::cli::plot::write_captioned_grid(tmp, images, &captions, cols)
                }
                None => Ok(sample::images::write_grid(tmp, images, cols)?),
            })
            .with_context(|| format!("writing the grid {}", g.display()))?;
    }
    staged.commit()?;
    if !a.quiet {
        let nfe = &out.nfe_per_batch;
        let mean_nfe = nfe.iter().sum::<usize>() as f64 / nfe.len().max(1) as f64;
        eprintln!(
            "wrote {} ({} samples of {}x{}, {}, {} network evaluations per sample){}{}",
            files.npz.display(),
            dims[0],
            dims[1],
            dims[2],
            s.sampler,
            guided_diffusion::train::logger::format_g(mean_nfe, 4),
            files.float.map(|f| format!(", {}", f.display())).unwrap_or_default(),
            files.grid.map(|g| format!(" and {}", g.display())).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn run(a: &SampleArgs) -> Result<()> {
    let dist = shard::init()?;
    shard::run_or_abort(dist.as_ref(), || run_with(a, dist.as_ref()))
}

fn run_with(a: &SampleArgs, dist: &dyn Distributed) -> Result<()> {
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
    let ckpt = Checkpoint::read(&model_path, &device)?;
    let ucfg = resolve::unet_config(&a.model, ckpt.info.net.as_ref())?;
    let s = &a.sampling;
    let policy = policy::with_precision(&s.precision, &device, &s.device, s.quiet)?;
    let info = ckpt.info.clone();
    let model = policy::prepare(ckpt.into_network(&NetConfig::UNet(ucfg.clone()))?, policy);
    let dcfg =
        resolve::diffusion_config(&a.diffusion, info.diffusion.clone(), ucfg.learns_sigma())?;
    let default_sampler = if builtin { BUILTIN_SAMPLER } else { "ddpm" };
    let spec = sampler_spec(
        &a.sampling.sampler,
        a.diffusion.timestep_respacing.as_deref(),
        a.sampling.clip_denoised,
        default_sampler,
    )?;
    check_builds(&spec, &dcfg, &a.sampling.sampler, a.diffusion.timestep_respacing.as_deref())?;

    let mut clf_args = a.classifier.clone();
    if let Some(scale) = clf_args.classifier_scale {
        check_scale("--classifier_scale", scale)?;
        if clf_args.classifier_path.is_none() {
            if !builtin {
                bail!("--classifier_scale needs --classifier_path (the classifier that guides)");
            }
            // The built-in model comes with its guidance classifier.
            clf_args.classifier_path =
                builtin_model().map(|d| d.join("classifier.safetensors")).filter(|p| p.exists());
        }
    }
    // A classifier that guides a model with a null class (its last label row) knows the real
    // classes only.
    let null = a.sampling.null_class.or(info.null_class);
    let real_classes = match (ucfg.num_classes, null) {
        (Some(rows), Some(k)) if k + 1 == rows => Some(k),
        (rows, _) => rows,
    };
    let classifier =
        load_classifier(&clf_args, ucfg.trunk.image_size, real_classes, &device, policy)?;
    let mut g = guidance_flags(&a.sampling, &info, ucfg.num_classes, classifier.is_some())?;
    let guided = g.classifier_free.is_some() || classifier.is_some();
    if builtin && guided && g.interval.is_none() {
        g.interval = Some(BUILTIN_GUIDANCE_INTERVAL);
        if !a.sampling.quiet && dist.rank() == 0 {
            let (lo, hi) = BUILTIN_GUIDANCE_INTERVAL;
            eprintln!(
                "guiding at timesteps t in [{lo}, {hi}] only, the built-in model's default \
                 (--guidance_interval 0,1000 guides at every step)"
            );
        }
    }
    let num_classes =
        ucfg.num_classes.or_else(|| classifier.as_ref().and_then(|(c, _, _)| c.num_classes()));
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
    guided_diffusion::limits::check_num_samples("--num_samples", num_samples)?;
    guided_diffusion::limits::check_batch_size("--batch_size", a.sampling.batch_size)?;
    // Every rank draws the same run: rank 0's seed when none is given.
    let seed = shard::same_seed(dist, seed_or_random(a.sampling.seed))?;
    if a.sampling.seed.is_none() && !a.sampling.quiet && dist.rank() == 0 {
        eprintln!("seed {seed} (give --seed {seed} to repeat this run)");
    }
    let s = Sampling {
        model: &model,
        diffusion: &dcfg,
        sampler: &spec,
        guidance: GuidanceSettings {
            classifier: classifier.as_ref().map(|(c, s, _)| (c, *s)),
            classifier_free: g.classifier_free,
            interval: g.interval,
            null_branch: None,
        },
        clip_denoised: a.sampling.clip_denoised.unwrap_or(true),
        shape: [ucfg.trunk.in_channels, ucfg.trunk.image_size, ucfg.trunk.image_size],
        num_classes,
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
        low_res: None,
    };
    let names = info
        .class_names
        .clone()
        .or_else(|| classifier.as_ref().and_then(|(_, _, i)| i.class_names.clone()));
    run_and_write(&s, &req, &a.sampling, names.as_deref(), dist)
}
