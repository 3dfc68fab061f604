"""What keeps jobs moving when processes die, run by threads inside every worker process.

* :class:`Heartbeat` (every worker): refreshes the worker's Redis key and, while a job runs, the job's entry in
  the started registry, every third of ``GLUS_HEARTBEAT_TTL``. A worker that is SIGKILLed, runs out of memory
  or loses its host stops beating; within ``GLUS_HEARTBEAT_TTL`` seconds its key expires (it is no longer
  counted by ``/metrics``, ``glus-backend status`` or ``rq info``) and its job is *abandoned*.
* :class:`Maintenance` (one worker at a time, the holder of a short Redis lock, so a dead leader is replaced
  within ``GLUS_HEARTBEAT_TTL``):
  - moves due retries from the scheduled registries to their queues (RQ's own scheduler is a forked process
    that outlives a SIGKILLed worker and dies when Redis restarts; this is a thread of the worker);
  - retries abandoned jobs (or fails them, with a readable reason, when no retry is left) and forgets dead
    workers;
  - every ``GLUS_SWEEP_INTERVAL`` seconds, sweeps Label Studio (:class:`Sweeper`).

Every step survives Redis and Label Studio outages: it logs, waits for the next tick and goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry, clean_registries
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock
from rq.worker_registration import clean_worker_registry

from .ls_client import LabelStudioClient, LabelStudioError
from .queues import PREDICT, QUEUE_KINDS, JobQueues, is_placeholder
from .redact import redact_text

if TYPE_CHECKING:
    from rq.executions import Execution

    from .worker import GlusWorker

logger = logging.getLogger(__name__)

SETTLE_DELAY = 5.0  # seconds after a prediction is posted before its task is tidied (late /predict answers)
MAX_SWEEP_REQUEUES = 20  # times an unposted prediction is re-sent after Label Studio came back
FULL_CLEAN_INTERVAL = 60.0  # seconds between cleanings of the finished/failed/... registries (expiry only)
SWEEP_BATCH = 50  # tasks one sweep touches at most (the leader lock is refreshed between batches)


class _Ticker(threading.Thread):
    """A daemon thread calling ``step()`` every ``interval`` seconds until stopped; exceptions are logged."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                self.step()
                if failing:
                    logger.info("%s: Redis is back", self.name)
                failing = False
            except RedisError as exc:  # said once per outage, not every tick
                (logger.debug if failing else logger.warning)(
                    "%s: Redis unreachable (%s); retrying every %.0f s", self.name, redact_text(str(exc)), self.interval
                )
                failing = True
            except Exception:  # noqa: BLE001 - a maintenance thread must never die
                logger.exception("%s: step failed", self.name)
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()


class Heartbeat(_Ticker):
    """Keeps ``worker`` (and its running job, if any) alive in Redis for ``ttl`` more seconds, every ``ttl / 3``."""

    def __init__(self, worker: GlusWorker, ttl: int) -> None:
        super().__init__(f"heartbeat-{worker.name}", max(ttl / 3.0, 0.5))
        self.worker = worker
        self.ttl = ttl
        self.running: tuple[Job, Execution] | None = None
        self.longest_gap = 0.0  # seconds between two beats, since the last reset (a GIL held too long shows here)
        self._last_beat: float | None = None

    def step(self) -> None:
        running = self.running
        if running is None:
            self.worker.heartbeat(self.ttl)
        else:
            self.worker.maintain_heartbeats(*running)
        beat = time.monotonic()
        if self._last_beat is not None:
            self.longest_gap = max(self.longest_gap, beat - self._last_beat)
        self._last_beat = beat

    def report_and_reset(self, job_id: str) -> None:
        """Log the longest gap between beats during a job; warn when it came near the lease."""
        gap, self.longest_gap = self.longest_gap, 0.0
        late = gap > self.ttl / 2
        (logger.warning if late else logger.info)(
            "job %s: longest heartbeat gap %.1f s (beat every %.1f s, lease %d s)%s", job_id, gap, self.interval,
            self.ttl, "; raise GLUS_HEARTBEAT_TTL: something held the interpreter lock" if late else "",
        )


