//! `gdiff nll`: `image_nll.py` — the variational bound in bits per dimension over a data set,
//! with the per-timestep `vb`, `mse` and `xstart_mse` terms written as the reference's
//! `{name}_terms.npz` (arr_0: mean over batches, one value per timestep in loop order T-1 .. 0).
//!
//! Under `mpirun`, rank r evaluates the batches k with k % N == r (the same batches, with the
//! same noise, as one process), and rank 0 averages the terms of all batches after one gather:
//! the reference's all-reduce, without its per-batch collective that deadlocks when ranks hold
//! different numbers of batches (guided-diffusion#12).
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use guided_diffusion::data::{open_dataset, BatchSource, Loader, LoaderConfig};
use guided_diffusion::load::Checkpoint;
use guided_diffusion::models::NetConfig;
use guided_diffusion::sample::PerSampleNoise;

use crate::cli::args::{parse_bool, DiffusionArgs, ModelArgs};
use crate::cli::{env, output, resolve, shard};
use guided_diffusion::dist::{bytes_to_f64s, f64s_to_bytes, rank_batches, Distributed};

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct NllArgs {
    /// A folder of images, or fashion-mnist / fashion-mnist:test
    #[arg(long)]
    pub data_dir: String,
    #[arg(long)]
    pub model_path: std::path::PathBuf,
    #[arg(long, value_parser = parse_bool, action = clap::ArgAction::Set, default_value = "True")]
    pub clip_denoised: bool,
    #[arg(long, default_value_t = 1000)]
    pub num_samples: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Where the *_terms.npz files go [default: $OPENAI_LOGDIR, else a time-stamped directory]
    #[arg(long)]
    pub log_dir: Option<String>,
    /// Seed of the noise (sample i gets the same noise whatever the batch size)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

pub fn run(a: &NllArgs) -> Result<()> {
    let dist = shard::init()?;
    shard::run_or_abort(dist.as_ref(), || run_with(a, dist.as_ref()))
}

fn run_with(a: &NllArgs, dist: &dyn Distributed) -> Result<()> {
    let device = output::device(&a.device)?;
    if !a.model_path.exists() {
        bail!("--model_path {}: no such file", a.model_path.display());
    }
    if a.batch_size == 0 || a.num_samples == 0 {
        bail!("--batch_size and --num_samples must be positive");
    }
    let ckpt = Checkpoint::read(&a.model_path, &device)?;
    let ucfg = resolve::unet_config(&a.model, ckpt.info.net.as_ref())?;
    let emb = ckpt.info.diffusion.clone();
    let model = ckpt.into_network(&NetConfig::UNet(ucfg.clone()))?;
    let model = crate::cli::policy::prepare(model, crate::cli::policy::from_env());
    let diffusion = resolve::diffusion_config(&a.diffusion, emb, ucfg.learns_sigma())?.build()?;
    let mut spec = env::data_spec(&a.data_dir, ucfg.trunk.image_size);
    spec.class_cond = ucfg.num_classes.is_some();
    spec.channels = ucfg.trunk.in_channels;
    let mut lc = LoaderConfig::new(a.batch_size, a.seed);
    lc.shuffle = false; // deterministic=True in the reference
    lc.device = device.clone();
    let ds = open_dataset(&spec)?;
    let root = dist.rank() == 0;
    if root {
        for note in ds.notes() {
            eprintln!("note: {note}");
        }
    }
    let mut data = Loader::new(ds, lc)?;
    let mut dir = if root {
        env::log_dir(a.log_dir.as_deref()).to_string_lossy().into_owned().into_bytes()
    } else {
        Vec::new()
    };
    dist.broadcast_bytes(&mut dir)?;
    let log_dir = std::path::PathBuf::from(String::from_utf8(dir)?);
    if root {
        std::fs::create_dir_all(&log_dir)?;
    }

    let names = ["vb", "mse", "xstart_mse"];
    let num_batches = a.num_samples.div_ceil(a.batch_size);
    // Per batch of this rank: its index, sample count, mean bpd and mean terms.
    let mut mine: Vec<f64> = Vec::new();
    let mut steps = 0usize;
    let pb = output::progress_bar(a.num_samples as u64, a.quiet || !root);
    for k in rank_batches(num_batches, dist.rank(), dist.world_size()) {
        if dist.world_size() > 1 {
            data.seek(k as u64)?;
        }
        let done = k * a.batch_size;
        let batch = data.next_batch()?;
        let n = batch.len().min(a.num_samples - done);
        let batch = batch.narrow(0, n)?;
        let y = batch.labels.clone();
        let model_fn = |x: &Tensor, t: &Tensor| model.forward(x, t, y.as_ref(), None);
        let mut noise = PerSampleNoise::new(a.seed, done, n);
        let terms =
            diffusion.calc_bpd_loop(&model_fn, &batch.images, a.clip_denoised, &mut noise)?;
        let bpd = terms.total_bpd.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;
        mine.extend([k as f64, n as f64, bpd]);
        for t in [&terms.vb, &terms.mse, &terms.xstart_mse] {
            let m: Vec<f64> = t.to_dtype(DType::F64)?.mean(0)?.to_vec1()?;
            steps = m.len();
            mine.extend(m);
        }
        pb.set_position((done + n) as u64);
        pb.println(format!("done {} samples: batch bpd={bpd}", done + n));
    }
    pb.finish_and_clear();
    // One gather of every rank's batches; rank 0 averages over all of them in batch order.
    let steps = diffusion.num_timesteps().max(steps);
    let Some(all) = dist.gather_bytes(&f64s_to_bytes(&mine))? else {
        return Ok(());
    };
    let record = 3 + 3 * steps;
    let mut batches: Vec<Vec<f64>> = Vec::new();
    for part in &all {
        let v = bytes_to_f64s(part)?;
        if v.len() % record != 0 {
            bail!("a rank sent {} values, not whole batches of {record}", v.len());
        }
        batches.extend(v.chunks(record).map(<[f64]>::to_vec));
    }
    batches.sort_by(|x, y| x[0].total_cmp(&y[0]));
    if batches.is_empty() {
        bail!("no batch was evaluated");
    }
    let count = batches.len() as f64;
    let done: f64 = batches.iter().map(|b| b[1]).sum();
    let mean = batches.iter().map(|b| b[2]).sum::<f64>() / count;
    if !mean.is_finite() {
        bail!(
            "the bits per dimension came out {mean}: the process has a step with beta = 1 or the \
             model's output is not finite (check --diffusion_steps and --noise_schedule)"
        );
    }
    for (i, name) in names.iter().enumerate() {
        let mut sum = vec![0.0f64; steps];
        for b in &batches {
            for (s, v) in sum.iter_mut().zip(&b[3 + i * steps..3 + (i + 1) * steps]) {
                *s += v;
            }
        }
        let m = Tensor::from_vec(
            sum.iter().map(|v| v / count).collect::<Vec<_>>(),
            steps,
            &candle_core::Device::Cpu,
        )?;
        let path = log_dir.join(format!("{name}_terms.npz"));
        output::write_npz(&path, &[("arr_0", &m)])?;
    }
    crate::cli::output::print_stdout(&format!(
        "bpd={mean} over {done} samples; terms written to {}\n",
        log_dir.display()
    ))?;
    Ok(())
}
