//! Fashion-MNIST (Zalando) from Debian's `dataset-fashion-mnist` package: 60,000 training and
//! 10,000 test images, 28x28 gray, 10 classes. Selected by `--data_dir fashion-mnist`
//! (training split) or `fashion-mnist:test`.
//!
//! Items are fitted to `image_size` either by padding with the background (0, i.e. -1 after
//! scaling; 28 -> 32 pads 2 on every side) or by the reference's `center_crop_arr` resize (PIL
//! bicubic); gray is kept as 1 channel or repeated to 3.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;

use super::dataset::{Dataset, Item};
use super::files::ClassList;
use super::idx::read_idx;
use super::resize::{center_crop_arr, random_crop_arr, RawImage, MAX_CROP_FRAC, MIN_CROP_FRAC};
use super::rng::StreamRng;
use crate::{bail, Result};

/// Where Debian installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The environment variable gdiff reads for [`FashionMnistOptions::dir`]. The library never
/// reads it; the error for missing files names it, for gdiff's users.
pub const DIR_ENV: &str = "FASHION_MNIST_DIR";
/// Class names in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// Native side length.
pub const NATIVE_SIZE: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// How 28x28 becomes `image_size x image_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Pad when `image_size >= 28` (centred, extra pixel right/bottom), resize when smaller.
    Auto,
    /// Pad with the background; needs `image_size >= 28`.
    Pad,
    /// `center_crop_arr` (PIL bicubic, box halving when shrinking).
    Resize,
}

#[derive(Debug, Clone)]
pub struct FashionMnistOptions {
    pub split: Split,
    pub image_size: usize,
    /// 1 (gray) or 3 (gray repeated to RGB, for models built for RGB).
    pub channels: usize,
    pub fit: Fit,
    /// Labels returned (`class_cond`); the class list is known either way.
    pub class_cond: bool,
    pub random_crop: bool,
    pub random_flip: bool,
    pub rank: usize,
    pub world_size: usize,
    /// Directory of the four `.gz` files; `None`: [`DEFAULT_DIR`].
    pub dir: Option<PathBuf>,
}

impl FashionMnistOptions {
    pub fn new(split: Split, image_size: usize) -> Self {
        Self {
            split,
            image_size,
            channels: 1,
            fit: Fit::Auto,
            class_cond: true,
            random_crop: false,
            random_flip: true,
            rank: 0,
            world_size: 1,
            dir: None,
        }
    }
}

/// Shared, sharded Fashion-MNIST images.
pub struct FashionMnist {
    images: Arc<Vec<u8>>,
    labels: Arc<Vec<u8>>,
    /// Indices into the full split kept by this rank.
    local: Vec<usize>,
    classes: ClassList,
    opts: FashionMnistOptions,
}

fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        Split::Test => ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
}

fn require(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!(
            "Fashion-MNIST file {} not found: install Debian's package with \
             `apt-get install dataset-fashion-mnist`, or set {DIR_ENV} to the directory holding \
             the four *-idx?-ubyte.gz files",
            path.display()
        );
    }
    Ok(())
}

impl FashionMnist {
    pub fn open(opts: FashionMnistOptions) -> Result<Self> {
        if opts.channels != 1 && opts.channels != 3 {
            bail!("Fashion-MNIST: channels must be 1 or 3, not {}", opts.channels);
        }
        if opts.image_size == 0 {
            bail!("--image_size must be positive");
        }
        if opts.fit == Fit::Pad && opts.image_size < NATIVE_SIZE {
            bail!("Fashion-MNIST: cannot pad 28x28 to {0}x{0}; use resizing", opts.image_size);
        }
        let dir = opts.dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let (img_name, lbl_name) = file_names(opts.split);
        let (img_path, lbl_path) = (dir.join(img_name), dir.join(lbl_name));
        require(&img_path)?;
        require(&lbl_path)?;
        let images = read_idx(&img_path)?;
        let labels = read_idx(&lbl_path)?;
        if images.dims.len() != 3 || images.dims[1] != NATIVE_SIZE || images.dims[2] != NATIVE_SIZE
        {
            bail!("{}: expected N x 28 x 28 images, found {:?}", img_path.display(), images.dims);
        }
        if labels.dims != [images.dims[0]] {
            bail!("{}: {:?} labels for {} images", lbl_path.display(), labels.dims, images.dims[0]);
        }
        if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASS_NAMES.len()) {
            bail!("{}: label {bad} out of range 0..10", lbl_path.display());
        }
        let all: Vec<usize> = (0..images.dims[0]).collect();
        let local = super::files::shard(&all, opts.rank, opts.world_size)?;
        let classes = ClassList::new(CLASS_NAMES.iter().map(|s| s.to_string()).collect());
        Ok(Self {
            images: Arc::new(images.data),
            labels: Arc::new(labels.data),
            local,
            classes,
            opts,
        })
    }

    /// Label (0..10) of local item `index`.
    pub fn label(&self, index: usize) -> Option<u8> {
        self.local.get(index).map(|&i| self.labels[i])
    }

    /// The raw 28x28 gray image of local item `index`.
    pub fn raw(&self, index: usize) -> Option<RawImage> {
        let i = *self.local.get(index)?;
        let n = NATIVE_SIZE * NATIVE_SIZE;
        Some(RawImage {
            width: NATIVE_SIZE,
            height: NATIVE_SIZE,
            channels: 1,
            data: self.images[i * n..(i + 1) * n].to_vec(),
        })
    }

    fn fit(&self, img: &RawImage) -> Result<RawImage> {
        let size = self.opts.image_size;
        let pad = match self.opts.fit {
            Fit::Pad => true,
            Fit::Resize => false,
            Fit::Auto => size >= NATIVE_SIZE,
        };
        if pad {
            Ok(pad_to(img, size, 0))
        } else {
            center_crop_arr(img, size)
        }
    }
}

/// Centres `img` on a `size x size` canvas of `background` (extra pixel right/bottom).
pub fn pad_to(img: &RawImage, size: usize, background: u8) -> RawImage {
    let c = img.channels;
    let (x0, y0) = ((size - img.width) / 2, (size - img.height) / 2);
    let mut data = vec![background; size * size * c];
    for y in 0..img.height {
        let src = &img.data[y * img.width * c..(y + 1) * img.width * c];
        let dst = ((y0 + y) * size + x0) * c;
        data[dst..dst + img.width * c].copy_from_slice(src);
    }
    RawImage { width: size, height: size, channels: c, data }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.local.len()
    }
    fn channels(&self) -> usize {
        self.opts.channels
    }
    fn image_size(&self) -> usize {
        self.opts.image_size
    }
    fn classes(&self) -> Option<&ClassList> {
        Some(&self.classes)
    }
    fn get(&self, index: usize, rng: &mut StreamRng) -> Result<Item> {
        let Some(raw) = self.raw(index) else {
            bail!("Fashion-MNIST item {index} out of range ({} items)", self.local.len());
        };
        let mut img = self.fit(&raw)?;
        if self.opts.random_crop {
            img = random_crop_arr(&img, self.opts.image_size, MIN_CROP_FRAC, MAX_CROP_FRAC, rng)?;
        }
        if self.opts.random_flip && rng.gen::<f64>() < 0.5 {
            img.flip_horizontal();
        }
        let mut pixels = img.to_chw_f32();
        if self.opts.channels == 3 {
            let plane = pixels.len();
            pixels.reserve(2 * plane);
            pixels.extend_from_within(..plane);
            pixels.extend_from_within(..plane);
        }
        let label = if self.opts.class_cond { self.label(index).map(u32::from) } else { None };
        Ok(Item { pixels, label })
    }
}
