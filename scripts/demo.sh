#!/usr/bin/env bash
# The demo command: installs what is missing, then runs Redis (reused if one answers on 127.0.0.1:6379),
# a local Label Studio, the backend and a worker with the bundled model, and pre-labels a demo project of
# synthetic videos. Prints the URL and the login; Ctrl-C stops everything it started.
#   scripts/demo.sh [--videos 6] [--label-studio-port 8080] [--backend-port 9090] [--workdir demo_data]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
bash scripts/install_label_studio.sh >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${GLUS_VENV:-.venv}/bin/glus-backend" demo "$@"
