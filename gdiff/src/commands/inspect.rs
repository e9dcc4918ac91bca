//! `gdiff inspect FILE`: a checkpoint's embedded config (or what its shapes tell), parameter
//! count and keys.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use guided_diffusion::checkpoint;
use guided_diffusion::load::Checkpoint;

use crate::cli::output;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct InspectArgs {
    /// A .pt or .safetensors checkpoint
    pub file: PathBuf,
    /// Do not list the keys
    #[arg(long)]
    pub no_keys: bool,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    use std::fmt::Write;
    if !a.file.exists() {
        bail!("{}: no such file", a.file.display());
    }
    let format = checkpoint::detect_format(&a.file)?;
    let ckpt = Checkpoint::read(&a.file, &Device::Cpu)?;
    // All text first, then one write: a closed stdout (`| head -1`) ends it quietly.
    let mut o = String::new();
    writeln!(o, "file: {} ({format:?})", a.file.display())?;
    writeln!(o, "tensors: {}, parameters: {}", ckpt.tensors().len(), ckpt.num_params())?;
    let (info, tensors) = ckpt.into_parts();
    match &info.net {
        Some(cfg) => {
            writeln!(o, "config (embedded): {}", serde_json::to_string_pretty(&cfg.to_json())?)?
        }
        None => match checkpoint::infer::infer(&tensors) {
            Some(inf) => {
                writeln!(o, "config (inferred from the shapes): {}", inf.builder)?;
                for (k, v) in &inf.known {
                    writeln!(o, "  {k}: {v}")?;
                }
                writeln!(o, "  not determined by the weights: {}", inf.unknown.join(", "))?;
            }
            None => writeln!(o, "config: not an ADM network (no time_embed / input_blocks keys)")?,
        },
    }
    if let Some(d) = &info.diffusion {
        writeln!(o, "diffusion (embedded): {}", serde_json::to_string(d)?)?;
    }
    let meta = |k: &str| info.metadata.get(k);
    if let Some(null) = meta(guided_diffusion::train::ckpt::meta::NULL_CLASS) {
        let p = meta(guided_diffusion::train::ckpt::meta::CLASS_DROPOUT_PROB);
        writeln!(
            o,
            "classifier-free guidance: null class {null}{} (gdiff sample --cfg_scale S)",
            p.map(|p| format!(", trained with label dropout {p}")).unwrap_or_default()
        )?;
    }
    let mut sorted: Vec<_> = info.metadata.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        if k != checkpoint::CONFIG_KEY && k != checkpoint::DIFFUSION_KEY {
            writeln!(o, "metadata {k}: {v}")?;
        }
    }
    if !a.no_keys {
        let mut keys: Vec<_> =
            tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        keys.sort();
        for (k, s) in keys {
            writeln!(o, "{k} {s:?}")?;
        }
    }
    output::print_stdout(&o)
}
