//! Records the commit the coordinator is built from in `INCEPT_COMMIT` ("unknown" outside a
//! git checkout), so that every run stores the code version that produced it; with the
//! `libtorch` feature, writes libtorch's folder into the binary's rpath.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    // Set by incept-common's build script when it was built with the `libtorch` feature.
    if let Ok(folder) = std::env::var("DEP_INCEPT_COMMON_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{folder}");
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=INCEPT_COMMIT={commit}");
    // Built again when HEAD moves: a commit, a checkout, a new branch tip.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
