#!/usr/bin/env bash
# Runs every benchmark script of ekn one after the other and collects their output.
#
# Usage: bench/run_all.sh [OUTPUT_DIR]          (default bench/results/<date-time>)
#        QUICK=1 bench/run_all.sh               (smoke sizes: checks that every script runs)
#
# Each script's stdout/stderr goes to OUTPUT_DIR/<script>.log, JSON results (where a script
# writes them) to OUTPUT_DIR/<script>.json, and OUTPUT_DIR/summary.md collects the reports
# with the machine and the load average before each script. Measure on a quiet machine: the
# load average should be below 0.5 (other processes share the cores).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
SUMMARY="$OUT/summary.md"
{
  echo "# ekn benchmarks $(date -Iseconds)"
  echo
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
} > "$SUMMARY"

if [ "${QUICK:-0}" = 1 ]; then
  declare -A ARGS=(
    [bench_cli_startup]="--repeat 2"
    [bench_train_step]="--nets unet3d --rounds 1 --steps 1 --frameworks ekn keras_train_on_batch"
    [bench_compile_modes]="--nets unet3d --modes plain eager --steps 1 --cache $OUT/compile_modes_cache.json"
    [bench_conv_replacements]="--small --repeat 2"
    [bench_conv_layers]="--small --repeat 1"
    [bench_augment]="--seconds 0.5"
    [bench_knossos]="--patches 5 --shape 64,256,256 --patch 16,64,64"
    [bench_kdtree]=""
    [bench_predict]="--parts speed --shape 16,128,128"
    [bench_segment]="--shape 16,128,128"
  )
else
  declare -A ARGS=(
    [bench_train_step]="--json $OUT/bench_train_step.json"
    [bench_compile_modes]="--cache $OUT/compile_modes_cache.json"
    [bench_predict]="--json $OUT/bench_predict.json"
  )
fi

status=0
for script in bench/bench_*.py; do
  name="$(basename "$script" .py)"
  echo "== $name (load $(cut -d' ' -f1 /proc/loadavg))" | tee -a "$SUMMARY"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if python "$script" ${ARGS[$name]:-} > "$OUT/$name.log" 2>&1; then
    result=ok
  else
    result="FAILED (exit $?)"; status=1
  fi
  { echo; grep -v '^\(W0000\|I0000\|E0000\|WARNING: All log\)' "$OUT/$name.log" | tail -n 60; echo;
    echo "($name: $result, $(( $(date +%s) - start )) s)"; echo; } >> "$SUMMARY"
  echo "   $result, $(( $(date +%s) - start )) s"
done
echo "summary: $SUMMARY"
exit $status
