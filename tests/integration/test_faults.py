"""Fault injection against the real stack: a Label Studio 1.23.2 and a Redis of this module's own (so they can be
stopped and restarted), the backend's web process and two RQ worker subprocesses with the tiny model.

Each scenario imports tasks into Label Studio (its TASKS_CREATED webhook enqueues them), causes one fault, and then
counts, per task, the predictions Label Studio holds: exactly one real prediction, none (lost), more than one
(duplicated), and empty ``pending`` placeholders left behind (stale). The target is 0 lost, 0 duplicated, 0 stale
within a bounded time; the figures of each scenario are written to ``tmp/fault-report.md``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import ROOT
from redis import Redis
from rq import Worker

from glus_backend.local_label_studio import LabelStudioServer, ensure_label_studio
from glus_backend.queues import is_placeholder

from .backend_stack import free_port, running_backend, wait_for, write_frames

HEARTBEAT_TTL = 6
SWEEP_INTERVAL = 2
MAX_JOB_BYTES = 8192  # small, so that a real annotation is over it (test_large_annotation_is_ingested_by_reference)
FRAMES = 16  # frames per task: a job lasts a few seconds on this CPU, long enough to be interrupted
REDIS_PASSWORD = "fault-s3cret"
CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object" background="red"/></BrushLabels>
</View>"""
VIDEO_CONFIG = """<View>
  <Labels name="videoLabels" toName="video"><Label value="Object" background="red"/></Labels>
  <Video name="video" value="$video" framerate="25.0"/>
  <VideoRectangle name="box" toName="video"/>
</View>"""
REPORT: list[dict] = []


