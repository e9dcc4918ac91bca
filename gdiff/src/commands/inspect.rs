//! `gdiff inspect FILE`: a checkpoint's embedded config (or what its shapes tell), parameter
//! count and keys.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use guided_diffusion::checkpoint;

use crate::cli::resolve;

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
    if !a.file.exists() {
        bail!("{}: no such file", a.file.display());
    }
    let format = checkpoint::detect_format(&a.file)?;
    let sd = checkpoint::read(&a.file, &Device::Cpu)?;
    println!("file: {} ({format:?})", a.file.display());
    println!("tensors: {}, parameters: {}", sd.tensors.len(), sd.num_params());
    let (net, diffusion) = resolve::embedded(&a.file)?;
    match net {
        Some(cfg) => {
            println!("config (embedded): {}", serde_json::to_string_pretty(&cfg.to_json())?)
        }
        None => match checkpoint::infer::infer(&sd.tensors) {
            Some(inf) => {
                println!("config (inferred from the shapes): {}", inf.builder);
                for (k, v) in &inf.known {
                    println!("  {k}: {v}");
                }
                println!("  not determined by the weights: {}", inf.unknown.join(", "));
            }
            None => println!("config: not an ADM network (no time_embed / input_blocks keys)"),
        },
    }
    if let Some(d) = diffusion {
        println!("diffusion (embedded): {}", serde_json::to_string(&d)?);
    }
    let meta = |k: &str| sd.metadata.get(k);
    if let Some(null) = meta(guided_diffusion::train::ckpt::meta::NULL_CLASS) {
        let p = meta(guided_diffusion::train::ckpt::meta::CLASS_DROPOUT_PROB);
        println!(
            "classifier-free guidance: null class {null}{} (gdiff sample --cfg_scale S)",
            p.map(|p| format!(", trained with label dropout {p}")).unwrap_or_default()
        );
    }
    for (k, v) in &sd.metadata {
        if k != checkpoint::CONFIG_KEY && k != resolve::DIFFUSION_KEY {
            println!("metadata {k}: {v}");
        }
    }
    if !a.no_keys {
        let mut keys: Vec<_> =
            sd.tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        keys.sort();
        for (k, s) in keys {
            println!("{k} {s:?}");
        }
    }
    Ok(())
}
