"""Input hardening and secrets, on the real web app (Flask test client, real Redis): every malformed body is a
400 with a JSON reason, sizes are limited, nothing secret is echoed, requests survive a Redis outage on disk,
and the SSRF rule refuses internal addresses."""

import base64

import pytest
from conftest import VIDEO_CONFIG, test_redis_url

from glus_backend.queues import JobQueues
from glus_backend.server import create_app
from glus_backend.settings import Settings
from glus_backend.url_guard import AddressGuard, AddressRefused
from glus_backend.validation import BadRequest, predict_body, webhook_body, webhook_parts

FRAMES = "<View><Image name='frames' valueList='$frames'/><BrushLabels name='m' toName='frames'>" \
         "<Label value='Object'/></BrushLabels></View>"
TASK = {"id": 1, "data": {"frames": ["/data/upload/3/1.jpg"], "expression": "the dog"}}

# (endpoint, body, what the reason must mention); each must be a 400 with a JSON reason
MALFORMED = [
    ("/webhook", [1, 2], "JSON object"),
    ("/webhook", {"action": "TASKS_CREATED", "project": 5, "tasks": [TASK]}, "'project' must be an object"),
    ("/webhook", {"action": "TASKS_CREATED", "project": {"id": 3, "label_config": FRAMES}, "tasks": [{"data": {}}]},
     "has no 'id'"),
    ("/webhook", {"action": "TASKS_CREATED", "project": {"id": 3, "label_config": FRAMES}, "tasks": "abc"},
     "'tasks' must be a list"),
    ("/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": 5, "project": {"id": 3}}, "must be a list"),
    ("/webhook", {"action": ["TASKS_CREATED"]}, "'action' must be a string"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}, "task": {"id": 1}}, "annotation.id"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}, "task": "t"}, "'task' must be an object"),
    ("/webhook", {"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "result": 3}, "task": {"id": 2}},
     "result must be a list"),
    ("/webhook", {"action": "START_TRAINING", "project": {"id": "abc"}}, "project.id"),
    ("/predict", {"tasks": [{"id": "abc", "data": {}}], "label_config": FRAMES}, "tasks[0].id"),
    ("/predict", {"tasks": [TASK], "label_config": FRAMES, "params": "x"}, "'params' must be an object"),
    ("/predict", {"tasks": [TASK], "label_config": FRAMES, "params": {"context": [1]}}, "params.context"),
    ("/predict", {"tasks": [TASK], "label_config": 7}, "'label_config' must be a string"),
    ("/predict", {"tasks": [TASK], "label_config": FRAMES, "project": [1]}, "'project'"),
    ("/predict", {"tasks": [{"id": 1, "data": "frames"}], "label_config": FRAMES}, "data must be an object"),
    ("/predict", {"tasks": [TASK], "label_config": "<View><Image"}, "cannot serve"),
    ("/predict", [TASK], "JSON object"),
    ("/predict", {"tasks": [True], "label_config": FRAMES}, "must be an object"),
    ("/predict", {"tasks": [{"id": True, "data": {}}], "label_config": FRAMES}, "boolean"),
    ("/setup", {"project": "3.1", "schema": ["<View/>"]}, "'schema' must be a string"),
    ("/setup", "just a string", "JSON object"),
]


@pytest.fixture
def app_and_queues(redis_prefix, tmp_path, tiny):
    from model.checkpoint import save_pretrained

    redis, prefix, created = redis_prefix
    save_pretrained(*tiny, tmp_path / "ckpt")
    settings = Settings(redis_url=test_redis_url(), queue_prefix=prefix, model_dir=tmp_path / "model_dir",
                        checkpoint=str(tmp_path / "ckpt"), max_request_bytes=200_000, max_job_bytes=50_000)
    app = create_app(settings, redis, replay_spool=False)
    yield app.test_client(), JobQueues(redis, settings), settings
    created.extend(JobQueues(redis, settings).queue(k).job_ids for k in ("predict", "ingest", "train"))
    created[:] = [j for ids in created for j in (ids if isinstance(ids, list) else [ids])]


