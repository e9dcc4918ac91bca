//! Images and data sets: the reference's folder loader and Fashion-MNIST.
//!
//! - [`files`]: listing, labels from file names, class lists, sharding (rank::world).
//! - [`resize`]: PIL-exact BOX/BICUBIC, `center_crop_arr`, `random_crop_arr`, flips.
//! - [`decode`]: image files to gray or RGB, under decoding limits.
//! - [`dataset`]: the [`Dataset`] trait and the folder data set.
//! - [`idx`], [`fashion_mnist`]: Debian's `dataset-fashion-mnist` files.
//! - [`loader`]: endless shuffled batches (`[N,C,H,W]` tensors + labels) from background threads.
//! - [`rng`]: the counter-based random streams that make all of it reproducible and resumable.
//!
//! Wiring: `open_dataset(&DataSpec { .. })` then `Loader::new(ds, LoaderConfig::new(bs, seed))`.
pub mod dataset;
pub mod decode;
pub mod fashion_mnist;
pub mod files;
pub mod idx;
pub mod loader;
pub mod resize;
pub mod rng;

use std::path::PathBuf;
use std::sync::Arc;

pub use dataset::{Dataset, FolderDataset, FolderOptions, Item};
pub use fashion_mnist::{FashionMnist, FashionMnistOptions, Fit, Split};
pub use files::{list_image_files_recursively, list_images, ClassList, Listing};
pub use loader::{Batch, BatchSource, Loader, LoaderConfig};

use crate::{bail, Result};

/// The `--data_dir` value selecting Fashion-MNIST's training split (`fashion-mnist:test` for
/// the test split).
pub const FASHION_MNIST: &str = "fashion-mnist";

/// Everything `--data_dir` and friends say about the data, for [`open_dataset`].
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// A directory of images, `fashion-mnist`, `fashion-mnist:train` or `fashion-mnist:test`.
    pub data_dir: String,
    pub image_size: usize,
    pub class_cond: bool,
    pub random_crop: bool,
    pub random_flip: bool,
    /// Channels of the items: the model's `in_channels` (1 = gray, 3 = RGB; folders also
    /// 2 / 4 for images with alpha).
    pub channels: usize,
    /// Fashion-MNIST only: pad or resize.
    pub fit: Fit,
    /// Fashion-MNIST only: the directory of its four `.gz` files; `None`:
    /// [`fashion_mnist::DEFAULT_DIR`] (gdiff fills it from `$FASHION_MNIST_DIR`).
    pub fashion_mnist_dir: Option<PathBuf>,
    pub rank: usize,
    pub world_size: usize,
}

impl DataSpec {
    pub fn new(data_dir: impl Into<String>, image_size: usize) -> Self {
        Self {
            data_dir: data_dir.into(),
            image_size,
            class_cond: false,
            random_crop: false,
            random_flip: true,
            channels: 3,
            fit: Fit::Auto,
            fashion_mnist_dir: None,
            rank: 0,
            world_size: 1,
        }
    }
}

/// Opens the data set `spec.data_dir` names (this rank's shard).
pub fn open_dataset(spec: &DataSpec) -> Result<Arc<dyn Dataset>> {
    let d = spec.data_dir.as_str();
    let split = match d {
        FASHION_MNIST | "fashion-mnist:train" => Some(Split::Train),
        "fashion-mnist:test" => Some(Split::Test),
        _ if d.starts_with("fashion-mnist:") => {
            bail!("--data_dir {d}: unknown split (use fashion-mnist:train or fashion-mnist:test)")
        }
        _ => None,
    };
    Ok(match split {
        Some(split) => Arc::new(FashionMnist::open(FashionMnistOptions {
            split,
            image_size: spec.image_size,
            channels: spec.channels,
            fit: spec.fit,
            class_cond: spec.class_cond,
            random_crop: spec.random_crop,
            random_flip: spec.random_flip,
            rank: spec.rank,
            world_size: spec.world_size,
            dir: spec.fashion_mnist_dir.clone(),
        })?),
        None => Arc::new(FolderDataset::open(
            d,
            FolderOptions {
                image_size: spec.image_size,
                channels: spec.channels,
                class_cond: spec.class_cond,
                random_crop: spec.random_crop,
                random_flip: spec.random_flip,
                rank: spec.rank,
                world_size: spec.world_size,
            },
        )?),
    })
}
