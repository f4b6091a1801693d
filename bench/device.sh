#!/usr/bin/env bash
# The GPU figures of issue 6, run on the device machine from the repository root once the CUDA
# build of onnxruntime is unpacked under /tmp/ortgpu and the extra wheels under /tmp/site (see
# ../shared/device/README.md). Each section has its own time limit and writes into $OUT as it
# goes, so a section cut short loses only itself:
#   1. python -m bench.gpu: the engine matrix (fp32/fp16 x plain/IOBinding/CUDA graph) beside
#      PyTorch fp16 eager and CUDA graph of the same architecture, agreement and batch invariance;
#   2. python -m bench: the whole suite (engine curve, overhead, service efficiency, latency
#      under load, gateway) with the worker on CUDA;
#   3. the shared anchor benchmark (.gpu/anchor_bench.py, copied from ../shared/device), so the
#      figures compare with the anchor's on the same card.
set -u
OUT=${OUT:-var/device}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/ortgpu:/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
section() {
  local limit=$1; shift
  echo "=== $(date -u +%T) $* (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $(date -u +%T) exit $rc"
}
section "${GPU_ENGINE_SECONDS:-150}" python3 -m bench.gpu ${GPU_ARGS:-} --out "$OUT"
section "${BENCH_SECONDS:-300}" python3 -m bench ${BENCH_ARGS:-} --out "$OUT/BENCHMARKS-gpu.md" --plots "$OUT/plots"
if [ -f .gpu/anchor_bench.py ]; then
  section "${ANCHOR_SECONDS:-150}" python3 .gpu/anchor_bench.py ${ANCHOR_MODELS:-small}
fi
