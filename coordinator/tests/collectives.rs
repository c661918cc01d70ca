//! Collectives across real processes: `coordinator bench allreduce --check` verifies every
//! operation for 2 to 5 rank processes, and a rank that dies or stalls makes every other rank
//! fail within its deadline instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_coordinator");

#[test]
fn every_operation_is_correct_across_two_to_five_processes() {
    // Value counts 1, 7, 1001, 65539 and 262145 (more than one pipelined segment per chunk).
    let sizes = "4,28,4004,262156,1048580";
    for workers in 2..=5 {
        let output = Command::new(COORDINATOR)
            .args(["bench", "allreduce", "--check", "--timeout-s", "30"])
            .args(["--workers", &workers.to_string(), "--sizes", sizes])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{workers} ranks: {stdout}\n{stderr}"
        );
        let ok = stdout.lines().filter(|l| l.contains(" ok: ")).count();
        assert_eq!(ok, 5, "{workers} ranks, every size checked: {stdout}");
    }
}

/// Rank processes of `bench allreduce-rank` started by hand, so a test can kill or stop one.
struct Ranks {
    children: Vec<Child>,
}

impl Ranks {
    /// Starts `world` ranks all-reducing `bytes` for a long time with deadline `timeout`, and
    /// returns once every rank says its ring is connected.
    fn start(world: usize, bytes: &str, timeout: Duration) -> Ranks {
        let mut children: Vec<Child> = (0..world)
            .map(|rank| {
                Command::new(COORDINATOR)
                    .args(["bench", "allreduce-rank", "--iters", "100000"])
                    .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
                    .args([
                        "--sizes",
                        bytes,
                        "--timeout-s",
                        &timeout.as_secs().to_string(),
                    ])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let peers: Vec<String> = children
            .iter_mut()
            .map(|child| {
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                line.trim().strip_prefix("listening ").unwrap().to_owned()
            })
            .collect();
        for child in &mut children {
            let stdin = child.stdin.as_mut().unwrap();
            writeln!(stdin, "peers {}", peers.join(",")).unwrap();
        }
        for (rank, child) in children.iter_mut().enumerate() {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "connected", "rank {rank} did not connect");
        }
        Ranks { children }
    }

    /// Waits until every rank but `except` has exited, at most `limit`; returns each one's
    /// exit success, time since `since`, and stderr.
    fn wait_others(&mut self, except: usize, since: Instant, limit: Duration) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (rank, child) in self.children.iter_mut().enumerate() {
            if rank == except {
                continue;
            }
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    since.elapsed() < limit,
                    "rank {rank} still running: it hangs"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            let elapsed = since.elapsed();
            eprintln!("rank {rank} ended ({status}) {elapsed:?} after the fault");
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            outcomes.push(Outcome {
                rank,
                success: status.success(),
                elapsed,
                stderr,
            });
        }
        outcomes
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Outcome {
    rank: usize,
    success: bool,
    elapsed: Duration,
    stderr: String,
}

#[test]
fn killing_a_rank_makes_every_other_fail_within_its_deadline() {
    let timeout = Duration::from_secs(5);
    let mut ranks = Ranks::start(4, "4MiB", timeout);
    ranks.children[2].kill().unwrap();
    let killed = Instant::now();
    for outcome in ranks.wait_others(2, killed, timeout * 3) {
        let Outcome {
            rank,
            success,
            elapsed,
            stderr,
        } = outcome;
        assert!(!success, "rank {rank} succeeded without its peer");
        assert!(
            elapsed < timeout + Duration::from_secs(2),
            "rank {rank} took {elapsed:?}"
        );
        assert!(
            stderr.contains("all-reduce of 4194304 bytes"),
            "rank {rank}: {stderr}"
        );
    }
}

#[test]
fn a_stalled_rank_times_the_others_out() {
    let timeout = Duration::from_secs(3);
    let mut ranks = Ranks::start(3, "1MiB", timeout);
    let stalled = ranks.children[1].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &stalled])
            .status()
            .unwrap()
            .success()
    );
    let stopped = Instant::now();
    let outcomes = ranks.wait_others(1, stopped, timeout * 4);
    for Outcome {
        rank,
        success,
        elapsed,
        stderr,
    } in &outcomes
    {
        assert!(!success, "rank {rank} succeeded without its peer");
        // One operation's deadline, plus the operation under way when the peer stopped.
        assert!(
            *elapsed < timeout * 2 + Duration::from_secs(1),
            "rank {rank}: {elapsed:?}"
        );
        assert!(
            stderr.contains("all-reduce of 1048576 bytes"),
            "rank {rank}: {stderr}"
        );
    }
    // Someone noticed the stall itself rather than a neighbour's failure.
    assert!(
        outcomes.iter().any(|o| o.stderr.contains("timed out")),
        "{:?}",
        outcomes.iter().map(|o| &o.stderr).collect::<Vec<_>>()
    );
}
