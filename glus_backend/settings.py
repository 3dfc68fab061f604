"""Configuration from environment variables, with Label Studio's ML-backend names where they exist.

Every variable is listed, with its default, in docs/configuration.md; ``Settings.describe()``
prints the same list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .prompts import DEFAULT_EXPRESSION_FIELDS
from .redact import redact_url


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return default


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    # --- Label Studio (same names as Label Studio's ML backends) ---
    label_studio_url: str | None = None  # LABEL_STUDIO_URL (alias LABEL_STUDIO_HOST)
    label_studio_api_key: str | None = None  # LABEL_STUDIO_API_KEY (alias LABEL_STUDIO_ACCESS_TOKEN): legacy or PAT
    basic_auth_user: str | None = None  # BASIC_AUTH_USER
    basic_auth_pass: str | None = None  # BASIC_AUTH_PASS
    model_dir: Path = Path("model_dir")  # MODEL_DIR: registry, corrections, media cache
    local_files_root: Path | None = None  # LOCAL_FILES_DOCUMENT_ROOT (alias LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)
    # --- queues ---
    redis_url: str = "redis://127.0.0.1:6379/0"  # REDIS_URL
    queue_prefix: str = "glus"  # GLUS_QUEUE_PREFIX: queue names and Redis keys start with it
    # --- model ---
    checkpoint: str | None = None  # GLUS_CHECKPOINT: model directory (default: the bundled demo model)
    model_store: str | None = None  # GLUS_MODEL_STORE: folder or fsspec URL of registered versions (MODEL_DIR/versions)
    clip_dir: str | None = None  # GLUS_CLIP_DIR: local CLIP folder, for released GLUS checkpoints
    sam2_checkpoint: str | None = None  # GLUS_SAM2_CHECKPOINT: optional SAM-2 .pt, for released checkpoints
    sam2_config: str | None = None  # GLUS_SAM2_CONFIG: the SAM-2 a released folder was trained with (sam2-hiera-l)
    device: str = "auto"  # GLUS_DEVICE: auto | cpu | cuda | cuda:N
    precision: str = "auto"  # GLUS_PRECISION: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    schedule: str = "sliding"  # GLUS_SCHEDULE: sliding | clip
    key_frames: str = "first"  # GLUS_KEY_FRAMES: first | confidence
    llm_every: int = 1  # GLUS_LLM_EVERY: throughput mode, the LLM on every k-th frame (sliding schedule)
    sa2va_mode: str | None = None  # GLUS_SA2VA_MODE: sa2va | sa2va-i (default: sa2va-i for a Sa2VA-i folder)
    sa2va_key_frames: int = 5  # GLUS_SA2VA_KEY_FRAMES: frames a Sa2VA model's MLLM sees
    # --- prediction ---
    expression_fields: tuple[str, ...] = DEFAULT_EXPRESSION_FIELDS  # GLUS_EXPRESSION_FIELDS
    prelabel_on_import: bool = True  # GLUS_PRELABEL_ON_IMPORT: TASKS_CREATED webhooks enqueue predictions
    whole_video: bool = True  # GLUS_WHOLE_VIDEO: chunk tasks of one video are pre-labeled by one job over the video
    repropagate_corrections: bool = True  # GLUS_REPROPAGATE_CORRECTIONS: offer corrections propagated to later frames
    repropagate_prompt: str = "seg"  # GLUS_REPROPAGATE_PROMPT: seg (GLUS [SEG] + memory) | memory (SAM-2 tracking)
    interactive_wait: float = 60.0  # GLUS_INTERACTIVE_WAIT: seconds /predict waits for an interactive click job
    max_frames: int = 3000  # GLUS_MAX_FRAMES: longer videos fail with a clear reason
    max_media_bytes: int = 2 * 1024**3  # GLUS_MAX_MEDIA_BYTES
    max_objects: int = 20  # GLUS_MAX_OBJECTS: expressions per task
    predict_timeout: int = 3600  # GLUS_PREDICT_TIMEOUT: seconds a predict job may run
    job_retries: int = 3  # GLUS_JOB_RETRIES: retries of transient failures (media fetch, Label Studio API)
    retry_intervals: tuple[int, ...] = (5, 30, 120)  # GLUS_RETRY_INTERVALS (seconds, comma separated)
    result_ttl: int = 7 * 24 * 3600  # GLUS_RESULT_TTL: seconds finished predictions stay in the result store
    # --- reliability and limits ---
    heartbeat_ttl: int = 30  # GLUS_HEARTBEAT_TTL: a worker silent this long is dead; its job is retried or failed
    sweep_interval: int = 15  # GLUS_SWEEP_INTERVAL: seconds between sweeps (stale placeholders, unposted results)
    max_request_bytes: int = 32 * 1024**2  # GLUS_MAX_REQUEST_BYTES: larger request bodies get 413
    max_job_bytes: int = 4 * 1024**2  # GLUS_MAX_JOB_BYTES: the most one job may store in Redis (its payload)
    ssrf_protection: bool = True  # GLUS_SSRF_PROTECTION: refuse media on loopback/private/link-local addresses
    media_allowed_hosts: tuple[str, ...] = ()  # GLUS_MEDIA_ALLOWED_HOSTS: hosts or CIDRs exempt from that rule
    spool_dir: Path | None = None  # GLUS_SPOOL_DIR: requests kept while Redis is down (MODEL_DIR/spool)
    # --- learning from corrections ---
    train_every: int = 0  # GLUS_TRAIN_EVERY: enqueue a training run every N corrections (0: only on request)
    train_steps: int = 200  # GLUS_TRAIN_STEPS: optimizer steps of one fine-tuning run
    train_lr: float = 3e-4  # GLUS_TRAIN_LR: GLUS's fine-tuning learning rate
    train_batch_size: int = 4  # GLUS_TRAIN_BATCH_SIZE: videos per step
    train_contrastive_weight: float = 0.1  # GLUS_TRAIN_CONTRASTIVE_WEIGHT: object contrastive loss weight
    train_processes: int = 1  # GLUS_TRAIN_PROCESSES: data-parallel processes (GPUs) of a run; > 1 uses torchrun
    heldout_fraction: float = 0.2  # GLUS_HELDOUT_FRACTION: corrected tasks kept out of training for the gate
    gate_tolerance: float = 0.0  # GLUS_GATE_TOLERANCE: promote if candidate J&F >= current J&F - tolerance
    relabel_on_promote: bool = False  # GLUS_RELABEL_ON_PROMOTE: re-predict unannotated tasks after a promotion
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        local_root = _env("LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
        intervals = _env("GLUS_RETRY_INTERVALS")
        fields_env = _env("GLUS_EXPRESSION_FIELDS")
        return cls(
            label_studio_url=(_env("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST") or "").rstrip("/") or None,
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            basic_auth_user=_env("BASIC_AUTH_USER"),
            basic_auth_pass=_env("BASIC_AUTH_PASS"),
            model_dir=Path(_env("MODEL_DIR", default="model_dir")),
            local_files_root=Path(local_root) if local_root else None,
            redis_url=_env("REDIS_URL", default="redis://127.0.0.1:6379/0"),
            queue_prefix=_env("GLUS_QUEUE_PREFIX", default="glus"),
            checkpoint=_env("GLUS_CHECKPOINT"),
            model_store=_env("GLUS_MODEL_STORE"),
            clip_dir=_env("GLUS_CLIP_DIR"),
            sam2_checkpoint=_env("GLUS_SAM2_CHECKPOINT"),
            sam2_config=_env("GLUS_SAM2_CONFIG"),
            device=_env("GLUS_DEVICE", default="auto"),
            precision=_env("GLUS_PRECISION", default="auto"),
            schedule=_env("GLUS_SCHEDULE", default="sliding"),
            key_frames=_env("GLUS_KEY_FRAMES", default="first"),
            llm_every=int(_env("GLUS_LLM_EVERY", default="1")),
            sa2va_mode=_env("GLUS_SA2VA_MODE") or None,
            sa2va_key_frames=int(_env("GLUS_SA2VA_KEY_FRAMES", default="5")),
            expression_fields=tuple(f.strip() for f in fields_env.split(",") if f.strip())
            if fields_env
            else cls.expression_fields,
            prelabel_on_import=_bool(_env("GLUS_PRELABEL_ON_IMPORT"), True),
            whole_video=_bool(_env("GLUS_WHOLE_VIDEO"), True),
            repropagate_corrections=_bool(_env("GLUS_REPROPAGATE_CORRECTIONS"), True),
            repropagate_prompt=_env("GLUS_REPROPAGATE_PROMPT", default="seg"),
            interactive_wait=float(_env("GLUS_INTERACTIVE_WAIT", default="60")),
            max_frames=int(_env("GLUS_MAX_FRAMES", default="3000")),
            max_media_bytes=int(_env("GLUS_MAX_MEDIA_BYTES", default=str(2 * 1024**3))),
            max_objects=int(_env("GLUS_MAX_OBJECTS", default="20")),
            predict_timeout=int(_env("GLUS_PREDICT_TIMEOUT", default="3600")),
            job_retries=int(_env("GLUS_JOB_RETRIES", default="3")),
            retry_intervals=tuple(int(x) for x in intervals.split(",")) if intervals else cls.retry_intervals,
            result_ttl=int(_env("GLUS_RESULT_TTL", default=str(7 * 24 * 3600))),
            heartbeat_ttl=int(_env("GLUS_HEARTBEAT_TTL", default="30")),
            sweep_interval=int(_env("GLUS_SWEEP_INTERVAL", default="15")),
            max_request_bytes=int(_env("GLUS_MAX_REQUEST_BYTES", default=str(32 * 1024**2))),
            max_job_bytes=int(_env("GLUS_MAX_JOB_BYTES", default=str(4 * 1024**2))),
            ssrf_protection=_bool(_env("GLUS_SSRF_PROTECTION"), True),
            media_allowed_hosts=tuple(h.strip() for h in (_env("GLUS_MEDIA_ALLOWED_HOSTS") or "").split(",")
                                      if h.strip()),
            spool_dir=Path(spool) if (spool := _env("GLUS_SPOOL_DIR")) else None,
            train_every=int(_env("GLUS_TRAIN_EVERY", default="0")),
            train_steps=int(_env("GLUS_TRAIN_STEPS", default="200")),
            train_lr=float(_env("GLUS_TRAIN_LR", default="3e-4")),
            train_batch_size=int(_env("GLUS_TRAIN_BATCH_SIZE", default="4")),
            train_contrastive_weight=float(_env("GLUS_TRAIN_CONTRASTIVE_WEIGHT", default="0.1")),
            train_processes=int(_env("GLUS_TRAIN_PROCESSES", default="1")),
            heldout_fraction=float(_env("GLUS_HELDOUT_FRACTION", default="0.2")),
            gate_tolerance=float(_env("GLUS_GATE_TOLERANCE", default="0.0")),
            relabel_on_promote=_bool(_env("GLUS_RELABEL_ON_PROMOTE"), False),
        )

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.model_dir / "spool"

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_pass:
            return self.basic_auth_user, self.basic_auth_pass
        return None

    def describe(self) -> dict[str, object]:
        """Settings with secrets masked (for logs and /health)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("label_studio_api_key", "basic_auth_pass") and value:
                value = "***"
            elif f.name in ("redis_url", "label_studio_url", "model_store", "checkpoint") and value:
                value = redact_url(str(value))
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out