class RedisServer:
    """A ``redis-server`` of this module (append-only file, a password) that tests may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--requirepass", REDIS_PASSWORD],
            stdout=open(self.workdir / "redis.log", "a"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 30, "the test Redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            self.proc.wait(timeout=30)
        self.proc = None


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    from model.checkpoint import save_pretrained
    from model.factory import random_model

    try:
        ensure_label_studio()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"cannot install Label Studio: {exc}", pytrace=False)
    tmp = tmp_path_factory.mktemp("faults")
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    ls = LabelStudioServer(tmp / "label-studio")
    ls.start()
    save_pretrained(*random_model("glus-tiny", seed=0, seg_logit_bias=20.0), tmp / "ckpt")
    env = {
        "GLUS_CHECKPOINT": str(tmp / "ckpt"),
        "GLUS_HEARTBEAT_TTL": str(HEARTBEAT_TTL),
        "GLUS_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "GLUS_JOB_RETRIES": "2",
        "GLUS_RETRY_INTERVALS": "1,2",
        "GLUS_MAX_JOB_BYTES": str(MAX_JOB_BYTES),
    }
    try:
        with running_backend(ls, redis_server.url, tmp, env, workers=2) as stack:
            stack["redis_server"] = redis_server
            frames = write_frames(ls, "faults/clip", FRAMES, (256, 144))
            stack["frames"] = frames
            yield stack
            if redis_server.proc is None:  # a failed scenario left it down: the teardown needs it
                redis_server.start()
    finally:
        ls.stop()
        redis_server.stop()
        _write_report()


def _project(stack: dict, title: str, n: int, connect: bool = True) -> tuple[int, list[dict]]:
    ls = stack["ls"]
    project = ls.create_project(title, CONFIG)
    ls.add_local_storage(project, ls.files_root / "faults")
    if connect:
        ls.connect_ml_backend(project, stack["url"])
    tasks = [{"frames": stack["frames"][: FRAMES - (i % 4)], "expression": f"the bed {title} {i}"} for i in range(n)]
    return project, tasks


def _census(stack: dict, task_ids: list[int]) -> dict:
    """Per task, what Label Studio holds: real predictions of the served version, and empty placeholders."""
    version = stack["version"]
    real, stale = {}, 0
    for task_id in task_ids:
        predictions = stack["ls"].predictions(task_id)
        real[task_id] = sum(p.get("model_version") == version for p in predictions)
        stale += sum(is_placeholder(p) for p in predictions)  # "pending" or "running N%"
    return {
        "submitted": len(task_ids),
        "exactly_one": sum(n == 1 for n in real.values()),
        "lost": sum(n == 0 for n in real.values()),
        "duplicated": sum(n > 1 for n in real.values()),
        "stale_placeholders": stale,
    }


def _settled(stack: dict, task_ids: list[int], t0: float, scenario: str, **extra) -> dict:
    """Wait (bounded by the amount of work) for one real prediction per task and no placeholder, then for the
    sweeper to have tidied every task, and record the census."""
    budget = 120 + 30 * len(task_ids)
    last: dict = {}

    def done():
        last.update(_census(stack, task_ids))
        return last["exactly_one"] == len(task_ids) and last["stale_placeholders"] == 0

    try:
        wait_for(done, budget, f"{scenario}: one prediction per task", interval=1.0)
    except AssertionError:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(stack["logs"].glob("*.log")))
        raise AssertionError(f"{scenario}: {last}\n{logs}") from None
    seconds = time.monotonic() - t0
    redis = stack["redis"]
    wait_for(lambda: redis.zcard(f"{stack['prefix']}:to-settle") == 0, budget, "the sweeper to tidy every task")
    final = _census(stack, task_ids)
    row = {"scenario": scenario, **final, "seconds_to_settle": round(seconds, 1), "budget_s": budget, **extra}
    REPORT.append(row)
    assert final == {"submitted": len(task_ids), "exactly_one": len(task_ids), "lost": 0, "duplicated": 0,
                     "stale_placeholders": 0}, row  # fmt: skip
    return row


def _write_report() -> None:
    if not REPORT:
        return
    keys = ["scenario", "submitted", "exactly_one", "lost", "duplicated", "stale_placeholders", "seconds_to_settle",
            "budget_s"]  # fmt: skip
    lines = ["| " + " | ".join(keys) + " | notes |", "|" + "---|" * (len(keys) + 1)]
    for row in REPORT:
        notes = ", ".join(f"{k}={v}" for k, v in row.items() if k not in keys)
        lines.append("| " + " | ".join(str(row.get(k, "")) for k in keys) + f" | {notes} |")
    out = Path(os.environ.get("GLUS_FAULT_REPORT", ROOT / "tmp" / "fault-report.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _metrics(stack: dict) -> dict:
    return requests.get(stack["url"] + "/metrics", timeout=10).json()


def _busy_worker(stack: dict, min_done: int = 2) -> tuple[Worker, str]:
    """A worker in the middle of segmenting (at least ``min_done`` frames done), and its job id."""
    redis = stack["redis"]

    def find():
        for worker in Worker.all(connection=redis):
            job = worker.get_current_job()
            progress = (job.meta.get("progress") or {}) if job is not None else {}
            if progress.get("stage") == "segmenting" and progress.get("frames_done", 0) >= min_done:
                return worker, job.id
        return None

    return wait_for(find, 120, "a worker in the middle of a job", interval=0.2)


def _jobs_of(stack: dict, task_id: int) -> list[str]:
    """The ids of this deployment's predict jobs for ``task_id`` (RQ keeps the job's meta in its hash)."""
    out = []
    for key in stack["redis"].scan_iter(match=f"rq:job:{stack['prefix']}-predict-*"):
        if f"'task_id': {task_id}," in (stack["redis"].hget(key, "description") or b"").decode():
            out.append(key.decode().split(":")[-1])
    return out


def _retried(stack: dict, task_ids: list[int]) -> int:
    """How many of these tasks' jobs were cut off and ran again (their status keeps the first failure)."""
    views = [requests.get(f"{stack['url']}/jobs/{j}", timeout=10).json() for t in task_ids for j in _jobs_of(stack, t)]
    return sum("previous_error" in v for v in views)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigkill_a_worker_mid_job(fault_stack):
    stack = fault_stack
    project, tasks = _project(stack, "kill", 8)
    t0 = time.monotonic()
    task_ids = stack["ls"].import_tasks(project, tasks)
    worker, job_id = _busy_worker(stack)
    assert _children(worker.pid) == [], "a worker must have no child process (no scheduler to orphan)"
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # the dead worker stops being counted within the heartbeat TTL (plus a maintenance tick)
    wait_for(lambda: _metrics(stack)["workers"] == 1, HEARTBEAT_TTL * 4, "/metrics to stop counting the dead worker")
    detected = time.monotonic() - killed_at
    ours = [w for w in Worker.all(connection=stack["redis"]) if w.name == worker.name]
    assert ours == [], "the dead worker is still registered (rq info would count it)"
    row = _settled(stack, task_ids, t0, "SIGKILL a worker mid-job", dead_worker_gone_after_s=round(detected, 1))
    row["jobs_cut_off"] = _retried(stack, task_ids)
    assert row["jobs_cut_off"] >= 1
    view = requests.get(f"{stack['url']}/jobs/{job_id}", timeout=10).json()
    assert view["status"] == "finished" and "stopped sending heartbeats" in view["previous_error"], view
    assert row["lost"] == 0
    stack["start_worker"]()  # back to two workers for the next scenarios
    wait_for(lambda: _metrics(stack)["workers"] == 2, 180, "the replacement worker")


