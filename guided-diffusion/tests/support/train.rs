//! Shared pieces of the training tests: a tiny class-conditional UNet and a Fashion-MNIST
//! loader at 16x16.
use guided_diffusion::data::{open_dataset, DataSpec, Loader, LoaderConfig};
use guided_diffusion::models::{ModelFlags, NetConfig};

/// A 16x16 single-channel UNet: 32 channels, one res block per level, attention at 8x8, class
/// conditional (10 classes), learned sigmas.
pub fn tiny_config() -> NetConfig {
    let mut f = ModelFlags::script_defaults();
    f.image_size = Some(16);
    f.in_channels = Some(1);
    f.num_channels = Some(32);
    f.num_res_blocks = Some(1);
    f.channel_mult = Some("1,1".into());
    f.attention_resolutions = Some("8".into());
    f.num_head_channels = Some(32);
    f.class_cond = Some(true);
    f.num_classes = Some(10);
    f.learn_sigma = Some(true);
    NetConfig::UNet(f.to_config().unwrap())
}

/// Fashion-MNIST at 16x16 with labels, one worker.
pub fn fashion_loader(batch: usize, seed: u64) -> Loader {
    let mut spec = DataSpec::new("fashion-mnist", 16);
    spec.class_cond = true;
    spec.channels = 1;
    let mut lc = LoaderConfig::new(batch, seed);
    lc.workers = 1;
    Loader::new(open_dataset(&spec).unwrap(), lc).unwrap()
}
