//! `gdiff nll`: `image_nll.py` — the variational bound in bits per dimension over a data set,
//! with the per-timestep `vb`, `mse` and `xstart_mse` terms written as the reference's
//! `{name}_terms.npz` (arr_0: mean over batches, one value per timestep in loop order T-1 .. 0).
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use guided_diffusion::data::{open_dataset, BatchSource, DataSpec, Loader, LoaderConfig};
use guided_diffusion::models::{Net, NetConfig};
use guided_diffusion::sample::PerSampleNoise;
use guided_diffusion::train::resolve_log_dir;

use crate::cli::args::{parse_bool, DiffusionArgs, ModelArgs};
use crate::cli::{output, resolve};

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
    let device = output::device(&a.device)?;
    if !a.model_path.exists() {
        bail!("--model_path {}: no such file", a.model_path.display());
    }
    if a.batch_size == 0 || a.num_samples == 0 {
        bail!("--batch_size and --num_samples must be positive");
    }
    let ucfg = resolve::unet_config(&a.model, Some(&a.model_path))?;
    let model = Net::load_with_config(&NetConfig::UNet(ucfg.clone()), &a.model_path, &device)?;
    let model = crate::cli::policy::prepare(model, crate::cli::policy::from_env());
    let (_, emb) = resolve::embedded(&a.model_path)?;
    let diffusion = resolve::diffusion_config(&a.diffusion, emb, ucfg.learns_sigma())?.build()?;
    let mut spec = DataSpec::new(&a.data_dir, ucfg.image_size);
    spec.class_cond = ucfg.num_classes.is_some();
    spec.channels = ucfg.in_channels;
    let mut lc = LoaderConfig::new(a.batch_size, a.seed);
    lc.shuffle = false; // deterministic=True in the reference
    lc.device = device.clone();
    let ds = open_dataset(&spec)?;
    for note in ds.notes() {
        eprintln!("note: {note}");
    }
    let mut data = Loader::new(ds, lc)?;
    let log_dir = resolve_log_dir(a.log_dir.as_deref());
    std::fs::create_dir_all(&log_dir)?;

    let names = ["vb", "mse", "xstart_mse"];
    let mut sums: Vec<Option<Tensor>> = vec![None, None, None];
    let mut bpd = Vec::new();
    let mut done = 0;
    let pb = output::progress_bar(a.num_samples as u64, a.quiet);
    while done < a.num_samples {
        let batch = data.next_batch()?;
        let n = batch.len().min(a.num_samples - done);
        let batch = batch.narrow(0, n)?;
        let y = batch.labels.clone();
        let model_fn = |x: &Tensor, t: &Tensor| model.forward(x, t, y.as_ref(), None);
        let mut noise = PerSampleNoise::new(a.seed, done, n);
        let terms =
            diffusion.calc_bpd_loop(&model_fn, &batch.images, a.clip_denoised, &mut noise)?;
        for (i, t) in [&terms.vb, &terms.mse, &terms.xstart_mse].into_iter().enumerate() {
            let m = t.to_dtype(DType::F64)?.mean(0)?;
            sums[i] = Some(match sums[i].take() {
                Some(s) => (s + m)?,
                None => m,
            });
        }
        bpd.push(terms.total_bpd.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?);
        done += n;
        pb.set_position(done as u64);
        let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
        pb.println(format!("done {done} samples: bpd={mean}"));
    }
    pb.finish_and_clear();
    for (name, sum) in names.iter().zip(sums) {
        let mean = (sum.expect("at least one batch") / bpd.len() as f64)?;
        let path = log_dir.join(format!("{name}_terms.npz"));
        output::write_npz(&path, &[("arr_0", &mean)])?;
    }
    let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
    crate::cli::output::print_stdout(&format!(
        "bpd={mean} over {done} samples; terms written to {}\n",
        log_dir.display()
    ))?;
    Ok(())
}
