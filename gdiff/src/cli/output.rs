//! Output files and progress: npz archives written atomically and read with checked sizes
//! (`guided_diffusion::eval::npz`), the device flag, progress bars that show on a terminal
//! only, and stdout text that ends quietly when the reader goes away (`| head -1`).
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use guided_diffusion::eval::npz;

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
        let bytes = npz_bytes(arrays)?;
        self.file(path, |tmp| Ok(std::fs::write(tmp, &bytes)?))
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

/// An `.npz` of named arrays, assembled in memory (so no zip writer can fail half way and
/// print its drop message before the real error).
fn npz_bytes(arrays: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let mut members = Vec::with_capacity(arrays.len());
    for (name, t) in arrays {
        let dims = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let (descr, data): (&str, Vec<u8>) = match t.dtype() {
            DType::U8 => ("|u1", t.to_vec1::<u8>()?),
            DType::I64 => {
                ("<i8", t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            DType::U32 => {
                ("<u4", t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            DType::F64 => {
                ("<f8", t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            _ => (
                "<f4",
                t.to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        };
        members.push((*name, npz::npy_bytes(descr, &dims, &data)));
    }
    Ok(npz::npz_bytes(&members)?)
}

/// Reads one array of an `.npz` by name (uint8 as U8, other integers as I64, floats as F32),
/// naming the file and key in errors. The header is checked against the archive before
/// anything is allocated, and an empty array (no entries along its first axis) is an error.
pub fn read_npz_array(path: &Path, key: &str) -> Result<Tensor> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let f = npz::NpzFile::open(path)?;
    let h = f.header(key)?;
    if h.shape.first() == Some(&0) || h.numel() == 0 {
        bail!("{}: array {key:?} is empty (shape {:?})", path.display(), h.shape);
    }
    let t = match h.dtype {
        npz::NpyDtype::U8 => {
            let a = f.read_u8(key)?;
            Tensor::from_vec(a.data, a.shape, &Device::Cpu)?
        }
        d if !d.is_float() => {
            let a = f.read_f64(key)?;
            let v: Vec<i64> = a.data.iter().map(|&x| x as i64).collect();
            Tensor::from_vec(v, a.shape, &Device::Cpu)?
        }
        _ => {
            let a = f.read_f32(key)?;
            Tensor::from_vec(a.data, a.shape, &Device::Cpu)?
        }
    };
    Ok(t)
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

/// Prints `text` on stdout. A reader that closed the pipe early (`gdiff inspect F | head -1`)
/// is not an error: the rest is dropped and the command ends normally.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
