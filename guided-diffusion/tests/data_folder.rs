//! The folder loader on made-up image files: the reference's listing order, labels from file
//! names, sharding, resize/crop sizes, pixel scaling, and reproducible threaded batches.
use std::path::Path;
use std::sync::Arc;

use guided_diffusion::data::files::{labels_from_file_names, shard};
use guided_diffusion::data::rng::stream;
use guided_diffusion::data::{
    list_image_files_recursively, open_dataset, BatchSource, ClassList, DataSpec, Dataset,
    FolderDataset, FolderOptions, Loader, LoaderConfig,
};

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + seed) as u8, (y * 13 + seed * 3) as u8, ((x + y) * 5) as u8])
    });
    img.save(path).unwrap();
}

/// dog_1.png (40x30), cat_2.jpg, sub/cat_1.png, sub/deeper/bird.png, notes.txt, noext, a.GIF
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    write_png(&dir.join("dog_1.png"), 40, 30, 1);
    let jpg = image::RgbImage::from_pixel(64, 48, image::Rgb([200, 10, 10]));
    jpg.save(dir.join("cat_2.jpg")).unwrap();
    write_png(&dir.join("sub/cat_1.png"), 100, 70, 2);
    write_png(&dir.join("sub/deeper/bird.png"), 33, 33, 3);
    let gif = image::RgbaImage::from_pixel(20, 24, image::Rgba([0, 255, 0, 255]));
    gif.save_with_format(dir.join("zebra_x.GIF"), image::ImageFormat::Gif).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("noext"), "x").unwrap();
}

#[test]
fn data_folder_listing_and_labels_follow_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let files = list_image_files_recursively(tmp.path()).unwrap();
    let rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(tmp.path()).unwrap().to_string_lossy().into_owned())
        .collect();
    // sorted(listdir) at each level: "cat_2.jpg" < "dog_1.png" < "noext" < "notes.txt" < "sub" < "zebra_x.GIF"
    assert_eq!(
        rel,
        ["cat_2.jpg", "dog_1.png", "sub/cat_1.png", "sub/deeper/bird.png", "zebra_x.GIF"]
    );
    let (classes, labels) = labels_from_file_names(&files);
    // "bird.png" has no underscore: the whole name is its class, as in the reference.
    assert_eq!(classes.names, ["bird.png", "cat", "dog", "zebra"]);
    assert_eq!(labels, [1, 2, 1, 0, 3]);
    // Class list round trip (saved beside checkpoints).
    let path = tmp.path().join("classes.json");
    classes.save(&path).unwrap();
    assert_eq!(ClassList::load(&path).unwrap(), classes);
}

#[test]
fn data_folder_shards_like_the_reference() {
    let items: Vec<u32> = (0..7).collect();
    assert_eq!(shard(&items, 0, 3).unwrap(), [0, 3, 6]);
    assert_eq!(shard(&items, 1, 3).unwrap(), [1, 4]);
    assert_eq!(shard(&items, 2, 3).unwrap(), [2, 5]);
    assert!(shard(&items, 3, 3).is_err());

    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let mut opts = FolderOptions::new(16);
    opts.class_cond = true;
    opts.rank = 1;
    opts.world_size = 2;
    let ds = FolderDataset::open(tmp.path(), opts).unwrap();
    let names: Vec<_> =
        ds.files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["dog_1.png", "bird.png"]);
    // Labels are computed over all files before sharding: class indices agree across ranks.
    assert_eq!(ds.labels().unwrap(), [2, 0]);
    assert_eq!(ds.classes().unwrap().len(), 4);
}

