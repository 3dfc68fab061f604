"""RQ queues, idempotent job ids, and the result store, shared by the web process and the workers.

Queues: ``<prefix>-predict`` (segment a task's media and post a prediction), ``<prefix>-ingest`` (store an
annotator's correction), ``<prefix>-train`` (fine-tune). A predict job's id hashes what determines its
output - the task, its data (media and expressions), the prompt context, the label config and the model
version - so a repeated request finds the existing job instead of running or posting again. A claim key set
with ``SET NX`` closes the race between two web threads enqueueing the same id.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from .label_config import UnsupportedLabelConfig, served_config
from .settings import Settings
from .video_chunks import ChunkRef, chunk_ref, prompt_fields

PREDICT, INGEST, TRAIN = "predict", "ingest", "train"
QUEUE_KINDS = (PREDICT, INGEST, TRAIN)
PREDICT_FUNC = "glus_backend.jobs.predict_task"
PREDICT_VIDEO_FUNC = "glus_backend.video_jobs.predict_video"
REPROPAGATE_FUNC = "glus_backend.correction_jobs.repropagate_correction"
CLICKS_FUNC = "glus_backend.correction_jobs.propagate_clicks"
INGEST_FUNC = "glus_backend.jobs.ingest_annotation"
DELETE_FUNC = "glus_backend.jobs.delete_annotations"
TRAIN_FUNC = "glus_backend.jobs.train_from_corrections"
PENDING_MODEL_VERSION = "pending"
FAILED_MODEL_VERSION = "failed"  # /predict's answer for a task whose job failed for good
RUNNING_PREFIX = "running"  # a placeholder's model version while its job runs: "running 40%"


def is_placeholder(prediction: dict) -> bool:
    """An empty prediction standing in for one being computed (``pending``, or ``running ...`` with progress)."""
    version = str(prediction.get("model_version") or "")
    return not prediction.get("result") and (version == PENDING_MODEL_VERSION or version.startswith(RUNNING_PREFIX))


def _frames_key(label_config: str) -> str | None:
    """The task data key of a frame-sequence config's frame list; None for other (or unservable) configs."""
    try:
        config = served_config(label_config)
    except UnsupportedLabelConfig:
        return None
    return config.value_key if config.kind == "frames" else None


def _chunk_of(data: dict, label_config: str) -> ChunkRef | None:
    key = _frames_key(label_config)
    return chunk_ref(data, key) if key is not None else None


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def make_job_id(prefix: str, kind: str, *parts: Any) -> str:
    """``<prefix>-<kind>-<hash of parts>``: the same inputs always give the same id, and deployments (or tests)
    with other prefixes on the same Redis never share one (RQ's job keys are not prefixed)."""
    return f"{prefix}-{kind}-{_digest(*parts)}"


class JobTooLarge(ValueError):
    """A job's payload is over ``GLUS_MAX_JOB_BYTES`` (it would be stored in Redis for ``GLUS_RESULT_TTL``)."""


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    created: bool  # False: the same job already existed (queued, running, finished or failed)
    status: str
    per_task: bool = False  # a video job: its results are stored per task (``get_prediction(job_id, task_id)``)