class Maintenance(_Ticker):
    """The leader's duties (see the module docstring); every worker runs one, one at a time holds the lock."""

    def __init__(self, worker: GlusWorker, queues: JobQueues, client_factory: Any, interval: float = 1.0) -> None:
        super().__init__(f"maintenance-{worker.name}", interval)
        self.worker = worker
        self.queues = queues
        self.settings = queues.settings
        self.redis = queues.redis
        self.names = [queues.name(k) for k in QUEUE_KINDS]
        self.sweeper = Sweeper(queues, client_factory)
        self._last_sweep = 0.0
        self._last_full_clean = 0.0

    def is_leader(self) -> bool:
        lock = self.queues.key("maintenance-leader")
        return acquire_or_refresh_lock(self.redis, lock, self.worker.name, self.settings.heartbeat_ttl) != "taken"

    def step(self) -> None:
        if not self.is_leader():
            return
        self.enqueue_due_retries()
        self.reap()
        if time.monotonic() - self._last_sweep >= self.settings.sweep_interval:
            self._last_sweep = time.monotonic()
            self.sweeper.sweep(self.is_leader)

    def enqueue_due_retries(self) -> None:
        scheduler = RQScheduler(self.names, connection=self.redis)
        scheduler._acquired_locks = set(self.names)  # the leader lock stands in for RQ's per-queue locks
        scheduler.prepare_registries(self.names)
        scheduler.enqueue_scheduled_jobs()

    def reap(self) -> None:
        """Abandoned jobs (no heartbeat for ``GLUS_HEARTBEAT_TTL``) are retried or failed; dead workers forgotten;
        every minute, the other registries are cleaned as RQ's workers would (they leave it to the leader)."""
        handlers = [note_abandoned(self.settings.heartbeat_ttl)]
        full = time.monotonic() - self._last_full_clean >= FULL_CLEAN_INTERVAL
        for kind in QUEUE_KINDS:
            queue = self.queues.queue(kind)
            if full:
                clean_registries(queue, handlers)
            else:
                StartedJobRegistry(queue=queue).cleanup(exception_handlers=handlers)
            queue.intermediate_queue.cleanup(self.worker, queue)
            clean_worker_registry(queue)
        if full:
            self._last_full_clean = time.monotonic()


def note_abandoned(heartbeat_ttl: int) -> Any:
    """An RQ exception handler that gives an abandoned job (its worker's lease lapsed) a readable reason.

    RQ also reaps, without a reason, wherever a started registry is counted or cleaned with its defaults; this
    backend's workers leave registry cleaning to the leader, and its counts skip that cleaning. Other failures pass
    through untouched.
    """

    def handler(job: Job, exc_type: Any = None, *rest: Any) -> None:
        if exc_type is not AbandonedJobError:
            return None
        retry = bool(job.retries_left and job.retries_left > 0)
        job.meta["error"] = (
            f"the worker running this job stopped sending heartbeats for {heartbeat_ttl} s "
            f"(GLUS_HEARTBEAT_TTL): it was killed, ran out of memory or lost Redis; "
            + (f"retried ({job.retries_left - 1} retries left after this one)" if retry else "no retries left")
        )
        job.meta["error_kind"] = "transient"
        job.save_meta()
        logger.warning("job %s abandoned: %s", job.id, job.meta["error"])
        return None

    return handler