@pytest.mark.parametrize("endpoint,body,reason", MALFORMED, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(MALFORMED)])
def test_malformed_bodies_are_400_with_a_json_reason(app_and_queues, endpoint, body, reason):
    client, queues, _ = app_and_queues
    r = client.post(endpoint, json=body)
    assert r.status_code == 400, (r.status_code, r.data[:300])
    assert r.is_json and r.get_json()["status"] == "error" and reason in r.get_json()["error"], r.get_json()
    assert queues.queue("predict").count == 0 and queues.queue("ingest").count == 0


def test_not_json_too_large_and_unknown_routes_answer_json(app_and_queues):
    client, queues, settings = app_and_queues
    r = client.post("/predict", data=b"{not json", content_type="application/json")
    assert r.status_code == 400 and "not valid JSON" in r.get_json()["error"]
    big = {"tasks": [{"id": 1, "data": {"frames": ["/x.jpg"], "expression": "x" * 300_000}}], "label_config": FRAMES}
    r = client.post("/predict", json=big)
    assert r.status_code == 413 and "GLUS_MAX_REQUEST_BYTES" in r.get_json()["error"]
    # under the request limit but over what one job may store
    job_big = {"tasks": [{"id": 1, "data": {"frames": ["/x.jpg"], "expression": "x" * 60_000}}], "label_config": FRAMES}
    r = client.post("/predict", json=job_big)
    assert r.status_code == 413 and "GLUS_MAX_JOB_BYTES" in r.get_json()["error"]
    assert queues.queue("predict").count == 0
    r = client.get("/nope")
    assert r.status_code == 404 and r.is_json
    r = client.get("/predict")
    assert r.status_code == 405 and r.is_json


def test_basic_auth_compares_in_constant_time_and_answers_json(redis_prefix, tmp_path, monkeypatch):
    import hmac

    redis, prefix, _ = redis_prefix
    settings = Settings(redis_url=test_redis_url(), queue_prefix=prefix, model_dir=tmp_path,
                        basic_auth_user="u", basic_auth_pass="p")  # fmt: skip
    client = create_app(settings, redis, replay_spool=False).test_client()
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for user_pass in (b"u:wrong", b"wrong:p", b"u:"):
        header = {"Authorization": "Basic " + base64.b64encode(user_pass).decode()}
        r = client.get("/metrics", headers=header)
        assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert client.get("/metrics").status_code == 401
    assert len(calls) >= 6  # user and password, compared with hmac.compare_digest every time


def test_redis_outage_redacts_the_url_and_keeps_requests_on_disk(redis_prefix, tmp_path, tiny):
    """While Redis is down: every 503 names Redis without its password; /predict and webhooks are kept on disk and
    answered (placeholders, 202); once Redis is back the replay enqueues exactly what was sent."""
    from model.checkpoint import save_pretrained

    redis, prefix, created = redis_prefix
    save_pretrained(*tiny, tmp_path / "ckpt")
    down = Settings(redis_url="redis://:s3cret-pw@127.0.0.1:1/0", queue_prefix=prefix, model_dir=tmp_path / "md",
                    checkpoint=str(tmp_path / "ckpt"))  # fmt: skip
    client = create_app(down, replay_spool=False).test_client()
    for method, path in (("get", "/health"), ("get", "/metrics"), ("get", "/jobs/x")):
        r = getattr(client, method)(path)
        assert r.status_code == 503, path
        text = r.get_data(as_text=True)
        assert "s3cret-pw" not in text and "redis://***@127.0.0.1:1/0" in text, text
    r = client.post("/predict", json={"tasks": [TASK, {**TASK, "id": 2}], "label_config": FRAMES, "project": "3.1"})
    assert r.status_code == 200 and [x["model_version"] for x in r.get_json()["results"]] == ["pending", "pending"]
    hook = {"action": "TASKS_CREATED", "project": {"id": 3, "label_config": VIDEO_CONFIG},
            "tasks": [{"id": 11, "data": {"video": "/data/upload/3/v.mp4", "prompt": "a"}}]}  # fmt: skip
    r = client.post("/webhook", json=hook)
    assert r.status_code == 202 and r.get_json()["status"] == "accepted"
    assert client.get("/health").get_json()["spooled_requests"] == 2
    # Redis is back: the replay (a thread in the served app) enqueues them once, and again is a no-op
    up = Settings(redis_url=test_redis_url(), queue_prefix=prefix, model_dir=tmp_path / "md",
                  checkpoint=str(tmp_path / "ckpt"))  # fmt: skip
    service = create_app(up, redis, replay_spool=False).config["GLUS_SERVICE"]
    assert service.spool.replay(service.replay) == 2 and service.spool.pending() == 0
    queues = JobQueues(redis, up)
    assert queues.queue("predict").count == 3
    created.extend(queues.queue("predict").job_ids)


