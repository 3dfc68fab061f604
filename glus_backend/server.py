"""The Label Studio ML-backend protocol server (Flask). It never imports torch and never runs the model.

Label Studio waits 1 s for ``/health`` and webhooks, 3 s for ``/setup`` and 100 s for ``/predict``, and has no
queue of its own. So ``/predict`` answers at once: the finished prediction from the result store if there is
one, otherwise it enqueues a predict job and answers a per-task placeholder (an empty result with model
version ``pending``: an answer with no result makes Label Studio ask again on every task open). The worker
posts the real prediction through the Label Studio API and deletes the placeholder.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from redis import Redis
from redis.exceptions import RedisError

from .label_config import ServedConfig, UnsupportedLabelConfig, parse_label_config
from .queues import (
    DELETE_FUNC,
    INGEST,
    INGEST_FUNC,
    PENDING_MODEL_VERSION,
    PREDICT,
    TRAIN,
    JobQueues,
    job_view,
)
from .registry import ModelRegistry, NoModelError
from .settings import Settings

logger = logging.getLogger(__name__)

MODEL_CLASS = "GLUS"


@functools.lru_cache(maxsize=64)
def _parse_config(xml: str) -> ServedConfig:
    return parse_label_config(xml)


def _project_id(value: Any) -> int | None:
    """Label Studio sends ``"<id>.<created_at>"`` in /predict and /setup, a dict in webhooks."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None:
        return None
    try:
        return int(str(value).split(".")[0])
    except ValueError:
        return None


