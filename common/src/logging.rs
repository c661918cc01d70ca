//! Log setup shared by both binaries: human-readable lines on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG` is unset.
pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
