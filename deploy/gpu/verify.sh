#!/usr/bin/env bash
# Verifies incept on a machine with NVIDIA GPUs in one go, and prints one table.
#
#   deploy/gpu/verify.sh [BIN_DIR]
#
# BIN_DIR holds `coordinator` and `worker` built on a build machine with
#   cargo build --release --features cuda
# (default: target/release). The GPU machine needs no Rust toolchain and no CUDA toolkit:
# python3 with PyTorch's CUDA wheels provides libnccl, libnvrtc and the CUDA headers, and timm
# the baseline (pip install -r experiments/baselines/requirements.txt). Run from the repository
# root. Exits non-zero when any check fails.
#
# Checks, in order:
#   1. NCCL all-reduce (world size 1) of a flat tensor in its own GPU memory, bucket by bucket
#      (the path training takes with cluster.backend = "nccl"), every value checked;
#   2. `coordinator bench step --device cuda` for the five models at 299 px, batch 32, beside
#      PyTorch eager (timm) on the same GPU where timm has the model;
#   3. the quickstart with 2 workers on one GPU through the TCP ring;
#   4. the quickstart with 1 worker and NCCL.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN_DIR=${1:-target/release}
COORDINATOR="$BIN_DIR/coordinator"
export INCEPT_WORKER_BIN="$BIN_DIR/worker"
STEPS=${VERIFY_STEPS:-5}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for bin in "$COORDINATOR" "$INCEPT_WORKER_BIN"; do
  [ -x "$bin" ] || { echo "verify: $bin not found (build with --features cuda, copy here)" >&2; exit 2; }
done

# The CUDA pieces from PyTorch's wheels: every nvidia/*/lib on LD_LIBRARY_PATH, a libnccl.so
# link (cudarc does not try libnccl.so.2), and CUDA_PATH at the folder holding
# include/cuda_runtime.h (NVRTC includes it).
NVIDIA=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
if [ -n "$NVIDIA" ]; then
  mkdir -p "$WORK/lib"
  for lib in "$NVIDIA"/*/lib; do LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
  nccl=$(find "$NVIDIA" -name 'libnccl.so*' | head -n 1)
  [ -n "$nccl" ] && ln -sf "$nccl" "$WORK/lib/libnccl.so"
  for name in nvrtc nvrtc-builtins; do
    so=$(find "$NVIDIA" -name "lib$name.so*" | head -n 1)
    [ -n "$so" ] && [ ! -e "$(dirname "$so")/lib$name.so" ] && ln -sf "$so" "$WORK/lib/lib$name.so"
  done
  export LD_LIBRARY_PATH="$WORK/lib:$LD_LIBRARY_PATH"
  if [ -z "${CUDA_PATH:-}" ]; then
    header=$(find "$NVIDIA" -name cuda_runtime.h | head -n 1)
    [ -n "$header" ] && export CUDA_PATH=$(dirname "$(dirname "$header")")
  fi
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
echo "CUDA_PATH=${CUDA_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

ROWS=()
FAILED=0
# check NAME COMMAND…: runs COMMAND, keeps its output in $WORK, records PASS/FAIL and the last
# line it printed.
check() {
  local name=$1; shift
  local log="$WORK/$(echo "$name" | tr -c 'a-zA-Z0-9' '_').log"
  echo "== $name: $*"
  if "$@" >"$log" 2>&1; then status=PASS; else status=FAIL; FAILED=1; fi
  tail -n 12 "$log"
  ROWS+=("$(printf '%-34s %-5s %s' "$name" "$status" "$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-110)")")
}

check "nccl in-place all-reduce" "$COORDINATOR" bench nccl-inplace --len 10000000 --bucket-mib 25
for arch in bn_inception inception_v3 inception_v4 inception_resnet_v1 inception_resnet_v2; do
  compare=()
  case $arch in inception_v3|inception_v4|inception_resnet_v2)
    compare=(--compare experiments/baselines/bench_step_torch.py);;
  esac
  check "bench step $arch 299px b32" "$COORDINATOR" bench step --device cuda --arch "$arch" \
    --batch 32 --image-size 299 --steps "$STEPS" --warmup 2 "${compare[@]}"
done
QUICK=(--set train.epochs=1 --set data.train_samples=640 --set data.val_samples=128)
check "quickstart 2 workers, 1 GPU, ring" "$COORDINATOR" launch experiments/quickstart.toml \
  --state-dir "$WORK/runs" --set cluster.device=cuda --set cluster.gpus_per_node=1 "${QUICK[@]}"
check "quickstart 1 worker, NCCL" "$COORDINATOR" launch experiments/quickstart.toml \
  --state-dir "$WORK/runs" --set cluster.device=cuda --set cluster.backend=nccl \
  --set cluster.world_size=1 "${QUICK[@]}"

echo
printf '%-34s %-5s %s\n' "check" "" "last line"
for row in "${ROWS[@]}"; do echo "$row"; done
exit $FAILED
