"""The README's demo command brings up every part and predictions appear in Label Studio.

Runs `glus-backend demo` as users do (bundled model, its own Label Studio and data dir), with a private Redis
database, until the demo project is pre-labeled; then checks the project through Label Studio's API.
"""

import os
import subprocess
import sys

import requests
from conftest import ROOT, test_redis_url

from glus_backend.local_label_studio import free_port


def test_demo_command_prelabels_a_project(tmp_path):
    ls_port, backend_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": test_redis_url()}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "glus_backend.cli",
            "demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--videos",
            "2",
            "--label-studio-port",
            str(ls_port),
            "--backend-port",
            str(backend_port),
            "--exit-when-done",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert f"http://127.0.0.1:{ls_port}/projects/" in out.stdout and "login: demo@example.com" in out.stdout
    # everything it started is stopped again
    for port in (ls_port, backend_port):
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
            raise AssertionError(f"something still answers on port {port}")
        except requests.ConnectionError:
            pass
    # a second run reuses the project and its predictions: Label Studio's data dir and the PAT are kept
    pat = (tmp_path / "demo" / "label-studio" / "pat.txt").read_text().strip()
    assert pat
    log = (tmp_path / "demo" / "logs" / "worker.log").read_text()
    assert "worker ready with model" in log and log.count("Job OK") >= 2
