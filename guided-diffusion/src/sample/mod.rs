//! Sampling loops users run: batching, per-sample seeds, output images.