class Sweeper:
    """Makes Label Studio match the jobs, after the fact.

    * A posted prediction's task is tidied a few seconds later: empty ``pending`` placeholders (including one
      stored by a ``/predict`` that raced with the post) and duplicate copies of the same prediction go.
    * A predict job that failed for good with its prediction stored but not posted (Label Studio was down
      through every retry) is requeued once Label Studio answers again; the rerun only posts.
    * A predict job that failed for good without a prediction has its task's placeholders removed: the task
      shows no prediction rather than a ``pending`` one forever (``GET /jobs/<id>`` says why).
    """

    def __init__(self, queues: JobQueues, client_factory: Any) -> None:
        self.queues = queues
        self.redis = queues.redis
        self.client_factory = client_factory  # () -> LabelStudioClient | None (short timeouts, no retries)

    def sweep(self, still_leader: Any = lambda: True) -> dict[str, int]:
        counts = {"tidied": 0, "requeued": 0, "placeholders_deleted": 0, "duplicates_deleted": 0}
        client = self.client_factory()
        if client is None:
            return counts
        try:
            client.request("GET", "/api/version", idempotent=True)
        except LabelStudioError as exc:
            logger.info("sweep skipped: Label Studio unreachable (%s)", exc)
            return counts
        try:
            self._settle_posted(client, counts, still_leader)
            self._settle_failed(client, counts, still_leader)
        except LabelStudioError as exc:
            logger.warning("sweep interrupted: %s", exc)
        if any(counts.values()):
            logger.info("sweep: %s", counts)
        return counts

    def _settle_posted(self, client: LabelStudioClient, counts: dict, still_leader: Any) -> None:
        key = self.queues.key("to-settle")
        due = self.redis.zrangebyscore(key, 0, time.time() - SETTLE_DELAY, start=0, num=SWEEP_BATCH)
        for raw in due:
            entry = json.loads(raw)
            placeholders, duplicates = tidy_task(client, entry["task_id"], entry.get("prediction_id"),
                                                 entry.get("model_version"))  # fmt: skip
            counts["tidied"] += 1
            counts["placeholders_deleted"] += placeholders
            counts["duplicates_deleted"] += duplicates
            self.redis.zrem(key, raw)
            if not still_leader():
                return

    def _settle_failed(self, client: LabelStudioClient, counts: dict, still_leader: Any) -> None:
        registry = FailedJobRegistry(queue=self.queues.queue(PREDICT))
        handled = 0
        for job_id in registry.get_job_ids():
            marker = self.queues.key("failure-settled", job_id)
            if self.redis.exists(marker):
                continue
            try:
                job = Job.fetch(job_id, connection=self.redis)
            except NoSuchJobError:
                continue
            # a video job stores and posts one prediction per chunk task
            per_task = job.meta.get("task_ids")
            tasks = [(int(t), int(t)) for t in per_task] if per_task else [(job.meta.get("task_id"), None)]
            unposted = [t for t, key in tasks if self.queues.get_prediction(job_id, key) is not None
                        and self.queues.posted(job_id, key) is None]  # fmt: skip
            requeues = int(job.meta.get("sweep_requeues", 0))
            if unposted and requeues < MAX_SWEEP_REQUEUES:
                job.meta["sweep_requeues"] = requeues + 1
                job.save_meta()
                try:
                    registry.requeue(job_id)
                    counts["requeued"] += 1
                    logger.info("requeued job %s (tasks %s): stored predictions were never posted", job_id, unposted)
                except InvalidJobOperation:
                    pass
            else:
                for task_id, _ in tasks:
                    if task_id is not None:
                        placeholders, _ = tidy_task(client, int(task_id), None, None)
                        counts["placeholders_deleted"] += placeholders
                self.redis.set(marker, "1", ex=self.queues.settings.result_ttl)
            handled += 1
            if handled >= SWEEP_BATCH or not still_leader():
                return


def tidy_task(client: LabelStudioClient, task_id: int, keep_id: int | None, model_version: str | None
              ) -> tuple[int, int]:  # fmt: skip
    """Delete the task's empty ``pending`` placeholders and, for ``model_version``, all but one copy of each
    identical prediction (``keep_id`` if it is one of them). Returns (placeholders, duplicates) deleted."""
    predictions = client.list_predictions(task_id)
    placeholders = delete_placeholders(client, predictions)
    duplicates = 0
    if model_version:
        groups: dict[str, list[dict]] = {}
        for p in predictions:
            if p.get("model_version") == model_version:
                groups.setdefault(json.dumps(p.get("result"), sort_keys=True), []).append(p)
        for copies in groups.values():
            if len(copies) < 2:
                continue
            ids = sorted(int(p["id"]) for p in copies)
            keep = keep_id if keep_id in ids else ids[0]
            for pid in ids:
                if pid != keep:
                    client.delete_prediction(pid)
                    duplicates += 1
    return placeholders, duplicates


def delete_placeholders(client: LabelStudioClient, predictions: list[dict]) -> int:
    """Delete the placeholders (``pending`` or ``running ...``) among a task's ``predictions``; how many there were."""
    placeholders = [p for p in predictions if is_placeholder(p)]
    for p in placeholders:
        client.delete_prediction(int(p["id"]))
    return len(placeholders)
