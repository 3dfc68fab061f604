"""The functions RQ runs in GLUS workers: predict a task, ingest or delete a correction.

Each takes one JSON-able payload written by the web process (:mod:`glus_backend.server`) and reaches the
worker's model and Label Studio client through :func:`~glus_backend.worker.current_runtime`. Masks arrive
from the ``model`` package as numpy arrays and leave as Label Studio results: this package never touches
tensors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .label_config import ServedConfig, UnsupportedLabelConfig, parse_label_config
from .maintenance import delete_placeholders
from .media import resolve_media
from .progress import JobProgress
from .prompts import ObjectPrompt, PromptError, extract_prompts
from .results import ObjectTrack, frame_sequence_results, mask_to_box, prediction, video_rectangle_results
from .url_guard import AddressGuard
from .worker import PermanentJobError, WorkerRuntime, current_runtime

logger = logging.getLogger(__name__)


def _media_options(runtime: WorkerRuntime, task_id: int) -> dict:
    settings = runtime.settings
    return dict(
        client=runtime.label_studio(),
        dest_dir=settings.model_dir / "cache" / "media",
        task_id=task_id,
        max_bytes=settings.max_media_bytes,
        local_files_root=settings.local_files_root,
        guard=AddressGuard.from_settings(settings),
    )


def _frame_files(runtime: WorkerRuntime, urls: list[str], task_id: int) -> Any:
    """A lazy frame source over image URLs (fetched to the media cache now, decoded when read)."""
    from model.video_io import FrameFiles

    if len(urls) > runtime.settings.max_frames:
        raise PermanentJobError(
            f"task {task_id} has {len(urls)} frames, over the limit of {runtime.settings.max_frames} (GLUS_MAX_FRAMES)"
        )
    common = _media_options(runtime, task_id)
    return FrameFiles([resolve_media(url, **common) for url in urls])


def _open_media(runtime: WorkerRuntime, config: ServedConfig, data: dict, task_id: int) -> tuple[Any, float]:
    """A lazy frame source for the task's video or frame list, and its frame rate."""
    from model.video_io import VideoFile, VideoReadError

    settings = runtime.settings
    if config.value_key not in data:
        tag = "Video" if config.kind == "video" else "Image valueList"
        raise PermanentJobError(
            f"task {task_id} has no '{config.value_key}' field "
            f"(the labeling config's <{tag}> reads ${config.value_key})"
        )
    value = data[config.value_key]
    try:
        if config.kind == "video":
            if not isinstance(value, str) or not value.strip():
                raise PermanentJobError(f"task {task_id}: '{config.value_key}' must be a video URL, got {value!r}")
            source = VideoFile(resolve_media(value, **_media_options(runtime, task_id)))
            fps = source.fps or config.framerate or 25.0
        else:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise PermanentJobError(f"task {task_id}: '{config.value_key}' must be a non-empty list of image URLs")
            source = _frame_files(runtime, value, task_id)
            fps = config.framerate or 25.0
    except VideoReadError as exc:
        raise PermanentJobError(f"task {task_id}: {exc}") from exc
    if len(source) > settings.max_frames:
        raise PermanentJobError(
            f"task {task_id}: the video has {len(source)} frames, over the limit of "
            f"{settings.max_frames} (GLUS_MAX_FRAMES)"
        )
    return source, fps


def segment_frames(loaded: Any, source: Any, prompts: list[ObjectPrompt], progress: JobProgress
                   ) -> Iterator[tuple[int, Any]]:  # fmt: skip
    """Run the ``loaded`` model (any family, its options bound at load) for every prompt over ``source``; yield
    ``(object index, FrameResult)`` as frames are decided."""
    from model.inference import Expression

    total = len(source) * len(prompts)
    expressions = [Expression(p.expression, str(i)) for i, p in enumerate(prompts)]
    progress.update("segmenting", 0, total, force=True)
    for done, (obj, _key, frame) in enumerate(loaded.model.segment_stream(source, expressions), 1):
        yield obj, frame
        progress.update("segmenting", done, total)


