//! The `Dataset` trait every source implements (random access to prepared items) and the
//! reference's image-folder data set (`ImageDataset` of `image_datasets.py`).
use std::path::{Path, PathBuf};

use rand::Rng;

use super::decode::load_rgb;
use super::files::{labels_from_file_names, list_image_files_recursively, shard, ClassList};
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
    /// Prepares item `index`; `rng` drives augmentation (crop, flip).
    fn get(&self, index: usize, rng: &mut StreamRng) -> Result<Item>;
}

/// Augmentation and labelling options of the folder loader (the reference's `load_data` flags).
#[derive(Debug, Clone)]
pub struct FolderOptions {
    pub image_size: usize,
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
        let all = list_image_files_recursively(dir)?;
        if all.is_empty() {
            bail!("--data_dir {}: no .jpg/.jpeg/.png/.gif files found", dir.display());
        }
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
        Ok(Self { files, labels, classes, opts })
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
        3
    }
    fn image_size(&self) -> usize {
        self.opts.image_size
    }
    fn classes(&self) -> Option<&ClassList> {
        self.classes.as_ref()
    }
    fn get(&self, index: usize, rng: &mut StreamRng) -> Result<Item> {
        let Some(path) = self.files.get(index) else {
            bail!("item {index} out of range ({} files)", self.files.len());
        };
        let img = load_rgb(path)?;
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
