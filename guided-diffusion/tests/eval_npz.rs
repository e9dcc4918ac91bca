//! The npz reader against files written by numpy (`tools/eval_fixtures.py npz`): dtypes, byte
//! orders, Fortran order, compressed members, format version 2, batching, and the error messages
//! for bad batches.
use guided_diffusion::eval::npz::{NpyDtype, NpzFile};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval/npz");

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/expected.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn eval_npz_streams_images_in_batches() {
    let want = floats(&expected()["images"]);
    for file in ["images.npz", "images_compressed.npz"] {
        let npz = NpzFile::open(format!("{DIR}/{file}")).unwrap();
        assert_eq!(npz.keys(), ["arr_0"]);
        let h = npz.header("arr_0").unwrap();
        assert_eq!((h.dtype, h.shape.clone()), (NpyDtype::U8, vec![5, 4, 6, 3]));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        npz.for_each_batch("arr_0", 2, |shape, data| {
            sizes.push(shape[0]);
            assert_eq!(&shape[1..], &[4, 6, 3]);
            got.extend(data.iter().map(|&v| v as f64));
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, [2, 2, 1], "{file}");
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn eval_npz_reads_float_variants() {
    let want = floats(&expected()["feats"]);
    for (file, tol) in [
        ("fortran_f64.npz", 1e-15),
        ("bigendian_f4.npz", 1e-6),
        ("v2_header.npz", 1e-6),
        ("float16.npz", 1e-3),
    ] {
        let npz = NpzFile::open(format!("{DIR}/{file}")).unwrap();
        let a = npz.read_f64("arr_0").unwrap();
        assert_eq!(a.shape, [7, 3], "{file}");
        for (x, y) in a.data.iter().zip(&want) {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{file}: {x} vs {y}");
        }
        // streaming gives the same rows, Fortran order included
        let mut rows = Vec::new();
        npz.for_each_batch("arr_0", 3, |_, d| {
            rows.extend(d);
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, a.data.iter().map(|&v| v as f32).collect::<Vec<_>>(), "{file}");
    }
}

fn err_of(file: &str, key: &str) -> String {
    let path = format!("{DIR}/{file}");
    match NpzFile::open(&path) {
        Err(e) => e.to_string(),
        Ok(npz) => npz.for_each_batch(key, 4, |_, _| Ok(())).unwrap_err().to_string(),
    }
}

#[test]
fn eval_npz_errors_name_file_and_key() {
    let e = err_of("bad_missing_arr0.npz", "arr_0");
    assert!(
        e.contains("bad_missing_arr0.npz")
            && e.contains("'arr_0'")
            && e.contains("missing")
            && e.contains("images"),
        "{e}"
    );
    let e = err_of("bad_dtype.npz", "arr_0");
    assert!(
        e.contains("bad_dtype.npz")
            && e.contains("'arr_0'")
            && e.contains("unsupported dtype '<U2'"),
        "{e}"
    );
    let e = err_of("not_a_zip.npz", "arr_0");
    assert!(e.contains("not_a_zip.npz") && e.contains("not a readable .npz"), "{e}");
    let e = err_of("does_not_exist.npz", "arr_0");
    assert!(e.contains("does_not_exist.npz"), "{e}");
}