def test_validation_accepts_what_label_studio_sends():
    tasks, config, project, context = predict_body(
        {"tasks": [{"id": 7, "data": {"video": "/v.mp4"}}], "label_config": "<View/>", "project": "12.1700000000",
         "params": {"login": None, "password": None, "context": None}})  # fmt: skip
    assert [t["id"] for t in tasks] == [7] and project == 12 and context is None and config == "<View/>"
    action, body = webhook_body({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 2}})
    webhook_parts(action, body)
    with pytest.raises(BadRequest, match="tasks"):
        predict_body({"label_config": "<View/>"})


def _guard(answers: dict[str, list[str]], **kw) -> AddressGuard:
    return AddressGuard(resolve=lambda host, port: answers[host], **kw)


@pytest.mark.parametrize("host,addr,kind", [
    ("127.0.0.1", "127.0.0.1", "loopback"), ("redis.local", "127.0.0.1", "loopback"),
    ("meta", "169.254.169.254", "link-local"), ("db", "10.1.2.3", "private"), ("lan", "192.168.0.9", "private"),
    ("v6", "::1", "loopback"), ("mapped", "::ffff:127.0.0.1", "loopback"), ("zero", "0.0.0.0", "unspecified"),
])  # fmt: skip
def test_ssrf_guard_refuses_internal_addresses(host, addr, kind):
    with pytest.raises(AddressRefused, match=kind) as err:
        _guard({host: [addr]}).check(f"http://{host}:6379/x?token=abc")
    assert "GLUS_MEDIA_ALLOWED_HOSTS" in str(err.value) and "abc" not in str(err.value)


def test_ssrf_guard_allows_public_and_listed_hosts():
    _guard({"cdn.example.com": ["93.184.216.34"]}).check("https://cdn.example.com/v.mp4")
    _guard({"minio": ["10.0.0.5"]}, allowed=("minio",)).check("http://minio:9000/b/v.mp4")
    _guard({"minio": ["10.0.0.5"]}, allowed=("10.0.0.0/8",)).check("http://minio:9000/b/v.mp4")
    _guard({"x": ["127.0.0.1"]}, enabled=False).check("http://x/v.mp4")
    with pytest.raises(AddressRefused):  # one internal answer among public ones is enough to refuse
        _guard({"mixed": ["93.184.216.34", "10.0.0.1"]}).check("http://mixed/v.mp4")


def test_worker_refuses_a_loopback_media_url_and_quotes_no_body(tmp_path):
    """End to end through the media code: a task pointing at a local service is refused before any request."""
    import socket

    from glus_backend.media import MediaError, resolve_media

    server = socket.socket()  # a "local service": the kernel would complete any connection to it
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    with pytest.raises(MediaError, match="loopback") as err:
        resolve_media(f"http://127.0.0.1:{port}/INFO", None, tmp_path)
    assert not err.value.transient
    server.settimeout(0.2)
    with pytest.raises(TimeoutError):  # nobody connected
        server.accept()
    server.close()
