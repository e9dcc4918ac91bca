//! Derived forms of a convolution weight, kept by the layer that owns the weight.
//!
//! Each call of a convolution would rebuild forms of its weight that depend on nothing else:
//! the Winograd transform `U = G g G^T` (4x the weight's size) and, for the input gradient that
//! classifier guidance takes, the flipped and transposed weight and its own transform; in a
//! bf16 policy, the weight packed for the bf16 product. At batch 1 on the 64x64 model these
//! rebuilds cost about a tenth of a forward pass and about as much as the convolutions
//! themselves in the classifier's input gradient. Across the hundreds of model calls of a
//! sampling run the weights do not change, so the forms can be kept.
//!
//! Keeping them is only correct while nobody writes the weight, which candle cannot tell us
//! (`Var::set` and in-place ops such as the EMA update keep a tensor's id and storage). So
//! the owner says so: a network whose weights are *frozen* (`models::Net::freeze`, which the
//! loading functions do for weights read from a file, held by nothing else) hands its layers a
//! generation number with each call, and [`WeightForms::for_call`] keeps the forms of that
//! generation. Freezing again (after writing the weights) starts a new generation, which drops
//! the forms of the old one; a weight that is a trainable `Var`, or a network that is not
//! frozen (the default, e.g. one built on the EMA's tensors), never keeps any, so the forms
//! are made per call as in training. The cost is memory: the forms kept are up to 5x the size
//! of the weights they come from. Measured at batch 1 (`benches/workloads.rs`): the 64x64
//! UNet's forward 0.71 -> 0.61 s for +0.55 GB of peak memory (1.3 -> 1.9 GB), the 64x64
//! classifier's input gradient 0.49 -> 0.40 s for +0.36 GB.
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Tensor;

/// The derived forms of one weight `w[co, c, kh, kw]`, each computed on first use.
#[derive(Default)]
pub struct Derived {
    /// Winograd transform of `w` (forward convolution).
    pub winograd: OnceLock<Vec<f32>>,
    /// `w` flipped and transposed to `[c, co, kh, kw]` (input gradient, stride 1).
    pub flipped: OnceLock<Vec<f32>>,
    /// Winograd transform of the flipped weight.
    pub flipped_winograd: OnceLock<Vec<f32>>,
    /// The weight packed for bf16 products ([`super::bf16`]).
    pub(crate) bf16: super::conv_bf16::Cache,
    /// The flipped weight packed for bf16 products (input gradients in bf16).
    pub(crate) bf16_flipped: super::conv_bf16::Cache,
}

/// The kept derived forms of one weight, owned by the layer that owns the weight: empty until
/// a call of a frozen generation needs them; a clone starts empty.
#[derive(Default)]
pub struct WeightForms {
    kept: Mutex<Option<(u64, Arc<Derived>)>>,
}

impl WeightForms {
    /// The forms to keep for a call on `w` whose owner froze the weights in `generation`
    /// (`None`: not frozen), or `None` where nothing may be kept (not frozen, or `w` a
    /// variable). Forms of another generation are dropped.
    pub fn for_call(&self, w: &Tensor, generation: Option<u64>) -> Option<Arc<Derived>> {
        let g = generation?;
        if w.is_variable() {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match &*kept {
            Some((kg, d)) if *kg == g => Some(d.clone()),
            _ => {
                let d = Arc::new(Derived::default());
                *kept = Some((g, d.clone()));
                Some(d)
            }
        }
    }

    /// Whether forms are kept (for tests).
    pub fn is_kept(&self) -> bool {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl Clone for WeightForms {
    fn clone(&self) -> Self {
        WeightForms::default()
    }
}

impl std::fmt::Debug for WeightForms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightForms").field("kept", &self.is_kept()).finish()
    }
}