def object_scores(tracks: list[ObjectTrack]) -> float:
    """A prediction's score: the mean over objects of their mean score where present (0.0 when none is)."""
    scores = [
        float(np.mean([s for s, m in zip(t.scores, t.masks) if m is not None]))
        for t in tracks
        if any(m is not None for m in t.masks)
    ]
    return float(np.mean(scores)) if scores else 0.0


def _segment(loaded: Any, source: Any, prompts: list[ObjectPrompt], progress: JobProgress,
             keep_masks: bool) -> list[ObjectTrack]:  # fmt: skip
    """Per object and frame, the mask (frame sequences) or its box (videos)."""
    n = len(source)
    masks: list[list[np.ndarray | None]] = [[None] * n for _ in prompts]
    scores: list[list[float]] = [[0.0] * n for _ in prompts]
    for obj, frame in segment_frames(loaded, source, prompts, progress):
        if frame.present:
            # videos need boxes only: long videos must not hold every frame's full-resolution mask
            masks[obj][frame.frame_index] = frame.mask if keep_masks else mask_to_box(frame.mask)
            scores[obj][frame.frame_index] = frame.score
    return [
        ObjectTrack(label=p.label, expression=p.expression, masks=masks[i], scores=scores[i])
        for i, p in enumerate(prompts)
    ]


def task_prompts(runtime: WorkerRuntime, payload: dict, task_id: int) -> tuple[ServedConfig, list[ObjectPrompt]]:
    """The served config and the objects to segment of a predict job's task; permanent errors say why not."""
    try:
        config = parse_label_config(payload.get("label_config") or "")
    except UnsupportedLabelConfig as exc:
        raise PermanentJobError(f"unsupported labeling config: {exc}") from exc
    try:
        prompts = extract_prompts(
            payload.get("data") or {},
            config,
            runtime.settings.expression_fields,
            payload.get("context"),
            max_objects=runtime.settings.max_objects,
        )
    except PromptError as exc:
        raise PermanentJobError(f"task {task_id}: {exc}") from exc
    return config, prompts


def predict_task(payload: dict) -> dict:
    """Segment a task's media for each of its expressions and post the prediction to Label Studio."""
    runtime = current_runtime()
    progress = JobProgress()
    task_id = int(payload["task_id"])
    config, prompts = task_prompts(runtime, payload, task_id)
    stored = runtime.queues.get_prediction(payload["job_id"])
    if stored is not None:  # a rerun (worker died, Redis or Label Studio went away after segmenting): post only
        progress.update("posting", force=True)
        prediction_id = _post(runtime, task_id, payload["job_id"], stored)
        return {"task_id": task_id, "model_version": stored.get("model_version"), "results": len(stored["result"]),
                "prediction_id": prediction_id, "reused_stored_prediction": True}
    progress.update("fetching media", force=True)
    source, fps = _open_media(runtime, config, payload.get("data") or {}, task_id)
    first = source.frame(0)
    height, width = first.shape[:2]
    progress.show_in_label_studio(runtime.progress_client(), [task_id])
    loaded = runtime.model()
    tracks = _segment(loaded, source, prompts, progress, keep_masks=config.kind == "frames")
    version = loaded.version.version
    if config.kind == "frames":
        results = frame_sequence_results(tracks, config, width, height)
    else:
        results = video_rectangle_results(tracks, config, len(source), fps)
    pred = prediction(results, object_scores(tracks), version)
    runtime.queues.put_prediction(payload["job_id"], pred)
    progress.update("posting", len(source) * len(prompts), len(source) * len(prompts), force=True)
    prediction_id = _post(runtime, task_id, payload["job_id"], pred)
    return {
        "task_id": task_id,
        "model_version": version,
        "objects": [
            {"expression": t.expression, "label": t.label, "frames_present": sum(m is not None for m in t.masks)}
            for t in tracks
        ],
        "frames": len(source),
        "results": len(results),
        "prediction_id": prediction_id,
    }