def test_restart_redis_mid_batch(fault_stack):
    stack = fault_stack
    project, tasks = _project(stack, "redis-restart", 8)
    t0 = time.monotonic()
    task_ids = stack["ls"].import_tasks(project, tasks)
    _busy_worker(stack)
    alive = [p for p in stack["workers"] if p.poll() is None]
    assert len(alive) == 2
    server = stack["redis_server"]
    server.stop()
    time.sleep(5)  # the outage itself (not a wait for a result)
    server.start()
    row = _settled(stack, task_ids, t0, "restart Redis mid-batch (down 5 s)")
    row["jobs_cut_off"] = _retried(stack, task_ids)  # the row is the report's: it shows this too
    assert row["jobs_cut_off"] >= 1, "no job was running through the restart: the scenario tested nothing"
    assert all(p.poll() is None for p in alive), "a worker exited when Redis restarted"
    wait_for(lambda: _metrics(stack)["workers"] == 2, HEARTBEAT_TTL * 10, "both workers back in /metrics")
    assert row["duplicated"] == 0


def test_webhooks_while_redis_is_down_are_kept_and_handled(fault_stack):
    stack = fault_stack
    project, tasks = _project(stack, "redis-down-webhook", 4)
    server = stack["redis_server"]
    server.stop()
    try:
        t0 = time.monotonic()
        task_ids = stack["ls"].import_tasks(project, tasks)  # Label Studio sends TASKS_CREATED now, once
        health = requests.get(stack["url"] + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["spooled_requests"] >= 1
        for path in ("/health", "/metrics", "/jobs/anything"):  # every 503 names Redis without its password
            r = requests.get(stack["url"] + path, timeout=10)
            assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json"), path
            assert REDIS_PASSWORD not in r.text and f"redis://***@127.0.0.1:{server.port}/0" in r.text, r.text
    finally:
        server.start()
    _settled(stack, task_ids, t0, "webhooks during a Redis outage")


def test_label_studio_down_past_all_retries(fault_stack):
    stack = fault_stack
    ls, redis = stack["ls"], stack["redis"]
    project, tasks = _project(stack, "ls-down", 6)
    t0 = time.monotonic()
    task_ids = ls.import_tasks(project, tasks)
    ls.request_predictions(project)  # placeholders for the tasks not done yet
    _busy_worker(stack, min_done=0)
    ls.stop()

    def all_failed_or_done():
        counts = _metrics(stack)["queues"]["predict"]
        return counts if counts["queued"] == counts["started"] == counts["scheduled"] == 0 else None

    try:
        counts = wait_for(all_failed_or_done, 60 + 30 * len(task_ids), "every job to end while Label Studio is down")
        failed = counts["failed"]
        assert failed >= 1, "no job was cut off by the outage: the scenario tested nothing"
    finally:
        ls.start()
    _settled(stack, task_ids, t0, "Label Studio down past all retries", jobs_failed_while_down=failed)
    assert redis.ping()


def test_200_concurrent_requests(fault_stack):
    stack = fault_stack
    ls = stack["ls"]
    project, tasks = _project(stack, "concurrent", 10)
    t0 = time.monotonic()
    task_ids = ls.import_tasks(project, tasks)
    stored = ls.api.request("GET", f"/api/projects/{project}").json()
    created = stored["created_at"]
    body_of = {t: {"tasks": [{"id": t, "data": ls.api.request("GET", f"/api/tasks/{t}").json()["data"]}],
                   "label_config": stored["label_config"], "project": f"{project}.{created}"} for t in task_ids}

    def call(i: int) -> tuple[int, float]:
        if i in (50, 150):  # Label Studio's own "Retrieve predictions" among them (it stores placeholders)
            start = time.monotonic()
            ls.request_predictions(project)
            return 200, time.monotonic() - start
        start = time.monotonic()
        r = requests.post(stack["url"] + "/predict", json=body_of[task_ids[i % len(task_ids)]], timeout=60)
        return r.status_code, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, range(200)))
    statuses = [s for s, _ in answers]
    latencies = sorted(s for _, s in answers)
    assert statuses.count(200) == 200, statuses
    row = _settled(stack, task_ids, t0, "200 concurrent /predict", p50_ms=round(1000 * latencies[100]),
                   p99_ms=round(1000 * latencies[197]))  # fmt: skip
    assert row["duplicated"] == 0
    assert sorted(len(_jobs_of(stack, t)) for t in task_ids) == [1] * len(task_ids)  # one job per task


