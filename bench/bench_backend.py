"""Backend latency and throughput, measured against a real Redis and real processes.

1. ``/predict`` latency: the web process (gunicorn, as deployed) with 200 predict jobs already waiting in
   the queue; percentiles over repeated single-task requests (Label Studio opening a task) and one 200-task
   request (a Data Manager "retrieve predictions" action). Label Studio's limits: 100 s for /predict, and we
   aim for well under 1 s.
2. End-to-end time per frame: frame-sequence tasks through the queue to one CPU worker with glus-tiny,
   from enqueue to finished job, versus the model alone (``VideoSegmenter`` in-process) on the same frames.

    python bench/bench_backend.py [--tasks 4 --frames 16]
Uses Redis DB 14 (GLUS_BENCH_REDIS_DB) and a unique prefix; removes only its own keys.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import requests
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """<View><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels></View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples: list[float]) -> str:
    q = np.percentile(np.array(samples) * 1000, [50, 90, 99])
    return f"p50 {q[0]:.1f} ms  p90 {q[1]:.1f} ms  p99 {q[2]:.1f} ms  max {max(samples) * 1000:.1f} ms"


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()

    import torch

    from model.checkpoint import save_pretrained
    from model.factory import random_model
    from model.inference import VideoSegmenter
    from model.video_io import FrameFiles

    db = int(os.environ.get("GLUS_BENCH_REDIS_DB", "14"))
    prefix = f"glusbench{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(f"redis://127.0.0.1:6379/{db}")
    tmp = Path(tempfile.mkdtemp(prefix="glus-bench-"))
    model, tok = random_model("glus-tiny", seed=0, seg_logit_bias=20.0)
    save_pretrained(model, tok, tmp / "ckpt")
    files = tmp / "files"
    (files / "frames").mkdir(parents=True)
    for t in range(args.frames):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[80:140, 10 + 10 * t : 70 + 10 * t] = (20, 20, 220)
        cv2.imwrite(str(files / "frames" / f"{t:05d}.jpg"), frame)
    urls = [f"/data/local-files/?d=frames/{t:05d}.jpg" for t in range(args.frames)]
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:6379/{db}",
        "GLUS_QUEUE_PREFIX": prefix,
        "MODEL_DIR": str(tmp / "model_dir"),
        "GLUS_CHECKPOINT": str(tmp / "ckpt"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--threads",
            "8",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT),
            "_wsgi:app",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    worker = None
    try:
        wait_http(base + "/health")
        # 1. /predict latency with a busy queue
        backlog = [
            {"id": 100000 + i, "data": {"frames": urls, "expression": f"object {i}"}} for i in range(args.queued)
        ]
        requests.post(
            base + "/predict", json={"tasks": backlog, "label_config": CONFIG, "project": "1.1"}
        ).raise_for_status()
        single = []
        for i in range(args.requests):
            task = {"id": 200000 + i, "data": {"frames": urls, "expression": "the blue square"}}
            t0 = time.perf_counter()
            requests.post(
                base + "/predict", json={"tasks": [task], "label_config": CONFIG, "project": "1.1"}
            ).raise_for_status()
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        requests.post(
            base + "/predict", json={"tasks": backlog, "label_config": CONFIG, "project": "1.1"}
        ).raise_for_status()
        batch = time.perf_counter() - t0
        health = []
        for _ in range(50):
            t0 = time.perf_counter()
            requests.get(base + "/health").raise_for_status()
            health.append(time.perf_counter() - t0)
        queued = requests.get(base + "/metrics").json()["queues"]["predict"]["queued"]
        print(f"/predict, 1 task per request, {queued} jobs queued: {percentiles(single)}")
        print(f"/predict, one request of {len(backlog)} tasks (all already queued): {batch * 1000:.1f} ms")
        print(f"/health: {percentiles(health)}")

        # 2. end to end through the queue (fresh prefix so the backlog is not in the way)
        env2 = dict(env, GLUS_QUEUE_PREFIX=prefix + "e2e")
        port2 = free_port()
        web2 = subprocess.Popen(
            [sys.executable, str(ROOT / "_wsgi.py"), "--host", "127.0.0.1", "--port", str(port2)],
            env=env2,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base2 = f"http://127.0.0.1:{port2}"
        wait_http(base2 + "/health")
        worker = subprocess.Popen(
            [sys.executable, "-m", "glus_backend.cli", "worker", "--device", "cpu"],
            env=env2,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not requests.get(base2 + "/metrics").json()["workers"]:
            time.sleep(0.2)
        tasks = [{"id": i, "data": {"frames": urls, "expression": "the blue square"}} for i in range(args.tasks)]
        t0 = time.perf_counter()
        requests.post(
            base2 + "/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "1.1"}
        ).raise_for_status()
        while True:
            counts = requests.get(base2 + "/metrics").json()["queues"]["predict"]
            if counts["finished"] + counts["failed"] >= args.tasks:
                break
            time.sleep(0.1)
        e2e = time.perf_counter() - t0
        web2.terminate()
        frames_total = args.tasks * args.frames
        torch.set_num_threads(2)
        segmenter = VideoSegmenter(model, tok)
        source = FrameFiles(sorted((files / "frames").glob("*.jpg")))
        segmenter.segment(source, ["warm-up"])
        t0 = time.perf_counter()
        for _ in range(args.tasks):
            segmenter.segment(FrameFiles(sorted((files / "frames").glob("*.jpg"))), ["the blue square"])
        alone = time.perf_counter() - t0
        print(
            f"end to end through the queue, {args.tasks} tasks x {args.frames} frames, 1 CPU worker, glus-tiny: "
            f"{e2e / frames_total * 1000:.1f} ms/frame ({counts['failed']} failed)"
        )
        print(
            f"model alone in-process on the same frames: {alone / frames_total * 1000:.1f} ms/frame; "
            f"queue + media + result encoding overhead: {(e2e - alone) / frames_total * 1000:.1f} ms/frame"
        )
        print(
            json.dumps(
                {"predict_p50_ms": statistics.median(single) * 1000, "e2e_ms_per_frame": e2e / frames_total * 1000}
            )
        )
    finally:
        web.terminate()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        keys = set(redis.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            redis.delete(*keys)
        for key in redis.scan_iter(match="rq:job:predict-*", count=1000):
            origin = redis.hget(key, "origin")
            if origin and prefix.encode() in origin:
                redis.delete(key)


if __name__ == "__main__":
    main()
