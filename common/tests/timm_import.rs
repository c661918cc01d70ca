//! Our Inception-ResNet-v2 against timm's: pieces of timm's network with random weights (made by
//! experiments/baselines/make_timm_fixtures.py) import by name into ours and give timm's
//! eval-mode outputs; a broken file is reported in full; our own checkpoints round-trip.

use std::fs;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use incept_common::model::families::inception_resnet_v2::{
    InceptionResNetV2, InceptionResNetV2Config,
};
use incept_common::model::import::{
    ImportError, Mismatch, Misshaped, load_incept, load_timm, load_timm_into, save_incept,
};
use incept_common::model::layers::{ConvBn, ConvBnConfig};
use incept_common::model::params::{flatten_buffers, flatten_params, tensor_paths};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// The fixtures' tolerance: max |ours − timm| / max |timm|.
const MAX_RELATIVE_ERROR: f32 = 1e-4;

fn fixture(piece: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("timm_irv2_{piece}.safetensors"))
}

/// An F32 tensor of a fixture, by key.
fn fixture_tensor<const D: usize>(piece: &str, key: &str) -> Tensor<Flex, D> {
    let bytes = fs::read(fixture(piece)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(key).unwrap();
    assert_eq!(view.dtype(), Dtype::F32, "{piece}: {key}");
    let values: Vec<f32> = view
        .data()
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| f32::from_le_bytes(*b))
        .collect();
    Tensor::from_data(
        TensorData::new(values, view.shape().to_vec()),
        &Default::default(),
    )
}

/// Our network with one block per stage; `width` scales channels as the fixture script does.
fn network(width: f64) -> InceptionResNetV2<Flex> {
    InceptionResNetV2Config::new(10)
        .with_width(width)
        .with_blocks([1, 1, 1])
        .init(&Default::default())
}

/// Asserts `ours` matches the fixture's `output` and returns the relative error.
fn assert_matches_timm<const D: usize>(piece: &str, ours: Tensor<Flex, D>) -> f32 {
    let theirs = fixture_tensor::<D>(piece, "output");
    assert_eq!(ours.dims(), theirs.dims(), "{piece}");
    let error = (ours - theirs.clone()).abs().max().into_scalar();
    let scale = theirs.abs().max().into_scalar();
    let relative = error / scale;
    eprintln!("{piece}: max |ours - timm| / max |timm| = {relative:.2e} (scale {scale:.3})");
    assert!(
        relative < MAX_RELATIVE_ERROR,
        "{piece}: relative error {relative:e}"
    );
    relative
}

#[test]
fn stem_matches_timm() {
    let path = fixture("stem");
    let net = network(1.0);
    let load = |conv: ConvBn<Flex>, name: &str| load_timm_into(conv, &path, name).unwrap();
    let conv2d_1a = load(net.conv2d_1a, "conv2d_1a");
    let conv2d_2a = load(net.conv2d_2a, "conv2d_2a");
    let conv2d_2b = load(net.conv2d_2b, "conv2d_2b");
    let conv2d_3b = load(net.conv2d_3b, "conv2d_3b");
    let conv2d_4a = load(net.conv2d_4a, "conv2d_4a");

    let x = fixture_tensor::<4>("stem", "input");
    let x = conv2d_2b.forward(conv2d_2a.forward(conv2d_1a.forward(x)));
    let x = conv2d_4a.forward(conv2d_3b.forward(net.maxpool_3a.forward(x)));
    assert_matches_timm("stem", net.maxpool_5a.forward(x));
}

#[test]
fn residual_blocks_match_timm() {
    // Block35 at full width; Block17 and the final Block8 (scale 1, no ReLU) at width 1/8.
    let mut full = network(1.0);
    let mut narrow = network(0.125);
    for (piece, prefix, block) in [
        ("block35", "repeat.0", full.repeat.remove(0)),
        ("block17", "repeat_1.0", narrow.repeat_1.remove(0)),
        ("block8", "block8", narrow.block8.take().unwrap()),
    ] {
        let block = load_timm_into(block, &fixture(piece), prefix).unwrap();
        assert_matches_timm(piece, block.forward(fixture_tensor(piece, "input")));
    }
}

