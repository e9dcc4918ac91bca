//! Checkpoint handling around the networks: mismatch reports that name keys and flags, configs
//! embedded in our safetensors, JSON round trips of configs, reduced-precision weights.
mod support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use guided_diffusion::checkpoint;
use guided_diffusion::models::{defaults, flags, ModelFlags, Net, NetConfig, Pool};
use support::{assert_close, golden, Case};

fn unet_b_flags() -> ModelFlags {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("model_unet_b.json")).unwrap())
            .unwrap();
    serde_json::from_value(v["kwargs"].clone()).unwrap()
}

fn load_err(flags: &ModelFlags, weights: &str) -> String {
    let cfg = NetConfig::UNet(flags.to_config().unwrap());
    match Net::load_with_config(&cfg, golden(weights), &Device::Cpu) {
        Ok(_) => panic!("loading {weights} with mismatching flags succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_num_channels_names_shapes_and_flag() {
    let mut f = unet_b_flags();
    f.num_channels = Some(64);
    let msg = load_err(&f, "model_unet_b.pt");
    println!("{msg}");
    assert!(msg.contains("model_unet_b.pt"), "{msg}");
    assert!(
        msg.contains("time_embed.0.weight is [128, 32] in the file but [256, 64] in the model"),
        "{msg}"
    );
    assert!(msg.contains("--num_channels"), "{msg}");
}

#[test]
fn wrong_class_cond_and_learn_sigma_are_named() {
    let mut f = unet_b_flags();
    f.class_cond = Some(true);
    f.num_classes = Some(10);
    let msg = load_err(&f, "model_unet_b.safetensors");
    assert!(msg.contains("label_emb.weight [10, 128]"), "{msg}");
    assert!(msg.contains("--class_cond"), "{msg}");

    let mut f = unet_b_flags();
    f.learn_sigma = Some(true);
    let msg = load_err(&f, "model_unet_b.safetensors");
    assert!(msg.contains("out.2.weight is [3, 32, 3, 3] in the file but [6, 32, 3, 3]"), "{msg}");
    assert!(msg.contains("--learn_sigma"), "{msg}");
}

#[test]
fn wrong_attention_resolutions_lists_missing_and_unexpected_keys() {
    let mut f = unet_b_flags();
    f.attention_resolutions = Some("32".into());
    let msg = load_err(&f, "model_unet_b.pt");
    println!("{msg}");
    assert!(msg.contains("missing from the file: input_blocks.1.1.norm.weight"), "{msg}");
    assert!(msg.contains("unexpected key(s) in the file"), "{msg}");
    assert!(msg.contains("--attention_resolutions"), "{msg}");
}

#[test]
fn wrong_num_heads_is_caught_by_the_embedded_config() {
    // Head counts do not change any weight shape, so only a config saved with the weights can
    // tell. Re-save the golden weights with their config embedded, then ask for other heads.
    let dir = tempdir();
    let path = dir.join("unet_b.safetensors");
    let sd = checkpoint::read(golden("model_unet_b.pt"), &Device::Cpu).unwrap();
    let cfg = NetConfig::UNet(unet_b_flags().to_config().unwrap());
    guided_diffusion::load::write_model(&path, &sd.tensors, &cfg, &HashMap::new()).unwrap();

    let mut f = unet_b_flags();
    f.num_heads = Some(4);
    let wrong = NetConfig::UNet(f.to_config().unwrap());
    let msg = Net::load_with_config(&wrong, &path, &Device::Cpu).unwrap_err().to_string();
    println!("{msg}");
    assert!(msg.contains("num_heads: 2 in the checkpoint vs 4 given"), "{msg}");

    // The embedded config alone is enough to load, and gives the reference output.
    let net = Net::load_embedded(&path, &Device::Cpu).unwrap();
    assert_eq!(net.config(), cfg);
    let case = Case::load("unet_b_forward");
    let t = case.get("in.timesteps").to_dtype(DType::F32).unwrap();
    let out = net.forward(case.get("in.x"), &t, None, None).unwrap();
    assert_close("unet_b from our safetensors", &out, case.get("out.out"), case.atol("out"));
}

/// The loading layer reads a checkpoint once: its tensors and everything our metadata says
/// (network and diffusion configs, class names, the null class and label-dropout probability of
/// classifier-free guidance), then builds the network from the same tensors, frozen; a bad
/// metadata value is an error naming the file and the key.
#[test]
fn a_checkpoint_is_read_once_into_its_tensors_and_info() {
    use guided_diffusion::checkpoint::DIFFUSION_KEY;
    use guided_diffusion::diffusion::{DiffusionConfig, NoiseSchedule};
    use guided_diffusion::load::{Checkpoint, CheckpointInfo};
    use guided_diffusion::train::ckpt::meta;
    let dir = tempdir();
    let path = dir.join("unet_b_cfg.safetensors");
    let sd = checkpoint::read(golden("model_unet_b.pt"), &Device::Cpu).unwrap();
    let cfg = NetConfig::UNet(unet_b_flags().to_config().unwrap());
    let diffusion = DiffusionConfig { noise_schedule: NoiseSchedule::Cosine, ..Default::default() };
    let extra = HashMap::from([
        (DIFFUSION_KEY.to_string(), serde_json::to_string(&diffusion).unwrap()),
        (meta::CLASSES.to_string(), r#"["a","b"]"#.to_string()),
        (meta::NULL_CLASS.to_string(), "2".to_string()),
        (meta::CLASS_DROPOUT_PROB.to_string(), "0.1".to_string()),
    ]);
    guided_diffusion::load::write_model(&path, &sd.tensors, &cfg, &extra).unwrap();

    let ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    let info = ckpt.info.clone();
    assert_eq!(info.net.as_ref(), Some(&cfg));
    assert_eq!(info.diffusion.as_ref().map(|d| d.noise_schedule), Some(NoiseSchedule::Cosine));
    assert_eq!(info.class_names, Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!((info.null_class, info.class_dropout_prob), (Some(2), Some(0.1)));
    assert_eq!(ckpt.tensors().len(), sd.tensors.len());
    let header_only = CheckpointInfo::read(&path).unwrap();
    assert_eq!((header_only.net, header_only.null_class), (info.net.clone(), Some(2)));
    let net = ckpt.into_network(&cfg).unwrap();
    assert!(net.exec().is_frozen(), "a loaded network is frozen");

    // A .pt carries no metadata: nothing but the tensors.
    let pt = Checkpoint::read(golden("model_unet_b.pt"), &Device::Cpu).unwrap();
    assert!(pt.info.net.is_none() && pt.info.null_class.is_none() && pt.info.diffusion.is_none());

    let bad = dir.join("bad_null.safetensors");
    let extra = HashMap::from([(meta::NULL_CLASS.to_string(), "two".to_string())]);
    guided_diffusion::load::write_model(&bad, &sd.tensors, &cfg, &extra).unwrap();
    let e = Checkpoint::read(&bad, &Device::Cpu).err().expect("a bad null class").to_string();
    assert!(e.contains("bad_null.safetensors") && e.contains(meta::NULL_CLASS), "{e}");
}

#[test]
fn golden_kwargs_are_valid_configs_and_round_trip() {
    for model in ["unet_a", "unet_b", "sr", "clf_adaptive", "clf_attn", "clf_spatial"] {
        let cfg = NetConfig::from_file(golden(&format!("model_{model}.json"))).unwrap();
        let back = NetConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(cfg, back, "{model}");
    }
    // create_model's mapping: "16" at 32x32 is ds 2, "1,1" is the channel_mult, eps only.
    let NetConfig::UNet(c) = NetConfig::from_file(golden("model_unet_b.json")).unwrap() else {
        panic!()
    };
    assert_eq!(c.trunk.attention_resolutions, vec![2]);
    assert_eq!(c.trunk.channel_mult, vec![1.0, 1.0]);
    assert_eq!((c.trunk.in_channels, c.trunk.out_channels, c.num_classes), (3, 3, None));
}

#[test]
fn script_flag_semantics() {
    assert_eq!(flags::attention_ds(64, "32,16,8", "attention_resolutions").unwrap(), vec![2, 4, 8]);
    assert_eq!(defaults::channel_mult(512).unwrap(), vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]);
    assert!(defaults::channel_mult(48).unwrap_err().to_string().contains("--channel_mult"));
    for (s, b) in
        [("True", true), ("yes", true), ("1", true), ("False", false), ("no", false), ("0", false)]
    {
        assert_eq!(flags::parse_bool(s, "class_cond").unwrap(), b);
    }
    assert!(flags::parse_bool("maybe", "class_cond")
        .unwrap_err()
        .to_string()
        .contains("--class_cond"));

    // The released 64x64 model: learn_sigma doubles out channels, class_cond gives 1000 classes.
    let mut f = ModelFlags::script_defaults();
    f.attention_resolutions = Some("32,16,8".into());
    f.class_cond = Some(true);
    f.learn_sigma = Some(true);
    f.num_channels = Some(192);
    f.num_head_channels = Some(64);
    f.num_res_blocks = Some(3);
    f.resblock_updown = Some(true);
    f.use_new_attention_order = Some(true);
    let c = f.to_config().unwrap();
    assert_eq!(
        (c.trunk.out_channels, c.num_classes, c.trunk.attention_resolutions.clone()),
        (6, Some(1000), vec![2, 4, 8])
    );
    assert_eq!(c.trunk.channel_mult, vec![1.0, 2.0, 3.0, 4.0]);

    let cf = flags::ClassifierFlags::script_defaults().to_config().unwrap();
    assert_eq!(
        (cf.trunk.num_head_channels, cf.trunk.out_channels, cf.pool),
        (64, 1000, Pool::Attention)
    );
}

#[test]
fn half_precision_weights_are_cast_to_f32() {
    let dir = tempdir();
    let sd = checkpoint::read(golden("model_unet_b.safetensors"), &Device::Cpu).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let half: HashMap<String, Tensor> =
            sd.tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap())).collect();
        let path = dir.join(format!("unet_b_{dtype:?}.safetensors"));
        checkpoint::write_safetensors(&path, &half, &HashMap::new()).unwrap();
        let net = Net::load(golden("model_unet_b.json"), &path, &Device::Cpu).unwrap();
        let case = Case::load("unet_b_forward");
        let t = case.get("in.timesteps").to_dtype(DType::F32).unwrap();
        let out = net.forward(case.get("in.x"), &t, None, None).unwrap();
        // Rounded weights: close to the reference, not equal.
        assert_close(&format!("unet_b with {dtype:?} weights"), &out, case.get("out.out"), 0.25);
    }
}

