//! Output files and progress: npz archives written atomically, the device flag, progress bars
//! that show on a terminal only.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

/// The temporary name `path` is written under before the rename: a hidden file beside it.
fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes named arrays as an `.npz` through a temporary file and a rename.
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
    let mut staged = Staged::default();
    staged.npz(path, arrays)?;
    staged.commit()
}

/// Checks, before a long run, that `path` can be written: its folder exists and a file can be
/// created there (the probe is removed at once).
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("is a directory");
    }
    let probe = temp_path(path);
    std::fs::File::create(&probe).with_context(|| {
        let dir = probe.parent().unwrap_or(Path::new("."));
        format!("cannot create files in {}", dir.display())
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Output files written all or nothing: each is written to its temporary name first, and only
/// when every one succeeded are they renamed into place. Dropped without [`Staged::commit`]
/// (an error on the way), the temporary files are removed and no output is left.
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Writes one file with `write` (given the temporary path).
    pub fn file(&mut self, path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let tmp = temp_path(path);
        // Registered first, so a failed write's partial file is removed too.
        self.files.push((tmp.clone(), path.to_path_buf()));
        write(&tmp).with_context(|| format!("{}: cannot write", path.display()))
    }

    /// An `.npz` of named arrays.
    pub fn npz(&mut self, path: &Path, arrays: &[(&str, &Tensor)]) -> Result<()> {
        self.file(path, |tmp| Ok(Tensor::write_npz(arrays, tmp)?))
    }

    /// One array as `.npy`.
    pub fn npy(&mut self, path: &Path, array: &Tensor) -> Result<()> {
        self.file(path, |tmp| Ok(array.write_npy(tmp)?))
    }

    /// Renames every file into place (on a failure, the ones not yet renamed are removed).
    pub fn commit(mut self) -> Result<()> {
        while !self.files.is_empty() {
            let (tmp, path) = self.files.remove(0);
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("{}: cannot write", path.display()));
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
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
