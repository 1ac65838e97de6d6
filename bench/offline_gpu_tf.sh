#!/usr/bin/env bash
# GPU TensorFlow for an offline GPU machine whose image has CUDA 13 but no TensorFlow (how the H200
# numbers in docs/performance.md were taken). Two halves:
#
#   bench/offline_gpu_tf.sh pack DIR [PART_MiB]   (here, with pip access) writes into DIR:
#       parts/part.N   TensorFlow's cp312 wheel, .so files stripped, C++ headers dropped, xz -9,
#                      split into PART_MiB pieces (default 58) so each fits a size-limited transfer
#       wheels/        the pure-Python and small binary wheels TensorFlow, Keras and ekn need there
#       cuda/          CUDA 12's runtime wheel (libcudart.so.12, 0.7 MB)
#       SHA256SUMS
#   bench/offline_gpu_tf.sh install DIR [PARTS_DIR...]   (there; no unzip needed) checks the parts, unpacks
#       TensorFlow and the wheels into /tmp/site, exposes the image's CUDA 13 libraries under the
#       CUDA 12 names TensorFlow loads, and prints the environment to use:
#           eval "$(bench/offline_gpu_tf.sh install DIR)"; bench/gpu_check.sh
#       ekn itself is the repository (the current directory, put on PYTHONPATH); its entry points
#       come from the ekn.egg-info folder that `pip install -e .` leaves there, so carry that too.
#
# Offering CUDA 13 libraries under CUDA 12 names is not a supported combination: TensorFlow 2.21
# found the GPU and XLA compiled through it on an H200 (2026-11-27), which makes it a first reading.
set -euo pipefail
TF_VERSION="${TF_VERSION:-2.21.0}"
PYPI=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
SMALL="keras namex optree astunparse gast google-pasta termcolor flatbuffers protobuf stevedore colorlog
       prompt_toolkit wcwidth pydot jedi parso absl-py ml_dtypes wrapt"

pack() {
  local dir part_mib=${2:-58} work
  dir=$(realpath -m "$1")  # the parts are written from a temporary folder
  work=$(mktemp -d)
  mkdir -p "$dir/parts" "$dir/wheels" "$dir/cuda"
  python3 -m pip download -q "${PYPI[@]}" -d "$work" "tensorflow==$TF_VERSION"
  (cd "$work" && unzip -q tensorflow-*.whl && rm -rf tensorflow/include tensorflow-*.whl \
    && find . -name '*.so*' -type f -exec strip --strip-unneeded {} + \
    && tar -cf - tensorflow tensorflow-*.dist-info | xz -T0 -9 | split -b "${part_mib}M" -d -a 2 - "$dir/parts/part.")
  for p in $SMALL; do python3 -m pip download -q "${PYPI[@]}" -d "$dir/wheels" "$p"; done
  python3 -m pip download -q "${PYPI[@]}" -d "$dir/cuda" "nvidia-cuda-runtime-cu12==12.5.82"
  (cd "$dir/parts" && sha256sum part.* > ../SHA256SUMS)
  rm -rf "$work"
  du -sh "$dir"/* >&2
}

install() {
  local dir; dir=$(realpath "$1"); shift
  local site=/tmp/site libs=/tmp/cuda12 parts=/tmp/ekn_tf_parts dirs="" want have
  mkdir -p "$site" "$libs" "$parts"
  for p in "$dir/parts" "$@"; do cp "$p"/part.* "$parts"/ 2>/dev/null || true; done
  (cd "$parts" && sha256sum -c --quiet "$(realpath "$dir")/SHA256SUMS") >&2
  if [ ! -f "$site/tensorflow/__init__.py" ]; then cat "$parts"/part.* | xz -d -T0 | tar -x -C "$site"; fi
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$dir"/wheels/*.whl >&2
  python3 - "$libs" "$dir"/cuda/*.whl <<'PY'  # the libraries of CUDA's runtime wheel (no unzip needed)
import os, sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("nvidia/cuda_runtime/lib/") and not name.endswith("/"):
                with open(os.path.join(sys.argv[1], os.path.basename(name)), "wb") as out:
                    out.write(z.read(name))
PY
  for pair in libcublas.so.12:libcublas.so.13 libcublasLt.so.12:libcublasLt.so.13 libcufft.so.11:libcufft.so.12 \
              libcusolver.so.11:libcusolver.so.12 libcupti.so.12:libcupti.so.13 libcusparse.so.12:libcusparse.so.12 \
              libcudnn.so.9:libcudnn.so.9 libnvJitLink.so.13:libnvJitLink.so.13; do
    want=${pair%%:*}
    have=$(find /opt /usr/local /usr/lib -name "${pair##*:}" 2>/dev/null | grep -v "^$libs" | head -1 || true)
    echo "# $want -> ${have:-NOT FOUND}" >&2
    [ -n "$have" ] || continue
    dirs="$dirs:$(dirname "$have")"
    [ "$want" = "${pair##*:}" ] || ln -sf "$have" "$libs/$want"
  done
  local cuda_root
  cuda_root=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
  echo "export LD_LIBRARY_PATH=$libs$dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  echo "export PATH=$cuda_root/bin:\$PATH XLA_FLAGS=--xla_gpu_cuda_data_dir=$cuda_root"
  echo "export PYTHONPATH=$site:$(pwd)\${PYTHONPATH:+:\$PYTHONPATH} TF_FORCE_GPU_ALLOW_GROWTH=true"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  install) shift; install "$@" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
