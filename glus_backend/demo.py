"""``glus-backend demo``: the whole stack on one machine, pre-labeling a demo project.

Starts (or reuses) Redis, starts a local Label Studio 1.23.2 (its own virtualenv, installed on first use), the
backend's web process and one worker with the bundled model, creates a project of synthetic videos as
frame-sequence tasks with referring expressions, connects the backend, and waits until every task has its
pre-annotation. Then it prints the URL and the login and keeps running; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from redis import Redis
from redis.exceptions import RedisError
from tqdm import tqdm

from .local_label_studio import LabelStudioServer, free_port
from .prompts import ObjectPrompt
from .registry import ModelRegistry

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "glus-demo-password"
PROJECT_TITLE = "GLUS demo: synthetic videos"
DEMO_LABELS = (("Object 1", "#ff3355"), ("Object 2", "#22aa44"), ("Object 3", "#3355ff"))
# one label per object (a video has up to three expressions), brush only: a region list of one entry per object and
# frame, each named after its object; the Header shows which expression each label stands for
# the smart KeyPoint row re-propagates an object from a clicked frame (interactive, docs/label-studio.md)
_LABELS = "".join(f'<Label value="{value}" background="{colour}"/>' for value, colour in DEMO_LABELS)
LABEL_CONFIG = (
    '<View>\n  <Header value="$expressions_text"/>\n  <Image name="frames" valueList="$frames"/>\n'
    f'  <BrushLabels name="mask" toName="frames">{_LABELS}</BrushLabels>\n'
    f'  <KeyPointLabels name="propagate" toName="frames" smart="true">{_LABELS}</KeyPointLabels>\n</View>'
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("demo_data"), help="Label Studio data, frames, logs")
    parser.add_argument("--label-studio-port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--videos", type=int, default=6, help="synthetic demo videos (one task each)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--checkpoint", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--exit-when-done", action="store_true", help="stop everything once the tasks are pre-labeled")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the pre-annotations")


def _redis(url: str, workdir: Path, procs: list) -> str:
    """``url`` if a Redis answers there, else a private redis-server on a free port."""
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except RedisError:
        pass
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(f"no Redis at {url} and no redis-server on PATH: install redis-server (apt) or set REDIS_URL")
    port = free_port()
    procs.append(
        subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            Redis.from_url(url).ping()
            return url
        except RedisError:
            time.sleep(0.1)
    raise SystemExit("the private redis-server did not start")


def _demo_tasks(files_root: Path, count: int) -> list[dict]:
    """Synthetic test-split videos written as frames under Label Studio's local-files root."""
    import cv2

    from model.synthetic.world import WorldConfig, generate_video

    from .video_import import expressions_text

    tasks = []
    for i in range(count):
        video = generate_video(10_000 + i, WorldConfig())
        folder = files_root / "demo" / f"video{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        urls = []
        for t, frame in enumerate(video.frames):
            big = cv2.resize(frame, (frame.shape[1] * 4, frame.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(folder / f"{t:05d}.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
            urls.append(f"/data/local-files/?d=demo/video{i:02d}/{t:05d}.png")
        objects = [ObjectPrompt(e.text, label) for e, (label, _) in zip(video.expressions[:3], DEMO_LABELS)]
        tasks.append({"frames": urls, "expressions": [{"text": o.expression, "label": o.label} for o in objects],
                      "expressions_text": expressions_text(objects, labelled=True), "video": f"video{i:02d}"})
    return tasks


def run_demo(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or os.environ.get("GLUS_CHECKPOINT")
    version = ModelRegistry(workdir / "model_dir", checkpoint).current()  # fails clearly without a model
    procs: list[subprocess.Popen] = []
    server = LabelStudioServer(
        workdir / "label-studio", port=args.label_studio_port, admin_email=DEMO_EMAIL, admin_password=DEMO_PASSWORD
    )
    try:
        redis_url = _redis(args.redis_url, workdir, procs)
        logger.info("starting Label Studio (first start migrates its database: about a minute)")
        server.start()
        backend = f"http://127.0.0.1:{args.backend_port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LABEL_STUDIO_URL": server.url,
            "LABEL_STUDIO_API_KEY": server.pat,
            "REDIS_URL": redis_url,
            "GLUS_QUEUE_PREFIX": "glus-demo",
            "MODEL_DIR": str(workdir / "model_dir"),
            "LOCAL_FILES_DOCUMENT_ROOT": str(server.files_root),
            "GLUS_DEVICE": "cpu",
        }
        if checkpoint:
            env["GLUS_CHECKPOINT"] = str(checkpoint)
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "_wsgi.py"), "--host", "127.0.0.1", "--port", str(args.backend_port)],
                env=env,
                stdout=open(logs / "web.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "glus_backend.cli", "worker"],
                env=env,
                stdout=open(logs / "worker.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
        _wait_for(
            lambda: requests.get(backend + "/metrics", timeout=2).json()["workers"] > 0,
            180,
            "the backend and its worker",
        )
        projects = server.api.request("GET", "/api/projects", params={"title": PROJECT_TITLE}).json()
        existing = [p for p in projects.get("results", projects) if p.get("title") == PROJECT_TITLE]
        if existing:
            project = int(existing[0]["id"])
            task_ids = [t["id"] for t in server.api.export_tasks(project, all_tasks=True)]
            logger.info("reusing project %d (%d tasks)", project, len(task_ids))
        else:
            project = server.create_project(PROJECT_TITLE, LABEL_CONFIG)
            server.add_local_storage(project, _demo_root(server))
            server.connect_ml_backend(project, backend, interactive=True)
            task_ids = server.import_tasks(project, _demo_tasks(server.files_root, args.videos))
        _wait_for_predictions(server, task_ids, version.version, args.timeout)
        print(f"\nGLUS demo ready: {server.url}/projects/{project}/data")
        print(f"  login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
        print(f"  backend: {backend} (model {version.version}); logs in {logs}")
        if args.exit_when_done:
            return 0
        print("Ctrl-C stops Label Studio, the backend, the worker (and Redis if the demo started it).")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        logger.error("a demo process exited; see the logs in %s", logs)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


def _demo_root(server: LabelStudioServer) -> Path:
    path = server.files_root / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def _wait_for_predictions(server: LabelStudioServer, task_ids: list[int], version: str, timeout: float) -> None:
    done: set[int] = set()
    with tqdm(total=len(task_ids), unit="task", desc="pre-labeling") as bar:
        deadline = time.time() + timeout
        while len(done) < len(task_ids):
            for task_id in task_ids:
                if task_id not in done and any(p.get("model_version") == version for p in server.predictions(task_id)):
                    done.add(task_id)
                    bar.update(1)
            if time.time() > deadline:
                raise SystemExit(f"only {len(done)} of {len(task_ids)} tasks were pre-labeled in {timeout:.0f} s")
            time.sleep(1)
