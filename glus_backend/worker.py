"""RQ workers that hold one GLUS model each.

A worker is an RQ ``SimpleWorker`` (jobs run in the worker process: no fork after CUDA initialisation) that
loads the model once, at start, and again only when the registry's current version changes (checked
between jobs). Job functions reach the worker's model through :func:`current_runtime`, a context variable
set for the duration of each job - no module-level model.

Failures are classified: transient ones (media fetch, Label Studio API, network) are retried with backoff by
RQ; permanent ones (bad media, empty prompt, unsupported config, a video over the limits) fail at once,
with the readable reason in the job's ``meta["error"]`` that ``GET /jobs/<id>`` shows.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from .maintenance import Heartbeat, Maintenance
from .queues import QUEUE_KINDS, JobQueues
from .redact import redact_text
from .registry import ModelRegistry, ModelVersion
from .settings import Settings

logger = logging.getLogger(__name__)

_RUNTIME: contextvars.ContextVar[WorkerRuntime] = contextvars.ContextVar("glus_worker_runtime")


class PermanentJobError(RuntimeError):
    """Retrying cannot help (bad input); the message is what the job status shows."""


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may help: network trouble, Label Studio or media servers briefly failing."""
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, (ConnectionError, TimeoutError, RedisError))


@dataclass
class LoadedModel:
    version: ModelVersion
    model: Any  # model.families.VideoModel: GLUS or Sa2VA behind one interface

    @property
    def segmenter(self) -> Any:
        """GLUS's segmenter, for what only GLUS does (re-propagating corrections, click prompts)."""
        glus = self.model.glus_segmenter
        if glus is None:
            raise PermanentJobError(
                f"the served model {self.version.version} is a {self.model.family} model ({self.model.description}): "
                "re-propagating corrections and click prompts are implemented for GLUS only"
            )
        return glus