#[test]
fn data_folder_items_are_resized_cropped_and_scaled() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let mut opts = FolderOptions::new(16);
    opts.class_cond = true;
    opts.random_flip = false;
    let ds = FolderDataset::open(tmp.path(), opts.clone()).unwrap();
    for i in 0..ds.len() {
        let item = ds.get(i, &mut stream(0, 0, i as u64)).unwrap();
        assert_eq!(item.pixels.len(), 3 * 16 * 16);
        assert!(item.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    // The flat red JPEG stays (nearly) red: 200/127.5 - 1 = 0.5686 in channel 0.
    let red = ds.get(0, &mut stream(0, 0, 0)).unwrap();
    assert!((red.pixels[0] - 0.5686).abs() < 0.04, "{}", red.pixels[0]);
    assert!(red.pixels[256] < -0.8 && red.pixels[512] < -0.8);
    // The gif is green, converted to RGB.
    let green = ds.get(4, &mut stream(0, 0, 0)).unwrap();
    assert_eq!((green.pixels[0], green.pixels[256], green.pixels[512]), (-1.0, 1.0, -1.0));

    // Random crops give the right size and vary with the stream; flips mirror.
    opts.random_crop = true;
    opts.random_flip = true;
    let ds = FolderDataset::open(tmp.path(), opts).unwrap();
    let a = ds.get(2, &mut stream(1, 2, 3)).unwrap();
    let b = ds.get(2, &mut stream(1, 2, 3)).unwrap();
    assert_eq!(a.pixels, b.pixels, "same stream, same pixels");
    let differs =
        (0..20).any(|k| ds.get(2, &mut stream(1, 2, 100 + k)).unwrap().pixels != a.pixels);
    assert!(differs);
}

#[test]
fn data_folder_loader_batches_are_reproducible_and_seekable() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..10 {
        write_png(&tmp.path().join(format!("c{}_{i}.png", i % 3)), 20 + i, 18 + 2 * i, i);
    }
    let mut spec = DataSpec::new(tmp.path().to_string_lossy(), 8);
    spec.class_cond = true;
    let ds: Arc<dyn Dataset> = open_dataset(&spec).unwrap();
    let mut cfg = LoaderConfig::new(3, 42);
    cfg.workers = 3;
    cfg.prefetch = 2;
    let mut threaded = Loader::new(ds.clone(), cfg.clone()).unwrap();
    assert_eq!(threaded.batches_per_epoch(), 3);
    cfg.workers = 0;
    let mut inline = Loader::new(ds.clone(), cfg.clone()).unwrap();
    let mut seen = Vec::new();
    for b in 0..7 {
        let x = threaded.next_batch().unwrap();
        let y = inline.next_batch().unwrap();
        assert_eq!(x.index, b);
        assert_eq!(x.images.dims(), [3, 3, 8, 8]);
        let xv = x.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yv = y.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(xv, yv, "batch {b}: threads must not change the data");
        let xl = x.labels.unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(xl, y.labels.unwrap().to_vec1::<u32>().unwrap());
        seen.push(xv);
    }
    // An epoch's 3 batches hold 9 distinct items; the next epoch is a different permutation.
    assert_ne!(seen[0], seen[3]);
    // Seeking to batch 5 yields what batch 5 was.
    let mut again = Loader::new(ds.clone(), cfg).unwrap();
    again.seek(5).unwrap();
    let z = again.next_batch().unwrap();
    assert_eq!(z.index, 5);
    assert_eq!(z.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), seen[5]);
    threaded.seek(1).unwrap();
    let w = threaded.next_batch().unwrap();
    assert_eq!(w.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), seen[1]);
}

#[test]
fn data_folder_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let e = FolderDataset::open(tmp.path(), FolderOptions::new(8)).err().unwrap().to_string();
    assert!(e.contains("no .jpg/.jpeg/.png/.gif"), "{e}");
    let e = FolderDataset::open(tmp.path().join("missing"), FolderOptions::new(8))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
    std::fs::write(tmp.path().join("bad_1.png"), b"not a png").unwrap();
    let ds = FolderDataset::open(tmp.path(), FolderOptions::new(8)).unwrap();
    let e = ds.get(0, &mut stream(0, 0, 0)).err().unwrap().to_string();
    assert!(e.contains("bad_1.png") && e.contains("cannot decode"), "{e}");
    let e = Loader::new(Arc::new(ds), LoaderConfig::new(4, 0)).err().unwrap().to_string();
    assert!(e.contains("fewer than --batch_size"), "{e}");
}
