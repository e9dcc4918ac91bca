//! `gdiff train`, `gdiff train-super-res` and `gdiff train-classifier`: `image_train.py`,
//! `super_res_train.py` and `classifier_train.py` with the reference's flags and defaults, plus
//! `--log_dir`, `--seed` and `--max_steps`. Checkpoints embed the model and diffusion configs,
//! so `gdiff sample --model_path <log_dir>/ema_0.9999_XXXXXX.safetensors` needs no model flags.
//!
//! Multi-process data parallel training (binary built with `--features mpi`): start one
//! process per rank with `mpirun -np N gdiff train ...` (as root also `--allow-run-as-root`).
//! `--batch_size` is per rank (global batch `N * batch_size`); rank `r` trains on rows
//! `[r * b, (r + 1) * b)` of the global batch one process with `--batch_size N*b` would read,
//! with the same per-sample timesteps and noise, so both runs compute the same updates (up to
//! floating-point summation order). Gradients are averaged with an allreduce; rank 0 picks the
//! log directory (shared with the others; it must be on a file system every rank sees), writes
//! logs (of every rank's samples) and checkpoints, and every rank resumes from it; each rank
//! decodes only its rows of the global batch, and the loss-aware schedule sampler sees every
//! rank's losses. See `guided_diffusion::dist`.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_nn::VarMap;
use clap::Args;
use guided_diffusion::checkpoint::{CONFIG_KEY, DIFFUSION_KEY};
use guided_diffusion::data::{open_dataset, BatchSource, Loader, LoaderConfig};
use guided_diffusion::diffusion::create_named_schedule_sampler;
use guided_diffusion::models::init::seeded_var_builder;
use guided_diffusion::models::{defaults, Net, NetConfig};
use guided_diffusion::train::ckpt::meta;
use guided_diffusion::train::{
    parse_ema_rates, ClassifierObjective, DiffusionObjective, Distributed, LabelDropout, Logger,
    MicroScaling, Objective, ParamSet, RunLock, TrainConfig, TrainLoop,
};

use crate::cli::args::{parse_bool, ClassifierArgs, DiffusionArgs, ModelArgs};
use crate::cli::{env, output, policy, resolve, shard};

