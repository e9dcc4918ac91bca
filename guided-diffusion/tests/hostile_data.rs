//! Issue 18, D5/D6/D7, and issue 22: hostile data folders (made here, in a temp dir) end with
//! a clear error or a named skip, never a hang or unbounded memory; gray folders decode to one
//! channel as PIL's convert("L").
use std::io::Write;
use std::path::Path;

use guided_diffusion::data::decode::{decode, l24};
use guided_diffusion::data::{
    list_images, open_dataset, BatchSource, DataSpec, Dataset, FolderDataset, FolderOptions,
    Loader, LoaderConfig,
};

fn png(path: &Path, w: u32, h: u32, color: image::ColorType, data: &[u8]) {
    image::save_buffer(path, data, w, h, color).unwrap();
}

/// A PNG made of chunks, CRCs computed, so headers can claim what they like.
fn raw_png(w: u32, h: u32, color_type: u8, idat: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn hostile_folder_symlink_loops_and_fifos_are_skipped_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    png(&d.join("a_1.png"), 4, 4, image::ColorType::L8, &[7; 16]);
    std::fs::create_dir(d.join("sub")).unwrap();
    png(&d.join("sub/b_2.png"), 4, 4, image::ColorType::L8, &[9; 16]);
    // D5: loops back to the root and to a sibling (the second would double every level).
    std::os::unix::fs::symlink(d, d.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(d.join("sub"), d.join("zz_again")).unwrap();
    // A FIFO named like an image: reading it would block forever.
    let fifo = d.join("c_3.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink(d.join("missing.png"), d.join("dangling.png")).unwrap();
    let l = list_images(d).unwrap();
    let names: Vec<String> =
        l.files.iter().map(|p| p.strip_prefix(d).unwrap().display().to_string()).collect();
    assert_eq!(names, ["a_1.png", "sub/b_2.png"]);
    let skipped: Vec<String> =
        l.skipped.iter().map(|(p, why)| format!("{} {why}", p.display())).collect();
    let all = skipped.join("\n");
    assert!(all.contains("c_3.png a FIFO"), "{all}");
    assert!(all.contains("dangling.png") && all.contains("broken link"), "{all}");
    assert!(all.contains("zz_again a directory already listed"), "{all}");
    assert!(all.contains("sub/loop a directory already listed"), "{all}");
    // The data set tells the user about each of them.
    let ds = FolderDataset::open(d, FolderOptions::new(4)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.notes().len(), 4, "{:?}", ds.notes());
}

#[test]
fn hostile_png_bombs_are_refused_from_their_header() {
    // D7: headers claiming 100000^2 gray pixels and 16000^2 RGBA (1 GB), with tiny data.
    let idat = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[0u8; 1024]).unwrap();
        e.finish().unwrap()
    };
    for (w, h, ct) in [(100_000u32, 100_000u32, 0u8), (16_000, 16_000, 6)] {
        let e = decode(&raw_png(w, h, ct, &idat), 3).unwrap_err().to_string();
        assert!(e.contains("decoding limits"), "{w}x{h}: {e}");
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bomb.png"), raw_png(16_000, 16_000, 6, &idat)).unwrap();
    let ds = FolderDataset::open(tmp.path(), FolderOptions::new(8)).unwrap();
    let mut rng = guided_diffusion::data::rng::stream(0, 0, 0);
    let e = ds.get(0, &mut rng).unwrap_err().to_string();
    assert!(e.contains("bomb.png") && e.contains("decoding limits"), "{e}");
}

#[test]
fn hostile_loader_sizes_from_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("a.png"), 8, 8, image::ColorType::Rgb8, &[1; 192]);
    // D6: --data_workers 100000 tried to start 100000 threads.
    let ds = open_dataset(&DataSpec::new(tmp.path().to_str().unwrap(), 8)).unwrap();
    let mut cfg = LoaderConfig::new(1, 0);
    cfg.workers = 100_000;
    let e = Loader::new(ds.clone(), cfg).err().unwrap().to_string();
    assert!(e.contains("--data_workers 100000") && e.contains("limit of 256"), "{e}");
    let mut spec = DataSpec::new(tmp.path().to_str().unwrap(), 1 << 20);
    spec.channels = 3;
    let e = open_dataset(&spec).err().unwrap().to_string();
    assert!(e.contains("--image_size 1048576") && e.contains("limit"), "{e}");
}

#[test]
fn gray_folders_decode_to_one_channel_as_pil() {
    // Issue 22: gray PNGs stay gray; RGB PNGs become PIL's L.
    let tmp = tempfile::tempdir().unwrap();
    let gray: Vec<u8> = (0..64).map(|i| (i * 4) as u8).collect();
    png(&tmp.path().join("g_0.png"), 8, 8, image::ColorType::L8, &gray);
    let img = decode(&std::fs::read(tmp.path().join("g_0.png")).unwrap(), 1).unwrap();
    assert_eq!((img.channels, img.data.clone()), (1, gray.clone()));
    let rgb: Vec<u8> = (0..192).map(|i| (i * 7 % 256) as u8).collect();
    png(&tmp.path().join("c_0.png"), 8, 8, image::ColorType::Rgb8, &rgb);
    let img = decode(&std::fs::read(tmp.path().join("c_0.png")).unwrap(), 1).unwrap();
    let want: Vec<u8> = rgb.chunks(3).map(l24).collect();
    assert_eq!(img.data, want);
    // The folder loader gives [N, 1, H, W] batches and says once that colour was converted.
    let mut spec = DataSpec::new(tmp.path().to_str().unwrap(), 8);
    spec.channels = 1;
    let ds = open_dataset(&spec).unwrap();
    assert_eq!(ds.channels(), 1);
    assert!(ds.notes().iter().any(|n| n.contains("converted to gray")), "{:?}", ds.notes());
    let mut cfg = LoaderConfig::new(2, 0);
    cfg.workers = 0;
    let b = Loader::new(ds, cfg).unwrap().next_batch().unwrap();
    assert_eq!(b.images.dims(), &[2, 1, 8, 8]);
    // Channel counts the images cannot give are an error naming the flag.
    for (c, want) in [(4, "no alpha channel"), (5, "decodes to 1 (gray) or 3 (RGB)")] {
        let mut spec = DataSpec::new(tmp.path().to_str().unwrap(), 8);
        spec.channels = c;
        let e = open_dataset(&spec).err().unwrap().to_string();
        assert!(e.contains(&format!("--in_channels {c}")) && e.contains(want), "{e}");
    }
}

#[test]
fn fuzz_found_jpeg_claiming_127_megapixels_is_refused_from_its_header() {
    // Found by the `image` fuzz target: 710 bytes whose SOF claims 15111x8446 gray; decoding
    // and cropping it took 8.5 s and 900 MB. Its first byte is the target's channel choice.
    let input = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/image-timeout-jpeg-15111x8446"),
    )
    .unwrap();
    for channels in [1, 2, 3, 4] {
        let e = decode(&input[1..], channels).unwrap_err().to_string();
        assert!(e.contains("15111x8446") && e.contains("decoding limits"), "{e}");
    }
}
