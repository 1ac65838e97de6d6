#!/usr/bin/env bash
# One prepared GPU check (at most ~8 minutes): GPU TensorFlow, the compilation tests, XLA vs plain
# training-step times and dense-prediction voxels/s of the benchmark nets, naming the card.
#
# Usage (on a GPU machine, from the repository root):
#   bench/gpu_check.sh [OUTPUT_DIR]        (default $OUT if set, else bench/results/gpu)
#   WHEELS=/path/to/wheels bench/gpu_check.sh   (offline: install GPU TensorFlow from local wheels)
#
# Writes OUTPUT_DIR/gpu_check.md (paste into docs/performance.md) and the raw logs.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
export TF_CPP_MIN_LOG_LEVEL=2
deadline=$(( $(date +%s) + 470 ))
left() { echo $(( deadline - $(date +%s) )); }

gpu_count() { timeout 120 python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null | tail -1; }

echo "# GPU check $(date -Iseconds)" > "$REPORT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$REPORT" 2>&1 || echo "nvidia-smi: not available" >> "$REPORT"

# 1. GPU TensorFlow (the CPU wheel sees no GPU): install the CUDA extra, from local wheels if given.
if [ "$(gpu_count)" != "" ] && [ "$(gpu_count)" -ge 1 ] 2>/dev/null; then
  echo "TensorFlow sees the GPU already" >> "$REPORT"
else
  TFV="$(python -c 'import importlib.metadata as m; print(m.version("tensorflow"))' 2>/dev/null || echo 2.21.0)"
  if [ -n "${WHEELS:-}" ]; then
    timeout 240 pip install -q --no-index --find-links "$WHEELS" "tensorflow[and-cuda]==$TFV" > "$OUT_DIR/pip.log" 2>&1
  else
    timeout 240 pip install -q "tensorflow[and-cuda]==$TFV" > "$OUT_DIR/pip.log" 2>&1
  fi
  echo "pip install tensorflow[and-cuda]==$TFV: exit $? (log: pip.log)" >> "$REPORT"
fi
N_GPU="$(gpu_count)"
echo "GPUs seen by TensorFlow: ${N_GPU:-0}" >> "$REPORT"
if [ "${N_GPU:-0}" = 0 ]; then
  echo "no GPU visible to TensorFlow: stopping (see pip.log)" | tee -a "$REPORT"
  exit 1
fi

# 2. Tests that exercise compilation (plain/XLA compile modes, mixed precision, traces).
timeout $(( $(left) / 3 )) python -m pytest -q -x -p no:cacheprovider tests/test_perf_precision.py \
  tests/test_node_model.py > "$OUT_DIR/pytest.log" 2>&1
echo "compilation tests: exit $? ($(tail -n 1 "$OUT_DIR/pytest.log"))" >> "$REPORT"

# 3. XLA vs plain training steps (float32 and mixed_bfloat16), then dense prediction voxels/s.
for precision in float32 mixed_bfloat16; do
  [ "$(left)" -gt 90 ] || break
  echo; echo "## training step, $precision" >> "$REPORT"
  timeout $(( $(left) - 60 )) python bench/bench_compile_modes.py --nets neuro3d_lite neuro3d unet3d \
    --modes plain xla --steps 5 --force --precision "$precision" --cache "$OUT_DIR/compile_modes.json" \
    2>"$OUT_DIR/compile_modes_$precision.err" | tee -a "$REPORT"
done
[ "$(left)" -gt 30 ] && timeout $(( $(left) - 5 )) python - >> "$REPORT" 2>"$OUT_DIR/predict.err" <<'PY'
import os, sys, time
import numpy as np
sys.path.insert(0, "bench")
import common
from ekn_core.node import set_compile_mode
print("\n## dense prediction (predict_dense, mirror-padded 64x256x256 volume), voxels/s")
print("| net | mode | voxels/s |\n|---|---|---:|")
raw = np.random.default_rng(0).random((64, 256, 256), dtype="float32")
for name in ("neuro3d", "unet3d"):
    model = common.build_ekn(common.NETS[name]).model
    for mode in ("plain", "xla"):
        set_compile_mode(mode)
        model.predict_dense(raw, pad_raw=True)  # compiles every tile shape
        t0 = time.perf_counter()
        out = model.predict_dense(raw, pad_raw=True)
        dt = time.perf_counter() - t0
        print(f"| {name} | {mode} | {np.prod(out.shape[1:]) / dt:.3g} |", flush=True)
PY
echo "report: $REPORT"
