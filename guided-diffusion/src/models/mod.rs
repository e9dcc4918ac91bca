//! The ADM networks: UNet, super-resolution UNet and the noisy-image classifier.
