//! The device-resident step against the flat host implementation it replaced
//! (`train::reference`): same data, same model, same recipe (two micro-batches, weight decay,
//! TF-RMSProp, the weight average) give bit-identical parameters after 5 steps; with global-norm
//! clipping that bites, within 1e-6 relative (the device sums the norm in f32 blocks, the host
//! summed it in f64, and the clipping scale carries the difference into every value).

mod support;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::TensorData;
use incept_common::config::Experiment;
use incept_common::data::augment::Preprocess;
use incept_common::data::{EpochPlan, Job, Pipeline, Split};
use incept_common::model::params::{self, flatten_params, load_params};
use incept_common::model::registry::Network;
use incept_common::train::CpuBackend;
use incept_common::train::LrSchedule;
use incept_common::train::optim::UpdateRule;
use incept_common::train::reference::{
    HostAverage, HostOptimizer, accumulate_grads, clip_global_norm,
};

const STEPS: u64 = 5;

fn experiment(clip_global_norm: f64) -> Experiment {
    let mut exp = support::experiment();
    exp.model.dropout = 0.0;
    exp.train.accumulate = 2;
    exp.train.weight_decay = 1e-2;
    exp.train.clip_global_norm = clip_global_norm;
    exp.train.ema_decay = 0.99;
    exp.train.max_steps = Some(STEPS);
    incept_common::resolve::check(&exp).expect("test experiment is valid");
    exp
}

/// The host reference: flat `Vec<f32>` gradients, optimizer, clipping and average, as the
/// replica computed them before its step moved onto the device. One rank, so the all-reduce
/// mean is the identity. Returns the parameters, the average, and whether clipping bit.
fn host_reference(exp: &Experiment, mut model: Network<CpuBackend>) -> (Vec<f32>, Vec<f32>, bool) {
    let device = Default::default();
    let source = incept_common::data::open(exp).unwrap();
    let mut plan = EpochPlan::new(
        exp.run.seed,
        source.train_layout(),
        1,
        exp.train.batch_size,
        exp.train.accumulate,
    );
    let pipeline = Pipeline {
        source,
        preprocess: Preprocess {
            image_size: exp.model.image_size,
            augment: exp.data.augment.clone(),
        },
        seed: exp.run.seed,
    };
    let train = &exp.train;
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing(Some(train.label_smoothing as f32))
        .init(&device);
    let schedule = LrSchedule::new(
        train.optimizer.learning_rate,
        &train.schedule,
        exp.steps_per_epoch(),
        exp.total_steps(),
        exp.global_batch(),
    );
    let mut params = flatten_params(&model);
    let decayed = params::trainable_segments(&model)
        .into_iter()
        .filter(|s| s.is_weight())
        .map(|s| s.range)
        .collect();
    let mut optimizer = HostOptimizer::new(
        UpdateRule::from(&train.optimizer),
        train.weight_decay,
        decayed,
        params.len(),
    );
    let mut average = HostAverage::new(train.ema_decay, &params);
    let mut clipped = false;
    for step in 0..STEPS {
        let mut grads = vec![0.0; params.len()];
        for micro in 0..train.accumulate {
            let job = Job {
                split: Split::Train,
                epoch: plan.epoch_of(step),
                indices: plan.micro_batch(step, 0, micro),
            };
            let batch = pipeline.load(&job).unwrap();
            let (n, side) = (batch.len(), batch.image_size);
            let images =
                Tensor::from_data(TensorData::new(batch.pixels, [n, 3, side, side]), &device);
            let labels = Tensor::from_data(TensorData::new(batch.labels, [n]), &device);
            let (logits, aux) = model.forward_with_aux(images);
            let mut loss = loss_fn.forward(logits, labels.clone());
            if let Some(aux) = aux {
                let aux_loss = loss_fn.forward(aux, labels);
                loss = loss.add(aux_loss.mul_scalar(train.aux_loss_weight));
            }
            accumulate_grads(&model, &loss.backward(), &mut grads);
        }
        let scale = 1.0 / train.accumulate as f32;
        grads.iter_mut().for_each(|g| *g *= scale);
        optimizer.add_weight_decay(&params, &mut grads);
        let norm = clip_global_norm(&mut grads, train.clip_global_norm);
        clipped |= train.clip_global_norm > 0.0 && norm > train.clip_global_norm;
        optimizer.step(schedule.at(step), &mut params, &grads);
        model = load_params(model, &params);
        average.update(&params);
    }
    (params, average.values().to_vec(), clipped)
}

/// Trains 5 steps on the device and on the host from the same model; returns (device, host)
/// parameters and averages, and whether clipping bit.
fn both(exp: &Experiment) -> ([Vec<f32>; 2], [Vec<f32>; 2], bool) {
    let _rng = support::RNG.lock().unwrap();
    let mut replica = support::replica(exp);
    let initial = replica.params();
    let model = load_params(replica.model().clone(), &initial);
    let (host_params, host_average, clipped) = host_reference(exp, model);
    for step in 0..STEPS {
        assert!(!replica.step(step).unwrap().skipped);
    }
    let state = replica.state(STEPS);
    assert_ne!(state.params, initial, "training moved nothing");
    let (_, average) = state.average.expect("the weight average is on");
    (
        [state.params, host_params],
        [average, host_average],
        clipped,
    )
}

/// ‖device − host‖ / ‖host‖.
fn relative_distance(device: &[f32], host: &[f32]) -> f64 {
    assert_eq!(device.len(), host.len());
    let norm = |values: &mut dyn Iterator<Item = f32>| {
        values.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt()
    };
    norm(&mut device.iter().zip(host).map(|(d, h)| d - h)) / norm(&mut host.iter().copied())
}

#[test]
fn without_clipping_the_device_step_is_bit_identical_to_the_host_reference() {
    let ([device, host], [device_average, host_average], clipped) = both(&experiment(0.0));
    assert!(!clipped);
    assert!(
        device == host,
        "parameters differ: {:e}",
        relative_distance(&device, &host)
    );
    assert!(device_average == host_average, "the weight averages differ");
}

#[test]
fn with_clipping_the_device_step_is_within_1e6_of_the_host_reference() {
    let ([device, host], [device_average, host_average], clipped) = both(&experiment(0.5));
    assert!(clipped, "the test's clipping limit never bit");
    let (params, average) = (
        relative_distance(&device, &host),
        relative_distance(&device_average, &host_average),
    );
    assert!(params <= 1e-6, "parameters {params:e} apart");
    assert!(average <= 1e-6, "weight averages {average:e} apart");
}
