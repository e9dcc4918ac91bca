//! Training infrastructure, independent of the diffusion math: the loop is generic over an
//! [`Objective`] (per-sample losses of a micro-batch), so diffusion models, super-resolution
//! models and noisy classifiers train with the same code.
//!
//! - [`params`]: named trainable `Var`s (from a `VarMap`) and accumulated gradients.
//! - [`adamw`]: PyTorch's AdamW, with saveable state.
//! - [`ema`]: EMA copies per `--ema_rate`.
//! - [`objective`]: the [`Objective`] trait, step context and the reference's `log_loss_dict`.
//! - [`objectives`]: the diffusion loss and the noisy classifier's cross-entropy.
//! - [`trainer`]: [`TrainLoop`] (micro-batches, lr anneal, NaN skipping, save/resume).
//! - [`ckpt`]: checkpoint names, atomic safetensors with metadata, latest-checkpoint lookup.
//! - [`logger`]: `log.txt` / `progress.csv` as the reference's logger.
//! - [`lock`]: one run per log directory.
//! - [`dist`]: the data-parallel hook ([`Distributed`]); one process by default.
pub mod adamw;
pub mod ckpt;
/// The data-parallel hook, shared with sampling: [`crate::dist`].
pub use crate::dist;
pub mod ema;
pub mod lock;
pub mod logger;
pub mod objective;
pub mod objectives;
pub mod params;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use dist::{Distributed, SingleProcess};
pub use ema::{parse_ema_rates, Ema};
pub use lock::RunLock;
pub use logger::{resolve_log_dir, Logger};
pub use objective::{randn, Losses, Objective, StepContext};
pub use objectives::{ClassifierObjective, DiffusionObjective, LabelDropout};
pub use params::{Grads, ParamSet};
pub use trainer::{MicroScaling, StepOutcome, TrainConfig, TrainLoop};
