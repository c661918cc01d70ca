//! `coordinator eval` and `coordinator predict` end to end: real workers evaluating real
//! checkpoints, the crop protocols on real JPEG files, and logits checked against a forward pass
//! made here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burn::backend::Flex;
use burn::prelude::*;
use incept_common::config::{Arch, ModelSection};
use incept_common::data::testing::{jpeg, write_imagenet};
use incept_common::model::{import, registry};
use incept_common::npy;

mod support;

use support::*;

/// Runs a coordinator command to success; returns stdout.
fn succeed(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = run_with_limit(cmd, Duration::from_secs(300));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The id of the only training run (not an evaluation) of the state directory.
fn trained_run(fx: &Fixture) -> String {
    fx.db()
        .query_row(
            "SELECT id FROM runs WHERE name NOT LIKE 'eval-%'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// (top-1, loss, protocol, weights) of the newest evaluation run's result.
fn newest_evaluation(fx: &Fixture) -> (f64, f64, String, String) {
    fx.db()
        .query_row(
            "SELECT e.top1, e.loss, e.protocol, e.weights FROM evaluations e
             JOIN runs r ON r.id = e.run_id WHERE r.name LIKE 'eval-%'
             ORDER BY e.recorded_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

#[test]
fn eval_on_one_and_two_workers_matches_the_runs_own_final_evaluation() {
    let fx = Fixture::new(TINY);
    let experiment = fx.experiment();
    succeed(fx.coordinator(&["launch", experiment.to_str().unwrap()]));
    let run = trained_run(&fx);
    let (top1, loss): (f64, f64) = fx
        .db()
        .query_row(
            "SELECT val_top1, val_loss FROM runs WHERE id = ?1",
            [&run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();

    for workers in ["1", "2"] {
        let stdout = succeed(fx.coordinator(&["eval", &run, "--workers", workers]));
        assert!(
            stdout.contains(&format!("1-crop: top-1 {:.2}%", 100.0 * top1)),
            "{stdout}"
        );
        let (eval_top1, eval_loss, protocol, weights) = newest_evaluation(&fx);
        assert_eq!(eval_top1, top1, "{workers} workers");
        assert_eq!(eval_loss, loss, "{workers} workers");
        assert_eq!(protocol, "1-crop");
        assert_eq!(weights, format!("average weights of run {run} at step 48"));
    }
    // The trained weights are another model than their average.
    succeed(fx.coordinator(&["eval", &run, "--raw"]));
    let (_, raw_loss, _, weights) = newest_evaluation(&fx);
    assert!(weights.starts_with("trained weights of run"), "{weights}");
    assert_ne!(raw_loss, loss);
}

#[test]
fn multi_crop_protocols_evaluate_jpeg_images_and_weights_files() {
    let fx = Fixture::new("");
    let images = fx.dir.path().join("imagenet");
    write_imagenet(&images, 4).unwrap();
    let experiment = ON_SHARDS
        .replace("source = \"tfrecord\"", "source = \"imagenet\"")
        .replace("SHARDS", &images.display().to_string())
        .replace("epochs = 2", "epochs = 1")
        .replace("batch_size = 8", "batch_size = 2");
    std::fs::write(fx.experiment(), experiment).unwrap();
    succeed(fx.coordinator(&["launch", fx.experiment().to_str().unwrap()]));
    let run = trained_run(&fx);

    for (crops, workers) in [("10", "2"), ("144", "1")] {
        let stdout =
            succeed(fx.coordinator(&["eval", &run, "--crops", crops, "--workers", workers]));
        // 3 classes × 2 validation images.
        assert!(stdout.contains("(6 images)"), "{stdout}");
        let (top1, _, protocol, _) = newest_evaluation(&fx);
        assert_eq!(protocol, format!("{crops}-crop"));
        assert!((0.0..=1.0).contains(&top1));
    }

    // The same network as a weights file, on the same images named by --data.
    let weights = fx.dir.path().join("weights.safetensors");
    let model = ModelSection {
        arch: Arch::BnInception,
        num_classes: 3,
        image_size: 32,
        width: 0.125,
        ..ModelSection::default()
    };
    save_weights(&model, &weights);
    let data = format!("imagenet:{}", images.display());
    let weights_args = [
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--arch",
        "bn_inception",
        "--data",
        &data,
        "--crops",
        "10",
        "--set",
        "model.image_size=32",
        "--set",
        "model.width=0.125",
    ];
    let mut args = weights_args.to_vec();
    args.extend(["--set", "model.num_classes=3"]);
    let stdout = succeed(fx.coordinator(&args));
    assert!(stdout.contains("(6 images)"), "{stdout}");
    let (_, _, protocol, described) = newest_evaluation(&fx);
    assert_eq!(protocol, "10-crop");
    assert_eq!(described, format!("weights file {}", weights.display()));

    // A classifier with fewer classes than the dataset is refused, naming both counts.
    let mut args = weights_args.to_vec();
    args.extend(["--set", "model.num_classes=2"]);
    let out = run_with_limit(fx.coordinator(&args), Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has 3 classes but model.num_classes is 2"),
        "{stderr}"
    );
}

/// Writes the weights of a freshly initialised `model` as `coordinator models import` would.
fn save_weights(model: &ModelSection, path: &Path) -> registry::Network<Flex> {
    let network = registry::build::<Flex>(model, &Default::default());
    import::save_incept(&network, path).unwrap();
    network
}

/// A 1/16-width Inception-v3 with 10 classes at 75 px: small, and full of every block kind.
fn small_v3() -> ModelSection {
    ModelSection {
        arch: Arch::InceptionV3,
        num_classes: 10,
        image_size: 75,
        width: 0.0625,
        ..ModelSection::default()
    }
}

const SMALL_V3_SETTINGS: [&str; 6] = [
    "--set",
    "model.num_classes=10",
    "--set",
    "model.image_size=75",
    "--set",
    "model.width=0.0625",
];

fn predict_args<'a>(weights: &'a Path, inputs: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--arch",
        "inception_v3",
    ];
    args.extend(SMALL_V3_SETTINGS);
    args.extend(inputs);
    args
}

#[test]
fn predict_on_npy_inputs_reproduces_a_forward_pass() {
    let fx = Fixture::new("");
    let weights = fx.dir.path().join("v3.safetensors");
    let network = save_weights(&small_v3(), &weights);
    let (n, side) = (3, 75);
    let values: Vec<f32> = (0..n * 3 * side * side)
        .map(|i| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    let inputs = fx.dir.path().join("inputs.npy");
    let array = npy::Array {
        shape: vec![n, 3, side, side],
        values: values.clone(),
    };
    npy::write(&inputs, &array).unwrap();
    let expected = network
        .forward(Tensor::from_data(
            TensorData::new(values, [n, 3, side, side]),
            &Default::default(),
        ))
        .into_data()
        .to_vec::<f32>()
        .unwrap();

    let logits = fx.dir.path().join("logits.npy");
    let mut args = predict_args(&weights, &[inputs.to_str().unwrap()]);
    args.extend(["--logits-out", logits.to_str().unwrap()]);
    let stdout = succeed(coordinator(&args));
    let written = npy::read(&logits).unwrap();
    assert_eq!(written.shape, [n, 10]);
    let largest = expected
        .iter()
        .zip(&written.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(largest < 1e-5, "logits differ by up to {largest}");
    for i in 0..n {
        assert!(stdout.contains(&format!("inputs.npy[{i}]")), "{stdout}");
    }

    // An array of another size is refused with its shape and the model's.
    let wrong = fx.dir.path().join("wrong.npy");
    let array = npy::Array {
        shape: vec![1, 3, 8, 8],
        values: vec![0.0; 3 * 64],
    };
    npy::write(&wrong, &array).unwrap();
    let args = predict_args(&weights, &[wrong.to_str().unwrap()]);
    let out = run_with_limit(coordinator(&args), Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("[1, 3, 8, 8]"),
        "{stderr}"
    );
}

#[test]
fn predict_on_jpeg_files_prints_sorted_probabilities_with_labels() {
    let fx = Fixture::new("");
    let weights = fx.dir.path().join("v3.safetensors");
    save_weights(&small_v3(), &weights);
    let photos: Vec<PathBuf> = (0..2)
        .map(|k| {
            let path = fx.dir.path().join(format!("photo{k}.jpg"));
            std::fs::write(&path, jpeg(k, k, 120, 90, false)).unwrap();
            path
        })
        .collect();
    let labels = fx.dir.path().join("labels.txt");
    let names: Vec<String> = (0..10).map(|c| format!("class-{c}")).collect();
    std::fs::write(&labels, names.join("\n")).unwrap();

    let photo_args: Vec<&str> = photos.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = predict_args(&weights, &photo_args);
    args.extend(["--labels", labels.to_str().unwrap()]);
    let stdout = succeed(coordinator(&args));
    for photo in &photos {
        let at = stdout
            .find(&photo.display().to_string())
            .unwrap_or_else(|| panic!("{} not in {stdout}", photo.display()));
        let probabilities: Vec<f64> = stdout[at..]
            .lines()
            .skip(1)
            .take(5)
            .map(|line| {
                assert!(line.contains("class-"), "{line}");
                let percent = line.split_whitespace().next().unwrap();
                percent.trim_end_matches('%').parse::<f64>().unwrap() / 100.0
            })
            .collect();
        assert_eq!(probabilities.len(), 5, "{stdout}");
        assert!(probabilities.windows(2).all(|w| w[0] >= w[1]), "{stdout}");
        let total: f64 = probabilities.iter().sum();
        assert!(total <= 1.0 + 1e-3 && total > 0.0, "{stdout}");
    }

    // A label file that does not fit the classifier is named with both counts.
    std::fs::write(&labels, "only\ntwo\n").unwrap();
    let out = run_with_limit(coordinator(&args), Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("names 2 classes, the model has 10"),
        "{stderr}"
    );
}
