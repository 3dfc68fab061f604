import contextlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixture_model import FIXTURE_DIR  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"
VIDEO_CONFIG = """<View>
  <Labels name="videoLabels" toName="video"><Label value="Object"/></Labels>
  <Video name="video" value="$video"/>
  <VideoRectangle name="box" toName="video"/>
</View>"""


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def require_fixture() -> Path:
    if not (FIXTURE_DIR / "weights.safetensors").is_file():
        pytest.fail(f"parity fixture missing at {FIXTURE_DIR} (shared/ must sit beside the checkout)")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny():
    """A seeded random glus-tiny whose LLM predicts [SEG] (so the SAM-2 path runs)."""
    from model.factory import random_model

    model, tokenizer = random_model("glus-tiny", seed=0, seg_logit_bias=20.0)
    return model, tokenizer


@pytest.fixture(scope="session")
def moving_square_video():
    """12 frames, 96x128, a red square moving right over a noisy ramp: distinct frames, deterministic."""
    import numpy as np

    rng = np.random.default_rng(0)
    frames = []
    for t in range(12):
        base = np.tile(np.linspace(0, 200, 128, dtype=np.uint8)[None, :, None], (96, 1, 3))
        frame = np.clip(base.astype(int) + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)
        x = 5 + 8 * t
        frame[30:54, x : x + 24] = (220, 20, 20)
        frames.append(frame)
    return np.stack(frames)


def test_redis_url() -> str:
    import os

    return f"redis://127.0.0.1:6379/{int(os.environ.get('GLUS_TEST_REDIS_DB', '13'))}"


test_redis_url.__test__ = False  # a helper, not a test


def delete_test_keys(redis, prefix: str, job_ids=()) -> None:
    """Remove only what a test created: keys naming its prefix (queues, registries, store) and its jobs."""
    keys = set(redis.scan_iter(match=f"*{prefix}*", count=1000))
    for job_id in job_ids:
        keys.update(redis.scan_iter(match=f"rq:*{job_id}*", count=1000))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def redis_prefix(request):
    """A real Redis connection (test DB) and a unique key prefix; the test's keys are removed afterwards."""
    import uuid

    from redis import Redis

    redis = Redis.from_url(test_redis_url())
    try:
        redis.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is needed at {test_redis_url()}: {exc}")
    prefix = f"glustest{uuid.uuid4().hex[:10]}"
    created: list[str] = []
    yield redis, prefix, created
    delete_test_keys(redis, prefix, created)


@contextlib.contextmanager
def job_runtime(redis_prefix, tmp_path, model, frames):
    """A worker runtime as the job functions see it (``current_runtime()``): ``model`` saved as the checkpoint,
    real Redis under the test's prefix, ``frames`` (RGB arrays) under the local-files root as ``v/00000.png`` ...
    (URLs ``/data/local-files/?d=v/00000.png``), CPU. Tests replace ``label_studio`` with a fake."""
    import cv2

    from glus_backend import worker
    from glus_backend.settings import Settings
    from model.checkpoint import save_pretrained

    redis, prefix, _ = redis_prefix
    save_pretrained(*model, tmp_path / "ckpt")
    root = tmp_path / "files"
    (root / "v").mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(root / "v" / f"{t:05d}.png"), frame)
    settings = Settings(queue_prefix=prefix, model_dir=tmp_path / "model_dir", checkpoint=str(tmp_path / "ckpt"),
                        local_files_root=root, label_studio_url="http://ls.invalid", label_studio_api_key="k",
                        device="cpu")  # fmt: skip
    runtime = worker.WorkerRuntime(settings, redis)
    token = worker._RUNTIME.set(runtime)
    try:
        yield runtime
    finally:
        worker._RUNTIME.reset(token)
