//! The Gaussian diffusion process: schedules, respacing, q/p distributions, losses, samplers.
