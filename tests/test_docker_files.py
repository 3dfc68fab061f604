"""Docker cannot run on CI machines; check what can be checked: the images install with the same script the
tests use, the compose file wires redis, web, GPU worker(s) and the optional Label Studio, and .env.example
covers the switches Label Studio needs for a private backend."""

from pathlib import Path

import yaml
from conftest import ROOT

DOCKER = ROOT / "docker"


def test_images_use_the_install_script():
    worker = (DOCKER / "Dockerfile.worker").read_text()
    web = (DOCKER / "Dockerfile.web").read_text()
    assert "scripts/install.sh --gpu" in worker and "nvidia/cuda" in worker
    assert "RUN scripts/install.sh" in web and "glus-backend\", \"serve" in web
    for text in (worker, web):
        for line in text.splitlines():
            if line.startswith("COPY "):
                src = line.split()[1:-1]
                for item in src:
                    assert any(Path(ROOT).glob(item)), f"COPY source {item} missing"


def test_compose_services_and_gpu_reservation():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "web", "worker", "label-studio"} <= set(services)
    assert services["label-studio"]["profiles"] == ["label-studio"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for name in ("web", "worker"):
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert services["web"]["build"]["dockerfile"] == "docker/Dockerfile.web"
    for name in ("redis", "web", "worker", "label-studio"):  # a crashed service comes back by itself
        assert services[name]["restart"] == "unless-stopped", name
    assert "--appendonly" in services["redis"]["command"]  # jobs survive a Redis restart


def test_env_example_covers_label_studio_switches_and_backend_settings():
    env = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "GLUS_CHECKPOINT"):
        assert name in env
