//! Training loops: diffusion models and noisy classifiers, EMA, checkpoints.
