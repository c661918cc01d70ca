//! The data pipeline on real JPEG files in the ILSVRC layout, made here: packing to TFRecord
//! shards and reading them back, bad images and broken shards, and a loader whose output does
//! not depend on its threads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use incept_common::CRC32C;
use incept_common::config::AugmentSection;
use incept_common::data::augment::Preprocess;
use incept_common::data::folders::ImagenetFolders;
use incept_common::data::image::Rgb8;
use incept_common::data::pack::{PackOptions, pack};
use incept_common::data::shards::{DatasetIndex, INDEX_FILE, TfRecordShards};
use incept_common::data::source::{RawImage, SampleError, Source};
use incept_common::data::testing::{WNIDS, jpeg, write_imagenet};
use incept_common::data::{Job, Loader, Pipeline, Split};

fn make_ilsvrc(root: &Path, per_class: usize) {
    write_imagenet(root, per_class).unwrap();
}

/// A file of `common/tests/fixtures` (see experiments/baselines/make_data_fixtures.py).
fn fixture(name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect()
}

fn options(train_shards: usize) -> PackOptions {
    PackOptions {
        train_shards,
        validation_shards: 1,
        seed: 7,
    }
}

/// Every (label, file bytes) of a split, sorted.
fn contents(source: &dyn Source, split: Split) -> Vec<(i64, Vec<u8>)> {
    let mut all: Vec<(i64, Vec<u8>)> = (0..source.len(split))
        .map(|i| {
            let sample = source.read(split, i).unwrap();
            let RawImage::Encoded(bytes) = sample.image else {
                panic!("file sources hand out encoded images");
            };
            (sample.label, bytes)
        })
        .collect();
    all.sort();
    all
}

/// Every file of `dir` with its size and CRC-32C.
fn files_of(dir: &Path) -> BTreeMap<String, (usize, u32)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, (bytes.len(), CRC32C.checksum(&bytes)))
        })
        .collect()
}

