//! The reference's resize (`center_crop_arr`, PIL BOX and BICUBIC) against a fixture that Pillow
//! itself computed (`tools/make_resize_fixture.py`): pixels must be identical.
use std::path::PathBuf;

use guided_diffusion::data::resize::{center_crop_arr, resize, Filter, RawImage};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize")
}

fn load(path: &PathBuf, channels: usize) -> RawImage {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    RawImage::new(w, h, channels, data).unwrap()
}

#[test]
fn data_resize_matches_pillow_fixture() {
    let dir = fixture_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let channels = case["channels"].as_u64().unwrap() as usize;
        let input = load(&dir.join(format!("{name}_in.png")), channels);
        let expected = load(&dir.join(format!("{name}_out.png")), channels);
        let got = match case["op"].as_str().unwrap() {
            "center_crop" => {
                center_crop_arr(&input, case["arg"].as_u64().unwrap() as usize).unwrap()
            }
            op => {
                let w = case["arg"][0].as_u64().unwrap() as usize;
                let h = case["arg"][1].as_u64().unwrap() as usize;
                let f = if op == "box" { Filter::Box } else { Filter::Bicubic };
                resize(&input, w, h, f).unwrap()
            }
        };
        assert_eq!((got.width, got.height), (expected.width, expected.height), "{name}: size");
        let diffs = got.data.iter().zip(&expected.data).filter(|(a, b)| a != b).count();
        let max =
            got.data.iter().zip(&expected.data).map(|(a, b)| (*a as i32 - *b as i32).abs()).max();
        assert_eq!(
            diffs,
            0,
            "{name}: {diffs} of {} values differ from Pillow (max {max:?})",
            got.data.len()
        );
    }
}
