//! Fashion-MNIST from Debian's `dataset-fashion-mnist` (CI installs it with apt-get): sizes,
//! labels, padding/resizing, channels, batches; and the error when the files are missing.
use std::sync::Arc;

use guided_diffusion::data::fashion_mnist::{
    FashionMnist, FashionMnistOptions, Fit, Split, CLASS_NAMES,
};
use guided_diffusion::data::idx::parse_idx;
use guided_diffusion::data::rng::stream;
use guided_diffusion::data::{open_dataset, BatchSource, DataSpec, Dataset, Loader, LoaderConfig};

#[test]
fn data_fashion_mnist_reads_the_debian_files() {
    let test = FashionMnist::open(FashionMnistOptions::new(Split::Test, 32)).expect(
        "Fashion-MNIST must be installed for this test: apt-get install dataset-fashion-mnist",
    );
    assert_eq!(test.len(), 10_000);
    let train = FashionMnist::open(FashionMnistOptions::new(Split::Train, 32)).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.classes().unwrap().names, CLASS_NAMES);
    // Published label order of the test set starts 9 (ankle boot), 2, 1, 1, 6.
    let first: Vec<u8> = (0..5).map(|i| test.label(i).unwrap()).collect();
    assert_eq!(first, [9, 2, 1, 1, 6]);
    // The test set is balanced: 1000 per class.
    let mut counts = [0usize; 10];
    for i in 0..test.len() {
        counts[test.label(i).unwrap() as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);

    // Padding 28 -> 32 with the background: a 2-pixel border of -1, the centre is the raw image.
    let mut opts = FashionMnistOptions::new(Split::Test, 32);
    opts.random_flip = false;
    let ds = FashionMnist::open(opts.clone()).unwrap();
    let item = ds.get(0, &mut stream(0, 0, 0)).unwrap();
    assert_eq!(item.pixels.len(), 32 * 32);
    assert_eq!(item.label, Some(9));
    let raw = ds.raw(0).unwrap();
    for y in 0..32 {
        for x in 0..32 {
            let v = item.pixels[y * 32 + x];
            if !(2..30).contains(&y) || !(2..30).contains(&x) {
                assert_eq!(v, -1.0);
            } else {
                assert_eq!(v, raw.data[(y - 2) * 28 + x - 2] as f32 / 127.5 - 1.0);
            }
        }
    }
    // Three channels repeat the gray plane; resizing gives the asked size.
    opts.channels = 3;
    opts.fit = Fit::Resize;
    opts.image_size = 64;
    let ds3 = FashionMnist::open(opts).unwrap();
    let it = ds3.get(0, &mut stream(0, 0, 0)).unwrap();
    assert_eq!(it.pixels.len(), 3 * 64 * 64);
    assert_eq!(it.pixels[..4096], it.pixels[4096..8192]);
    assert_eq!(it.pixels[..4096], it.pixels[8192..]);
}

#[test]
fn data_fashion_mnist_through_data_dir_and_loader() {
    let mut spec = DataSpec::new("fashion-mnist:test", 32);
    spec.channels = 1;
    spec.class_cond = true;
    spec.rank = 1;
    spec.world_size = 4;
    let ds: Arc<dyn Dataset> = open_dataset(&spec).unwrap();
    assert_eq!(ds.len(), 2500);
    assert_eq!(ds.channels(), 1);
    let mut cfg = LoaderConfig::new(16, 7);
    cfg.workers = 2;
    let mut loader = Loader::new(ds, cfg).unwrap();
    let b = loader.next_batch().unwrap();
    assert_eq!(b.images.dims(), [16, 1, 32, 32]);
    let labels = b.labels.unwrap().to_vec1::<u32>().unwrap();
    assert!(labels.iter().all(|&l| l < 10));
    assert_eq!(loader.classes().unwrap().len(), 10);
    let e = open_dataset(&DataSpec::new("fashion-mnist:valid", 32)).err().unwrap().to_string();
    assert!(e.contains("unknown split"), "{e}");
}

#[test]
fn data_fashion_mnist_missing_files_error_names_path_and_apt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = FashionMnistOptions::new(Split::Train, 32);
    opts.dir = Some(tmp.path().to_path_buf());
    let e = FashionMnist::open(opts).err().unwrap().to_string();
    assert!(e.contains("train-images-idx3-ubyte.gz"), "{e}");
    assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
    // The directory a `DataSpec` names reaches the data set.
    let mut spec = DataSpec::new("fashion-mnist:test", 32);
    spec.fashion_mnist_dir = Some(tmp.path().to_path_buf());
    let e = open_dataset(&spec).err().unwrap().to_string();
    assert!(e.contains(&tmp.path().join("t10k-images-idx3-ubyte.gz").display().to_string()), "{e}");
}

#[test]
fn data_idx_parser_checks_headers() {
    let mut ok = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    ok.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    let a = parse_idx(&ok).unwrap();
    assert_eq!(a.dims, [2, 3]);
    assert_eq!(a.data, [1, 2, 3, 4, 5, 6]);
    assert!(parse_idx(&ok[..ok.len() - 1]).unwrap_err().to_string().contains("size mismatch"));
    assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 0])
        .unwrap_err()
        .to_string()
        .contains("unsupported"));
    assert!(parse_idx(&[1, 2]).unwrap_err().to_string().contains("magic"));
}

/// A rank's loader (`rows`) decodes exactly its rows of each global batch: the same items with
/// the same augmentation as those rows of one loader of the global batch.
#[test]
fn data_loader_rows_are_the_rank_share_of_the_global_batch() {
    let mut spec = DataSpec::new("fashion-mnist", 32);
    spec.class_cond = true;
    spec.channels = 1;
    spec.random_crop = true;
    let ds = open_dataset(&spec).unwrap();
    let mut whole_cfg = LoaderConfig::new(6, 4);
    whole_cfg.workers = 0;
    let mut whole = Loader::new(ds.clone(), whole_cfg.clone()).unwrap();
    whole.seek(3).unwrap();
    let g = whole.next_batch().unwrap();
    for rank in 0..3 {
        let mut cfg = whole_cfg.clone();
        cfg.rows = Some((rank * 2, 2));
        let mut part = Loader::new(ds.clone(), cfg).unwrap();
        part.seek(3).unwrap();
        let b = part.next_batch().unwrap();
        assert_eq!(b.len(), 2);
        let want = g.narrow(rank * 2, 2).unwrap();
        let d = (&b.images - &want.images).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "rank {rank}");
        assert_eq!(
            b.labels.unwrap().to_vec1::<u32>().unwrap(),
            want.labels.unwrap().to_vec1::<u32>().unwrap()
        );
    }
    let mut bad = whole_cfg.clone();
    bad.rows = Some((5, 2));
    assert!(Loader::new(ds, bad).is_err());
}