#[test]
fn whole_network_matches_timm() {
    // A complete timm state dict (width 1/16, one block per stage, num_batches_tracked included):
    // every key must find its tensor, and the logits must agree.
    let net = load_timm(network(0.0625), &fixture("full")).unwrap();
    let logits = net.forward(fixture_tensor("full_io", "input"));
    assert_matches_timm("full_io", logits);
}

/// A ConvBn 2 → 3 channels, 1×1: `conv.weight` [3, 2, 1, 1] and four BatchNorm vectors.
fn small_conv() -> ConvBn<Flex> {
    ConvBnConfig::new([2, 3], [1, 1]).init(&Default::default())
}

fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| vec![0; 4 * shape.iter().product::<usize>()])
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape), data)| {
        (
            *name,
            TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
        )
    });
    fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn mismatch<T: std::fmt::Debug>(result: Result<T, ImportError>) -> Mismatch {
    match result.unwrap_err() {
        ImportError::Mismatch(report) => *report,
        other => panic!("expected a mismatch, got {other}"),
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    write_f32(
        &path,
        &[
            ("conv.weight", vec![3, 2, 3, 3]),
            ("bn.weight", vec![3]),
            ("bn.running_mean", vec![4]),
            ("bn.num_batches_tracked", vec![]),
            ("extra.weight", vec![3]),
            ("fc.bias", vec![3]),
        ],
    );
    let report = mismatch(load_timm(small_conv(), &path));
    assert_eq!(report.missing, ["bn.bias", "bn.running_var"]);
    assert_eq!(report.unexpected, ["extra.weight", "fc.bias"]);
    assert_eq!(
        report.misshaped,
        [
            Misshaped {
                name: "conv.weight".into(),
                ours: vec![3, 2, 1, 1],
                theirs: vec![3, 2, 3, 3],
            },
            Misshaped {
                name: "bn.running_mean".into(),
                ours: vec![3],
                theirs: vec![4],
            },
        ]
    );
    let message = report.to_string();
    eprintln!("{message}");
    for name in [
        "broken.safetensors",
        "bn.bias",
        "bn.running_var",
        "extra.weight",
        "fc.bias",
        "conv.weight [3, 2, 1, 1] vs [3, 2, 3, 3]",
        "bn.running_mean [3] vs [4]",
    ] {
        assert!(message.contains(name), "{name} not in: {message}");
    }

    // Our own format keeps burn's names: a timm file is all wrong there, and says so.
    let report = mismatch(load_incept(small_conv(), &fixture("block35")));
    assert_eq!(report.missing.len(), 5);
    assert!(report.missing.contains(&"bn.gamma".to_owned()));
}

#[test]
fn missing_files_name_the_path() {
    let path = Path::new("/nonexistent/weights.safetensors");
    let err = load_timm(small_conv(), path).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/weights.safetensors"));
}

#[test]
fn a_file_that_is_not_safetensors_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.pt");
    // A PyTorch zip archive's first bytes read as an absurd safetensors header length.
    fs::write(&path, b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl").unwrap();
    let err = load_timm(small_conv(), &path).unwrap_err().to_string();
    assert!(
        err.contains("weights.pt: not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn own_checkpoints_round_trip_exactly() {
    // The timm fixture gives every tensor, running statistics included, non-default values.
    let net = load_timm(network(0.0625), &fixture("full")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("irv2.safetensors");
    save_incept(&net, &path).unwrap();
    // Written atomically: only the file itself is left in the folder.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    let fresh = network(0.0625);
    assert_ne!(flatten_params(&fresh), flatten_params(&net));
    let loaded = load_incept(fresh, &path).unwrap();
    assert_eq!(flatten_params(&loaded), flatten_params(&net));
    assert_eq!(flatten_buffers(&loaded), flatten_buffers(&net));
    assert_eq!(tensor_paths(&loaded), tensor_paths(&net));
}
