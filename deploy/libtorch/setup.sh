#!/usr/bin/env bash
# Builds incept with LibTorch's kernels in one command: installs PyTorch 2.9.0 into a virtual
# environment on first use (see env.sh) and runs `cargo build --release --features libtorch`
# (extra arguments go to cargo, e.g. `--features libtorch,cuda`).
#
#   deploy/libtorch/setup.sh
#   target/release/coordinator launch experiments/quickstart.toml --set cluster.kernels=libtorch
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/libtorch/env.sh
echo "== cargo build --release --features libtorch $* (libtorch from $INCEPT_TORCH_VENV)" >&2
cargo build --release --features libtorch "$@"
