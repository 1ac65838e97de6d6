#!/usr/bin/env bash
# Runs ekn's test suite, the example plugin's tests and the documentation build (warnings = errors).
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
# The example plugin takes part in the tests (ekn's and its own) from a temporary folder on PYTHONPATH,
# so that it is never installed into the environment (where every `ekn` call would list and load it).
plugin_site="$(mktemp -d)"
trap 'rm -rf "$plugin_site"' EXIT
python3 -m pip install -q --no-deps --no-build-isolation --target "$plugin_site" ./plugin_template
export PYTHONPATH="$plugin_site${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pytest "$@"
(cd plugin_template && python3 -m pytest -q)
python3 -m sphinx -q -W --keep-going -b html docs docs/_build/html
echo "docs built in docs/_build/html"
