//! The `Dataset` trait every source implements (random access to prepared items) and the
//! reference's image-folder data set (`ImageDataset` of `image_datasets.py`).
use std::path::{Path, PathBuf};

use rand::Rng;

use super::decode::{channels_of, color_type, load};
use super::files::{labels_from_file_names, list_images, shard, ClassList};
use super::resize::{center_crop_arr, random_crop_arr, MAX_CROP_FRAC, MIN_CROP_FRAC};
use super::rng::StreamRng;
use crate::{bail, Result};

/// One prepared item: CHW float32 pixels in [-1, 1] and the class index if labelled.
#[derive(Debug, Clone)]
pub struct Item {
    pub pixels: Vec<f32>,
    pub label: Option<u32>,
}

/// Random access to a (sharded) data set. `get` must be a pure function of `(index, rng)` so that
/// any thread may prepare any item and a resumed run sees the same pixels.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Channels of every item (3 for RGB; 1 or 3 for Fashion-MNIST).
    fn channels(&self) -> usize;
    /// Items are `image_size x image_size`.
    fn image_size(&self) -> usize;
    /// Class names if items are labelled.
    fn classes(&self) -> Option<&ClassList>;
    /// Lines worth telling the user once: files skipped and why, conversions applied.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Prepares item `index`; `rng` drives augmentation (crop, flip).
    fn get(&self, index: usize, rng: &mut StreamRng) -> Result<Item>;
}

/// Augmentation and labelling options of the folder loader (the reference's `load_data` flags).
#[derive(Debug, Clone)]
pub struct FolderOptions {
    pub image_size: usize,
    /// Channels the images are decoded to (the model's `in_channels`): 1 = gray (PIL's
    /// `convert("L")`), 3 = RGB (the reference's `convert("RGB")`); 2 and 4 (with alpha) only
    /// for images that have alpha.
    pub channels: usize,
    /// Labels from file names (`class_cond`).
    pub class_cond: bool,
    /// `random_crop_arr` instead of `center_crop_arr` (the classifier's training data).
    pub random_crop: bool,
    /// Mirror with probability 1/2.
    pub random_flip: bool,
    pub rank: usize,
    pub world_size: usize,
}

impl FolderOptions {
    pub fn new(image_size: usize) -> Self {
        Self {
            image_size,
            channels: 3,
            class_cond: false,
            random_crop: false,
            random_flip: true,
            rank: 0,
            world_size: 1,
        }
    }
}

/// Image files of a directory tree, prepared as the reference's `ImageDataset.__getitem__`.
pub struct FolderDataset {
    files: Vec<PathBuf>,
    labels: Option<Vec<u32>>,
    classes: Option<ClassList>,
    opts: FolderOptions,
    notes: Vec<String>,
}

impl FolderDataset {
    /// Lists `dir` (all ranks list the same files), labels them, then keeps this rank's shard.
    pub fn open(dir: impl AsRef<Path>, opts: FolderOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.as_os_str().is_empty() {
            bail!("--data_dir: unspecified data directory");
        }
        if !dir.is_dir() {
            bail!("--data_dir {}: not a directory", dir.display());
        }
        if opts.image_size == 0 {
            bail!("--image_size must be positive");
        }
        crate::limits::check("--image_size", opts.image_size, crate::limits::MAX_IMAGE_SIZE)?;
        let listing = list_images(dir)?;
        let mut notes: Vec<String> = listing
            .skipped
            .iter()
            .map(|(p, why)| format!("--data_dir: skipped {}: {why}", p.display()))
            .collect();
        let all = listing.files;
        if all.is_empty() {
            bail!(
                "--data_dir {}: no .jpg/.jpeg/.png/.gif files found{}",
                dir.display(),
                if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
            );
        }
        notes.extend(check_channels(&all[0], opts.channels)?);
        let (classes, labels) = if opts.class_cond {
            let (c, l) = labels_from_file_names(&all);
            (Some(c), Some(l.into_iter().map(|v| v as u32).collect::<Vec<_>>()))
        } else {
            (None, None)
        };
        let files = shard(&all, opts.rank, opts.world_size)?;
        let labels = match labels {
            Some(l) => Some(shard(&l, opts.rank, opts.world_size)?),
            None => None,
        };
        if files.is_empty() {
            bail!(
                "--data_dir {}: {} files leave rank {} of {} with none",
                dir.display(),
                all.len(),
                opts.rank,
                opts.world_size
            );
        }
        Ok(Self { files, labels, classes, opts, notes })
    }

    /// This rank's files in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    /// This rank's labels in file order.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn channels(&self) -> usize {
        self.opts.channels
    }
    fn image_size(&self) -> usize {
        self.opts.image_size
    }
    fn classes(&self) -> Option<&ClassList> {
        self.classes.as_ref()
    }
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
    fn get(&self, index: usize, rng: &mut StreamRng) -> Result<Item> {
        let Some(path) = self.files.get(index) else {
            bail!("item {index} out of range ({} files)", self.files.len());
        };
        let img = load(path, self.opts.channels)?;
        let size = self.opts.image_size;
        let mut arr = if self.opts.random_crop {
            random_crop_arr(&img, size, MIN_CROP_FRAC, MAX_CROP_FRAC, rng)
        } else {
            center_crop_arr(&img, size)
        }
        .map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))?;
        if self.opts.random_flip && rng.gen::<f64>() < 0.5 {
            arr.flip_horizontal();
        }
        Ok(Item { pixels: arr.to_chw_f32(), label: self.labels.as_ref().map(|l| l[index]) })
    }
}

/// Checks `--in_channels` against the first image of the folder (its header only): 1 and 3
/// always work (PIL's `convert("L")` / `convert("RGB")`), 2 and 4 only for images with alpha.
/// Returns a note when colour images are converted to gray. A first file that cannot be read
/// is left for decoding to report (naming it) when its item is loaded.
fn check_channels(first: &Path, channels: usize) -> Result<Option<String>> {
    if !(1..=4).contains(&channels) {
        bail!(
            "--in_channels {channels}: a folder of images decodes to 1 (gray) or 3 (RGB) \
             channels, 2 or 4 with alpha"
        );
    }
    let Some(ct) = std::fs::read(first).ok().and_then(|b| color_type(&b).ok()) else {
        return Ok(None);
    };
    let have = channels_of(ct);
    match channels {
        1 if have >= 3 => Ok(Some(format!(
            "--in_channels 1: the images are colour ({} is {ct:?}); they are converted to \
             gray as PIL's convert(\"L\")",
            first.display()
        ))),
        1 | 3 => Ok(None),
        _ if have == 2 || have == 4 => Ok(None),
        _ => bail!(
            "--in_channels {channels}: the images have no alpha channel ({} is {ct:?}); use \
             --in_channels 3 (RGB) or 1 (gray)",
            first.display()
        ),
    }
}
