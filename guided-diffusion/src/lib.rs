//! Guided diffusion (ADM, Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
//! Synthesis") in Rust, numerically matching the reference openai/guided-diffusion.
//!
//! Layers, data flowing down only:
//! - [`sample`], [`train`], [`eval`]: the loops users run.
//! - [`samplers`]: DDPM, DDIM, DPM-Solver(++) and SDE-DPM-Solver++, each a value owning its
//!   time grid, asking one denoiser (network + guidance); [`samplers::SamplerSpec`] names them.
//! - [`diffusion`], [`guidance`]: the Gaussian diffusion process (schedules, respacing, losses)
//!   and the guidance terms a sampler takes as a value.
//! - [`load`]: networks from checkpoint files: a checkpoint read once into its tensors and what
//!   its metadata says (configs, class names, null class), the network built and checked.
//! - [`models`]: the ADM UNet, the super-resolution UNet and the noisy-image classifier.
//! - [`checkpoint`], [`data`]: weights in and out (.pt, safetensors), images and data sets.
//! - [`dist`]: several processes (MPI) for training, sampling and likelihood.
//! - [`limits`]: the bounds every size from a file or a flag is checked against.

// Kernels and solver updates take their operands one by one, named as in the papers and the
// official code (lhs, rhs, strides, r1, r2, ...); a struct per call would hide that mapping.
#![allow(clippy::too_many_arguments)]

pub mod checkpoint;
pub mod data;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod eval;
pub mod guidance;
pub mod kernels;
pub mod limits;
pub mod load;
pub mod models;
pub mod sample;
pub mod samplers;
pub mod train;

pub use candle_core::{DType, Device, Tensor};
pub use error::{Error, Result};
