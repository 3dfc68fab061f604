"""Re-labeling after a promotion: tasks nobody has annotated yet get a prediction from the promoted version.

Annotated tasks are left alone (their annotations are the truth); a task that already has a prediction of the
version is skipped, so running it twice enqueues nothing new. Predictions of earlier versions stay in Label
Studio (its project settings choose which version pre-labels), nothing is deleted.
"""

from __future__ import annotations

import logging

from .corrections import latest_annotation
from .queues import JobQueues

logger = logging.getLogger(__name__)


def tasks_to_relabel(tasks: list[dict], predicted: set[int]) -> list[dict]:
    """Tasks without a (non-cancelled) annotation whose id is not in ``predicted`` (tasks that already have a
    prediction of the version)."""
    return [t for t in tasks if latest_annotation(t) is None and int(t["id"]) not in predicted]


def relabel_project(queues: JobQueues, client, project_id: int, version: str) -> dict:
    """Enqueue a ``predict`` job with ``version`` for every task of the project :func:`tasks_to_relabel` picks."""
    project = client.get_project(project_id)
    tasks = client.export_tasks(project_id, all_tasks=True)
    predictions = client.list_project_predictions(project_id)
    predicted = {int(p["task"]) for p in predictions if p.get("model_version") == version}
    todo = tasks_to_relabel(tasks, predicted)
    jobs = [queues.enqueue_prediction(t, project["label_config"], int(project_id), version).job_id for t in todo]
    annotated = sum(latest_annotation(t) is not None for t in tasks)
    logger.info("re-labeling project %s with %s: %d of %d tasks enqueued", project_id, version, len(jobs), len(tasks))
    return {
        "project": int(project_id),
        "version": version,
        "tasks": len(tasks),
        "annotated": annotated,
        "enqueued": len(jobs),
        "jobs": jobs,
    }