class JobQueues:
    """The project's queues on one Redis connection; all names and keys start with the prefix."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.queue_prefix

    def name(self, kind: str) -> str:
        if kind not in QUEUE_KINDS:
            raise ValueError(f"unknown queue {kind!r}")
        return f"{self.prefix}-{kind}"

    def queue(self, kind: str) -> Queue:
        return Queue(self.name(kind), connection=self.redis)

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])

    def job_id(self, kind: str, *parts: Any) -> str:
        """This deployment's id of a job: see :func:`make_job_id`."""
        return make_job_id(self.prefix, kind, *parts)

    def predict_job_id(self, task_id: int, data: dict, context: Any, label_config: str, model_version: str,
                       scope: tuple = ()) -> str:  # fmt: skip
        """``scope`` (Label Studio URL, project id) keeps task ids of different Label Studio instances apart."""
        return self.job_id(PREDICT, task_id, data, context, label_config, model_version, *scope)

    def fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None

    def _retry(self) -> Retry | None:
        if self.settings.job_retries <= 0:
            return None
        return Retry(max=self.settings.job_retries, interval=list(self.settings.retry_intervals))

    def enqueue(
        self, kind: str, func: str, job_id: str, payload: dict, timeout: int, meta: dict | None = None,
        at_front: bool = False,
    ) -> Enqueued:  # fmt: skip
        """Enqueue ``func(payload)`` under ``job_id`` unless a job with that id exists (idempotent).

        A job that failed for a transient reason after all its retries (Label Studio or media down, its worker
        died) is requeued: asking again is how a user retries. Payloads over ``GLUS_MAX_JOB_BYTES`` raise
        :class:`JobTooLarge`.
        """
        size = len(json.dumps(payload, default=str))
        if size > self.settings.max_job_bytes:
            raise JobTooLarge(f"the {kind} job would store {size} bytes, over GLUS_MAX_JOB_BYTES="
                              f"{self.settings.max_job_bytes}")
        existing = self.fetch(job_id)
        if existing is not None:
            status = _status(existing)
            if status == JobStatus.FAILED.value and existing.meta.get("error_kind") == "transient":
                try:
                    self.queue(kind).failed_job_registry.requeue(job_id)
                    return Enqueued(job_id, True, JobStatus.QUEUED.value)
                except InvalidJobOperation:  # another request requeued it first
                    pass
            return Enqueued(job_id, False, status)
        claimed = self.redis.set(self.key("claim", job_id), "1", nx=True, ex=max(self.settings.result_ttl, 60))
        if not claimed:
            existing = self.fetch(job_id)
            return Enqueued(job_id, False, _status(existing) if existing else "queued")
        self.queue(kind).enqueue(
            func,
            payload,
            job_id=job_id,
            job_timeout=timeout,
            result_ttl=self.settings.result_ttl,
            failure_ttl=self.settings.result_ttl,
            retry=self._retry(),
            meta={"kind": kind, **(meta or {})},
            description=f"{kind} {meta or ''}",
            at_front=at_front,
        )
        return Enqueued(job_id, True, JobStatus.QUEUED.value)

    def enqueue_prediction(
        self, task: dict, label_config: str, project_id: int | None, model_version: str, context: Any = None
    ) -> Enqueued:
        """A ``predict`` job for one Label Studio task, made with ``model_version`` (the same request is one job).

        A ``chunk`` of a video (:mod:`glus_backend.video_chunks`) is predicted by its video's job, one per video,
        prompts and model version, unless that job already ran without this task (a chunk imported later): then
        the chunk gets a job of its own."""
        data = task.get("data") or {}
        task_id = int(task["id"])
        scope = (self.settings.label_studio_url, project_id)
        chunk = _chunk_of(data, label_config) if self.settings.whole_video and project_id is not None else None
        if chunk is not None and context is None:
            objects = prompt_fields(data, self.settings.expression_fields)
            job_id = self.job_id(PREDICT, "video", chunk.video, chunk.frame_step, objects, label_config,
                                 model_version, *scope)  # fmt: skip
            existing = self.fetch(job_id)
            covered = existing.meta.get("task_ids") if existing is not None else None
            if covered is None or task_id in covered:  # else it listed the video's tasks before this one existed
                payload = {"task_id": task_id, "project_id": project_id, "data": data, "label_config": label_config,
                           "model_version": model_version, "job_id": job_id, "video": chunk.video,
                           "frame_step": chunk.frame_step}  # fmt: skip
                meta = {"task_id": task_id, "project_id": project_id, "video": chunk.video}
                timeout = self.settings.predict_timeout * max(1, int(data.get("chunks") or 1))
                enqueued = self.enqueue(PREDICT, PREDICT_VIDEO_FUNC, job_id, payload, timeout, meta=meta)
                return replace(enqueued, per_task=True)
        job_id = self.predict_job_id(task_id, data, context, label_config, model_version, scope)
        payload = {
            "task_id": task_id,
            "project_id": project_id,
            "data": data,
            "label_config": label_config,
            "context": context,
            "model_version": model_version,
            "job_id": job_id,
        }
        return self.enqueue(
            PREDICT,
            PREDICT_FUNC,
            job_id,
            payload,
            self.settings.predict_timeout,
            meta={"task_id": task_id, "project_id": project_id},
        )

    def enqueue_clicks(self, task: dict, label_config: str, project_id: int | None, model_version: str,
                       context: Any, clicks: dict) -> Enqueued:  # fmt: skip
        """An interactive click job (:mod:`glus_backend.interactive`), at the front of the predict queue: an
        annotator is waiting for it."""
        data = task.get("data") or {}
        task_id = int(task["id"])
        scope = (self.settings.label_studio_url, project_id)
        job_id = self.job_id(PREDICT, "clicks", task_id, data, context, clicks["seed_results"], label_config,
                             model_version, *scope)  # fmt: skip
        payload = {"task_id": task_id, "project_id": project_id, "data": data, "label_config": label_config,
                   "model_version": model_version, "job_id": job_id, "clicks": clicks}  # fmt: skip
        return self.enqueue(PREDICT, CLICKS_FUNC, job_id, payload, self.settings.predict_timeout,
                            meta={"task_id": task_id, "project_id": project_id, "interactive": True}, at_front=True)

    def wait_for_prediction(self, job_id: str, timeout: float, interval: float = 0.1) -> dict | None:
        """The job's stored prediction once there is one; None after ``timeout`` seconds or when the job failed."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.get_prediction(job_id)
            if found is not None:
                return found
            job = self.fetch(job_id)
            if job is None or _status(job) == JobStatus.FAILED.value or time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def release_claim(self, job_id: str) -> None:
        """Forget a job id so that the same request can be enqueued again (used by `retry`)."""
        self.redis.delete(self.key("claim", job_id))

    # --- result store (a video job keeps one entry per chunk task: ``task_id``) ---
    def _entry(self, kind: str, job_id: str, task_id: int | None) -> str:
        return self.key(kind, job_id) if task_id is None else self.key(kind, job_id, str(int(task_id)))

    def put_prediction(self, job_id: str, prediction: dict, task_id: int | None = None) -> None:
        self.redis.set(self._entry("result", job_id, task_id), json.dumps(prediction), ex=self.settings.result_ttl)

    def get_prediction(self, job_id: str, task_id: int | None = None) -> dict | None:
        raw = self.redis.get(self._entry("result", job_id, task_id))
        return json.loads(raw) if raw else None

    def mark_posted(self, job_id: str, prediction_id: int, task_id: int | None = None) -> None:
        self.redis.set(self._entry("posted", job_id, task_id), str(prediction_id), ex=self.settings.result_ttl)

    def posted(self, job_id: str, task_id: int | None = None) -> int | None:
        raw = self.redis.get(self._entry("posted", job_id, task_id))
        return int(raw) if raw else None

    def settle_later(self, job_id: str, task_id: int, prediction_id: int | None, model_version: str) -> None:
        """Ask the sweeper (:mod:`glus_backend.maintenance`) to tidy this task's predictions in a few seconds."""
        if prediction_id is None:  # nothing was posted (no Label Studio client): nothing to tidy
            return
        entry = json.dumps({"job_id": job_id, "task_id": task_id, "prediction_id": prediction_id,
                            "model_version": model_version}, sort_keys=True)  # fmt: skip
        self.redis.zadd(self.key("to-settle"), {entry: time.time()})

    # --- metrics ---
    def live_workers(self) -> list:
        """RQ workers serving one of these queues whose key still exists: a lapsed heartbeat means dead, even
        before the maintenance leader cleans the registry."""
        from rq import Worker

        names = {self.name(k) for k in QUEUE_KINDS}
        workers = Worker.all(connection=self.redis)
        return [w for w in workers if names & set(w.queue_names()) and self.redis.exists(w.key)]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for kind in QUEUE_KINDS:
            q = self.queue(kind)
            out[kind] = {
                "queued": q.count,
                # without RQ's implicit cleanup: reaping abandoned jobs is the workers' job (it records why)
                "started": q.started_job_registry.get_job_count(cleanup=False),
                "scheduled": q.scheduled_job_registry.count,
                "finished": q.finished_job_registry.count,
                "failed": q.failed_job_registry.count,
            }
        return out


def _status(job: Job) -> str:
    status = job.get_status(refresh=False)
    return status.value if status is not None else "unknown"


def job_view(job: Job) -> dict:
    """What ``GET /jobs/<id>`` shows: status, progress, a readable error, the result summary."""
    status = _status(job)
    view: dict[str, Any] = {
        "id": job.id,
        "status": status,
        "queue": job.origin,
        "kind": job.meta.get("kind"),
        "task_id": job.meta.get("task_id"),
        "progress": job.meta.get("progress"),
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "retries_left": job.retries_left,
    }
    if job.meta.get("previous_error"):
        view["previous_error"] = job.meta["previous_error"]
    if job.meta.get("error"):
        view["error"] = job.meta["error"]
        view["error_kind"] = job.meta.get("error_kind")
    elif status == JobStatus.FAILED.value:
        result = job.latest_result()
        exc = (result.exc_string or "") if result is not None else ""
        view["error"] = exc.strip().splitlines()[-1] if exc.strip() else "failed"
    if status == JobStatus.FINISHED.value:
        view["result"] = job.return_value()
    return view
