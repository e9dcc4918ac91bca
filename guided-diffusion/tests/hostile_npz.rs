//! Issue 18, D6/D7/D9/D11: npy/npz files whose headers lie, and evaluator inputs that would
//! give a meaningless score, get a clear error naming the file and array.
use std::io::Write;
use std::path::Path;

use guided_diffusion::eval::npz::{npy_bytes, read_npy_f32, NpzFile};

fn npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(f);
    let opts: zip::write::FileOptions<()> = Default::default();
    for (name, b) in members {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(b).unwrap();
    }
    zip.finish().unwrap();
}

/// An npy whose header declares `shape` but which holds only `data`.
fn lying(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn hostile_npy_shapes_are_checked_against_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.npy");
    // D6: 2^40 floats declared, 16 bytes present: no 4 TiB allocation.
    std::fs::write(&p, lying("<f4", "(1099511627776,)", &[0; 16])).unwrap();
    let e = read_npy_f32(&p).unwrap_err().to_string();
    assert!(e.contains("x.npy") && e.contains("only 16 bytes follow"), "{e}");
    // A product that overflows.
    std::fs::write(&p, lying("<f4", "(4294967296, 4294967296, 4)", &[0; 16])).unwrap();
    let e = read_npy_f32(&p).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    // A 4 GiB header length (format 2.0).
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    let e = read_npy_f32(&p).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
    // D11: big-endian data is read as big-endian, and named as such.
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(&p, lying(">f4", "(2,)", &be)).unwrap();
    assert_eq!(read_npy_f32(&p).unwrap().data, vec![1.5, -2.0]);
    std::fs::write(&p, lying(">f4", "(3,)", &be)).unwrap();
    let e = read_npy_f32(&p).unwrap_err().to_string();
    assert!(e.contains(">f4") && !e.contains("little"), "{e}");
}

#[test]
fn hostile_npz_members_are_checked_against_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("b.npz");
    npz(&p, &[("arr_0", lying("|u1", "(1000000, 256, 256, 3)", &[0; 64]))]);
    let f = NpzFile::open(&p).unwrap();
    let e = f.read_u8("arr_0").unwrap_err().to_string();
    assert!(e.contains("b.npz") && e.contains("'arr_0'") && e.contains("only 64 bytes"), "{e}");
    let e = f.for_each_batch("arr_0", 4, |_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("only 64 bytes"), "{e}");
    // Our own writer's output reads back.
    let q = tmp.path().join("ok.npz");
    let data: Vec<u8> = (0..24).collect();
    guided_diffusion::eval::npz::write_npz(&q, &[("arr_0", npy_bytes("|u1", &[2, 3, 4], &data))])
        .unwrap();
    let a = NpzFile::open(&q).unwrap().read_u8("arr_0").unwrap();
    assert_eq!((a.shape, a.data), (vec![2, 3, 4], data));
}

#[test]
fn hostile_eval_features_and_pixels_are_checked() {
    use guided_diffusion::eval::evaluator::{EvalOptions, Evaluator, Source};
    let tmp = tempfile::tempdir().unwrap();
    // D7: 20000 features per row would need a 3 GiB covariance.
    let wide = tmp.path().join("wide.npz");
    npz(&wide, &[("pool", lying("<f4", "(2, 20000)", &vec![0; 160_000]))]);
    let ev = Evaluator::new(Source::Features, EvalOptions::default());
    let e = ev.evaluate(&wide, &wide, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("20000 features") && e.contains("limit"), "{e}");
    // D9: NaN features.
    let nan = tmp.path().join("nan.npz");
    let vals: Vec<u8> = [0.0f32, 1.0, f32::NAN, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    npz(&nan, &[("pool", lying("<f4", "(2, 2)", &vals))]);
    let e = ev.evaluate(&nan, &nan, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("nan.npz") && e.contains("not finite"), "{e}");
}

/// Features = the mean pixel, so any image batch gives a (degenerate but finite) result.
struct MeanPixel;
impl guided_diffusion::eval::features::FeatureExtractor for MeanPixel {
    fn describe(&self) -> String {
        "mean pixel".into()
    }
    fn has_spatial(&self) -> bool {
        false
    }
    fn has_logits(&self) -> bool {
        false
    }
    fn extract(
        &self,
        b: &guided_diffusion::eval::features::ImageBatch,
    ) -> guided_diffusion::Result<guided_diffusion::eval::features::ExtractedFeatures> {
        let per = b.data.len() / b.n.max(1);
        let pool: Vec<f32> =
            b.data.chunks(per.max(1)).map(|c| c.iter().sum::<f32>() / per as f32).collect();
        Ok(guided_diffusion::eval::features::ExtractedFeatures {
            pool: guided_diffusion::eval::features::FeatureMatrix::new(b.n, 1, pool)?,
            spatial: None,
            logits: None,
        })
    }
}

#[test]
fn hostile_eval_pixels_must_be_levels_in_range() {
    use guided_diffusion::eval::evaluator::{EvalOptions, Evaluator, Source};
    let tmp = tempfile::tempdir().unwrap();
    let ev = Evaluator::new(Source::Images(&MeanPixel), EvalOptions::default());
    // D9: float images with NaN, Inf or values past 255 gave FID 2e8 or IS inf.
    for (name, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY), ("big", 300.0), ("neg", -1.0)] {
        let p = tmp.path().join(format!("{name}.npz"));
        let mut v = [10.0f32; 2 * 2 * 2 * 3];
        v[13] = bad;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        npz(&p, &[("arr_0", lying("<f4", "(2, 2, 2, 3)", &bytes))]);
        let e = ev.evaluate(&p, &p, &mut |_, _, _| {}).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}.npz")) && e.contains("image 1"), "{name}: {e}");
    }
}
