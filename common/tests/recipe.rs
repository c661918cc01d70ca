//! The training recipe inside a replica step: non-finite steps, the auxiliary loss.

mod support;

use incept_common::config::OptimizerKind;
use support::{RNG, experiment, replica};

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let _rng = RNG.lock().unwrap();
    let mut exp = experiment();
    exp.train.optimizer.kind = OptimizerKind::Sgd;
    exp.train.optimizer.learning_rate = 1e30;
    exp.train.clip_global_norm = 0.0;
    exp.train.max_nonfinite_steps = 2;
    exp.train.max_steps = Some(10);
    let mut replica = replica(&exp);
    // Step 1 is finite but its update makes the weights explode.
    assert!(!replica.step(0).unwrap().skipped);
    let before = replica.params().to_vec();
    let second = replica.step(1).unwrap();
    assert!(second.skipped, "{second:?}");
    assert_eq!(
        replica.params(),
        &before[..],
        "a skipped step leaves the weights alone"
    );
    let err = replica.step(2).unwrap_err().to_string();
    assert!(
        err.contains("2 consecutive steps") && err.contains("step 3"),
        "{err}"
    );
}

#[test]
fn aux_head_adds_its_weighted_loss() {
    let _rng = RNG.lock().unwrap();
    let mut exp = experiment();
    exp.model.image_size = 107;
    exp.model.aux_head = true;
    exp.model.dropout = 0.0;
    let first_loss = |weight: f64| {
        let mut exp = exp.clone();
        exp.train.aux_loss_weight = weight;
        replica(&exp).step(0).unwrap().loss
    };
    let (main_only, with_aux) = (first_loss(0.0), first_loss(0.4));
    // Same weights and data: the difference is 0.4 × the aux head's cross-entropy (> 0.5 for an
    // untrained 4-class head).
    assert!(with_aux - main_only > 0.2, "{main_only} vs {with_aux}");
}
