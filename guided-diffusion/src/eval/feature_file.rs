//! Feature files: one batch's activations and statistics in the npz layout that `gdiff eval
//! --features` reads, so that a batch goes through the network once. A reference batch's file is
//! then reused for every later evaluation (as the reference batch of a run on images too), with
//! identical numbers.
//!
//! Arrays (any of the optional ones may be absent):
//! - `pool` `[N, D]` f32: the features of FID and precision/recall;
//! - `spatial` `[N, Ds]` f32: the features of sFID (optional);
//! - `logits` `[N, C]` f32: the classifier's logits, for the Inception Score (optional);
//! - `mu` `[D]`, `sigma` `[D, D]`, `mu_s` `[Ds]`, `sigma_s` `[Ds, Ds]` f64: the statistics the
//!   evaluation used (as the reference's `VIRTUAL_*.npz` batches carry them), so that a rerun
//!   reads them instead of recomputing them with another summation order;
//! - `extractor` `[L]` u8: the UTF-8 description of the network that made the features
//!   ([`FeatureExtractor::describe`](super::FeatureExtractor::describe)), so that features of
//!   one network are not compared with images run through another.
//!
//! Files are written to a temporary file in the same folder and renamed into place.
use super::features::FeatureMatrix;
use super::npz::{NpyDtype, NpzFile};
use super::stats::FidStatistics;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// The array holding the extractor's description.
pub const EXTRACTOR_KEY: &str = "extractor";

/// Where `--save_features` writes the two batches' feature files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFiles {
    pub reference: PathBuf,
    pub samples: PathBuf,
}

impl FeatureFiles {
    /// `DIR/NAME.npz` -> `DIR/NAME.ref.npz` and `DIR/NAME.sample.npz` (the `.npz` suffix is
    /// optional).
    pub fn from_stem(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.strip_suffix(".npz").unwrap_or(&name);
        FeatureFiles {
            reference: path.with_file_name(format!("{stem}.ref.npz")),
            samples: path.with_file_name(format!("{stem}.sample.npz")),
        }
    }
}

/// One batch's features and statistics, as written.
pub struct BatchFeatures<'a> {
    pub pool: &'a FeatureMatrix,
    pub spatial: Option<&'a FeatureMatrix>,
    pub logits: Option<&'a FeatureMatrix>,
    pub stats: &'a FidStatistics,
    pub spatial_stats: Option<&'a FidStatistics>,
    /// The extractor's description, when known.
    pub extractor: Option<&'a str>,
}

fn stats_tensors(s: &FidStatistics) -> Result<(Tensor, Tensor)> {
    let d = s.dim();
    Ok((
        Tensor::from_slice(&s.mu, d, &Device::Cpu)?,
        Tensor::from_slice(&s.sigma, (d, d), &Device::Cpu)?,
    ))
}

/// Writes `f` to `path` in the layout above, atomically.
pub fn write_features(path: &Path, f: &BatchFeatures<'_>) -> Result<()> {
    let mut arrays: Vec<(&str, Tensor)> = vec![("pool", f.pool.to_tensor(&Device::Cpu)?)];
    if let Some(s) = f.spatial {
        arrays.push(("spatial", s.to_tensor(&Device::Cpu)?));
    }
    if let Some(l) = f.logits {
        arrays.push(("logits", l.to_tensor(&Device::Cpu)?));
    }
    let (mu, sigma) = stats_tensors(f.stats)?;
    arrays.push(("mu", mu));
    arrays.push(("sigma", sigma));
    if let Some(s) = f.spatial_stats {
        let (mu, sigma) = stats_tensors(s)?;
        arrays.push(("mu_s", mu));
        arrays.push(("sigma_s", sigma));
    }
    if let Some(e) = f.extractor {
        arrays.push((EXTRACTOR_KEY, Tensor::from_slice(e.as_bytes(), e.len(), &Device::Cpu)?));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = Tensor::write_npz(&arrays, &tmp)
        .map_err(|e| e.to_string())
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::msg(format!("{}: cannot write the feature file: {e}", path.display())));
    }
    Ok(())
}

/// Whether `npz` holds features (`pool`) rather than images (`arr_0`).
pub fn is_feature_file(npz: &NpzFile) -> bool {
    npz.contains("pool") && !npz.contains("arr_0")
}

/// The extractor description stored in a feature file, if any.
pub fn read_extractor(npz: &NpzFile) -> Result<Option<String>> {
    if !npz.contains(EXTRACTOR_KEY) {
        return Ok(None);
    }
    let h = npz.header(EXTRACTOR_KEY)?;
    if h.shape.len() != 1 || h.dtype != NpyDtype::U8 || h.numel() > 4096 {
        crate::bail!(
            "{}: array '{EXTRACTOR_KEY}': expected at most 4096 UTF-8 bytes (u8, 1-d), got shape {:?} of {}",
            npz.path().display(),
            h.shape,
            h.dtype.name()
        );
    }
    let bytes: Vec<u8> = npz.read_f32(EXTRACTOR_KEY)?.data.iter().map(|&v| v as u8).collect();
    String::from_utf8(bytes).map(Some).map_err(|_| {
        Error::msg(format!("{}: array '{EXTRACTOR_KEY}' is not UTF-8 text", npz.path().display()))
    })
}