def _post(runtime: WorkerRuntime, task_id: int, job_id: str, pred: dict, per_task: bool = False) -> int | None:
    """Post the prediction once (idempotent across retries), remove this task's placeholders, and have the sweeper
    tidy the task again a few seconds later (a /predict racing with the post may still store one). ``per_task``:
    the job posts several tasks (a video job), each recorded under its own key."""
    client = runtime.label_studio()
    if client is None:
        logger.warning(
            "LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY not set: task %d's prediction stays in the result "
            "store and is returned on the next /predict",
            task_id,
        )
        return None
    key = task_id if per_task else None
    posted = runtime.queues.posted(job_id, key)
    existing = client.list_predictions(task_id)
    if posted is None:
        # A crash between posting and recording it must not post twice: look for our prediction first.
        same = [
            p for p in existing if p.get("model_version") == pred["model_version"] and p.get("result") == pred["result"]
        ]
        if same:
            posted = int(same[0]["id"])
        else:
            created = client.create_prediction(task_id, pred["result"], pred["score"], pred["model_version"])
            posted = int(created["id"])
        runtime.queues.mark_posted(job_id, posted, key)
    # settle first: should deleting the placeholders fail (Label Studio gone right after the post), the retry
    # skips the posted task, and the sweeper still tidies it once Label Studio answers
    runtime.queues.settle_later(job_id, task_id, posted, pred["model_version"])
    delete_placeholders(client, existing)
    return posted


# --- corrections ---
def _annotation_path(model_dir: Path, project_id: Any, task_id: Any, annotation_id: Any) -> Path:
    return (
        model_dir
        / "data"
        / "annotations"
        / f"project_{project_id}"
        / f"task_{task_id}"
        / f"annotation_{annotation_id}.json"
    )