class BackendService:
    """State of one web process: settings, Redis, queues, the model registry (read-only here)."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self.queues = JobQueues(self.redis, settings)
        self.registry = ModelRegistry.from_settings(settings, self.redis)
        self._version_cache: tuple[float, str] | None = None

    def model_version(self) -> str:
        """The version predictions are made with; re-read at most every 2 s (promotions switch it)."""
        now = time.monotonic()
        if self._version_cache and now - self._version_cache[0] < 2.0:
            return self._version_cache[1]
        try:
            version = self.registry.current_name()
        except NoModelError as exc:
            logger.error("%s", exc)
            version = "no-model"
        self._version_cache = (now, version)
        return version

    def enqueue_prediction(self, task: dict, label_config: str, project_id: int | None, context: Any = None):
        return self.queues.enqueue_prediction(task, label_config, project_id, self.model_version(), context)


def create_app(settings: Settings | None = None, redis: Redis | None = None) -> Flask:
    settings = settings or Settings.from_env()
    service = BackendService(settings, redis)
    app = Flask("glus_backend")
    app.config["GLUS_SERVICE"] = service

    def error(message: str, status: int = 400) -> tuple[Response, int]:
        return jsonify({"status": "error", "error": message}), status

    @app.before_request
    def _basic_auth() -> Any:
        expected = settings.basic_auth
        if expected is None:
            return None
        auth = request.authorization
        if auth is None or (auth.username, auth.password) != expected:
            return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="glus"'})
        return None

    @app.errorhandler(RedisError)
    def _redis_down(exc: RedisError) -> Any:
        logger.error("Redis unreachable: %s", exc)
        return error(f"the job queue (Redis at {settings.redis_url}) is unreachable: {exc}", 503)

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        try:
            service.redis.ping()
            redis_state = "ok"
        except RedisError as exc:
            redis_state = f"unreachable: {exc}"
        body = {
            "status": "UP" if redis_state == "ok" else "DOWN",
            "model_class": MODEL_CLASS,
            "model_version": service.model_version(),
            "redis": redis_state,
        }
        return jsonify(body), 200 if redis_state == "ok" else 503

    @app.post("/setup")
    def setup() -> Any:
        payload = request.get_json(silent=True) or {}
        schema = payload.get("schema") or payload.get("label_config")
        if schema:
            try:
                _parse_config(schema)
            except UnsupportedLabelConfig as exc:
                logger.warning("/setup for project %s refused: %s", payload.get("project"), exc)
                return error(f"GLUS backend cannot serve this labeling config: {exc}")
        return jsonify({"model_version": service.model_version()})

    @app.post("/predict")
    def predict() -> Any:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("tasks"), list):
            return error("expected a JSON body with a 'tasks' list")
        label_config = payload.get("label_config") or ""
        try:
            _parse_config(label_config)
        except UnsupportedLabelConfig as exc:
            return error(f"GLUS backend cannot serve this labeling config: {exc}")
        context = (payload.get("params") or {}).get("context")
        project_id = _project_id(payload.get("project"))
        results = []
        for task in payload["tasks"]:
            if not isinstance(task, dict) or "id" not in task:
                return error("every task needs an 'id'")
            enqueued = service.enqueue_prediction(task, label_config, project_id, context)
            ready = service.queues.get_prediction(enqueued.job_id)
            if ready is not None:
                results.append(ready)
            else:
                results.append({"result": [], "score": 0.0, "model_version": PENDING_MODEL_VERSION})
        return jsonify({"results": results, "model_version": service.model_version()})

    @app.post("/webhook")
    def webhook() -> Any:
        payload = request.get_json(silent=True) or {}
        action = payload.get("action")
        handler = WEBHOOK_HANDLERS.get(action)
        if handler is None:
            return jsonify({"status": "ignored", "action": action}), 200
        return jsonify({"status": "ok", "action": action, **handler(service, payload)}), 201

    @app.get("/metrics")
    def metrics() -> Any:
        from rq import Worker

        workers = Worker.all(connection=service.redis)
        names = {service.queues.name(k) for k in (PREDICT, INGEST, TRAIN)}
        ours = [w for w in workers if names & set(w.queue_names())]
        return jsonify(
            {
                "model_version": service.model_version(),
                "queues": service.queues.counts(),
                "workers": len(ours),
            }
        )

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        job = service.queues.fetch(job_id)
        if job is None:
            return error(f"no job {job_id!r} (unknown, or expired after {settings.result_ttl} s)", 404)
        return jsonify(job_view(job))

    return app


# --- webhook actions ---
def _on_tasks_created(service: BackendService, payload: dict) -> dict:
    if not service.settings.prelabel_on_import:
        return {"enqueued": 0, "note": "GLUS_PRELABEL_ON_IMPORT is off"}
    project = payload.get("project") or {}
    label_config = project.get("label_config") or ""
    try:
        _parse_config(label_config)
    except UnsupportedLabelConfig as exc:
        return {"enqueued": 0, "error": str(exc)}
    jobs = [service.enqueue_prediction(t, label_config, _project_id(project)).job_id for t in payload.get("tasks", [])]
    return {"enqueued": len(jobs), "jobs": jobs}


def _on_annotation(service: BackendService, payload: dict) -> dict:
    annotation = payload.get("annotation") or {}
    task = payload.get("task") or {}
    project = payload.get("project") or {}
    body = {
        "action": payload.get("action"),
        "annotation": annotation,
        "task": {"id": task.get("id"), "data": task.get("data")},
        "project": {"id": project.get("id"), "label_config": project.get("label_config")},
    }
    stamp = annotation.get("updated_at") or annotation.get("created_at") or time.time()
    job_id = service.queues.job_id(INGEST, task.get("id"), annotation.get("id"), stamp)
    enqueued = service.queues.enqueue(
        INGEST, INGEST_FUNC, job_id, body, 600, meta={"task_id": task.get("id"), "annotation_id": annotation.get("id")}
    )
    return {"job": enqueued.job_id}


def _on_annotations_deleted(service: BackendService, payload: dict) -> dict:
    ids = [a.get("id") for a in payload.get("annotations", []) if isinstance(a, dict)]
    project = payload.get("project") or {}
    job_id = service.queues.job_id("delete", ids, time.time())
    enqueued = service.queues.enqueue(
        INGEST,
        DELETE_FUNC,
        job_id,
        {"annotation_ids": ids, "project_id": project.get("id")},
        600,
        meta={"annotation_ids": ids},
    )
    return {"job": enqueued.job_id}


def _on_start_training(service: BackendService, payload: dict) -> dict:
    """Label Studio's "Start training" (``POST /api/ml/<id>/train``): the payload holds only the project."""
    from .training import enqueue_training

    project_id = _project_id(payload.get("project") or {})
    if project_id is None:
        return {"error": "START_TRAINING without a project id"}
    enqueued = enqueue_training(service.queues, int(project_id), "START_TRAINING")
    return {"job": enqueued.job_id, "created": enqueued.created}


WEBHOOK_HANDLERS: dict[str, Callable[[BackendService, dict], dict]] = {
    "TASKS_CREATED": _on_tasks_created,
    "ANNOTATION_CREATED": _on_annotation,
    "ANNOTATION_UPDATED": _on_annotation,
    "ANNOTATIONS_DELETED": _on_annotations_deleted,
    "START_TRAINING": _on_start_training,
}
