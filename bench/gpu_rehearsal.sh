#!/usr/bin/env bash
# The GPU rehearsal (bench/gpu_rehearsal.py) in one command on a bare device machine.
#
#   bash bench/gpu_rehearsal.sh wheels                  # here, with PyPI: the wheels a bare torch image lacks -> .whl/
#   bash bench/gpu_rehearsal.sh --device cuda [ARGS]    # there: install what is missing, then measure (figures -> $OUT)
#   bash bench/gpu_rehearsal.sh --device cpu [ARGS]     # the CPU dry run at tiny size (the test suite runs it)
#
# The device machine has torch, transformers, peft, opencv, sentencepiece and safetensors but nothing can be
# downloaded there. What the rehearsal imports and such an image lacks is sam2 and its pure-Python needs; each is
# installed from .whl/ only when its module is missing, and the project itself with --no-deps when `import model`
# fails outside the checkout. Nothing is installed where everything is importable (CI's virtualenv).
# With the device tool: run(command="bash bench/gpu_rehearsal.sh --device cuda", carry=[".whl"], timeout_s=480).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${GLUS_WHEELS:-.whl}"
SITE="${GLUS_SITE:-/tmp/glus-site}"
# module:distribution==version, as requirements*.txt pin them (omegaconf and antlr4 are hydra-core's)
NEEDS="sam2:sam2==1.1.0 hydra:hydra-core==1.3.8 omegaconf:omegaconf==2.3.0 antlr4:antlr4-python3-runtime==4.9.3
iopath:iopath==0.1.10 portalocker:portalocker==4.4.2"

if [ "${1:-}" = "wheels" ]; then
  # Pure-Python wheels (py3-none-any) for the device's Python 3.12: built here from the sdists where PyPI has
  # no wheel (sam2 without its optional CUDA op, antlr4, iopath), downloaded otherwise.
  mkdir -p "$WHEELS"  # .gitignore keeps /.whl/ out of git; the device tool carries it when told to
  for need in $NEEDS; do
    dist="${need#*:}"
    [ "${dist%%==*}" = sam2 ] && dist="-r requirements-sam2.txt"  # pinned by hash there
    # shellcheck disable=SC2086
    SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check \
      -w "$WHEELS" $dist 2>&1 | grep -v "^WARNING: Location" || true
  done
  ls -l "$WHEELS"
  exit 0
fi

missing=()
for need in $NEEDS; do
  module="${need%%:*}"
  "$PY" -c "import $module" 2>/dev/null || missing+=("$need")
done
if [ "${#missing[@]}" -gt 0 ]; then
  files=()
  for need in "${missing[@]}"; do
    dist="${need#*:}"; name="${dist%%==*}"; version="${dist#*==}"
    wheel=$(ls "$WHEELS"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      echo "gpu_rehearsal: ${need%%:*} is not importable here and $WHEELS/ has no wheel of $dist:" \
           "run 'bash bench/gpu_rehearsal.sh wheels' where PyPI is reachable and carry $WHEELS" >&2
      exit 3
    fi
    files+=("$wheel")
  done
  echo "gpu_rehearsal: installing ${missing[*]} into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${files[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! (cd / && "$PY" -c "import model.inference") 2>/dev/null; then
  echo "gpu_rehearsal: installing the project (--no-deps) into $SITE"
  log="$(mktemp)"
  if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
      --target "$SITE" . >"$log" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else  # the rehearsal itself imports the checkout; a packaging failure must not cost the lease's figures
    tail -5 "$log" >&2
    echo "gpu_rehearsal: the project did not install (above); going on with the checkout on sys.path" >&2
  fi
  rm -f "$log"
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_rehearsal.py "$@"
