//! Inception-v3 against PyTorch: the full-size network with deterministic synthetic weights
//! (same values generated in Rust and in `tools/eval_fixtures.py inception`) run through
//! pytorch-fid's own FIDInceptionA/C/E_1/E_2 classes in torchvision's Inception3, on two 48×40
//! images, in both input conventions (pytorch-fid's resize, and TensorFlow's legacy
//! ResizeBilinear computed by TensorFlow itself). Also: resize matrices against TensorFlow and
//! torch, the .pt loader, and the weight-file errors.
use candle_core::{Device, Tensor};
use guided_diffusion::eval::features::{FeatureExtractor, ImageBatch};
use guided_diffusion::eval::inception::preprocess::{preprocess, resize_bilinear, InputConvention};
use guided_diffusion::eval::inception::synthetic::{synthetic_state_dict, synthetic_values};
use guided_diffusion::eval::inception::{InceptionExtractor, InceptionV3, WeightMap};
use std::collections::HashMap;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval");

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/inception_forward.safetensors"), &Device::Cpu)
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a-b| / max |b|
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn images(f: &HashMap<String, Tensor>) -> ImageBatch {
    let t = &f["images"];
    ImageBatch::new(t.dims(), flat(t)).unwrap()
}

#[test]
fn eval_inception_forward_matches_pytorch_fid() {
    let f = fixture();
    let sd = synthetic_state_dict(true).unwrap();
    assert_eq!(sd.len(), 94 * 5 + 2, "94 conv+bn layers (5 tensors each) and the fc head");
    let w = WeightMap::from_tensors("synthetic", sd).unwrap();
    let imgs = images(&f);
    for (conv, name) in [
        (InputConvention::PytorchFid, "pytorch_fid"),
        (InputConvention::TfReference, "tf_reference"),
    ] {
        // the network input itself
        let x = preprocess(&imgs, conv, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), [2, 3, 299, 299]);
        let corner = x.narrow(2, 0, 5).unwrap().narrow(3, 0, 5).unwrap();
        let r = max_rel(&flat(&corner), &flat(&f[&format!("{name}_input_corner")]));
        assert!(r < 1e-6, "{name}: input corner rel err {r}");

        let ex = InceptionExtractor::new(InceptionV3::load(&w, &Device::Cpu).unwrap(), conv);
        let out = ex.extract(&imgs).unwrap();
        assert_eq!((out.pool.rows, out.pool.cols), (2, 2048));
        let spatial = out.spatial.unwrap();
        assert_eq!((spatial.rows, spatial.cols), (2, 17 * 17 * 7));
        let logits = out.logits.unwrap();
        assert_eq!((logits.rows, logits.cols), (2, 1008));
        let rp = max_rel(&out.pool.data, &flat(&f[&format!("{name}_pool")]));
        let rs = max_rel(&spatial.data, &flat(&f[&format!("{name}_spatial")]));
        let rl = max_rel(&logits.data, &flat(&f[&format!("{name}_logits")]));
        println!("{name}: max rel err pool {rp:.2e} spatial {rs:.2e} logits {rl:.2e}");
        assert!(rp < 2e-5 && rs < 2e-5 && rl < 2e-5, "{name}: pool {rp} spatial {rs} logits {rl}");
    }
}

#[test]
fn eval_inception_resize_matches_tensorflow_and_torch() {
    let f = fixture();
    // [1, 5, 7, 2] NHWC -> NCHW
    let small = f["resize_small"].permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
    for (conv, tag) in [(InputConvention::TfReference, "tf"), (InputConvention::PytorchFid, "pt")] {
        let up = resize_bilinear(&small, 13, 11, conv).unwrap();
        let down = resize_bilinear(&up, 4, 3, conv).unwrap();
        for (got, key) in [(up, format!("resize_{tag}_up")), (down, format!("resize_{tag}_down"))] {
            let got = got.permute((0, 2, 3, 1)).unwrap();
            let r = max_rel(&flat(&got), &flat(&f[&key]));
            assert!(r < 1e-6, "{key}: rel err {r}");
        }
    }
}

#[test]
fn eval_inception_loads_pt_state_dict() {
    let w = WeightMap::load(format!("{DIR}/tiny_state_dict.pt")).unwrap();
    let key = "Conv2d_1a_3x3.conv.weight";
    let t = w.get(key, &[32, 3, 3, 3]).unwrap();
    assert_eq!(flat(&t), synthetic_values(key, &[32, 3, 3, 3]));
    assert!(!w.contains("Conv2d_1a_3x3.bn.num_batches_tracked"), "integer buffers are dropped");
    let e = w.get(key, &[32, 3, 5, 5]).unwrap_err().to_string();
    assert!(
        e.contains("tiny_state_dict.pt") && e.contains(key) && e.contains("[32, 3, 3, 3]"),
        "{e}"
    );
    // the network names the first key it misses
    let e = InceptionV3::load(&w, &Device::Cpu).err().unwrap().to_string();
    assert!(
        e.contains("tiny_state_dict.pt")
            && e.contains("Conv2d_1a_3x3.bn.weight")
            && e.contains("missing"),
        "{e}"
    );
    let e = WeightMap::load(format!("{DIR}/nope.pt")).err().unwrap().to_string();
    assert!(e.contains("nope.pt") && e.contains("not found"), "{e}");
}

#[test]
fn eval_inception_without_head_has_no_logits() {
    let w = WeightMap::from_tensors("synthetic", synthetic_state_dict(false).unwrap()).unwrap();
    let ex = InceptionExtractor::new(
        InceptionV3::load(&w, &Device::Cpu).unwrap(),
        InputConvention::default(),
    );
    assert!(!ex.has_logits() && ex.has_spatial());
    let imgs = ImageBatch::new(&[1, 8, 8, 1], vec![128.0; 64]).unwrap(); // grayscale accepted
    let out = ex.extract(&imgs).unwrap();
    assert!(out.logits.is_none());
    assert_eq!(out.pool.cols, 2048);
}