/// Flags every training command shares.
#[derive(Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct CommonTrainArgs {
    /// A folder of images (label = file-name prefix before the first "_"), or fashion-mnist
    #[arg(long)]
    pub data_dir: String,
    /// uniform or loss-second-moment
    #[arg(long, default_value = "uniform")]
    pub schedule_sampler: String,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batch for gradient accumulation; -1 = the whole batch
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub microbatch: i64,
    #[arg(long, default_value_t = 10)]
    pub log_interval: u64,
    #[arg(long, default_value_t = 10000)]
    pub save_interval: u64,
    /// A model*.safetensors to resume from [default: the latest in --log_dir]
    #[arg(long)]
    pub resume_checkpoint: Option<PathBuf>,
    /// Where logs and checkpoints go [default: $OPENAI_LOGDIR, else a time-stamped directory]
    #[arg(long)]
    pub log_dir: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many steps (the reference runs until killed unless the lr anneals)
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Accepted for compatibility; training runs in float32 (see --precision)
    #[arg(long, value_parser = parse_bool)]
    pub use_fp16: Option<bool>,
    /// f32, or bf16: mixed precision on the CPU, on Intel AMX or AVX512_BF16 (a CPU with
    /// neither runs f32 and says so). Convolution forwards, stride-1 input gradients,
    /// attention products and, with AMX, the weight gradients of layers with 128+ output
    /// channels take bf16-rounded operands (f32 sums); with AVX512_BF16, layers where f32
    /// Winograd is faster stay f32. Weights, the optimizer and everything else stay f32
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
    /// Accepted for compatibility
    #[arg(long)]
    pub fp16_scale_growth: Option<f64>,
    /// Flip training images horizontally at random (the reference's loader always does; turn it
    /// off for data whose orientation carries meaning, e.g. Fashion-MNIST's left-facing shoes)
    #[arg(long, value_parser = parse_bool, action = clap::ArgAction::Set, default_value = "True")]
    pub random_flip: bool,
    /// Data-loading threads
    #[arg(long, default_value_t = 2)]
    pub data_workers: usize,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainArgs {
    /// Linear learning-rate anneal to 0 over this many steps (0 = constant); also ends training
    #[arg(long, default_value_t = 0)]
    pub lr_anneal_steps: u64,
    /// EMA rates, comma-separated
    #[arg(long, default_value = "0.9999")]
    pub ema_rate: String,
    /// Classifier-free guidance: replace each training label by a null class with this
    /// probability (DiT's convention: the label embedding gets one extra last row, the null
    /// class). Needs --class_cond True; 0 = no dropout
    #[arg(long)]
    pub class_dropout_prob: Option<f64>,
    #[command(flatten)]
    pub common: CommonTrainArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainSuperResArgs {
    #[arg(long, default_value_t = defaults::sr_create_model::LARGE_SIZE)]
    pub large_size: usize,
    #[arg(long, default_value_t = defaults::sr_create_model::SMALL_SIZE)]
    pub small_size: usize,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct TrainClassifierArgs {
    /// Validation images (same layout as --data_dir)
    #[arg(long)]
    pub val_data_dir: Option<String>,
    /// Train on noised images x_t (the noise-aware classifier)
    #[arg(long, value_parser = parse_bool, action = clap::ArgAction::Set, default_value = "True")]
    pub noised: bool,
    #[arg(long, default_value_t = 150000)]
    pub iterations: u64,
    /// Linear lr anneal over --iterations
    #[arg(long, value_parser = parse_bool, action = clap::ArgAction::Set, default_value = "False")]
    pub anneal_lr: bool,
    #[arg(long, default_value_t = 5)]
    pub eval_interval: u64,
    /// Image side (shared with the diffusion flags in the reference)
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Number of classes [default: those of the data]
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Image channels
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    /// Channel multipliers (the reference derives them from the image size)
    #[arg(long)]
    pub channel_mult: Option<String>,
    #[command(flatten)]
    pub common: CommonTrainArgs,
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

fn data_classes(c: &CommonTrainArgs, image_size: usize, channels: usize) -> Result<Option<usize>> {
    let mut spec = env::data_spec(&c.data_dir, image_size);
    spec.class_cond = true;
    spec.channels = channels;
    Ok(open_dataset(&spec)?.classes().map(|l| l.len()))
}

fn train_config(
    c: &CommonTrainArgs,
    batch: usize,
    lr: f64,
    log_dir: &std::path::Path,
    net: &NetConfig,
) -> Result<TrainConfig> {
    let mut tc = TrainConfig::new(batch, lr, log_dir);
    tc.microbatch = if c.microbatch <= 0 { 0 } else { c.microbatch as usize };
    tc.weight_decay = c.weight_decay;
    tc.log_interval = c.log_interval;
    tc.save_interval = c.save_interval;
    tc.seed = c.seed;
    tc.max_steps = c.max_steps;
    tc.config_json = net.to_json().to_string();
    tc.metadata.insert(CONFIG_KEY.into(), net.to_json().to_string());
    tc.policy = policy::from_env();
    Ok(tc)
}

/// Checks the training flags that the library takes as plain numbers: a negative or NaN
/// learning rate would train silently into garbage.
fn check_common(c: &CommonTrainArgs) -> Result<()> {
    use guided_diffusion::limits;
    if let Some(lr) = c.lr {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr {lr}: expected a positive, finite learning rate (e.g. 1e-4)");
        }
    }
    if !(c.weight_decay.is_finite() && c.weight_decay >= 0.0) {
        bail!("--weight_decay {}: expected a finite value >= 0", c.weight_decay);
    }
    if let Some(b) = c.batch_size {
        limits::check_batch_size("--batch_size", b)?;
    }
    if c.microbatch == 0 || c.microbatch < -1 {
        bail!("--microbatch {}: expected -1 (the whole batch) or a positive size", c.microbatch);
    }
    if c.log_interval == 0 || c.save_interval == 0 {
        bail!("--log_interval and --save_interval must be positive");
    }
    limits::check("--data_workers", c.data_workers, limits::MAX_DATA_WORKERS)?;
    if let Some(g) = c.fp16_scale_growth {
        if !g.is_finite() {
            bail!("--fp16_scale_growth {g}: expected a finite number");
        }
    }
    Ok(())
}

/// This process's rank, the log directory (rank 0's choice, sent to the others), the logger
/// (rank 0 writes `log.txt` and `progress.csv`; the other ranks write nothing) and, on rank 0,
/// the lock that keeps a second run out of the directory. Temporary files a killed run left
/// there are removed once the lock is held.
fn rank_setup(
    c: &CommonTrainArgs,
    dist: &dyn Distributed,
) -> Result<(std::path::PathBuf, Logger, Option<RunLock>)> {
    let mut dir = if dist.rank() == 0 {
        env::log_dir(c.log_dir.as_deref()).to_string_lossy().into_owned().into_bytes()
    } else {
        Vec::new()
    };
    dist.broadcast_bytes(&mut dir)?;
    let log_dir = std::path::PathBuf::from(String::from_utf8(dir)?);
    let lock = if dist.rank() == 0 {
        let holder: Vec<String> = std::env::args().collect();
        Some(RunLock::acquire(&log_dir, &holder.join(" "))?)
    } else {
        None
    };
    let mut logger = if dist.rank() == 0 { Logger::open(&log_dir, 0)? } else { Logger::null() };
    if lock.is_some() {
        for p in guided_diffusion::train::ckpt::remove_stale_temp_files(&log_dir)? {
            logger.log(&format!("removed {}, left by an interrupted run", p.display()));
        }
    }
    if dist.world_size() > 1 && dist.rank() == 0 {
        eprintln!("data parallel over {} MPI ranks; --batch_size is per rank", dist.world_size());
    }
    Ok((log_dir, logger, lock))
}

/// What a training loader reads.
struct DataOpts<'a> {
    data_dir: &'a str,
    image_size: usize,
    channels: usize,
    class_cond: bool,
    random_crop: bool,
    seed: u64,
}

/// The rank's loader: the global batches of `world_size * batch` items (same seed on every
/// rank), of which this rank decodes only its rows `[rank * batch, (rank + 1) * batch)`.
fn open_rank_loader(
    c: &CommonTrainArgs,
    d: &DataOpts,
    batch: usize,
    device: &candle_core::Device,
    dist: &dyn Distributed,
) -> Result<Loader> {
    let mut spec = env::data_spec(d.data_dir, d.image_size);
    spec.class_cond = d.class_cond;
    spec.random_crop = d.random_crop;
    spec.random_flip = c.random_flip;
    spec.channels = d.channels;
    let ds = open_dataset(&spec)?;
    if dist.rank() == 0 {
        for note in ds.notes() {
            eprintln!("note: {note}");
        }
    }
    let mut cfg = LoaderConfig::new(batch * dist.world_size(), d.seed);
    cfg.workers = c.data_workers;
    cfg.device = device.clone();
    if dist.world_size() > 1 {
        cfg.rows = Some((dist.rank() * batch, batch));
    }
    Ok(Loader::new(ds, cfg)?)
}

fn run_loop<O: Objective, S: BatchSource>(
    mut lp: TrainLoop<O>,
    c: &CommonTrainArgs,
    mut data: S,
    mut val: Option<S>,
) -> Result<()> {
    if let Some(p) = lp.resume(c.resume_checkpoint.as_deref())? {
        eprintln!("resumed from {} at step {}", p.display(), lp.step());
    }
    lp.set_classes(data.classes());
    lp.run(&mut data, val.as_mut().map(|v| v as &mut dyn BatchSource))?;
    Ok(())
}

/// A network with seeded fresh parameters (`--seed`) computing as `--precision` says, and
/// those parameters for the optimiser.
fn fresh_net(
    cfg: &NetConfig,
    c: &CommonTrainArgs,
    device: &candle_core::Device,
) -> Result<(Net, ParamSet)> {
    let policy = policy::with_precision(&c.precision, device, &c.device, false)?;
    let varmap = VarMap::new();
    let net = Net::new(cfg, seeded_var_builder(&varmap, c.seed, device))?.with_policy(policy);
    Ok((net, ParamSet::from_varmap(&varmap)))
}

/// `image_train.py` (and, with `small_size`, `super_res_train.py`).
fn train_diffusion(a: &TrainArgs, small: Option<(usize, usize)>) -> Result<()> {
    let c = &a.common;
    check_common(c)?;
    let dist = shard::init()?;
    let device = output::device(&c.device)?;
    let mut margs = a.model.clone();
    let image_size =
        small.map(|(l, _)| l).or(margs.flags.image_size).unwrap_or(defaults::script::IMAGE_SIZE);
    let channels = margs.flags.in_channels.unwrap_or(defaults::IN_CHANNELS);
    let dropout_prob = match a.class_dropout_prob {
        Some(p) if !(0.0..1.0).contains(&p) => {
            bail!("--class_dropout_prob {p}: expected a probability in [0, 1)")
        }
        Some(p) if p > 0.0 => Some(p),
        _ => None,
    };
    if margs.flags.class_cond == Some(true)
        && margs.flags.num_classes.is_none()
        && margs.model_config.is_none()
    {
        margs.flags.num_classes = data_classes(c, image_size, channels)?;
    }
    if dropout_prob.is_some() && margs.model_config.is_none() {
        if margs.flags.class_cond != Some(true) {
            bail!("--class_dropout_prob needs a class-conditional model (--class_cond True)");
        }
        // The null class is one extra, last row of the label embedding.
        margs.flags.num_classes = margs.flags.num_classes.map(|k| k + 1);
    }
    let (ucfg, net_cfg) = match small {
        None => {
            let u = resolve::unet_config(&margs, None)?;
            (u.clone(), NetConfig::UNet(u))
        }
        Some((l, s)) => {
            let u = resolve::super_res_config(&margs, l, s, None)?;
            (u.clone(), NetConfig::SuperRes(u))
        }
    };
    let dcfg = resolve::diffusion_config(&a.diffusion, None, ucfg.learns_sigma())?;
    let diffusion = dcfg.build()?;
    let label_dropout = match (dropout_prob, ucfg.num_classes) {
        (None, _) => None,
        (Some(prob), Some(rows)) if rows >= 2 => Some(LabelDropout { prob, null_class: rows - 1 }),
        (Some(_), _) => bail!(
            "--class_dropout_prob needs a class-conditional model with at least one class besides the null class"
        ),
    };
    let (net, params) = fresh_net(&net_cfg, c, &device)?;
    let (log_dir, logger, _lock) = rank_setup(c, dist.as_ref())?;
    let mut tc =
        train_config(c, c.batch_size.unwrap_or(1), c.lr.unwrap_or(1e-4), &log_dir, &net_cfg)?;
    tc.metadata.insert(DIFFUSION_KEY.into(), serde_json::to_string(&dcfg)?);
    tc.micro_scaling = MicroScaling::SumOfMicroMeans;
    tc.ema_rates = parse_ema_rates(&a.ema_rate)?;
    if let Some(d) = label_dropout {
        tc.metadata.insert(meta::NULL_CLASS.into(), d.null_class.to_string());
        tc.metadata.insert(meta::CLASS_DROPOUT_PROB.into(), d.prob.to_string());
    }
    if a.lr_anneal_steps > 0 {
        tc.anneal_steps = a.lr_anneal_steps;
        tc.max_steps = Some(c.max_steps.map_or(a.lr_anneal_steps, |m| m.min(a.lr_anneal_steps)));
    }
    let sampler = create_named_schedule_sampler(&c.schedule_sampler, diffusion.num_timesteps())?;
    let objective = DiffusionObjective {
        net,
        diffusion,
        sampler,
        small_size: small.map(|(_, s)| s),
        label_dropout,
    };
    let opts = DataOpts {
        data_dir: &c.data_dir,
        image_size,
        channels: ucfg.trunk.in_channels,
        class_cond: ucfg.num_classes.is_some(),
        random_crop: false,
        seed: c.seed,
    };
    let data = open_rank_loader(c, &opts, tc.batch_size, &device, dist.as_ref())?;
    run_loop(TrainLoop::with_dist(tc, params, objective, logger, dist)?, c, data, None)
}

pub fn run_train(a: &TrainArgs) -> Result<()> {
    train_diffusion(a, None)
}

pub fn run_train_super_res(a: &TrainSuperResArgs) -> Result<()> {
    if a.small_size == 0 || !a.large_size.is_multiple_of(a.small_size) {
        bail!("--small_size {} must divide --large_size {}", a.small_size, a.large_size);
    }
    train_diffusion(&a.train, Some((a.large_size, a.small_size)))
}

/// `classifier_train.py`.
pub fn run_train_classifier(a: &TrainClassifierArgs) -> Result<()> {
    let c = &a.common;
    check_common(c)?;
    let dist = shard::init()?;
    let device = output::device(&c.device)?;
    let num_classes = match a.num_classes {
        Some(n) => Some(n),
        None => data_classes(c, a.image_size, a.in_channels)?,
    };
    let mut cargs = a.classifier.clone();
    cargs.classifier_path = None;
    let cfg = resolve::classifier_config_from_flags(
        &cargs,
        a.image_size,
        num_classes,
        a.in_channels,
        a.channel_mult.as_deref(),
    )?;
    let net_cfg = NetConfig::Classifier(cfg);
    let diffusion = resolve::diffusion_config(&a.diffusion, None, false)?.build()?;
    let (net, params) = fresh_net(&net_cfg, c, &device)?;
    let (log_dir, logger, _lock) = rank_setup(c, dist.as_ref())?;
    let mut tc =
        train_config(c, c.batch_size.unwrap_or(4), c.lr.unwrap_or(3e-4), &log_dir, &net_cfg)?;
    tc.micro_scaling = MicroScaling::BatchMean;
    tc.ema_rates = vec![];
    tc.eval_interval = a.eval_interval;
    tc.max_steps = Some(c.max_steps.map_or(a.iterations, |m| m.min(a.iterations)));
    if a.anneal_lr {
        tc.anneal_steps = a.iterations;
    }
    let sampler = create_named_schedule_sampler(&c.schedule_sampler, diffusion.num_timesteps())?;
    let objective = ClassifierObjective { net, diffusion, sampler, noised: a.noised };
    let opts = DataOpts {
        data_dir: &c.data_dir,
        image_size: a.image_size,
        channels: a.in_channels,
        class_cond: true,
        random_crop: true,
        seed: c.seed,
    };
    let data = open_rank_loader(c, &opts, tc.batch_size, &device, dist.as_ref())?;
    let val = match &a.val_data_dir {
        Some(v) => {
            let val_opts =
                DataOpts { data_dir: v, random_crop: false, seed: c.seed ^ 0x5eed, ..opts };
            let mut l = open_rank_loader(c, &val_opts, tc.batch_size, &device, dist.as_ref())?;
            l.seek(0)?;
            Some(l)
        }
        None => None,
    };
    run_loop(TrainLoop::with_dist(tc, params, objective, logger, dist)?, c, data, val)
}
