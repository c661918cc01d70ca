# Source this file (`. deploy/libtorch/env.sh`) before a cargo command with `--features libtorch`.
#
# It makes sure PyTorch 2.9.0, the libtorch that burn-tch 0.21 (tch 0.22) is built for, is
# installed in a virtual environment, installing it on first use, and points torch-sys's build at
# it (LIBTORCH_USE_PYTORCH=1, that venv's python first on PATH), so nothing is downloaded at build
# time. The binaries find libtorch at run time through their rpath; the venv must stay where it is.
#
# The venv: $INCEPT_TORCH_VENV, default ~/.cache/incept/torch-2.9.0 (outside the checkout, so
# every clone shares one 6.7 GB install; PyPI's Linux wheel is the CUDA build, which also runs on
# machines without a GPU). pip's own cache is kept, so a second venv installs without downloading.

INCEPT_TORCH_VERSION=2.9.0
INCEPT_TORCH_VENV="${INCEPT_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/incept/torch-$INCEPT_TORCH_VERSION}"

incept_torch_installed() {
  "$INCEPT_TORCH_VENV/bin/python" - "$INCEPT_TORCH_VERSION" 2>/dev/null <<'PY'
import sys
import torch
sys.exit(torch.__version__.split("+")[0] != sys.argv[1])
PY
}

if ! incept_torch_installed; then
  echo "== installing PyTorch $INCEPT_TORCH_VERSION into $INCEPT_TORCH_VENV (about 6.7 GB, a few minutes)" >&2
  python3 -m venv "$INCEPT_TORCH_VENV" &&
    "$INCEPT_TORCH_VENV/bin/pip" install --quiet "torch==$INCEPT_TORCH_VERSION" &&
    incept_torch_installed || {
      echo "error: could not install torch==$INCEPT_TORCH_VERSION into $INCEPT_TORCH_VENV" >&2
      return 1 2>/dev/null || exit 1
    }
fi

export VIRTUAL_ENV="$INCEPT_TORCH_VENV"
export PATH="$INCEPT_TORCH_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