#[test]
fn spatial_v2_pool_builds_with_reference_names_and_runs() {
    let kwargs = serde_json::json!({
        "image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 5,
        "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 1], "pool": "spatial_v2"
    });
    let cfg = NetConfig::from_builder("unet.EncoderUNetModel", &kwargs).unwrap();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = Net::new(&cfg, vb).unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    for k in ["out.0.weight", "out.1.weight", "out.1.bias", "out.3.weight"] {
        assert!(names.contains(&k.to_string()), "missing {k} in {names:?}");
    }
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let t = Tensor::new(&[3f32, 500.0], &Device::Cpu).unwrap();
    assert_eq!(net.forward(&x, &t, None, None).unwrap().dims(), &[2, 5]);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let net =
        Net::load(golden("model_unet_a.json"), golden("model_unet_a.safetensors"), &Device::Cpu)
            .unwrap();
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let e = net.forward(&x, &t, None, None).unwrap_err().to_string();
    assert!(e.contains("class-conditional"), "{e}");
    let y = Tensor::new(&[3i64, 10], &Device::Cpu).unwrap();
    let e = net.forward(&x, &t, Some(&y), None).unwrap_err().to_string();
    assert!(e.contains("class label 10 is out of range"), "{e}");
    let e = Net::load(golden("model_unet_a.json"), golden("missing.pt"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pt"), "{e}");
    let e = Net::load(golden("model_unet_a.json"), golden("case_q_sample.json"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither a PyTorch .pt zip nor a safetensors file"), "{e}");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gd-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn pt_writer_round_trips_through_the_pt_reader() {
    let dir = tempdir();
    let sd = checkpoint::read(golden("model_unet_b.safetensors"), &Device::Cpu).unwrap();
    let path = dir.join("unet_b.pt");
    checkpoint::write_pt(&path, &sd.tensors).unwrap();
    assert_eq!(checkpoint::detect_format(&path).unwrap(), checkpoint::Format::TorchZip);
    let back = checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(back.tensors.len(), sd.tensors.len());
    for (k, v) in &sd.tensors {
        let w = &back.tensors[k];
        assert_eq!(v.dims(), w.dims(), "{k}");
        assert_eq!(support::max_abs_diff(v, w), 0.0, "{k}");
    }
    let net = Net::load(golden("model_unet_b.json"), &path, &Device::Cpu).unwrap();
    let case = Case::load("unet_b_forward");
    let t = case.get("in.timesteps").to_dtype(DType::F32).unwrap();
    let out = net.forward(case.get("in.x"), &t, None, None).unwrap();
    assert_close("unet_b from our .pt", &out, case.get("out.out"), case.atol("out"));
}