def ingest_annotation(payload: dict) -> dict:
    """Store an annotator's submitted or updated annotation (re-submission replaces it)."""
    runtime = current_runtime()
    if payload.get("by_reference"):
        payload = _annotation_from_label_studio(runtime, payload)
    annotation = payload.get("annotation") or {}
    task = payload.get("task") or {}
    project = payload.get("project") or {}
    if not annotation.get("id") or not task.get("id"):
        raise PermanentJobError("webhook payload without annotation or task id")
    settings = runtime.settings
    path = _annotation_path(settings.model_dir, project.get("id"), task.get("id"), annotation["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"annotation": annotation, "task": task, "project": project}, indent=1))
    tmp.replace(path)
    summary = {"stored": str(path), "results": len(annotation.get("result") or []), "action": payload.get("action")}
    from .correction_jobs import enqueue_if_corrected

    summary.update(enqueue_if_corrected(runtime, task, annotation, project))
    if project.get("id") is not None and not annotation.get("was_cancelled"):
        summary.update(_add_to_correction_set(runtime, int(project["id"]), task, annotation, project))
    return {**summary, **_count_correction(runtime, project.get("id"))}


def _annotation_from_label_studio(runtime: WorkerRuntime, payload: dict) -> dict:
    """The webhook body of an annotation too large to store in a job (GLUS_MAX_JOB_BYTES), read back by id."""
    client = runtime.label_studio()
    if client is None:
        raise PermanentJobError("a large annotation is read from Label Studio: set LABEL_STUDIO_URL and _API_KEY")
    annotation = client.request("GET", f"/api/annotations/{int(payload['annotation']['id'])}").json()
    task = client.get_task(int(payload["task"]["id"]))
    project = client.get_project(int(payload["project"]["id"])) if payload["project"].get("id") is not None else {}
    return {"action": payload.get("action"), "annotation": annotation,
            "task": {"id": task["id"], "data": task.get("data")},
            "project": {"id": project.get("id"), "label_config": project.get("label_config")}}  # fmt: skip


def _add_to_correction_set(runtime: WorkerRuntime, project_id: int, task: dict, annotation: dict, project: dict):
    """Decode the correction into the project's MeViS-layout training set (it replaces the task's entry)."""
    from .correction_set import CorrectionSet
    from .corrections import task_frame_loader

    label_config = project.get("label_config") or ""
    try:  # the frame loader parses the config first: an unsupported one fails before any media is fetched
        frames = task_frame_loader(runtime.label_studio(), runtime.settings, label_config)(task)
        entry = CorrectionSet.of_project(runtime.settings.model_dir, project_id).put(
            task, annotation, label_config, frames, runtime.settings.expression_fields
        )
    except (UnsupportedLabelConfig, PromptError) as exc:
        raise PermanentJobError(f"task {task.get('id')}: correction stored but not usable for training: {exc}") from exc
    return {
        "correction_set": f"project_{project_id}",
        "expressions": len(entry["expressions"]),
        "frames_with_masks": sum(m is not None for masks in entry["masks"].values() for m in masks),
        "unassigned_regions": len(entry["unassigned_regions"]),
    }


def _count_correction(runtime: WorkerRuntime, project_id: Any) -> dict:
    """Count corrections per project; every ``GLUS_TRAIN_EVERY`` of them, enqueue a training run."""
    every = runtime.settings.train_every
    if not every or project_id is None:
        return {}
    key = runtime.queues.key("corrections", str(project_id))
    count = int(runtime.redis.incr(key))
    if count < every:
        return {"corrections_since_training": count}
    runtime.redis.delete(key)
    from .training import enqueue_training

    enqueued = enqueue_training(runtime.queues, int(project_id), f"{count} new corrections")
    return {"corrections_since_training": count, "train_job": enqueued.job_id}


def train_from_corrections(payload: dict) -> dict:
    """The ``train`` job: fine-tune on the project's corrections, gate, register, promote (``START_TRAINING``,
    every ``GLUS_TRAIN_EVERY`` corrections, or ``glus-backend train --enqueue``)."""
    from .training import TrainingDataError, train_from_label_studio

    runtime = current_runtime()
    project_id = int(payload["project_id"])
    client = runtime.label_studio()
    if client is None:
        raise PermanentJobError("training needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read the annotations")
    progress = JobProgress()
    try:
        summary = train_from_label_studio(
            runtime.settings,
            client,
            project_id,
            runtime.resolved_device(),
            lambda stage: progress.update(stage, force=True),
            runtime.registry,
        )
    except TrainingDataError as exc:
        raise PermanentJobError(str(exc)) from exc
    if summary["promoted"] and runtime.settings.relabel_on_promote:
        from .ls_client import LabelStudioError
        from .relabel import relabel_project

        try:
            relabel = relabel_project(runtime.queues, client, project_id, summary["version"])
            summary["relabel"] = {k: relabel[k] for k in ("tasks", "annotated", "enqueued")}
        except LabelStudioError as exc:  # the promotion stands; `glus-backend relabel` can be run later
            logger.error("re-labeling project %s after the promotion failed: %s", project_id, exc)
            summary["relabel"] = {"error": str(exc)}
    return summary


def delete_annotations(payload: dict) -> dict:
    """Remove stored corrections of deleted annotations (ANNOTATIONS_DELETED)."""
    from .correction_set import CorrectionSet

    runtime = current_runtime()
    root = runtime.settings.model_dir / "data" / "annotations"
    sets = [CorrectionSet(p) for p in sorted((runtime.settings.model_dir / "data" / "mevis").glob("project_*"))]
    removed, tasks_removed = [], []
    for annotation_id in payload.get("annotation_ids") or []:
        for path in root.glob(f"project_*/task_*/annotation_{annotation_id}.json"):
            path.unlink()
            removed.append(str(path))
        for corrections in sets:
            tasks_removed += corrections.remove_annotation(annotation_id)
    return {"removed": removed, "tasks_removed_from_training_sets": tasks_removed}
