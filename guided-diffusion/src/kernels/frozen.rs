//! Frozen weights: derived forms of convolution weights computed once per sampling run.
//!
//! Each call of a convolution rebuilds forms of its weight that depend on nothing else: the
//! Winograd transform `U = G g G^T` (4x the weight's size) and, for the input gradient that
//! classifier guidance takes, the flipped and transposed weight and its own transform. At
//! batch 1 on the 64x64 model these rebuilds cost about a tenth of a forward pass and about
//! as much as the convolutions themselves in the classifier's input gradient. Across the
//! hundreds of model calls of a sampling run the weights do not change, so the forms can be
//! kept.
//!
//! Keeping them is only correct while nobody writes to the weights, which candle cannot tell
//! us (`Var::set` and in-place ops keep a tensor's id). So the cache lives only inside an
//! explicit scope: [`freeze`] returns a guard, and while at least one guard is alive,
//! [`lookup`] keeps the derived forms of every weight that is *not* a variable (a loaded
//! checkpoint, not a trainable `Var`), keyed by the tensor's id. When the last guard drops, the
//! cache is emptied. The sampling loops, the likelihood loop and the sampler hold a guard; the
//! training loop never does. The cost is memory: the forms kept are up to 5x the size of the
//! weights they come from. Measured at batch 1 (`benches/workloads.rs`): the 64x64 UNet's
//! forward 0.71 -> 0.61 s for +0.55 GB of peak memory (1.3 -> 1.9 GB), the 64x64 classifier's
//! input gradient 0.49 -> 0.40 s for +0.36 GB.
//! `GD_FROZEN_CACHE=0` or [`set_frozen_cache`](super::set_frozen_cache) turns the cache off.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Tensor, TensorId};

/// The derived forms of one weight `w[co, c, kh, kw]`, each computed on first use.
#[derive(Default)]
pub struct Derived {
    /// Winograd transform of `w` (forward convolution).
    pub winograd: OnceLock<Vec<f32>>,
    /// `w` flipped and transposed to `[c, co, kh, kw]` (input gradient, stride 1).
    pub flipped: OnceLock<Vec<f32>>,
    /// Winograd transform of the flipped weight.
    pub flipped_winograd: OnceLock<Vec<f32>>,
    /// The weight packed for bf16 products (inside a bf16 scope, [`super::bf16`]).
    pub(crate) bf16: super::conv_bf16::Cache,
    /// The flipped weight packed for bf16 products (input gradients in a bf16 scope).
    pub(crate) bf16_flipped: super::conv_bf16::Cache,
}

/// Open scopes, and the cache they share.
static SCOPES: AtomicUsize = AtomicUsize::new(0);
static CACHE: Mutex<Option<HashMap<TensorId, Arc<Derived>>>> = Mutex::new(None);

/// While this guard lives, the derived forms of non-variable convolution weights are kept.
/// Scopes nest; the cache empties when the last one ends.
#[must_use = "the weights are frozen only while the guard lives"]
pub struct Frozen(());

/// Opens a frozen-weights scope: until the guard drops, no convolution weight that is not a
/// variable may be written to.
pub fn freeze() -> Frozen {
    SCOPES.fetch_add(1, Ordering::SeqCst);
    Frozen(())
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if SCOPES.fetch_sub(1, Ordering::SeqCst) == 1 {
            *cache = None;
        }
    }
}

/// Whether a frozen-weights scope is open (and the cache is not switched off).
pub fn active() -> bool {
    SCOPES.load(Ordering::SeqCst) > 0 && super::switch::frozen_cache_enabled()
}

/// The derived forms of `w`, inside a scope and when `w` is not a variable; else `None`.
pub fn lookup(w: &Tensor) -> Option<Arc<Derived>> {
    if !active() || w.is_variable() {
        return None;
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    // Checked again under the lock: a scope that ended meanwhile emptied the cache.
    if SCOPES.load(Ordering::SeqCst) == 0 {
        return None;
    }
    Some(cache.get_or_insert_with(HashMap::new).entry(w.id()).or_default().clone())
}

/// Number of weights with a cache entry (for tests).
pub fn cached_weights() -> usize {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |c| c.len())
}
