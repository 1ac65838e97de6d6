#!/usr/bin/env bash
# One prepared GPU check (about 8 minutes): GPU TensorFlow, the tests that exercise compilation
# (and the trainer's device prefetch), XLA vs plain training-step times in three precisions,
# dense-prediction voxels/s, the batch copy, and ekn vs Keras 3 vs PyTorch on the GPU, naming the card. Sections run in this order and each is skipped
# when too little of the time budget is left, so the report always comes back.
#
# Usage (on a GPU machine, from the repository root):
#   bench/gpu_check.sh [OUTPUT_DIR]               (default $OUT if set, else bench/results/gpu)
#   WHEELS=/path/to/wheels bench/gpu_check.sh     (offline: install GPU TensorFlow from local wheels)
#   BUDGET_S=470 PYTHON=python3 bench/gpu_check.sh
#
# Writes OUTPUT_DIR/gpu_check.md (paste into docs/performance.md) and the raw logs beside it.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/results/gpu}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
export TF_CPP_MIN_LOG_LEVEL=2 TF_FORCE_GPU_ALLOW_GROWTH=true PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + ${BUDGET_S:-470} ))
left() { echo $(( deadline - $(date +%s) )); }
say() { echo "$@" | tee -a "$REPORT"; }
section() { [ "$(left)" -gt "$1" ] || { say "(skipped: $2, ${1}s needed, $(left)s left)"; return 1; }; }
gpu_count() { timeout 180 "$PY" -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>>"$OUT_DIR/tf_init.log" | tail -1; }

echo "# GPU check $(date -Iseconds)" > "$REPORT"
say "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"

# 1. GPU TensorFlow (the CPU wheel sees no GPU): install the CUDA extra, from local wheels if given.
N_GPU="$(gpu_count)"
if [ "${N_GPU:-0}" -ge 1 ] 2>/dev/null; then
  say "TensorFlow $("$PY" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null) sees $N_GPU GPU(s)"
else
  TFV="$("$PY" -c 'import importlib.metadata as m; print(m.version("tensorflow"))' 2>/dev/null || echo 2.21.0)"
  if [ -n "${WHEELS:-}" ]; then
    timeout 240 "$PY" -m pip install -q --no-index --find-links "$WHEELS" "tensorflow[and-cuda]==$TFV" > "$OUT_DIR/pip.log" 2>&1
  else
    timeout 240 "$PY" -m pip install -q "tensorflow[and-cuda]==$TFV" > "$OUT_DIR/pip.log" 2>&1
  fi
  say "pip install tensorflow[and-cuda]==$TFV: exit $? (log: pip.log)"
  N_GPU="$(gpu_count)"
fi
if [ "${N_GPU:-0}" = 0 ] || [ -z "${N_GPU:-}" ]; then
  say "no GPU visible to TensorFlow: stopping (see tf_init.log, pip.log)"
  exit 1
fi
say "versions: $("$PY" -c 'import sys, importlib.metadata as m
print(sys.version.split()[0], *(f"{d} {m.version(d)}" for d in ("tensorflow", "keras", "torch", "numpy")))' 2>&1 | tail -1)"

# 2. The tests that exercise compilation, on the GPU (XLA is the GPU default), TF32 off so that
#    the float32 tolerances of the numpy references hold.
section 150 "tests" && {
  tests=$(ls tests/test_perf_precision.py tests/test_node_model.py tests/test_compile_choice.py \
    tests/test_layers_reference.py tests/test_prediction_dense.py tests/test_trainer_prefetch.py 2>/dev/null)
  NVIDIA_TF32_OVERRIDE=0 timeout 120 "$PY" -m pytest -q -p no:cacheprovider -n 8 $tests > "$OUT_DIR/pytest.log" 2>&1
  rc=$?; say ""; say "compilation tests on the GPU: exit $rc ($(tail -n 1 "$OUT_DIR/pytest.log"))"
}
# 3. Training steps: plain vs XLA in float32 (TF32 convolutions, TensorFlow's default on GPUs),
#    mixed_bfloat16 and mixed_float16.
compile_modes() {
  say ""; say "## training step, $1 (ms; first step = trace + compile + first run)"
  timeout $(( $(left) - 20 )) "$PY" bench/bench_compile_modes.py --nets neuro3d_lite neuro3d unet3d \
    --devices GPU:0 --modes plain xla --steps 5 --force --precision "$1" --cache "$OUT_DIR/compile_modes.json" \
    2>"$OUT_DIR/compile_modes_$1.err" | tee -a "$REPORT"
}
for precision in float32 mixed_bfloat16 mixed_float16; do
  section 90 "$precision compile modes" && compile_modes "$precision"
done

# 4. Dense prediction voxels/s in both modes.
section 60 "dense prediction" && timeout $(( $(left) - 10 )) "$PY" - >> "$REPORT" 2>"$OUT_DIR/predict.err" <<'PY'
import sys, time
import numpy as np
sys.path.insert(0, "bench")
import common
from ekn_core.node import set_compile_mode
print("\n## dense prediction (predict_dense, mirror-padded 64x256x256 volume, float32), voxels/s")
print("| net | mode | first call s | voxels/s |\n|---|---|---:|---:|")
raw = np.random.default_rng(0).random((64, 256, 256), dtype="float32")
for name in ("neuro3d", "unet3d"):
    model = common.build_ekn(common.NETS[name]).model
    for mode in ("plain", "xla"):
        set_compile_mode(mode)
        t0 = time.perf_counter()
        model.predict_dense(raw, pad_raw=True)  # compiles every tile shape
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.predict_dense(raw, pad_raw=True)
        print(f"| {name} | {mode} | {first:.1f} | {np.prod(out.shape[1:]) / (time.perf_counter() - t0):.3g} |",
              flush=True)
# what prefetching batches to the device could save per training step: the host-to-device copy
import tensorflow as tf
print("\n## host-to-device copy of one training batch (float32 input + int16 labels), ms")
print("| net | batch MB | copy ms (median of 20) |\n|---|---:|---:|")
for name in ("neuro3d_lite", "neuro3d", "unet3d"):
    x, y = common.batch_arrays(common.NETS[name])
    with tf.device("/GPU:0"):
        tf.identity(tf.convert_to_tensor(x)).numpy()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            tx, ty = tf.identity(tf.convert_to_tensor(x)), tf.identity(tf.convert_to_tensor(y))
            tf.reduce_sum(tf.cast(ty, tf.float32) + tf.reduce_sum(tx)).numpy()
            times.append(time.perf_counter() - t0)
    print(f"| {name} | {(x.nbytes + y.nbytes) / 1e6:.1f} | {1e3 * np.median(times):.2f} |", flush=True)
PY
tail -n 8 "$REPORT"

# 5. ekn vs Keras 3 vs PyTorch, same nets, same GPU, one interleaved run.
section 100 "framework comparison" && {
  say ""; say "## ekn vs Keras 3 vs PyTorch on this GPU (float32)"
  timeout $(( $(left) - 10 )) "$PY" bench/bench_train_step.py --rounds 2 --steps 5 \
    --json "$OUT_DIR/train_step.json" 2>"$OUT_DIR/train_step.err" | tee -a "$REPORT"
}

say "report: $REPORT ($(( ${BUDGET_S:-470} - $(left) )) s)"