class WorkerRuntime:
    """What one worker process owns: settings, queues, the loaded model, a Label Studio client."""

    def __init__(self, settings: Settings, redis: Redis, device: str | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.queues = JobQueues(redis, settings)
        self.registry = ModelRegistry.from_settings(settings, redis)
        self.device = device or settings.device
        self._loaded: LoadedModel | None = None
        self._client = None
        self._sweep_client = None
        self._progress_client = None

    def model(self) -> LoadedModel:
        """The model of the version served (Redis, shared by every host), (re)loaded if it changed."""
        name = self.registry.current_name()
        if self._loaded is None or self._loaded.version.version != name:
            current = self.registry.resolve(name)
            self._loaded = LoadedModel(current, self._load(current))
        return self._loaded

    def resolved_device(self) -> str:
        """``GLUS_DEVICE`` / ``--device`` with ``auto`` made concrete (CUDA when there is one)."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self, version: ModelVersion) -> Any:
        import torch

        from model.families import FamilyOptions, load_video_model

        device = self.resolved_device()
        precision = self.settings.precision
        if precision == "auto":
            precision = "bf16" if device.startswith("cuda") else "fp32"
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        logger.info("loading model %s (%s) from %s%s on %s/%s", version.version, version.source, version.base,
                    f" + {len(version.deltas)} delta(s)" if version.deltas else "", device, precision)  # fmt: skip
        settings = self.settings
        options = FamilyOptions(schedule=settings.schedule, key_frames=settings.key_frames,
                                llm_every=settings.llm_every, sa2va_mode=settings.sa2va_mode,
                                sa2va_key_frames=settings.sa2va_key_frames)  # fmt: skip
        model = load_video_model(version.base, device, dtype, options, settings.clip_dir, settings.sam2_checkpoint,
                                 settings.sam2_config, version.deltas)  # fmt: skip
        logger.info("serving %s: %s", version.version, model.description)
        return model

    def sweep_client(self):
        """A Label Studio client for the sweeper: short timeout and no retries, so maintenance never stalls."""
        if self._sweep_client is None:
            self._sweep_client = self._quick_client()
        return self._sweep_client

    def progress_client(self):
        """A client of its own (the sweeper's runs in another thread) for showing a job's progress: short timeout,
        no retries, so a slow Label Studio never slows the job."""
        if self._progress_client is None:
            self._progress_client = self._quick_client()
        return self._progress_client

    def _quick_client(self):
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return None
        from .ls_client import LabelStudioClient

        return LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key, timeout=5.0,
                                 retries=0)  # fmt: skip

    def label_studio(self):
        """A Label Studio client from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, or None if not configured."""
        if self._client is None and self.settings.label_studio_url and self.settings.label_studio_api_key:
            from .ls_client import LabelStudioClient

            self._client = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)
        return self._client


def current_runtime() -> WorkerRuntime:
    try:
        return _RUNTIME.get()
    except LookupError:
        raise RuntimeError("GLUS jobs run inside a GLUS worker (glus-backend worker)") from None


class GlusWorker(SimpleWorker):
    """SimpleWorker that exposes its :class:`WorkerRuntime` to jobs, classifies failures, and heartbeats from a
    thread while a job runs (a SimpleWorker alone beats only between jobs, so a dead one looked busy for the whole
    job timeout)."""

    runtime: WorkerRuntime
    heartbeat_thread: Heartbeat | None = None
    threads: tuple = ()

    def register_birth(self) -> None:
        """Registered in Redis: now the heartbeat and maintenance threads may start (earlier, a beat would create
        the worker's key and RQ would refuse the name as taken)."""
        super().register_birth()
        for thread in self.threads:
            if not thread.is_alive():
                thread.start()

    def run_maintenance_tasks(self) -> None:
        """RQ's own registry cleaning and scheduler are replaced by the maintenance leader
        (:class:`~glus_backend.maintenance.Maintenance`): one reaper at a time, with a reason on every reaped job."""
        self.last_cleaned_at = now()

    def heartbeat_ttl(self) -> int:
        return int(self.runtime.settings.heartbeat_ttl)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """Every beat lasts ``GLUS_HEARTBEAT_TTL`` at most: the heartbeat thread renews it three times as often."""
        return super().heartbeat(min(timeout or self.heartbeat_ttl(), self.heartbeat_ttl()), pipeline=pipeline)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl()

    def execute_job(self, job: Job, queue: Queue) -> Any:
        token = _RUNTIME.set(self.runtime)
        beat = self.heartbeat_thread
        try:
            if job.meta.get("error"):  # a retry: the last failure stays visible as history, not as the status
                job.meta["previous_error"] = job.meta.pop("error")
                job.meta.pop("error_kind", None)
                job.save_meta()
            execution = self.prepare_execution(job)
            if beat is not None:
                beat.running = (job, execution)
            self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
        finally:
            if beat is not None:
                beat.running = None
                beat.report_and_reset(job.id)
            _RUNTIME.reset(token)

    def handle_exception(self, job: Job, *exc_info: Any) -> Any:
        exc = exc_info[1] if len(exc_info) > 1 else None
        if exc is not None:
            transient = is_transient(exc)
            job.meta["error"] = f"{type(exc).__name__}: {exc}"
            job.meta["error_kind"] = "transient" if transient else "permanent"
            if not transient:
                job.retries_left = 0  # retrying bad input cannot help
            try:
                job.save_meta()
            except RedisError:
                logger.exception("cannot save the failure reason of job %s", job.id)
            logger.warning("job %s failed (%s): %s", job.id, job.meta["error_kind"], job.meta["error"])
        return super().handle_exception(job, *exc_info)


def run_worker(
    settings: Settings,
    queues: tuple[str, ...] = QUEUE_KINDS,
    burst: bool = False,
    device: str | None = None,
    name: str | None = None,
) -> bool:
    """Run one worker in this process until stopped (or, with ``burst``, until the queues are empty).

    The model is loaded once. If Redis goes away (restart, network), RQ's loop ends; the worker then waits for
    Redis and starts a fresh RQ worker on the same model: a job cut off mid-way is retried by the maintenance
    leader once its heartbeat lapses. Heartbeats, retries and reaping run in threads of this process
    (:mod:`glus_backend.maintenance`), so nothing outlives it.
    """
    redis = Redis.from_url(settings.redis_url, health_check_interval=10)
    runtime = WorkerRuntime(settings, redis, device)
    loaded = runtime.model()  # load once, now: a broken checkpoint fails the worker start, not a job
    logger.info("worker ready with model %s", loaded.version.version)
    job_queues = JobQueues(redis, settings)
    base_name = name or f"glus-{socket.gethostname()}-{os.getpid()}"
    for generation in itertools.count():
        worker = GlusWorker(
            [job_queues.queue(k) for k in queues],
            connection=redis,
            name=base_name if generation == 0 else f"{base_name}-r{generation}",
            worker_ttl=settings.heartbeat_ttl,
        )
        worker.runtime = runtime
        worker.max_connection_wait_time = 5.0  # an idle worker reconnects within seconds of Redis coming back
        threads = (Heartbeat(worker, settings.heartbeat_ttl), Maintenance(worker, job_queues, runtime.sweep_client))
        worker.heartbeat_thread, worker.threads = threads[0], threads
        try:
            worked = worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
        except RedisError as exc:
            logger.error("worker %s lost Redis (%s)", worker.name, redact_text(str(exc)))
            worked = False
        finally:
            for thread in threads:
                thread.stop()
            _stop_pubsub(worker)
        if burst or worker._shutdown_requested_date is not None:  # SIGTERM/SIGINT (RQ's warm shutdown)
            return worked
        logger.warning("worker %s stopped unexpectedly; starting again once Redis answers", worker.name)
        time.sleep(1.0)  # never a hot loop, whatever stopped it
        _wait_for_redis(redis)
    return False


def _stop_pubsub(worker: GlusWorker) -> None:
    """RQ's teardown unsubscribes only if Redis answers; a worker that lost Redis would leave its command thread
    retrying forever beside its successor."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None and thread.is_alive():
        thread.stop()
        thread.join(timeout=5)


def _wait_for_redis(redis: Redis, interval: float = 1.0, max_interval: float = 5.0) -> None:
    while True:
        try:
            redis.ping()
            return
        except RedisError:
            time.sleep(interval)
            interval = min(interval * 2, max_interval)


def run_worker_pool(argv_base: list[str], devices: list[str]) -> int:
    """Start one worker process per device (e.g. one per GPU) and wait; SIGTERM/SIGINT stop them all.

    The parent never imports torch, so nothing is forked after CUDA initialisation.
    """
    children = []
    for device in devices:
        env = dict(os.environ)
        args = [*argv_base, "--device", device]
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            args = [*argv_base, "--device", "cuda"]
        children.append(subprocess.Popen([sys.executable, "-m", "glus_backend.cli", *args], env=env))
        logger.info("started worker pid %d on %s", children[-1].pid, device)

    def stop(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [child.wait() for child in children]
    return max(codes) if codes else 0
