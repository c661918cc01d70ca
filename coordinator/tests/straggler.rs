//! A straggler end to end: two external workers, one sharing its CPU with two busy loops (a
//! noisy neighbour), and the coordinator's warning naming that rank. Its own test binary, so
//! no other test's processes load the CPUs it compares.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;

use support::*;

/// Busy loops pinned to one CPU, killed when dropped.
struct NoisyNeighbours(Vec<Child>);

impl Drop for NoisyNeighbours {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `command` run by `taskset -c CPU` (pinned to that CPU).
fn pinned(cpu: usize, command: &Command) -> Command {
    let mut pinned = Command::new("taskset");
    pinned
        .args(["-c", &cpu.to_string()])
        .arg(command.get_program())
        .args(command.get_args())
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    pinned
}

#[test]
fn a_worker_on_a_busy_cpu_is_named_as_the_straggler() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset").arg("--version").output();
    if cpus < 2 || taskset.is_err() {
        eprintln!("SKIPPED the straggler test: it needs 2 CPUs and taskset ({cpus} CPUs)");
        return;
    }
    let fx = Fixture::new(&TINY.replace("epochs = 2", "epochs = 1000").replace(
        "[cluster]\n",
        "[cluster]\nlauncher = \"external\"\nstraggler_factor = 1.5\nstraggler_window = 8\n",
    ));
    let launched = Launched::spawn(&fx);
    let command = launched.worker_command();
    let spin = |_| {
        let mut busy = Command::new("sh");
        busy.args(["-c", "while :; do :; done"]);
        pinned(1, &busy).spawn().unwrap()
    };
    let _neighbours = NoisyNeighbours((0..2).map(spin).collect());
    let mut workers: Vec<Child> = (0..2)
        .map(|cpu| {
            let mut worker = pinned(cpu, &command);
            worker.args(["--rank-hint", &cpu.to_string()]);
            worker.spawn().unwrap()
        })
        .collect();
    let warning = launched.wait_for_line("straggler: ");
    assert!(warning.contains("straggler: rank 1 takes"), "{warning}");
    // Printed first, then written to the run's events.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let recorded = || -> i64 {
        fx.db()
            .query_row(
                "SELECT COUNT(*) FROM events WHERE message LIKE 'straggler: rank 1 %'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    while recorded() == 0 {
        assert!(std::time::Instant::now() < deadline, "no straggler event");
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt_and_wait(launched.child, Duration::from_secs(30));
    for worker in &mut workers {
        wait_for_exit(
            worker,
            Duration::from_secs(30),
            "a worker of the stopped run",
        );
    }
}
