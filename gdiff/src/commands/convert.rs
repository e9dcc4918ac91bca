//! `gdiff convert IN OUT`: re-save a checkpoint (a released `.pt` or any safetensors) as
//! safetensors with its model and diffusion configs embedded, after checking that the config
//! fits every weight — or back to a PyTorch `.pt` state dict (which carries no config).
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use guided_diffusion::checkpoint;
use guided_diffusion::load::{self, Checkpoint};
use guided_diffusion::models::{defaults, Net, NetConfig};

use crate::cli::args::{ClassifierArgs, DiffusionArgs, ModelArgs};
use crate::cli::resolve;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct ConvertArgs {
    /// Input checkpoint (.pt or .safetensors)
    pub input: PathBuf,
    /// Output .safetensors (config embedded) or .pt (PyTorch state dict)
    pub output: PathBuf,
    /// What the checkpoint holds: model, super-res or classifier
    #[arg(long, default_value = "model")]
    pub kind: String,
    /// Output side of a super-resolution model
    #[arg(long)]
    pub large_size: Option<usize>,
    /// Input side of a super-resolution model
    #[arg(long)]
    pub small_size: Option<usize>,
    /// A preset's flags (see `gdiff sample --help`)
    #[arg(long)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
    #[command(flatten)]
    pub classifier: ClassifierArgs,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    if !a.input.exists() {
        bail!("{}: no such file", a.input.display());
    }
    let to_pt = match a.output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => false,
        Some("pt") | Some("pth") => true,
        _ => bail!("{}: the output must be a .safetensors or a .pt file", a.output.display()),
    };
    let ckpt = Checkpoint::read(&a.input, &Device::Cpu)?;
    let embedded = ckpt.info.net.as_ref();
    let cfg = match a.kind.as_str() {
        "model" => NetConfig::UNet(resolve::unet_config(&a.model, embedded)?),
        "super-res" => NetConfig::SuperRes(resolve::super_res_config(
            &a.model,
            a.large_size.unwrap_or(defaults::sr_create_model::LARGE_SIZE),
            a.small_size.unwrap_or(defaults::sr_create_model::SMALL_SIZE),
            embedded,
        )?),
        "classifier" => {
            let image_size = a.model.flags.image_size.unwrap_or(defaults::script::IMAGE_SIZE);
            NetConfig::Classifier(resolve::classifier_config(
                &a.classifier,
                image_size,
                a.model.flags.num_classes,
                embedded,
            )?)
        }
        k => bail!("--kind {k:?}: expected model, super-res or classifier"),
    };
    let num_params = ckpt.num_params();
    let (info, tensors) = ckpt.into_parts();
    // Fails with the mismatch report if the config does not fit.
    Net::from_tensors(&cfg, tensors.clone(), &info.source, &Device::Cpu)?;
    let mut extra = HashMap::new();
    if !matches!(cfg, NetConfig::Classifier(_)) {
        let base = info.diffusion.clone();
        let learn = match &cfg {
            NetConfig::UNet(c) | NetConfig::SuperRes(c) => c.learns_sigma(),
            NetConfig::Classifier(_) => false,
        };
        let d = resolve::diffusion_config(&a.diffusion, base, learn)?;
        extra.insert(checkpoint::DIFFUSION_KEY.to_string(), serde_json::to_string(&d)?);
    }
    if to_pt {
        checkpoint::write_pt(&a.output, &tensors)?;
    } else {
        load::write_model(&a.output, &tensors, &cfg, &extra)?;
    }
    println!(
        "wrote {} ({}, {} tensors, {num_params} parameters)",
        a.output.display(),
        cfg.builder(),
        tensors.len(),
    );
    Ok(())
}
