#!/usr/bin/env bash
# Installs ekn with its development tools and graphviz for model pictures. The example plugin
# (plugin_template/) is not installed: scripts/test.sh installs it for the tests only.
# Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "graphviz not installed: model pictures fall back to .dot files"
fi
python3 -m pip install -q --upgrade pip "setuptools>=77"
python3 -m pip install -q -e ".[dev]"
