#!/usr/bin/env bash
# Installs ekn with its development tools, graphviz for model pictures, and the example plugin.
# Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "graphviz not installed: model pictures fall back to .dot files"
fi
python3 -m pip install -q --upgrade pip "setuptools>=77"
python3 -m pip install -q -e ".[dev]"
python3 -m pip install -q --no-build-isolation -e plugin_template
