#!/usr/bin/env bash
# Runs ekn's test suite, the example plugin's tests and the documentation build (warnings = errors).
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
python3 -m pytest "$@"
(cd plugin_template && python3 -m pytest -q)
python3 -m sphinx -q -W --keep-going -b html docs docs/_build/html
echo "docs built in docs/_build/html"
