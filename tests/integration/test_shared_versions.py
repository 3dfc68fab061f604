"""Several hosts, one Redis: two real RQ workers with different MODEL_DIRs (each its own copy of the base
checkpoint) and a version store both can read. A promotion made on one host is served by both workers, and both
post the model_version that every web process's /setup reports."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT, test_redis_url
from test_delta import _fine_tune_by_hand

from glus_backend.queues import JobQueues
from glus_backend.registry import ModelRegistry
from glus_backend.server import create_app
from glus_backend.settings import Settings
from tests.integration.test_worker_queue import FRAMES_CONFIG, _frames


def _host(tmp_path, name, base, store, prefix, files) -> dict:
    return {
        "REDIS_URL": test_redis_url(), "GLUS_QUEUE_PREFIX": prefix, "MODEL_DIR": str(tmp_path / name / "model_dir"),
        "GLUS_CHECKPOINT": str(base), "GLUS_MODEL_STORE": str(store), "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "GLUS_JOB_RETRIES": "0", "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "PYTHONPATH": str(ROOT),
    }  # fmt: skip


def _run(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "glus_backend.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _app(env: dict, redis):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return create_app(Settings.from_env(), redis).test_client()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _predict(client, task):
    response = client.post("/predict", json={"tasks": [task], "label_config": FRAMES_CONFIG, "project": "1.1"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"][0]


def test_a_promotion_on_one_host_is_served_by_workers_on_both(tmp_path, redis_prefix):
    from model.checkpoint import save_pretrained
    from model.config import get_config, with_sam_image_size
    from model.factory import random_model
    from model.train_cli import save_trained

    redis, prefix, created = redis_prefix
    model, tok = random_model(with_sam_image_size(get_config("glus-tiny"), 64), seed=0, seg_logit_bias=20.0)
    base_a = save_pretrained(model, tok, tmp_path / "a" / "base")
    base_b = shutil.copytree(base_a, tmp_path / "b" / "base")  # the same files, copied: other paths and times
    store, files = tmp_path / "shared-volume" / "versions", tmp_path / "files"
    host_a = _host(tmp_path, "a", base_a, store, prefix, files)
    host_b = _host(tmp_path, "b", base_b, store, prefix, files)
    registry_a = ModelRegistry(tmp_path / "a" / "model_dir", base_a, store, redis, prefix)
    base_version = registry_a.base().version

    # a fine-tuning run on host A leaves a delta of the base, registered in the shared store
    run = save_trained(_fine_tune_by_hand(model, seed=1), tok, tmp_path / "run", parent_version=base_version)
    record = registry_a.register(run, {"parent": base_version, "gate": {"promoted": True}})
    app_a, app_b = _app(host_a, redis), _app(host_b, redis)
    assert app_b.post("/setup", json={"project": "1.1"}).get_json()["model_version"] == base_version

    _run(host_a, "promote", record.version)  # on host A, from the command line
    assert redis.get(f"{prefix}:model:current").decode() == record.version
    urls = _frames(files, 3)
    tasks = [{"id": i, "data": {"frames": urls, "expression": "the blue square"}} for i in (1, 2)]
    logs = {}
    for name, app, env, task in (("a", app_a, host_a, tasks[0]), ("b", app_b, host_b, tasks[1])):
        assert _predict(app, task)["model_version"] == "pending"
        created.extend(JobQueues(redis, Settings(queue_prefix=prefix)).queue("predict").job_ids)
        logs[name] = _run(env, "worker", "--burst", "--device", "cpu").stderr
    assert f"loading model {record.version} (registry) from {base_a} + 1 delta(s)" in logs["a"]
    assert f"loading model {record.version} (registry) from {base_b} + 1 delta(s)" in logs["b"]
    for app in (app_a, app_b):
        for task in tasks:
            ready = _predict(app, task)
            assert ready["model_version"] == record.version and ready["result"], ready
        assert app.post("/setup", json={"project": "1.1"}).get_json()["model_version"] == record.version