HOSTILE = [
    ("/predict", b"", "empty"),
    ("/predict", b"\xff\xfe\x00garbage", "not valid JSON"),
    ("/predict", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ("/webhook", b'{"action": null}', None),  # ignored, 200
    ("/webhook", json.dumps({"action": "TASKS_CREATED", "project": {"id": 1, "label_config": CONFIG},
                             "tasks": [{"id": 1, "data": {"frames": "x" * 10}}] * 3}).encode(), None),
    ("/setup", b'{"project": "1.1", "schema": "<View><Image name=\\"i\\" value=\\"$i\\"/></View>"}', "cannot serve"),
]


def test_malformed_and_hostile_inputs_never_get_a_500(fault_stack):
    from test_hardening import MALFORMED

    stack = fault_stack
    url = stack["url"]
    table = []
    for endpoint, body, reason in MALFORMED:
        r = requests.post(url + endpoint, json=body, timeout=30)
        table.append((endpoint, json.dumps(body)[:60], r.status_code, r.json().get("error", r.json().get("status"))))
        assert r.status_code == 400 and reason in r.json()["error"], (endpoint, body, r.text)
    for endpoint, raw, reason in HOSTILE:
        r = requests.post(url + endpoint, data=raw, headers={"Content-Type": "application/json"}, timeout=60)
        table.append((endpoint, repr(raw[:40]), r.status_code, r.json().get("error", r.json().get("status"))))
        assert r.headers["Content-Type"].startswith("application/json") and r.status_code != 500, r.text
        if reason:
            assert r.status_code == 400 and reason in r.json()["error"], r.text
    big = b'{"tasks": [{"id": 1, "data": {"x": "' + b"a" * (40 * 1024**2) + b'"}}]}'
    r = requests.post(url + "/predict", data=big, headers={"Content-Type": "application/json"}, timeout=120)
    table.append(("/predict", "40 MiB body", r.status_code, r.json()["error"]))
    assert r.status_code == 413 and "GLUS_MAX_REQUEST_BYTES" in r.json()["error"]
    for path in ("/jobs/..%2F..%2Fetc%2Fpasswd", "/nope"):
        r = requests.get(url + path, timeout=10)
        table.append(("GET " + path, "", r.status_code, r.json()["error"]))
        assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/json")
    r = requests.put(url + "/predict", json={}, timeout=10)
    table.append(("PUT /predict", "", r.status_code, r.json()["error"]))
    assert r.status_code == 405

    # hostile media in real Label Studio tasks: internal addresses are refused with a clear reason, nothing fetched
    ls = stack["ls"]
    project = ls.create_project("hostile-media", VIDEO_CONFIG)
    ls.connect_ml_backend(project, url)
    redis_port = stack["redis_server"].port
    hostile = [f"http://127.0.0.1:{redis_port}/INFO", "http://169.254.169.254/latest/meta-data/",
               "http://10.0.0.1/v.mp4", "file:///etc/passwd", "/data/local-files/?d=../../../../etc/passwd"]
    task_ids = ls.import_tasks(project, [{"video": v, "prompt": "x"} for v in hostile])
    expected = ["loopback address", "link-local address", "private address", "local files root", "outside"]
    for task_id, video, text in zip(task_ids, hostile, expected):
        def failed(task_id=task_id):
            for job_id in _jobs_of(stack, task_id):
                view = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
                return view if view["status"] == "failed" else None
            return None

        view = wait_for(failed, 120, f"the job of task {task_id} ({video}) to fail")
        table.append(("task media", video[:50], "job failed", view["error"][:90]))
        assert view["error_kind"] == "permanent" and text in view["error"], (video, view)
        assert "redis_version" not in view["error"]  # nothing of the internal service's answer is quoted
    assert len(table) >= 20 and not [row for row in table if row[2] == 500]
    REPORT.append({"scenario": f"malformed or hostile inputs ({len(table)})", "submitted": len(table),
                   "answers_500": sum(row[2] == 500 for row in table), "all_json_reasons": True})  # fmt: skip
    lines = [f"| {e} | {b} | {s} | {str(reason)[:90]} |" for e, b, s, reason in table]
    out = Path(os.environ.get("GLUS_FAULT_REPORT", ROOT / "tmp" / "fault-report.md")).with_name("hostile-inputs.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("| endpoint | input | status | reason |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")


def test_large_annotation_is_ingested_by_reference(fault_stack):
    """An annotation over GLUS_MAX_JOB_BYTES (a long video's per-frame masks) is not refused: its job stores the
    ids only, and the worker reads the annotation back from Label Studio."""
    stack = fault_stack
    ls, redis = stack["ls"], stack["redis"]
    project, tasks = _project(stack, "large-annotation", 1)
    t0 = time.monotonic()
    (task_id,) = ls.import_tasks(project, tasks)
    _settled(stack, [task_id], t0, "large annotation (setup)")
    REPORT.pop()
    prediction = next(p for p in ls.predictions(task_id) if p["model_version"] == stack["version"])
    assert len(json.dumps(prediction["result"])) > MAX_JOB_BYTES
    annotation_id = ls.create_annotation(task_id, prediction["result"])
    stored = (stack["tmp"] / "model_dir" / "data" / "annotations" / f"project_{project}" / f"task_{task_id}"
              / f"annotation_{annotation_id}.json")  # fmt: skip
    wait_for(stored.is_file, 120, "the ingest job to store the large annotation")
    assert len(json.loads(stored.read_text())["annotation"]["result"]) == len(prediction["result"])
    jobs = [k for k in redis.scan_iter(match=f"rq:job:{stack['prefix']}-ingest-*")
            if f"'annotation_id': {annotation_id}" in (redis.hget(k, "description") or b"").decode()]  # fmt: skip
    assert len(jobs) == 1 and len(redis.hget(jobs[0], "data") or b"") < MAX_JOB_BYTES


def test_a_chunk_whose_post_fails_loses_nothing_and_the_retry_only_posts(fault_stack):
    """Three chunk tasks of one video, one whole-video job. Label Studio goes down after the first chunk is posted:
    the later chunks' posts fail, the job fails (transient), and once Label Studio is back the retry (or the
    sweeper's requeue) posts the stored chunks without segmenting again; the first chunk is not posted twice."""
    stack = fault_stack
    ls, redis, prefix = stack["ls"], stack["redis"], stack["prefix"]
    project = ls.create_project("chunk-posts", CONFIG)
    ls.add_local_storage(project, ls.files_root / "faults")
    ls.connect_ml_backend(project, stack["url"])
    frames = stack["frames"]  # the 16 frames, three times: video positions 0-15, 16-31, 32-47
    chunks = [{"frames": frames, "video": "faults/chunk-posts.mp4", "start_frame": i * FRAMES, "frame_step": 1,
               "expression": "the bed"} for i in range(3)]  # fmt: skip
    t0 = time.monotonic()
    task_ids = ls.import_tasks(project, chunks)
    workers = [p for p in stack["workers"] if p.poll() is None]

    def first_posted():
        keys = [k.decode().split(":") for k in redis.scan_iter(match=f"{prefix}:posted:*:*", count=1000)]
        ours = [":".join(k) for k in keys if len(k) == 4 and k[3].isdigit() and int(k[3]) in task_ids]
        return ours if ours else None  # a video job's per-task markers: <prefix>:posted:<job>:<task>

    # poll Redis, not Label Studio: the window between the first chunk's post and the next is a few frames long
    posted = wait_for(first_posted, 120 + 10 * FRAMES, "the first chunk's post", interval=0.01)
    for p in workers:
        os.kill(p.pid, signal.SIGSTOP)
    try:
        posted = first_posted()
        assert len(posted) < len(task_ids), "every chunk was posted before the fault: the scenario tested nothing"
        job_id = posted[0].split(":")[-2]
        before = {int(k.rsplit(":", 1)[1]): int(redis.get(k)) for k in posted}
        ls.stop()
    finally:
        for p in workers:
            os.kill(p.pid, signal.SIGCONT)
    failure = f"job {job_id} failed (transient): ChunkPostsFailed"

    def failed_while_down():
        return any(failure in p.read_text() for p in stack["logs"].glob("worker*.log"))

    try:
        wait_for(failed_while_down, 60 + 10 * FRAMES, "the job to fail on the chunks it could not post")
    finally:
        ls.start()
    row = _settled(stack, task_ids, t0, "Label Studio down between two chunk posts", chunks_posted_before=len(before))
    view = requests.get(f"{stack['url']}/jobs/{job_id}", timeout=10).json()
    assert view["status"] == "finished" and view["result"]["segmented"] is False, view  # the last run only posted
    assert set(view["result"]["predictions"]) == {str(t) for t in task_ids}, view
    for task_id, prediction_id in before.items():  # posted once, kept
        assert [p["id"] for p in ls.predictions(task_id) if p["model_version"] == stack["version"]] == [prediction_id]
    assert row["duplicated"] == 0
