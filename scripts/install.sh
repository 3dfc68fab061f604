#!/usr/bin/env bash
# Install everything the project needs into a virtualenv (default .venv). Idempotent: a stamp of the
# requirement files' hash skips the work when nothing changed.
#
#   scripts/install.sh            # CPU: torch 2.13.0 CPU wheel, transformers, sam2 (no deps), no torchvision
#   scripts/install.sh --dev      # + test tools (pytest, hypothesis, ruff)
#   scripts/install.sh --gpu      # CUDA host: same, plus the torchvision built for that torch; sam2's CUDA op
#
# The Docker images run this same script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GLUS_VENV:-.venv}"
DEV=0
GPU=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --gpu) GPU=1 ;;
    --venv=*) VENV="${arg#--venv=}" ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
stamp_src="$(cat requirements.txt requirements-sam2.txt requirements-dev.txt pyproject.toml scripts/install.sh) dev=$DEV gpu=$GPU"
stamp="$VENV/.glus-installed-$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "install: $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --no-compile --disable-pip-version-check -q)
quiet() { grep -v "^WARNING: Location" || true; }
echo "install: runtime requirements into $VENV"
"${PIP[@]}" -r requirements.txt 2>&1 | quiet
if [ "$GPU" = 1 ]; then
  # The torchvision paired with torch 2.13 (CUDA builds only; never on a CPU machine: it breaks transformers).
  "${PIP[@]}" "torchvision==0.28.0" 2>&1 | quiet
  SAM2_BUILD_CUDA=1 "${PIP[@]}" --no-deps --no-build-isolation --no-cache-dir -r requirements-sam2.txt 2>&1 | quiet
else
  SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-deps --no-build-isolation -r requirements-sam2.txt 2>&1 | quiet
fi
if [ "$DEV" = 1 ]; then
  "${PIP[@]}" -r requirements-dev.txt 2>&1 | quiet
fi
"${PIP[@]}" --no-deps --no-build-isolation -e . 2>&1 | quiet
if [ "$GPU" = 0 ]; then
  # torchvision must be absent on CPU: the only torchvision for torch 2.13 is a CUDA build.
  "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is not None)" \
    || { echo "install: torchvision is installed on a CPU machine; remove it (it breaks transformers)" >&2; exit 1; }
fi
"$VENV/bin/python" -c "import torch, transformers, sam2.build_sam, model" >/dev/null
rm -f "$VENV"/.glus-installed-*
touch "$stamp"
echo "install: done ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
