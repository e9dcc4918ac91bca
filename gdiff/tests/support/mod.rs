//! Shared helpers of the `gdiff` end-to-end tests: the golden fixtures of the library's parity
//! tests, scratch directories and running the built binary.
#![allow(dead_code)]
use std::path::PathBuf;
use std::process::{Command, Output};

/// A file of the library's golden fixtures (`guided-diffusion/tests/golden`).
pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guided-diffusion/tests/golden").join(name)
}

/// [`golden`] as a command-line argument.
pub fn golden_arg(name: &str) -> String {
    golden(name).to_str().expect("a UTF-8 path").to_string()
}

/// The network flags of the golden `model_unet_b.pt` (32 channels, one block, two levels).
pub const UNET_B_FLAGS: &[&str] = &[
    "--image_size",
    "32",
    "--num_channels",
    "32",
    "--num_res_blocks",
    "1",
    "--channel_mult",
    "1,1",
    "--attention_resolutions",
    "16",
    "--num_heads",
    "2",
    "--use_scale_shift_norm",
    "False",
];

/// A fresh scratch directory for the test `tag` of this process.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gdiff-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the built `gdiff` with `args`.
pub fn gdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gdiff")).args(args).output().expect("gdiff runs")
}
