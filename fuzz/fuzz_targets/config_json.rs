//! Model, classifier and diffusion configs from JSON, as `--model_config` and the configs
//! embedded in checkpoints are read: parse, validate, and build the diffusion schedule.
#![no_main]
use guided_diffusion::diffusion::DiffusionConfig;
use guided_diffusion::models::NetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for builder in ["unet.UNetModel", "unet.EncoderUNetModel", "script_util.create_model"] {
        if let Ok(c) = NetConfig::from_builder(builder, &v) {
            let _ = c.validate();
        }
    }
    if let Ok(c) = NetConfig::from_json(&v) {
        let _ = c.validate();
    }
    if let Ok(d) = serde_json::from_value::<DiffusionConfig>(v) {
        let _ = d.build();
    }
});
