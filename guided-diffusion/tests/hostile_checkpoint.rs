//! Issue 18, D2-D4, D6-D8: hostile checkpoints (made here, small, in a temp dir) get a clear
//! error, never a panic, a stack overflow or an allocation of what the file claims.
use std::io::Write;

use guided_diffusion::checkpoint::{self, infer, pickle, write_pt, StateDict};
use guided_diffusion::{Device, Tensor};

/// A `.pt` archive with `data.pkl` = `pkl` and the given storages (`archive/data/<name>`).
fn pt_bytes(pkl: &[u8], storages: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let method =
            if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts: zip::write::FileOptions<()> =
            zip::write::FileOptions::default().compression_method(method);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pkl).unwrap();
        for (name, data) in storages {
            zip.start_file(format!("archive/data/{name}"), opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

fn read(bytes: &[u8]) -> Result<StateDict, String> {
    checkpoint::read_bytes(bytes, "hostile.pt", &Device::Cpu).map_err(|e| e.to_string())
}

/// Pickle pieces: `{name: _rebuild_tensor_v2(storage, offset, size, stride)}`.
struct P(Vec<u8>);
impl P {
    fn new() -> Self {
        P(b"\x80\x02}(".to_vec())
    }
    fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn i(&mut self, v: i32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn tuple(&mut self, v: &[i32]) -> &mut Self {
        self.0.push(b'(');
        for &x in v {
            self.i(x);
        }
        self.0.push(b't');
        self
    }
    /// One tensor entry with a FloatStorage `key` of `numel` elements.
    fn tensor(
        &mut self,
        name: &str,
        key: &str,
        numel: i32,
        off: i32,
        size: &[i32],
        stride: &[i32],
    ) -> &mut Self {
        self.s(name).raw(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        self.raw(b"(").s("storage").raw(b"ctorch\nFloatStorage\n").s(key).s("cpu").i(numel);
        self.raw(b"tQ").i(off).tuple(size).tuple(stride).raw(b"\x89tR")
    }
    fn done(&mut self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend_from_slice(b"u.");
        v
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn hostile_pt_strided_and_plain_tensors_read_correctly() {
    let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    // b is the transpose of a 2x3 view: size [3, 2], stride [1, 3].
    let pkl = P::new()
        .tensor("a", "0", 6, 0, &[2, 3], &[3, 1])
        .tensor("b", "0", 6, 0, &[3, 2], &[1, 3])
        .done();
    let sd = read(&pt_bytes(&pkl, &[("0", &data)], false)).unwrap();
    let a: Vec<Vec<f32>> = sd.tensors["a"].to_vec2().unwrap();
    let b: Vec<Vec<f32>> = sd.tensors["b"].to_vec2().unwrap();
    assert_eq!(a, vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    assert_eq!(b, vec![vec![0., 3.], vec![1., 4.], vec![2., 5.]]);
    // Big-endian archives are byte-swapped.
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let pkl = P::new().tensor("c", "0", 2, 0, &[2], &[1]).done();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts: zip::write::FileOptions<()> = Default::default();
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(&pkl).unwrap();
        zip.start_file("archive/byteorder", opts).unwrap();
        zip.write_all(b"big").unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        zip.write_all(&be).unwrap();
        zip.finish().unwrap();
    }
    let sd = read(&buf.into_inner()).unwrap();
    assert_eq!(sd.tensors["c"].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
}

#[test]
fn hostile_pt_malformed_pickles_are_errors_not_panics() {
    let data = f32_bytes(&[0.0; 4]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // D2: _rebuild_tensor_v2 with too few arguments (candle: Vec::remove out of range).
        (
            "short rebuild args",
            {
                let mut p = P::new();
                p.s("w").raw(b"ctorch._utils\n_rebuild_tensor_v2\n(").i(0).raw(b"tR");
                p.done()
            },
            "at least 4",
        ),
        // D2: a persistent id with too few fields.
        (
            "short persistent id",
            {
                let mut p = P::new();
                p.s("w").raw(b"ctorch._utils\n_rebuild_tensor_v2\n((").s("storage").raw(b"tQ");
                p.i(0).tuple(&[4]).tuple(&[1]).raw(b"tR");
                p.done()
            },
            "storage id has 1 fields",
        ),
        (
            "extent past the storage",
            P::new().tensor("w", "0", 4, 2, &[4], &[1]).done(),
            "past its storage",
        ),
        (
            "storage larger than its entry",
            P::new().tensor("w", "0", 400, 0, &[400], &[1]).done(),
            "holds 16 bytes",
        ),
        (
            "missing storage entry",
            P::new().tensor("w", "9", 4, 0, &[4], &[1]).done(),
            "archive entry archive/data/9",
        ),
        ("negative size", P::new().tensor("w", "0", 4, 0, &[-4], &[1]).done(), "non-negative"),
        (
            "overflowing extent",
            P::new().tensor("w", "0", 4, 0, &[2, 2], &[i32::MAX, i32::MAX]).done(),
            "past its storage",
        ),
        (
            "path in storage key",
            P::new().tensor("w", "../x", 4, 0, &[4], &[1]).done(),
            "not a plain name",
        ),
        ("not a dict", b"\x80\x02K\x01.".to_vec(), "expected a state dict"),
        ("stack underflow", b"\x80\x02}(u0R.".to_vec(), "underflow"),
        ("truncated", b"\x80\x02}(X\xff\xff\x00\x00ab".to_vec(), "past the end"),
        ("unknown opcode", b"\x80\x02}(ios\nsystem\n".to_vec(), "outside the subset"),
        ("no tensors", b"\x80\x02}X\x05\x00\x00\x00epochK\x03s.".to_vec(), "its keys: epoch"),
    ];
    for (what, pkl, want) in cases {
        let e = read(&pt_bytes(&pkl, &[("0", &data)], false))
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.contains(want) && e.contains("hostile.pt"), "{what}: {e}");
    }
}

#[test]
fn hostile_pt_nesting_and_memo_bombs_are_bounded() {
    // D3: 200 000 nested tuples overflowed candle's stack.
    let mut p = b"\x80\x02}X\x01\x00\x00\x00a)".to_vec();
    p.extend(std::iter::repeat_n(0x85u8, 200_000));
    p.extend_from_slice(b"s.");
    let e = read(&pt_bytes(&p, &[], false)).unwrap_err();
    assert!(e.contains("nested deeper than 100"), "{e}");
    // D4: a memo bomb: m = []; 60 times m = (m, m): a few hundred bytes that candle expanded
    // to 2^60 copies. Shared here, so it is cheap, and not a tensor: no tensors found.
    let mut p = b"\x80\x02]q\x000".to_vec();
    for _ in 0..60 {
        p.extend_from_slice(b"h\x00h\x00\x86q\x000");
    }
    p.extend_from_slice(b"}X\x01\x00\x00\x00ah\x00s.");
    let e = read(&pt_bytes(&p, &[], false)).unwrap_err();
    assert!(e.contains("no tensors"), "{e}");
    // A copy bomb: SETITEM on a memoised (shared) dict copies it every time.
    let mut p = b"\x80\x02}q\x000".to_vec();
    for i in 0..50_000u32 {
        p.extend_from_slice(b"h\x00J");
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(b"K\x00sq\x000");
    }
    p.extend_from_slice(b"h\x00.");
    let e = pickle::unpickle(&p).unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
}

#[test]
fn hostile_pt_zip_bomb_is_refused_before_inflating() {
    // 40 MiB of zeros deflate to ~40 KiB; the pickle declares them as a 10M-float storage.
    let n = 10 << 20;
    let pkl = P::new().tensor("w", "0", n, 0, &[n], &[1]).done();
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts: zip::write::FileOptions<()> =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(&pkl).unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..40 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
    }
    let bytes = buf.into_inner();
    assert!(bytes.len() < 2 << 20, "the bomb is small: {}", bytes.len());
    let e = read(&bytes).unwrap_err();
    assert!(e.contains("zip bomb"), "{e}");
}

#[test]
fn hostile_pt_round_trip_of_our_writer_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = std::collections::HashMap::new();
    t.insert("x.weight".to_string(), Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap());
    t.insert("y".to_string(), Tensor::new(&[0.5f32], &Device::Cpu).unwrap());
    let p = dir.path().join("m.pt");
    write_pt(&p, &t).unwrap();
    let sd = checkpoint::read(&p, &Device::Cpu).unwrap();
    assert_eq!(sd.tensors["x.weight"].to_vec2::<f32>().unwrap(), vec![vec![1., 2.], vec![3., 4.]]);
    assert_eq!(sd.tensors["y"].to_vec1::<f32>().unwrap(), vec![0.5]);
}

fn st_file(
    dir: &std::path::Path,
    header: &str,
    data: &[u8],
    len: Option<u64>,
) -> std::path::PathBuf {
    let p = dir.join("h.safetensors");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
    if let Some(l) = len {
        f.set_len(l).unwrap();
    }
    p
}

#[test]
fn hostile_safetensors_sizes_are_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    // D7: a sparse 8 GiB file is refused from its header, not read whole first.
    let p = st_file(dir.path(), h, &[0; 8], Some(8 << 30));
    let e = checkpoint::read(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("describes 8 bytes of tensors") && e.contains("h.safetensors"), "{e}");
    // A header length past the file, and one over the limit.
    let p = dir.path().join("len.safetensors");
    let mut b = (1u64 << 20).to_le_bytes().to_vec();
    b.push(b'{');
    std::fs::write(&p, &b).unwrap();
    let e = checkpoint::read(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("header of 1048576 bytes"), "{e}");
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.push(b'{');
    std::fs::write(&p, &b).unwrap();
    let e = checkpoint::read_metadata(&p).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
    // Shape and offsets disagree; shape product overflows.
    for h in [
        r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
    ] {
        let p = st_file(dir.path(), h, &[0; 8], None);
        let e = checkpoint::read(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not a valid safetensors file"), "{e}");
    }
    // D9: NaN weights are refused when a network is loaded (here: the check it uses).
    let nan = f32::NAN.to_le_bytes();
    let p = st_file(dir.path(), h, &[nan, nan].concat(), None);
    let sd = checkpoint::read(&p, &Device::Cpu).unwrap();
    let e = sd.check_finite("h.safetensors").unwrap_err().to_string();
    assert!(e.contains("tensor w has 2 NaN or infinite"), "{e}");
}

#[test]
fn hostile_inspect_inference_survives_any_rank() {
    // D8: tensors of unexpected ranks made `infer` index out of bounds.
    let mut t = std::collections::HashMap::new();
    let s = Tensor::new(3f32, &Device::Cpu).unwrap();
    for k in [
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "output_blocks.0.0.in_layers.2.weight",
        "out.2.weight",
        "label_emb.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "out.2.positional_embedding",
    ] {
        t.insert(k.to_string(), s.clone());
    }
    assert!(infer::infer(&t).is_none());
    let v = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
    for k in t.clone().keys() {
        t.insert(k.clone(), v.clone());
    }
    let _ = infer::infer(&t); // rank 1: no panic either way
    t.insert(
        "time_embed.0.weight".into(),
        Tensor::zeros((4, 0), guided_diffusion::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(infer::infer(&t).is_none(), "0 model channels");
}
