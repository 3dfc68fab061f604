"""Real Redis + real RQ worker subprocesses with the tiny model: predictions through the queue, idempotent
jobs, and bad input (no media field, empty expression, unreachable URL, corrupt video, a video over the
limits, Label Studio down while posting), each ending with a clear job status while other jobs succeed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, VIDEO_CONFIG, test_redis_url
from label_studio_sdk.label_interface import LabelInterface

from glus_backend.queues import JobQueues
from glus_backend.server import create_app
from glus_backend.settings import Settings

FRAMES_CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="frames"><Label value="Object"/></PolygonLabels>
</View>"""

def _frames(root: Path, n: int = 6) -> list[str]:
    folder = root / "frames" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for t in range(n):
        frame = np.full((72, 96, 3), 90, np.uint8)
        frame[20:44, 5 + 8 * t : 29 + 8 * t] = (20, 20, 220)
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), frame)
        urls.append(f"/data/local-files/?d=frames/v1/{t:05d}.jpg")
    return urls


def _video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 72))
    for t in range(n):
        frame = np.full((72, 96, 3), 90, np.uint8)
        frame[20:44, 5 + 5 * t : 29 + 5 * t] = (20, 200, 20)
        writer.write(frame)
    writer.release()


@pytest.fixture
def env(redis_prefix, tmp_path, tiny):
    from model.checkpoint import save_pretrained

    redis, prefix, created = redis_prefix
    save_pretrained(*tiny, tmp_path / "ckpt")
    files = tmp_path / "files"
    values = {
        "REDIS_URL": test_redis_url(),
        "GLUS_QUEUE_PREFIX": prefix,
        "MODEL_DIR": str(tmp_path / "model_dir"),
        "GLUS_CHECKPOINT": str(tmp_path / "ckpt"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "GLUS_JOB_RETRIES": "1",
        "GLUS_RETRY_INTERVALS": "0",
        "GLUS_MAX_FRAMES": "10",
        "GLUS_MEDIA_ALLOWED_HOSTS": "127.0.0.1",  # the "unreachable" case: a closed port, allowed on purpose
    }
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    settings = Settings.from_env()
    yield {
        "redis": redis,
        "prefix": prefix,
        "created": created,
        "files": files,
        "settings": settings,
        "client": create_app(settings, redis).test_client(),
        "queues": JobQueues(redis, settings),
        "env": values,
    }
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run_worker_burst(values: dict, extra: dict | None = None, timeout: int = 240) -> str:
    env = {**os.environ, **values, **(extra or {}), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "glus_backend.cli", "worker", "--burst", "--device", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _predict(client, task, config):
    r = client.post("/predict", json={"tasks": [task], "label_config": config, "project": "1.1"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["results"][0]


def _job_id(env, task, config):
    version = env["client"].get("/health").get_json()["model_version"]
    return env["queues"].predict_job_id(task["id"], task["data"], None, config, version, (None, 1))


def test_predictions_and_bad_input_through_real_workers(env):
    client, queues, files = env["client"], env["queues"], env["files"]
    urls = _frames(files)
    _video(files / "long.mp4", 14)
    (files / "corrupt.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    good = {"id": 1, "data": {"frames": urls, "expressions": ["the blue square", "the background"]}}
    cases = {
        "no_media": ({"id": 2, "data": {"expression": "the dog"}}, FRAMES_CONFIG),
        "empty_prompt": ({"id": 3, "data": {"frames": urls, "expression": "   "}}, FRAMES_CONFIG),
        "unreachable": ({"id": 4, "data": {"video": "http://127.0.0.1:9/v.mp4", "prompt": "x"}}, VIDEO_CONFIG),
        "corrupt": ({"id": 5, "data": {"video": "/data/local-files/?d=corrupt.mp4", "prompt": "x"}}, VIDEO_CONFIG),
        "too_long": ({"id": 6, "data": {"video": "/data/local-files/?d=long.mp4", "prompt": "x"}}, VIDEO_CONFIG),
        "internal": ({"id": 7, "data": {"video": "http://127.0.0.2:6379/INFO", "prompt": "x"}}, VIDEO_CONFIG),
    }
    assert _predict(client, good, FRAMES_CONFIG)["model_version"] == "pending"
    assert _predict(client, good, FRAMES_CONFIG)["model_version"] == "pending"  # asked twice: one job
    for task, config in cases.values():
        _predict(client, task, config)
    assert queues.queue("predict").count == 1 + len(cases)
    env["created"].extend(queues.queue("predict").job_ids)
    log = _run_worker_burst(env["env"])

    good_view = client.get(f"/jobs/{_job_id(env, good, FRAMES_CONFIG)}").get_json()
    assert good_view["status"] == "finished", (good_view, log[-2000:])
    assert good_view["result"]["frames"] == 6 and len(good_view["result"]["objects"]) == 2
    ready = _predict(client, good, FRAMES_CONFIG)  # now served from the result store
    assert ready["model_version"].startswith("glus-tiny-") and ready["result"]
    errors = LabelInterface(FRAMES_CONFIG).validate_prediction({"result": ready["result"]}, return_errors=True)
    assert not errors, errors
    assert {r["item_index"] for r in ready["result"]} <= set(range(6))
    assert queues.queue("predict").finished_job_registry.count == 1

    expected = {
        "no_media": ("permanent", "has no 'frames' field"),
        "empty_prompt": ("permanent", "empty"),
        "unreachable": ("transient", "127.0.0.1:9"),
        "corrupt": ("permanent", "corrupt.mp4"),
        "too_long": ("permanent", "over the limit of 10"),
        "internal": ("permanent", "127.0.0.2 is a loopback address"),
    }
    for name, (task, config) in cases.items():
        view = client.get(f"/jobs/{_job_id(env, task, config)}").get_json()
        kind, text = expected[name]
        assert view["status"] == "failed", (name, view)
        assert view["error_kind"] == kind and text in view["error"], (name, view)
        assert view["retries_left"] in (0, None)  # transient: retried once, then failed; permanent: not retried
    metrics = client.get("/metrics").get_json()
    assert metrics["queues"]["predict"]["failed"] == len(cases) and metrics["queues"]["predict"]["queued"] == 0


def test_label_studio_down_while_posting(env):
    client, queues, files = env["client"], env["queues"], env["files"]
    task = {"id": 21, "data": {"frames": _frames(files, 3), "expression": "the blue square"}}
    _predict(client, task, FRAMES_CONFIG)
    env["created"].extend(queues.queue("predict").job_ids)
    _run_worker_burst(env["env"], {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "legacy-token"})
    view = client.get(f"/jobs/{_job_id(env, task, FRAMES_CONFIG)}").get_json()
    assert view["status"] == "failed" and view["error_kind"] == "transient", view
    assert "127.0.0.1:9" in view["error"]
    # the masks were computed and kept: the next /predict returns them even though posting failed
    assert _predict(client, task, FRAMES_CONFIG)["result"]


def test_ingest_job_stores_and_replaces_corrections(env):
    from glus_backend.correction_set import CorrectionSet
    from glus_backend.rle import mask_to_rle
    from model.datasets import open_dataset

    client, queues = env["client"], env["queues"]

    def brush(item, y0):
        mask = np.zeros((72, 96), bool)
        mask[y0 : y0 + 10, 10:30] = True
        region = {"id": f"0_{item}_brush", "type": "brushlabels", "from_name": "mask", "to_name": "frames"}
        value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Object"]}
        return {**region, "item_index": item, "original_width": 96, "original_height": 72, "value": value}, mask

    first, _ = brush(0, 5)
    task = {"id": 3, "data": {"frames": _frames(env["files"], 3), "expression": "the blue square"}}
    project = {"id": 1, "label_config": FRAMES_CONFIG}
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 9, "result": [first], "created_at": "t1"},
               "task": task, "project": project}  # fmt: skip
    client.post("/webhook", json=payload)
    second, second_mask = brush(2, 40)
    payload2 = dict(
        payload, action="ANNOTATION_UPDATED", annotation={"id": 9, "result": [second], "updated_at": "t2"}
    )
    client.post("/webhook", json=payload2)
    bad = {"action": "ANNOTATION_CREATED", "annotation": {"id": 10, "result": []}, "task": {"id": 4, "data": {}},
           "project": {"id": 1, "label_config": "<View><Text name='t' value='$text'/></View>"}}  # fmt: skip
    client.post("/webhook", json=bad)
    env["created"].extend(queues.queue("ingest").job_ids)
    _run_worker_burst(env["env"])
    stored = Path(env["settings"].model_dir) / "data/annotations/project_1/task_3/annotation_9.json"
    assert json.loads(stored.read_text())["annotation"]["result"] == [second]
    # the correction set (MeViS layout) holds the updated masks only
    corrections = CorrectionSet.of_project(env["settings"].model_dir, 1)
    assert corrections.task_ids() == [3]
    dataset = open_dataset("mevis", corrections.root.parent, corrections.root.name)
    gt = dataset.gt_masks("task3", "0")
    assert gt.shape == (3, 72, 96) and not gt[0].any() and np.array_equal(gt[2].astype(bool), second_mask)
    # a correction the backend cannot read fails with the reason; the raw annotation is still kept
    failed = [queues.fetch(j) for j in queues.queue("ingest").failed_job_registry.get_job_ids()]
    assert len(failed) == 1 and "not usable for training" in failed[0].latest_result().exc_string
    client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 9}], "project": {"id": 1}})
    env["created"].extend(queues.queue("ingest").job_ids)
    _run_worker_burst(env["env"])
    assert not stored.exists() and corrections.task_ids() == []


def test_worker_pool_runs_one_process_per_device(env):
    client, queues, files = env["client"], env["queues"], env["files"]
    urls = _frames(files, 3)
    tasks = [{"id": 30 + i, "data": {"frames": urls, "expression": f"object {i}"}} for i in range(4)]
    for task in tasks:
        _predict(client, task, FRAMES_CONFIG)
    env["created"].extend(queues.queue("predict").job_ids)
    run_env = {**os.environ, **env["env"], "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "glus_backend.cli", "worker", "--burst", "--devices", "cpu,cpu"],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("started worker pid") == 2
    workers = set()
    for task in tasks:
        job = queues.fetch(_job_id(env, task, FRAMES_CONFIG))
        assert job.get_status().value == "finished"
        workers.add(job.worker_name)
    assert len(workers) >= 1 and all(w and w.startswith("glus-") for w in workers)
