"""The protocol server against a real Redis (Flask test client; no worker): fast answers, idempotent jobs,
placeholders, webhooks, metrics, job status, basic auth, and no torch in the web process."""

import subprocess
import sys

import pytest
from conftest import ROOT, VIDEO_CONFIG, test_redis_url

from glus_backend.queues import JobQueues
from glus_backend.server import create_app
from glus_backend.settings import Settings

FRAMES_CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels>
</View>"""

@pytest.fixture
def backend(redis_prefix, tmp_path, tiny):
    from model.checkpoint import save_pretrained

    redis, prefix, created = redis_prefix
    save_pretrained(*tiny, tmp_path / "ckpt")
    settings = Settings(
        redis_url=test_redis_url(),
        queue_prefix=prefix,
        model_dir=tmp_path / "model_dir",
        checkpoint=str(tmp_path / "ckpt"),
    )
    app = create_app(settings, redis)
    return app.test_client(), JobQueues(redis, settings), settings, created


def _predict(client, tasks, config=FRAMES_CONFIG, context=None):
    return client.post(
        "/predict",
        json={"tasks": tasks, "label_config": config, "project": "3.1700000000", "params": {"context": context}},
    )


def test_health_and_setup(backend):
    client, queues, settings, _ = backend
    health = client.get("/health").get_json()
    assert health["status"] == "UP" and health["redis"] == "ok" and health["model_version"].startswith("glus-tiny-")
    ok = client.post("/setup", json={"project": "3.1", "schema": FRAMES_CONFIG})
    assert ok.status_code == 200 and ok.get_json()["model_version"] == health["model_version"]
    bad = client.post("/setup", json={"project": "3.1", "schema": "<View><Text name='t' value='$text'/></View>"})
    assert bad.status_code == 400 and "cannot serve" in bad.get_json()["error"]
    # Label Studio shows only the status line: the reason is in the reason phrase too, on one Latin-1 line
    assert bad.status == "400 " + " ".join(bad.get_json()["error"].split())
    assert "no <Image valueList=...> or <Video> object tag" in bad.status


def test_reason_phrase_is_one_printable_latin1_line():
    from glus_backend.server import reason_phrase

    assert reason_phrase("a\nb\tc  d") == "a b c d"
    assert reason_phrase("label 'Größe' → 'x'") == "label 'Größe' ? 'x'"
    assert reason_phrase("x" * 700) == "x" * 597 + "..."


def test_predict_answers_placeholders_and_enqueues_each_task_once(backend):
    client, queues, _, created = backend
    tasks = [{"id": i, "data": {"frames": [f"/data/upload/3/{i}.jpg"], "expression": "the dog"}} for i in (1, 2)]
    first = _predict(client, tasks)
    assert first.status_code == 200
    body = first.get_json()
    assert [r["model_version"] for r in body["results"]] == ["pending", "pending"]
    assert all(r["result"] == [] for r in body["results"])
    assert queues.queue("predict").count == 2
    created.extend(queues.queue("predict").job_ids)
    again = _predict(client, tasks)  # Label Studio asking again: nothing new runs
    assert again.status_code == 200 and queues.queue("predict").count == 2
    job_id = queues.predict_job_id(1, tasks[0]["data"], None, FRAMES_CONFIG, body["model_version"], (None, 3))
    assert job_id.startswith(f"{queues.prefix}-predict-")  # this deployment's: no other prefix can hold it
    assert job_id in queues.queue("predict").job_ids
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["status"] == "queued" and view["task_id"] == 1
    # a changed expression is a different job
    _predict(client, [{"id": 1, "data": {"frames": ["/data/upload/3/1.jpg"], "expression": "the cat"}}])
    assert queues.queue("predict").count == 3
    created.extend(queues.queue("predict").job_ids)


def test_ready_predictions_come_from_the_result_store(backend):
    client, queues, _, created = backend
    task = {"id": 7, "data": {"frames": ["/data/upload/3/7.jpg"], "expression": "the dog"}}
    version = client.get("/health").get_json()["model_version"]
    job_id = queues.predict_job_id(7, task["data"], None, FRAMES_CONFIG, version, (None, 3))
    stored = {"result": [{"id": "x", "type": "brushlabels"}], "score": 0.8, "model_version": version}
    queues.put_prediction(job_id, stored)
    body = _predict(client, [task]).get_json()
    assert body["results"] == [stored]
    created.extend(queues.queue("predict").job_ids)


def test_predict_stays_fast_with_a_busy_queue(backend):
    client, queues, _, created = backend
    """200 tasks in one request enqueue 200 jobs; asking again while they wait enqueues nothing.
    (Latency itself is measured by bench/bench_backend.py, not asserted here.)"""
    tasks = [{"id": i, "data": {"frames": [f"/f/{i}.jpg"], "expression": "x"}} for i in range(200)]
    assert _predict(client, tasks).status_code == 200
    assert queues.queue("predict").count == 200
    again = _predict(client, tasks[:20]).get_json()
    assert len(again["results"]) == 20 and queues.queue("predict").count == 200
    created.extend(queues.queue("predict").job_ids)


def test_bad_requests_are_clear(backend):
    client, *_ = backend
    assert client.post("/predict", json={"nope": 1}).status_code == 400
    r = _predict(client, [{"id": 1, "data": {}}], config="<View><Image name='i' value='$image'/></View>")
    assert r.status_code == 400 and "cannot serve" in r.get_json()["error"]
    assert client.get("/jobs/does-not-exist").status_code == 404


def test_webhooks_enqueue_and_unknown_actions_are_ignored(backend):
    client, queues, _, created = backend
    r = client.post(
        "/webhook",
        json={
            "action": "TASKS_CREATED",
            "project": {"id": 3, "label_config": VIDEO_CONFIG},
            "tasks": [{"id": 11, "data": {"video": "/data/upload/3/v.mp4", "prompt": "a"}}],
        },
    )
    assert r.status_code == 201 and r.get_json()["enqueued"] == 1
    annotation = {"id": 5, "result": [], "created_at": "2026-11-23T10:00:00"}
    r = client.post(
        "/webhook",
        json={
            "action": "ANNOTATION_CREATED",
            "annotation": annotation,
            "task": {"id": 11, "data": {}},
            "project": {"id": 3},
        },
    )
    assert r.status_code == 201 and r.get_json()["job"].startswith(f"{queues.prefix}-ingest-")
    assert queues.queue("ingest").count == 1
    r = client.post(
        "/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 5}], "project": {"id": 3}}
    )
    assert r.status_code == 201 and queues.queue("ingest").count == 2
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).get_json()["status"] == "ignored"
    # Label Studio's "Start training": only the project in the payload; one queued/running train job per project
    first = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert first.status_code == 201 and first.get_json()["created"]
    assert first.get_json()["job"].startswith(f"{queues.prefix}-train-")
    assert again.get_json()["job"] == first.get_json()["job"] and not again.get_json()["created"]
    assert queues.queue("train").count == 1
    created.extend(queues.queue("train").job_ids)
    metrics = client.get("/metrics").get_json()
    assert metrics["queues"]["predict"]["queued"] == 1 and metrics["queues"]["ingest"]["queued"] == 2
    created.extend(queues.queue("predict").job_ids + queues.queue("ingest").job_ids)


def test_basic_auth(redis_prefix, tmp_path):
    redis, prefix, _ = redis_prefix
    settings = Settings(
        redis_url=test_redis_url(), queue_prefix=prefix, basic_auth_user="u", basic_auth_pass="p", model_dir=tmp_path
    )
    client = create_app(settings, redis).test_client()
    assert client.get("/health").status_code == 401
    import base64

    header = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert client.get("/health", headers=header).status_code in (200, 503)


def test_web_process_never_imports_torch():
    code = "import sys, _wsgi; assert 'torch' not in sys.modules, 'torch imported'; print(_wsgi.app.name)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": test_redis_url(), "MODEL_DIR": "/tmp/glus-none"},
    )
    assert out.returncode == 0, out.stderr


def test_deployments_with_other_prefixes_never_share_a_job(redis_prefix):
    """RQ's job keys are global: two prefixes on one Redis (two deployments, or two test runs of the same
    content-named model) enqueueing the same task must each get a job of their own."""
    redis, prefix, created = redis_prefix
    task = {"id": 5, "data": {"frames": ["/data/upload/1/5.jpg"], "expression": "the dog"}}
    first = JobQueues(redis, Settings(queue_prefix=prefix))
    second = JobQueues(redis, Settings(queue_prefix=prefix + "b"))
    a = first.enqueue_prediction(task, FRAMES_CONFIG, 1, "glus-tiny-0123abcd")
    b = second.enqueue_prediction(task, FRAMES_CONFIG, 1, "glus-tiny-0123abcd")
    created.extend([a.job_id, b.job_id])
    assert a.created and b.created and a.job_id != b.job_id
    assert first.queue("predict").job_ids == [a.job_id] and second.queue("predict").job_ids == [b.job_id]
