"""The Label Studio ML-backend protocol server (Flask). It never imports torch and never runs the model.

Label Studio waits 1 s for ``/health`` and webhooks, 3 s for ``/setup`` and 100 s for ``/predict``, and has no
queue of its own. So ``/predict`` answers at once: the finished prediction from the result store if there is
one, otherwise it enqueues a predict job and answers a per-task placeholder (an empty result with model
version ``pending``: an answer with no result makes Label Studio ask again on every task open). The worker
posts the real prediction through the Label Studio API and deletes the placeholder.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, jsonify, request
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq.job import JobStatus
from werkzeug.exceptions import HTTPException

from . import validation
from .interactive import ClickRequest, click_request
from .label_config import UnsupportedLabelConfig, served_config
from .queues import (
    DELETE_FUNC,
    FAILED_MODEL_VERSION,
    INGEST,
    INGEST_FUNC,
    PENDING_MODEL_VERSION,
    JobQueues,
    JobTooLarge,
    job_view,
)
from .redact import redact_text, redact_url
from .registry import ModelRegistry, NoModelError
from .settings import Settings
from .spool import RequestSpool, SpoolFull, SpoolReplayer
from .validation import BadRequest

logger = logging.getLogger(__name__)

MODEL_CLASS = "GLUS"


class BackendService:
    """State of one web process: settings, Redis, queues, the model registry (read-only here), the spool."""

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        # fail fast when Redis is down (Label Studio waits 1 s for webhooks and health): one quick retry only
        self.redis = redis or Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                             retry=Retry(NoBackoff(), 1))  # fmt: skip
        self.queues = JobQueues(self.redis, settings)
        self.registry = ModelRegistry.from_settings(settings, self.redis)
        self.spool = RequestSpool(settings.spool_path)
        self._version_cache: tuple[float, str] | None = None
        self._replayer: SpoolReplayer | None = None

    def model_version(self) -> str:
        """The version predictions are made with; re-read at most every 2 s (promotions switch it). While Redis
        is down, the last one read."""
        now = time.monotonic()
        if self._version_cache and now - self._version_cache[0] < 2.0:
            return self._version_cache[1]
        try:
            version = self.registry.current_name()
        except NoModelError as exc:
            logger.error("%s", exc)
            version = "no-model"
        except RedisError:
            if self._version_cache is None:
                raise
            return self._version_cache[1]
        self._version_cache = (now, version)
        return version

    def enqueue_prediction(self, task: dict, label_config: str, project_id: int | None, context: Any = None):
        return self.queues.enqueue_prediction(task, label_config, project_id, self.model_version(), context)

    def ensure_replayer(self) -> None:
        """One spool replayer per process (started lazily: a forking server must start it after the fork)."""
        if self._replayer is None or self._replayer.pid != os.getpid() or not self._replayer.is_alive():
            self._replayer = SpoolReplayer(self.spool, self.replay)
            self._replayer.start()

    def replay(self, endpoint: str, body: Any) -> None:
        """Handle a request that was kept while Redis was down (see :mod:`glus_backend.spool`)."""
        if endpoint == "/predict":
            tasks, label_config, project_id, context = validation.predict_body(body)
            for task in tasks:
                self.enqueue_prediction(task, label_config, project_id, context)
        elif endpoint == "/webhook":
            action, payload = validation.webhook_body(body)
            WEBHOOK_HANDLERS[action](self, payload)


def reason_phrase(message: str, limit: int = 600) -> str:
    """``message`` as an HTTP reason phrase: one line of Latin-1 printable characters, at most ``limit`` long."""
    flat = " ".join(message.split())
    safe = "".join(c if c.isprintable() and ord(c) < 256 else "?" for c in flat)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def _placeholder() -> dict:
    return {"result": [], "score": 0.0, "model_version": PENDING_MODEL_VERSION}


def create_app(settings: Settings | None = None, redis: Redis | None = None, replay_spool: bool = True) -> Flask:
    """The web app. ``replay_spool=False`` keeps requests spooled during a Redis outage on disk (tests)."""
    settings = settings or Settings.from_env()
    service = BackendService(settings, redis)
    app = Flask("glus_backend")
    app.config["GLUS_SERVICE"] = service
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    shown_redis = redact_url(settings.redis_url)
    if replay_spool:  # now (requests left from a previous run), and again per process after a fork (before_request)
        service.ensure_replayer()

    def error(message: str, status: int = 400) -> tuple[Response, int]:
        return jsonify({"status": "error", "error": message}), status

    def refuse_config(exc: UnsupportedLabelConfig) -> Response:
        """A 400 whose HTTP reason phrase carries the reason: Label Studio shows the user only ``str()`` of the
        ``requests`` error ("400 Client Error: <reason phrase> for url: ..."), never the body."""
        message = f"GLUS backend cannot serve this labeling config: {exc}"
        response = jsonify({"status": "error", "error": message})
        response.status = f"400 {reason_phrase(message)}"
        return response

    def json_body() -> Any:
        """The parsed body; a body that is not JSON is a 400 naming why."""
        raw = request.get_data(cache=True)
        if not raw:
            raise BadRequest(f"{request.path}: the body is empty (expected JSON)")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested input
            raise BadRequest(f"{request.path}: the body is not valid JSON ({type(exc).__name__})") from None

    @app.before_request
    def _basic_auth() -> Any:
        if replay_spool:
            service.ensure_replayer()
        expected = settings.basic_auth
        if expected is None:
            return None
        auth = request.authorization
        given_user = (auth.username or "") if auth else ""
        given_pass = (auth.password or "") if auth else ""
        user_ok = hmac.compare_digest(given_user.encode(), expected[0].encode())
        pass_ok = hmac.compare_digest(given_pass.encode(), expected[1].encode())
        if auth is None or not (user_ok and pass_ok):
            return Response(json.dumps({"status": "error", "error": "unauthorized"}), 401,
                            {"WWW-Authenticate": 'Basic realm="glus"', "Content-Type": "application/json"})  # fmt: skip
        return None

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest) -> Any:
        return error(str(exc))

    @app.errorhandler(JobTooLarge)
    def _job_too_large(exc: JobTooLarge) -> Any:
        return error(str(exc), 413)

    @app.errorhandler(RedisError)
    def _redis_down(exc: RedisError) -> Any:
        logger.error("Redis at %s unreachable: %s", shown_redis, redact_text(str(exc)))
        return error(f"the job queue (Redis at {shown_redis}) is unreachable: {redact_text(str(exc))}", 503)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        message = exc.description or exc.name
        if exc.code == 413:
            message = (f"the request body is over the limit of {settings.max_request_bytes} bytes "
                       "(GLUS_MAX_REQUEST_BYTES)")
        return error(message, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error(f"internal error ({type(exc).__name__}); see the backend's log", 500)

    def spool(endpoint: str, body: Any, exc: RedisError) -> None:
        """Keep a valid request on disk while Redis is down (:mod:`glus_backend.spool`)."""
        try:
            name = service.spool.put(endpoint, body)
        except (OSError, SpoolFull) as spool_exc:
            logger.error("cannot spool %s while Redis is down: %s", endpoint, spool_exc)
            raise exc from spool_exc
        logger.warning("Redis at %s unreachable (%s): %s kept as %s, enqueued when Redis is back", shown_redis,
                       redact_text(str(exc)), endpoint, name)  # fmt: skip

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        try:
            service.redis.ping()
            redis_state = "ok"
        except RedisError as exc:
            redis_state = f"unreachable at {shown_redis}: {redact_text(str(exc))}"
        try:
            version = service.model_version()
        except RedisError:
            version = "unknown"
        body = {
            "status": "UP" if redis_state == "ok" else "DOWN",
            "model_class": MODEL_CLASS,
            "model_version": version,
            "redis": redis_state,
            "spooled_requests": service.spool.pending(),
        }
        return jsonify(body), 200 if redis_state == "ok" else 503

    @app.post("/setup")
    def setup() -> Any:
        schema, project_id = validation.setup_body(json_body())
        if schema:
            try:
                served_config(schema)
            except UnsupportedLabelConfig as exc:
                logger.warning("/setup for project %s refused: %s", project_id, exc)
                return refuse_config(exc)
        return jsonify({"model_version": service.model_version()})

    @app.post("/predict")
    def predict() -> Any:
        payload = json_body()
        tasks, label_config, project_id, context = validation.predict_body(payload)
        try:
            served_config(label_config)
        except UnsupportedLabelConfig as exc:
            return refuse_config(exc)
        if len(tasks) == 1 and (clicks := click_request(context, tasks[0])) is not None:
            return jsonify({"results": [_answer_clicks(service, tasks[0], label_config, project_id, context, clicks)],
                            "model_version": service.model_version()})  # fmt: skip
        results = []
        try:
            for task in tasks:
                enqueued = service.enqueue_prediction(task, label_config, project_id, context)
                results.append(_answer(service, enqueued.job_id, int(task["id"]) if enqueued.per_task else None))
        except RedisError as exc:
            spool("/predict", payload, exc)
            results = [_placeholder() for _ in tasks]
        return jsonify({"results": results, "model_version": service.model_version()})

    @app.post("/webhook")
    def webhook() -> Any:
        action, payload = validation.webhook_body(json_body())
        handler = WEBHOOK_HANDLERS.get(action or "")
        if handler is None:
            return jsonify({"status": "ignored", "action": action}), 200
        validation.webhook_parts(action, payload)
        try:
            return jsonify({"status": "ok", "action": action, **handler(service, payload)}), 201
        except RedisError as exc:
            spool("/webhook", payload, exc)
            return jsonify({"status": "accepted", "action": action,
                            "note": "Redis is unreachable: the event is kept and handled when Redis is back"}), 202

    @app.get("/metrics")
    def metrics() -> Any:
        return jsonify(
            {
                "model_version": service.model_version(),
                "queues": service.queues.counts(),
                "workers": len(service.queues.live_workers()),
                "spooled_requests": service.spool.pending(),
            }
        )

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        job = service.queues.fetch(job_id)
        if job is None:
            return error(f"no job {job_id!r} (unknown, or expired after {settings.result_ttl} s)", 404)
        return jsonify(job_view(job))

    return app


def _answer(service: BackendService, job_id: str, task_id: int | None = None) -> dict:
    """What /predict returns for a task: the stored prediction, an empty ``failed`` one for a job that failed for
    good (GET /jobs/<id> says why; the sweeper removes its placeholders), or a ``pending`` placeholder.
    ``task_id``: the job is a video job, which stores one prediction per chunk task."""
    ready = service.queues.get_prediction(job_id, task_id)
    if ready is not None:
        return ready
    job = service.queues.fetch(job_id)
    if job is not None and job.get_status(refresh=False) == JobStatus.FAILED:
        return {"result": [], "score": 0.0, "model_version": FAILED_MODEL_VERSION}
    return _placeholder()


def _answer_clicks(service: BackendService, task: dict, label_config: str, project_id: int | None, context: Any,
                   clicks: ClickRequest) -> dict:  # fmt: skip
    """An interactive click (:mod:`glus_backend.interactive`): wait up to ``GLUS_INTERACTIVE_WAIT`` seconds for the
    object re-propagated from the clicked frame; then (or when the job failed) an empty answer, so that the page
    shows nothing rather than an error (``GET /jobs/<id>`` says why)."""
    enqueued = service.queues.enqueue_clicks(task, label_config, project_id, service.model_version(), context,
                                             asdict(clicks))  # fmt: skip
    found = service.queues.wait_for_prediction(enqueued.job_id, service.settings.interactive_wait)
    if found is None:
        logger.warning("interactive job %s gave no answer within %s s (or failed)", enqueued.job_id,
                       service.settings.interactive_wait)  # fmt: skip
        return _answer(service, enqueued.job_id)
    return found


# --- webhook actions ---
def _on_tasks_created(service: BackendService, payload: dict) -> dict:
    if not service.settings.prelabel_on_import:
        return {"enqueued": 0, "note": "GLUS_PRELABEL_ON_IMPORT is off"}
    project = payload.get("project") or {}
    label_config = project.get("label_config") or ""
    try:
        served_config(label_config)
    except UnsupportedLabelConfig as exc:
        return {"enqueued": 0, "error": str(exc)}
    project_id = validation.project_ref(project or None, "TASKS_CREATED")
    tasks = validation.tasks(payload, "TASKS_CREATED")
    jobs = [service.enqueue_prediction(t, label_config, project_id).job_id for t in tasks]
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
    if len(json.dumps(body, default=str)) > service.settings.max_job_bytes:
        # a long video's per-frame masks: keep the ids only, the worker reads the rest from Label Studio
        body = {"action": body["action"], "by_reference": True, "annotation": {"id": annotation.get("id")},
                "task": {"id": task.get("id")}, "project": {"id": project.get("id")}}  # fmt: skip
    enqueued = service.queues.enqueue(
        INGEST, INGEST_FUNC, job_id, body, 600, meta={"task_id": task.get("id"), "annotation_id": annotation.get("id")}
    )
    return {"job": enqueued.job_id}


def _on_annotations_deleted(service: BackendService, payload: dict) -> dict:
    ids = [a.get("id") for a in payload.get("annotations") or [] if isinstance(a, dict)]
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

    project_id = validation.project_ref(payload.get("project"), "START_TRAINING")
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
