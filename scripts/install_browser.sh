#!/usr/bin/env bash
# Install what the browser integration tests need (tests/integration/browser.py). Idempotent and fast when done:
#   * Debian's chromium (/usr/lib/chromium/chromium) via apt-get when missing (sudo only when not root);
#   * pip playwright==$PLAYWRIGHT_VERSION into the given venv when missing. No `playwright install`: the
#     harness drives Debian's chromium through executable_path, so nothing is downloaded from Playwright's CDN.
#
#   scripts/install_browser.sh [VENV]     # default VENV: .venv
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
CHROMIUM="${GLUS_CHROMIUM:-/usr/lib/chromium/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "install_browser: apt-get install chromium (about 70 s)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q chromium >/dev/null
  }
  [ -x "$CHROMIUM" ] || { echo "install_browser: $CHROMIUM missing after apt-get install chromium" >&2; exit 1; }
fi

[ -x "$VENV/bin/python" ] || { echo "install_browser: no virtualenv at $VENV (run scripts/install.sh first)" >&2; exit 1; }
have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null || true)"
if [ "$have" != "$PLAYWRIGHT_VERSION" ]; then
  echo "install_browser: pip install playwright==$PLAYWRIGHT_VERSION into $VENV" >&2
  "$VENV/bin/pip" install --no-compile --disable-pip-version-check -q "playwright==$PLAYWRIGHT_VERSION" 2>&1 \
    | { grep -v "^WARNING: Location" >&2 || true; }
fi
"$VENV/bin/python" -c "import playwright.sync_api" || { echo "install_browser: playwright not importable in $VENV" >&2; exit 1; }
echo "install_browser: chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'), playwright $PLAYWRIGHT_VERSION in $VENV"
