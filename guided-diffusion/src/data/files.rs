//! The reference's image-folder conventions (`image_datasets.py`): which files count as images,
//! how labels come from file names, and how files are sharded across ranks.
//!
//! - Listing: entries of a directory in sorted (byte-wise) order; a name with a `.` whose
//!   extension is jpg/jpeg/png/gif (any case) is an image, otherwise a directory is descended
//!   into. So `a.png` comes before `a/` contents exactly as the reference's `sorted(listdir)`.
//! - Label: the file name up to its first `_` (`n01440764_10026.JPEG` -> `n01440764`; a name
//!   without `_` is its own class, extension included, as in the reference). Class names are
//!   sorted and numbered from 0.
//! - Sharding: rank `r` of `w` keeps `files[r::w]`.
//! - Safety: directories are walked once each, by device and inode, so a symlink loop ends;
//!   FIFOs, sockets and devices with image names are skipped (reading one would hang), as are
//!   broken links and trees deeper than [`MAX_DEPTH`]; every skipped path is reported with
//!   its reason in [`Listing::skipped`].
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::{bail, Error, Result};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "gif"];

/// Directory levels below `--data_dir` that are walked.
pub const MAX_DEPTH: usize = 256;

/// The image files of a tree, and what was left out and why.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    /// `(path, reason)` of every entry skipped for safety.
    pub skipped: Vec<(PathBuf, String)>,
}

/// All image files under `dir`, recursively, in the reference's order.
pub fn list_image_files_recursively(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    Ok(list_images(dir)?.files)
}

/// All image files under `dir`, recursively, in the reference's order, plus the entries
/// skipped (symlink loops, FIFOs and devices, broken links).
pub fn list_images(dir: impl AsRef<Path>) -> Result<Listing> {
    let dir = dir.as_ref();
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let mut visited = HashSet::new();
    visited.insert(dir_key(dir, &meta));
    let mut out = Listing::default();
    list_into(dir, 0, &mut visited, &mut out)?;
    Ok(out)
}

/// What identifies a directory however it is reached: (device, inode) on Unix.
#[cfg(unix)]
fn dir_key(_path: &Path, meta: &std::fs::Metadata) -> (u64, u64, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino(), PathBuf::new())
}

#[cfg(not(unix))]
fn dir_key(path: &Path, _meta: &std::fs::Metadata) -> (u64, u64, PathBuf) {
    (0, 0, std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// What a non-regular, non-directory entry is, for messages.
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

type Visited = HashSet<(u64, u64, PathBuf)>;

fn list_into(dir: &Path, depth: usize, visited: &mut Visited, out: &mut Listing) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name());
    }
    // Python sorts str by code point; for UTF-8 names byte order is the same.
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let full = dir.join(&name);
        let name_s = name.to_string_lossy();
        let ext = name_s.rsplit('.').next().unwrap_or("").to_lowercase();
        let is_image_name = name_s.contains('.') && IMAGE_EXTENSIONS.contains(&ext.as_str());
        // Follows symlinks: a link to an image is an image, a link to a directory is walked.
        let meta = match std::fs::metadata(&full) {
            Ok(m) => m,
            Err(e) => {
                if is_image_name || std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_symlink()) {
                    out.skipped.push((full, format!("unreadable or a broken link ({e})")));
                }
                continue;
            }
        };
        if is_image_name {
            if meta.is_file() {
                out.files.push(full);
            } else {
                out.skipped.push((full, format!("{}, not an image file", special_kind(&meta))));
            }
        } else if meta.is_dir() {
            if depth + 1 > MAX_DEPTH {
                out.skipped.push((full, format!("more than {MAX_DEPTH} directories deep")));
            } else if !visited.insert(dir_key(&full, &meta)) {
                out.skipped.push((
                    full,
                    "a directory already listed (a symlink loop or a second link to it)".into(),
                ));
            } else {
                list_into(&full, depth + 1, visited, out)?;
            }
        }
    }
    Ok(())
}

/// The class name of an image file: its file name up to the first `_`.
pub fn class_name_of(path: &Path) -> String {
    let base = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    base.split('_').next().unwrap_or("").to_string()
}

/// Sorted class names of `files` and each file's class index.
pub fn labels_from_file_names(files: &[PathBuf]) -> (ClassList, Vec<usize>) {
    let names: Vec<String> = files.iter().map(|p| class_name_of(p)).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    let classes = ClassList { names: sorted };
    let labels = names.iter().map(|n| classes.index_of(n).unwrap_or(0)).collect();
    (classes, labels)
}

/// Rank `rank` of `world_size` keeps `items[rank::world_size]` (the reference's `shard`).
pub fn shard<T: Clone>(items: &[T], rank: usize, world_size: usize) -> Result<Vec<T>> {
    if world_size == 0 || rank >= world_size {
        bail!("invalid shard: rank {rank} of world size {world_size}");
    }
    Ok(items.iter().skip(rank).step_by(world_size).cloned().collect())
}

/// Class names in index order; saved beside checkpoints so a sampler maps indices back to names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassList {
    pub names: Vec<String>,
}

impl ClassList {
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok().or_else(|| {
            // Lists loaded from disk need not be sorted (e.g. Fashion-MNIST's label order).
            self.names.iter().position(|n| n == name)
        })
    }
    /// `["name0", "name1", ...]` as JSON text (also the checkpoint metadata value `classes`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.names).unwrap_or_else(|_| "[]".into())
    }
    pub fn from_json(text: &str) -> Result<Self> {
        let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
            Error::msg(format!("class list: expected a JSON array of strings: {e}"))
        })?;
        Ok(Self { names })
    }
    /// Writes the JSON list to `path` (temp file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_json().as_bytes())
    }
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }
}

pub use crate::checkpoint::write_atomic;
