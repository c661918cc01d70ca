//! Checkpoints resume exactly: a replica stopped after step s, written to disk and restored in a
//! fresh replica, continues with the same losses and parameters as an uninterrupted one.

mod support;

use incept_common::train::checkpoint;
use support::{RNG, experiment, replica};

#[test]
fn resumed_replica_matches_uninterrupted_bit_for_bit() {
    let _rng = RNG.lock().unwrap();
    let exp = experiment();
    let mut straight = replica(&exp);
    let losses: Vec<f64> = (0..6).map(|s| straight.step(s).unwrap().loss).collect();

    let mut first = replica(&exp);
    for s in 0..3 {
        assert_eq!(first.step(s).unwrap().loss, losses[s as usize]);
    }
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint::write(root.path(), &first.state(3), &exp.to_toml()).unwrap();
    let evaluated_before = first.evaluate().unwrap();
    drop(first);

    // A replica initialised differently proves the restore replaces every weight.
    let mut other_init = exp.clone();
    other_init.run.seed += 1;
    let mut resumed = replica(&other_init);
    resumed.restore(checkpoint::read(&dir).unwrap()).unwrap();
    // Data order and dropout follow the run's seed, so the run continues with its own.
    let mut resumed_same = replica(&exp);
    assert_ne!(resumed.params(), resumed_same.params());
    resumed_same
        .restore(checkpoint::read(&dir).unwrap())
        .unwrap();
    assert_eq!(resumed.params(), resumed_same.params());
    // What `coordinator eval` does: a restored replica evaluates as the one that wrote it (on
    // the same data: the synthetic images follow the run's seed).
    assert_eq!(resumed_same.evaluate().unwrap(), evaluated_before);

    for s in 3..6 {
        assert_eq!(
            resumed_same.step(s).unwrap().loss,
            losses[s as usize],
            "step {}",
            s + 1
        );
    }
    assert_eq!(resumed_same.params(), straight.params());
    assert_eq!(resumed_same.state(6), straight.state(6));
    assert_eq!(
        resumed_same.evaluate().unwrap(),
        straight.evaluate().unwrap()
    );
}
