//! The worker gives up on an unreachable coordinator after bounded retries, with a clear error.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn unreachable_coordinator_fails_after_bounded_retries() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args([
            "--coordinator",
            &url,
            "--token",
            "t",
            "--connect-attempts",
            "3",
        ])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "could not reach the coordinator at {url} after 3 attempts"
        )),
        "{stderr}"
    );
}
