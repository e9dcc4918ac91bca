//! Output files and progress: npz archives written atomically, the device flag, progress bars
//! that show on a terminal only.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

/// Writes named arrays as an `.npz` through a temporary file and a rename.
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = Tensor::write_npz(arrays, &tmp);
    if let Err(e) = res.and_then(|_| std::fs::rename(&tmp, path).map_err(candle_core::Error::from))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    Ok(())
}

/// Reads one array of an `.npz` by name, naming the file and key in errors.
pub fn read_npz_array(path: &Path, key: &str) -> Result<Tensor> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let all = Tensor::read_npz(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable .npz: {e}", path.display()))?;
    let keys: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
    all.into_iter().find(|(k, _)| k == key).map(|(_, t)| t).ok_or_else(|| {
        anyhow::anyhow!("{}: has no array {key:?} (it has {})", path.display(), keys.join(", "))
    })
}

/// `--device`, for every command: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA 0 when this gdiff
/// is built with CUDA and has one, else the CPU).
pub fn device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0)?),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(str::parse::<usize>)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--device {s:?}: expected cuda:N"))?
                .unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this gdiff was built without CUDA (rebuild with --features cuda)");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        _ => bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
    }
}

/// A progress bar on stderr when it is a terminal and not `quiet`; hidden otherwise.
pub fn progress_bar(len: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    pb
}
