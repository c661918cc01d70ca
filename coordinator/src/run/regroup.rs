//! A group that re-forms smaller: the experiment its generation trains, changed as little as
//! the arithmetic allows.

use incept_common::config::Experiment;

/// The experiment `workers` of `exp`'s world go on with, and what changed, in words for the
/// run's events. The global batch is kept through `train.accumulate` when the numbers divide;
/// else it shrinks and the learning rate follows the linear scaling rule (done by the schedule
/// itself when `train.schedule.reference_batch` is set). The run's length in steps is kept
/// either way, so the step numbers already recorded stay the run's.
pub(super) fn shrink(exp: &Experiment, workers: usize) -> (Experiment, String) {
    let mut smaller = exp.clone();
    smaller.cluster.world_size = workers;
    let replicas = exp.cluster.world_size * exp.train.accumulate;
    if replicas.is_multiple_of(workers) {
        smaller.train.accumulate = replicas / workers;
        let change = format!(
            "train.accumulate {} -> {} keeps the global batch of {} images",
            exp.train.accumulate,
            smaller.train.accumulate,
            exp.global_batch()
        );
        return (smaller, change);
    }
    smaller.train.max_steps = Some(exp.total_steps());
    let ratio = smaller.global_batch() as f64 / exp.global_batch() as f64;
    let rate = if exp.train.schedule.reference_batch.is_some() {
        "the learning rate follows it (train.schedule.reference_batch)".to_string()
    } else {
        smaller.train.optimizer.learning_rate *= ratio;
        format!(
            "train.optimizer.learning_rate {} -> {} by the linear scaling rule",
            exp.train.optimizer.learning_rate, smaller.train.optimizer.learning_rate
        )
    };
    let change = format!(
        "the global batch shrinks from {} to {} images (the {replicas} batches of a step do \
         not divide among {workers} workers); {rate}; the run keeps its {} steps",
        exp.global_batch(),
        smaller.global_batch(),
        exp.total_steps()
    );
    (smaller, change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(world_size: usize, accumulate: usize) -> Experiment {
        let mut exp = Experiment::default();
        exp.cluster.world_size = world_size;
        exp.train.accumulate = accumulate;
        exp.train.batch_size = 32;
        exp.data.train_samples = 100_000;
        exp.train.optimizer.learning_rate = 0.045;
        exp
    }

    #[test]
    fn accumulation_keeps_the_global_batch_when_the_numbers_divide() {
        let exp = experiment(3, 2);
        let (smaller, change) = shrink(&exp, 2);
        assert_eq!(
            (smaller.cluster.world_size, smaller.train.accumulate),
            (2, 3)
        );
        assert_eq!(smaller.global_batch(), exp.global_batch());
        assert_eq!(smaller.total_steps(), exp.total_steps());
        assert_eq!(smaller.train.optimizer.learning_rate, 0.045);
        assert!(change.contains("train.accumulate 2 -> 3"), "{change}");
    }

    #[test]
    fn otherwise_the_learning_rate_scales_with_the_global_batch_and_the_length_stays() {
        let exp = experiment(20, 1);
        let (smaller, change) = shrink(&exp, 19);
        assert_eq!(smaller.global_batch(), 19 * 32);
        assert!((smaller.train.optimizer.learning_rate - 0.045 * 19.0 / 20.0).abs() < 1e-12);
        assert_eq!(smaller.total_steps(), exp.total_steps());
        assert!(change.contains("linear scaling rule"), "{change}");

        let mut scaled = exp.clone();
        scaled.train.schedule.reference_batch = Some(640);
        let (smaller, change) = shrink(&scaled, 19);
        assert_eq!(smaller.train.optimizer.learning_rate, 0.045);
        assert!(change.contains("reference_batch"), "{change}");
        assert!(smaller.validate().is_ok());
    }
}
