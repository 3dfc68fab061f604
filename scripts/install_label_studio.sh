#!/usr/bin/env bash
# Install the Label Studio server (for integration tests and the demo) into its OWN virtualenv.
# Label Studio pins its whole stack (Django, requests, rq, redis, label-studio-sdk), so it never shares the
# project venv. Idempotent: a stamp file skips the work when the pinned version is already installed.
#
#   scripts/install_label_studio.sh      # -> prints the path of the label-studio executable on its last line
#
# Env: GLUS_LS_VENV (default <repo>/.venv-ls), GLUS_LS_VERSION (default 1.23.2), PYTHON (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${GLUS_LS_VENV:-$ROOT/.venv-ls}"
VERSION="${GLUS_LS_VERSION:-1.23.2}"
PY="${PYTHON:-python3}"
stamp="$VENV/.glus-label-studio-$VERSION"
exe="$VENV/bin/label-studio"
if [ -f "$stamp" ] && [ -x "$exe" ]; then
  echo "$exe"
  exit 0
fi
echo "install_label_studio: label-studio==$VERSION into $VENV (about 75 s)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
quiet() { grep -v "^WARNING: Location" >&2 || true; }
# --no-compile: skipping .pyc generation for ~1 GB of dependencies saves a good part of the install time.
"$VENV/bin/pip" install --no-compile --disable-pip-version-check -q "label-studio==$VERSION" 2>&1 | quiet
"$VENV/bin/python" -c "import label_studio, sys; sys.exit(label_studio.__version__ != '$VERSION')" \
  || { echo "install_label_studio: label_studio $VERSION not importable in $VENV" >&2; exit 1; }
[ -x "$exe" ] || { echo "install_label_studio: $exe missing after install" >&2; exit 1; }
rm -f "$VENV"/.glus-label-studio-*
touch "$stamp"
echo "$exe"