#[test]
fn packed_shards_are_deterministic_and_hold_every_image_with_its_label() {
    let root = tempfile::tempdir().unwrap();
    make_ilsvrc(root.path(), 7);
    let folders = ImagenetFolders::open(root.path(), None).unwrap();
    assert_eq!(folders.synsets(), WNIDS);
    assert_eq!(
        (folders.len(Split::Train), folders.len(Split::Validation)),
        (21, 6)
    );

    let (a, b, other_seed) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    let index = pack(&folders, &a, &options(4), |_| {}).unwrap();
    pack(&folders, &b, &options(4), |_| {}).unwrap();
    pack(
        &folders,
        &other_seed,
        &PackOptions {
            seed: 8,
            ..options(4)
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(files_of(&a), files_of(&b), "same seed, same bytes");
    assert_ne!(files_of(&a), files_of(&other_seed));

    // The index: 4 near-equal train shards, 1 validation shard, per-class histograms.
    let sizes: Vec<u64> = index.train.iter().map(|s| s.samples).collect();
    assert_eq!(sizes.iter().sum::<u64>(), 21);
    assert!(sizes.iter().all(|&n| (5..=6).contains(&n)), "{sizes:?}");
    let mut per_class = BTreeMap::new();
    for shard in &index.train {
        assert_eq!(
            shard.bytes,
            fs::metadata(a.join(&shard.file)).unwrap().len()
        );
        for (label, n) in &shard.classes {
            *per_class.entry(*label).or_insert(0) += n;
        }
    }
    assert_eq!(
        per_class,
        BTreeMap::from([(1, 7), (2, 7), (3, 7)]),
        "1-based labels"
    );
    assert_eq!(DatasetIndex::read(&a).unwrap(), index);
    // Re-indexing the shards by scanning them finds the same index.
    let rebuilt = DatasetIndex::build(&a, |_| {}).unwrap();
    assert_eq!(rebuilt, index);

    let shards = TfRecordShards::open(&a, 8, false).unwrap();
    assert_eq!(shards.classes(), 3);
    assert_eq!(shards.train_layout().sizes, sizes);
    for split in [Split::Train, Split::Validation] {
        assert_eq!(
            contents(&shards, split),
            contents(&folders, split),
            "{split:?}"
        );
    }
    // With the background class kept, labels are the stored 1-based ones.
    let kept = TfRecordShards::open(&a, 8, true).unwrap();
    assert_eq!(kept.classes(), 4);
    assert!((0..21).all(|i| kept.read(Split::Train, i).unwrap().label >= 1));
}

#[test]
fn a_flat_val_folder_reads_its_ground_truth_file() {
    let root = tempfile::tempdir().unwrap();
    make_ilsvrc(root.path(), 2);
    let val = root.path().join("val");
    fs::remove_dir_all(&val).unwrap();
    fs::create_dir(&val).unwrap();
    let truth = [2, 0, 1, 2];
    for (i, &label) in truth.iter().enumerate() {
        let name = format!("ILSVRC2012_val_{:08}.JPEG", i + 1);
        fs::write(val.join(name), jpeg(label, i, 40, 30, false)).unwrap();
    }
    let lines: Vec<&str> = truth.iter().map(|&l| WNIDS[l]).collect();
    fs::write(root.path().join("val_truth.txt"), lines.join("\n")).unwrap();
    let folders = ImagenetFolders::open(root.path(), Some(Path::new("val_truth.txt"))).unwrap();
    let labels: Vec<usize> = folders
        .files(Split::Validation)
        .iter()
        .map(|f| f.label)
        .collect();
    assert_eq!(labels, truth);

    let err = ImagenetFolders::open(root.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.val_labels"), "{err}");

    // The devkit's numeric ILSVRC2012_IDs, mapped through the meta.mat beside them.
    let devkit = root.path().join("devkit").join("data");
    fs::create_dir_all(&devkit).unwrap();
    let truth_file = devkit.join("ILSVRC2012_validation_ground_truth.txt");
    fs::write(&truth_file, "1\n2\n3\n1\n").unwrap();
    let err = ImagenetFolders::open(root.path(), Some(&truth_file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("meta.mat") && err.contains("numeric"), "{err}");
    fs::copy(fixture("devkit_meta.mat"), devkit.join("meta.mat")).unwrap();
    let folders = ImagenetFolders::open(root.path(), Some(&truth_file)).unwrap();
    let labels: Vec<usize> = folders
        .files(Split::Validation)
        .iter()
        .map(|f| f.label)
        .collect();
    assert_eq!(
        labels, truth,
        "ID 1 is n01484850 (label 2), 2 is n01440764, 3 is n01443537"
    );
    fs::write(&truth_file, "1\n2\n9\n1\n").unwrap();
    let err = ImagenetFolders::open(root.path(), Some(&truth_file))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3") && err.contains("ILSVRC2012_ID 9"),
        "{err}"
    );
    fs::write(
        root.path().join("val_truth.txt"),
        "n01440764\n490\nn01443537\nn01440764\n",
    )
    .unwrap();
    let err = ImagenetFolders::open(root.path(), Some(Path::new("val_truth.txt")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("val_truth.txt line 2") && err.contains("\"490\""),
        "{err}"
    );
}

fn preprocess(size: usize, color: bool) -> Preprocess {
    Preprocess {
        image_size: size,
        augment: AugmentSection {
            color,
            ..AugmentSection::default()
        },
    }
}

#[test]
fn corrupt_and_truncated_images_are_skipped_counted_and_named() {
    let root = tempfile::tempdir().unwrap();
    make_ilsvrc(root.path(), 3);
    let class = root.path().join("train").join(WNIDS[0]);
    fs::write(class.join("zz_garbage.JPEG"), b"this is not a JPEG at all").unwrap();
    let whole = jpeg(0, 9, 50, 38, false);
    fs::write(class.join("zz_truncated.JPEG"), &whole[..whole.len() / 3]).unwrap();
    let folders = Arc::new(ImagenetFolders::open(root.path(), None).unwrap());
    let pipeline = Pipeline {
        source: folders.clone(),
        preprocess: preprocess(24, false),
        seed: 1,
    };
    let job = Job {
        split: Split::Train,
        epoch: 0,
        indices: (0..folders.len(Split::Train)).collect(),
    };
    let batch = pipeline.load(&job).unwrap();
    assert_eq!(batch.len() + 2, job.indices.len());
    assert_eq!(batch.pixels.len(), batch.len() * 3 * 24 * 24);
    assert_eq!(batch.bad_samples.len(), 2);
    assert!(
        batch
            .bad_samples
            .iter()
            .any(|r| r.contains("zz_garbage.JPEG")),
        "{:?}",
        batch.bad_samples
    );
    assert!(
        batch
            .bad_samples
            .iter()
            .any(|r| r.contains("zz_truncated.JPEG")),
        "{:?}",
        batch.bad_samples
    );
    // Every good image lands in [-1, 1] with its label's colour dominant.
    for (i, &label) in batch.labels.iter().enumerate() {
        let image = &batch.pixels[i * 3 * 576..(i + 1) * 3 * 576];
        assert!(image.iter().all(|v| (-1.0..=1.0).contains(v)));
        let means: Vec<f32> = image
            .chunks(576)
            .map(|c| c.iter().sum::<f32>() / 576.0)
            .collect();
        let brightest = (0..3)
            .max_by(|&a, &b| means[a].total_cmp(&means[b]))
            .unwrap();
        let gray = means.iter().all(|m| (m - means[0]).abs() < 1e-3);
        assert!(
            gray || brightest == label as usize,
            "image {i}: {means:?}, label {label}"
        );
    }
}

#[test]
fn broken_shards_are_named_with_their_byte_offset() {
    let root = tempfile::tempdir().unwrap();
    make_ilsvrc(root.path(), 4);
    let out = root.path().join("shards");
    let folders = ImagenetFolders::open(root.path(), None).unwrap();
    let index = pack(&folders, &out, &options(2), |_| {}).unwrap();
    let first = out.join(&index.train[0].file);

    // A payload byte flipped: same size, so opening succeeds; reading that record names it.
    let mut bytes = fs::read(&first).unwrap();
    bytes[12 + 40] ^= 0xFF;
    fs::write(&first, &bytes).unwrap();
    let shards = TfRecordShards::open(&out, 4, false).unwrap();
    let err = match shards.read(Split::Train, 0) {
        Err(SampleError::Fatal(message)) => message,
        other => panic!("expected a fatal error, got {other:?}"),
    };
    assert!(
        err.contains("train-00000-of-00002") && err.contains("byte offset 0"),
        "{err}"
    );
    assert!(err.contains("checksum mismatch"), "{err}");

    // Truncated: named when the dataset is opened, before any training.
    bytes.truncate(bytes.len() - 10);
    fs::write(&first, &bytes).unwrap();
    let err = TfRecordShards::open(&out, 4, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("train-00000-of-00002") && err.contains("truncated"),
        "{err}"
    );
    // Its index rebuilt by scanning names the record that runs past the end.
    let err = DatasetIndex::build(&out, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("train-00000-of-00002") && err.contains("byte offset"),
        "{err}"
    );

    fs::remove_file(out.join(INDEX_FILE)).unwrap();
    let err = TfRecordShards::open(&out, 4, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(INDEX_FILE) && err.contains("coordinator dataset index"),
        "{err}"
    );
}

#[test]
fn loaded_batches_do_not_depend_on_threads_or_prefetch() {
    let root = tempfile::tempdir().unwrap();
    make_ilsvrc(root.path(), 8);
    let out = root.path().join("shards");
    let folders = ImagenetFolders::open(root.path(), None).unwrap();
    pack(&folders, &out, &options(3), |_| {}).unwrap();
    let source: Arc<dyn Source> = Arc::new(TfRecordShards::open(&out, 5, false).unwrap());
    let pipeline = Arc::new(Pipeline {
        source: source.clone(),
        preprocess: preprocess(32, true),
        seed: 3,
    });
    let order: Vec<u64> = (0..source.len(Split::Train)).rev().collect();
    let jobs = move |k: u64| {
        let k = k as usize;
        (k < 6).then(|| Job {
            split: Split::Train,
            epoch: k as u64 / 3,
            indices: order[(k % 3) * 4..(k % 3) * 4 + 4].to_vec(),
        })
    };
    let collect = |threads, prefetch| {
        let mut loader = Loader::spawn(pipeline.clone(), jobs.clone(), threads, prefetch);
        let mut batches = Vec::new();
        while let Some(batch) = loader.next_batch() {
            batches.push(batch.unwrap());
        }
        batches
    };
    let one = collect(1, 1);
    assert_eq!(one.len(), 6);
    assert_eq!(collect(3, 1), one);
    assert_eq!(collect(4, 3), one);
    // The same samples in another epoch are augmented differently.
    assert_eq!(one[0].labels, one[3].labels);
    assert_ne!(one[0].pixels, one[3].pixels);
}

#[test]
fn grayscale_and_cmyk_jpegs_become_rgb() {
    let gray = Rgb8::decode_jpeg(&jpeg(1, 0, 20, 10, true)).unwrap();
    assert_eq!((gray.width, gray.height), (20, 10));
    assert!(gray.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));

    let cmyk = Rgb8::decode_jpeg(&fs::read(fixture("cmyk_red_blue.jpg")).unwrap()).unwrap();
    assert_eq!((cmyk.width, cmyk.height), (40, 30));
    let pixel = |x: usize, y: usize| &cmyk.data[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
    let (left, right) = (pixel(5, 15), pixel(35, 15));
    assert!(left[0] > 150 && left[2] < 100, "left half is red: {left:?}");
    assert!(
        right[2] > 150 && right[0] < 100,
        "right half is blue: {right:?}"
    );
}
