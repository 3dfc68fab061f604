"""A predict job's progress, where people look for it.

* ``job.meta["progress"]`` (``GET /jobs/<id>``, ``glus-backend status``): stage and frames done, saved at most
  twice a second;
* **Label Studio**: each of the job's tasks shows a placeholder prediction whose model version reads
  ``running 40%``, updated at most every ``LABEL_STUDIO_EVERY`` seconds (the labeling page shortens a prediction
  tab's name of more than 15 characters to its first 8 and last 6, so nothing longer would show the percentage).
  The placeholder is the ``pending`` one ``/predict`` answered, or one the job creates (tasks imported with the
  ``TASKS_CREATED`` webhook have none). Posting the prediction deletes it
  (:func:`glus_backend.maintenance.delete_placeholders`).

Showing progress never fails a job: a Label Studio that is slow or down only stops the updates (short timeout, no
retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from rq import get_current_job

from .ls_client import LabelStudioClient, LabelStudioError
from .queues import RUNNING_PREFIX, is_placeholder

logger = logging.getLogger(__name__)

META_EVERY = 0.5
LABEL_STUDIO_EVERY = 5.0


def running_version(done: int, total: int) -> str:
    """The model version a placeholder shows while its job runs: ``running 40%`` (at most 15 characters)."""
    return f"{RUNNING_PREFIX} {100 * done // total if total else 0}%"


class JobProgress:
    """Progress of the current RQ job (none outside a worker: updates are then no-ops)."""

    def __init__(self) -> None:
        self.job = get_current_job()
        self.last_meta = 0.0
        self.last_shown = 0.0
        self.client: LabelStudioClient | None = None
        self.placeholders: dict[int, int] = {}  # task id -> placeholder prediction id

    def show_in_label_studio(self, client: LabelStudioClient | None, task_ids: Iterable[int]) -> None:
        """Give each task a placeholder that shows this job's progress (reusing the task's ``pending`` one)."""
        self.client = client
        if client is None:
            return
        for task_id in task_ids:
            try:
                existing = [p for p in client.list_predictions(task_id) if is_placeholder(p)]
                if existing:
                    self.placeholders[task_id] = int(existing[0]["id"])
                else:
                    created = client.create_prediction(task_id, [], 0.0, running_version(0, 0))
                    self.placeholders[task_id] = int(created["id"])
            except (LabelStudioError, KeyError, TypeError, ValueError) as exc:
                logger.info("cannot show progress on task %s: %s", task_id, exc)

    def done_with(self, task_id: int) -> None:
        """The task's prediction is posted (its placeholder is gone): stop updating it."""
        self.placeholders.pop(task_id, None)

    def update(self, stage: str, done: int = 0, total: int = 0, force: bool = False) -> None:
        """``done``/``total`` count (object, frame) pairs."""
        now = time.monotonic()
        if self.job is not None and (force or now - self.last_meta >= META_EVERY):
            self.last_meta = now
            self.job.meta["progress"] = {"stage": stage, "frames_done": done, "frames_total": total}
            self.job.save_meta()
        if self.placeholders and total and (now - self.last_shown >= LABEL_STUDIO_EVERY or done == 0):
            self.last_shown = now
            self._show(running_version(done, total))

    def _show(self, version: str) -> None:
        client = self.client
        for task_id, prediction_id in list(self.placeholders.items()):
            try:
                client.update_prediction(prediction_id, model_version=version)
            except LabelStudioError as exc:
                if exc.status == 404:  # deleted meanwhile (the task's prediction was posted by another job)
                    self.placeholders.pop(task_id, None)
                else:
                    logger.info("progress not shown on task %s: %s", task_id, exc)
                    return  # Label Studio slow or down: try again at the next update

    def meta(self, **fields: Any) -> None:
        """Record facts about the job in its meta at once (e.g. the tasks a video job covers)."""
        if self.job is not None:
            self.job.meta.update(fields)
            self.job.save_meta()
