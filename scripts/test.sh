#!/usr/bin/env bash
# The test command: installs what is missing, then lints and runs the whole test suite.
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/test_x.py # pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
VENV="${GLUS_VENV:-.venv}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -q "$@"
