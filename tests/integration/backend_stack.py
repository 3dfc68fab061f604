"""The backend's real processes for integration tests: the web process (``_wsgi.py``) and one RQ worker
subprocess, on a test Redis prefix, talking to a real Label Studio. Everything they create in Redis is removed
afterwards; their logs stay in ``tmp/logs``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from conftest import ROOT, delete_test_keys
from redis import Redis

HINTS_CONFIG = """<View>
  <Header value="$expressions_text"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames">
    <Label value="Bed" hint="the bed" background="red"/><Label value="Window" hint="the window" background="blue"/>
  </BrushLabels>
</View>"""
"""A frame-sequence config whose label hints are the prompts (two objects)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_factor() -> float:
    """How much slower than idle this machine runs now, roughly: the 1-minute load average per core, at least 1.
    Every wait below is multiplied by it, so that a loaded CI machine gets proportionally longer."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def work_budget(frames: int, objects: int = 1, per_frame_s: float = 1.0, base_s: float = 60.0) -> float:
    """Seconds to allow a worker for ``frames`` x ``objects`` of tiny-model work: a start-up ``base_s`` (model load,
    Label Studio round trips) plus ``per_frame_s`` per frame and object (the tiny model takes ~0.05 s on this CPU),
    scaled by :func:`load_factor`."""
    return (base_s + per_frame_s * frames * objects) * load_factor()


def ui_budget(seconds: float = 30.0) -> float:
    """Seconds to allow the labeling page for one step (a load, a render), scaled by :func:`load_factor`."""
    return seconds * load_factor()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """``predicate()``'s first truthy value, polled until ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def responds(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running_backend(label_studio, redis_url: str, tmp: Path, env: dict[str, str] | None = None, workers: int = 1
                    ) -> Iterator[dict]:  # fmt: skip
    """Start web + ``workers`` workers with ``MODEL_DIR=tmp/model_dir`` (``env`` adds or overrides settings); yields
    ``{"url", "ls", "tmp", "logs", "redis", "prefix", "version", "env", "web", "workers", "start_worker"}``."""
    prefix = f"glustest{uuid.uuid4().hex[:10]}"
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.pat,
        "REDIS_URL": redis_url,
        "GLUS_QUEUE_PREFIX": prefix,
        "MODEL_DIR": str(tmp / "model_dir"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
        "GLUS_JOB_RETRIES": "2",
        "GLUS_RETRY_INTERVALS": "1",
        **(env or {}),
    }
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    web = subprocess.Popen(
        [sys.executable, str(ROOT / "_wsgi.py"), "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=open(logs / "web.log", "w"),
        stderr=subprocess.STDOUT,
    )
    worker_procs: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        name = "worker.log" if not worker_procs else f"worker{len(worker_procs) + 1}.log"
        worker_procs.append(subprocess.Popen(
            [sys.executable, "-m", "glus_backend.cli", "worker", "--device", "cpu"],
            env=full_env,
            stdout=open(logs / name, "a"),
            stderr=subprocess.STDOUT,
        ))  # fmt: skip
        return worker_procs[-1]

    for _ in range(workers):
        start_worker()
    url = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(redis_url)
    try:
        wait_for(lambda: responds(url + "/health"), 60, "the backend web process")
        wait_for(lambda: requests.get(url + "/metrics", timeout=2).json()["workers"] >= workers, 120 * workers,
                 "the workers")  # fmt: skip
        yield {
            "url": url,
            "ls": label_studio,
            "tmp": tmp,
            "logs": logs,
            "redis": redis,
            "prefix": prefix,
            "version": requests.get(url + "/health").json()["model_version"],
            "env": full_env,
            "web": web,
            "workers": worker_procs,
            "start_worker": start_worker,
        }
    finally:
        for proc in (web, *worker_procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in (web, *worker_procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        job_ids = [
            k.decode().split(":")[-1]
            for k in redis.scan_iter(match="rq:job:*", count=1000)
            if (redis.hget(k, "origin") or b"").decode().startswith(prefix)
        ]
        delete_test_keys(redis, prefix, job_ids)


@contextmanager
def tiny_model_backend(label_studio, redis_url: str, tmp: Path) -> Iterator[dict]:
    """:func:`running_backend` serving a seeded random glus-tiny whose LLM predicts [SEG] (so masks exist)."""
    from model.checkpoint import save_pretrained
    from model.factory import random_model

    save_pretrained(*random_model("glus-tiny", seed=0, seg_logit_bias=20.0), tmp / "ckpt")
    with running_backend(label_studio, redis_url, tmp, {"GLUS_CHECKPOINT": str(tmp / "ckpt")}) as running:
        yield running


def write_frames(ls, rel: str, n: int, size: tuple[int, int] = (320, 180)) -> list[str]:
    """The first ``n`` frames of a real video (sam2's bedroom.mp4), resized, under Label Studio's local-files root;
    their ``/data/local-files`` URLs."""
    import cv2
    from conftest import SHARED_VIDEOS

    cap = cv2.VideoCapture(str(SHARED_VIDEOS / "bedroom.mp4"))
    folder = ls.files_root / rel
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for i in range(n):
        ok, frame = cap.read()
        assert ok, f"bedroom.mp4 has fewer than {n} frames"
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.resize(frame, size))
        urls.append(f"/data/local-files/?d={rel}/{i:05d}.jpg")
    cap.release()
    return urls
