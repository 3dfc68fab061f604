"""Correct one frame, the rest follows: an annotator's corrections re-propagated to the frames after them.

When an annotation of a frame-sequence task is submitted or updated, the ingest job compares it with the
prediction it started from (:func:`~glus_backend.corrections.corrected_frames`). For every object the annotator
corrected, with ``L`` its last corrected frame, a ``repropagate`` job (predict queue) re-segments that object on
frames ``L+1 ..`` with SAM-2's memory seeded by the corrected masks (:func:`model.repropagation.repropagate`),
and offers the result as a new prediction, model version ``<version> + corrections``: the annotator's masks up to
``L`` and on every frame of the objects left alone, the re-propagated masks after ``L``. The annotation itself is
never changed.
"""

from __future__ import annotations

import logging
from typing import Any

from .corrections import DecodedAnnotation, corrected_frames, decode_annotation
from .jobs import _frame_files, _post, object_scores, task_prompts
from .label_config import ServedConfig, UnsupportedLabelConfig, parse_label_config
from .ls_client import LabelStudioClient, LabelStudioError
from .progress import JobProgress
from .prompts import ObjectPrompt, PromptError, extract_prompts
from .queues import PREDICT, REPROPAGATE_FUNC, JobQueues
from .results import ObjectTrack, frame_sequence_results, prediction
from .worker import PermanentJobError, WorkerRuntime, current_runtime

logger = logging.getLogger(__name__)

CORRECTED_SUFFIX = " + corrections"


def parent_prediction(client: LabelStudioClient, annotation: dict) -> dict | None:
    """The prediction an annotation started from: in the webhook body, or read by its id; None when there is none."""
    embedded = annotation.get("prediction")
    if isinstance(embedded, dict) and isinstance(embedded.get("result"), list):
        return embedded
    parent = annotation.get("parent_prediction")
    if not parent:
        return None
    try:
        return client.request("GET", f"/api/predictions/{int(parent)}").json()
    except LabelStudioError as exc:
        if exc.status == 404:  # deleted since: every annotated frame counts as a correction
            return None
        raise


def corrections_of(annotation: dict, parent: dict | None, config: ServedConfig, prompts: list[ObjectPrompt]
                   ) -> tuple[DecodedAnnotation, dict[int, dict[int, Any]]]:  # fmt: skip
    """The annotation's masks, and ``{object: {frame: corrected mask}}`` against its parent prediction."""
    annotated = decode_annotation(annotation.get("result") or [], config, prompts)
    predicted: DecodedAnnotation | None = None
    if parent is not None:
        predicted = decode_annotation(parent.get("result") or [], config, prompts)
    return annotated, corrected_frames(annotated, predicted)


def enqueue_if_corrected(runtime: WorkerRuntime, task: dict, annotation: dict, project: dict) -> dict:
    """From the ingest job: enqueue a ``repropagate`` job when the annotation corrects an object before the task's
    last frame. Returns what was decided (for the ingest job's result)."""
    if not runtime.settings.repropagate_corrections or annotation.get("was_cancelled"):
        return {}
    client = runtime.label_studio()
    try:
        config = parse_label_config(project.get("label_config") or "")
        if config.kind != "frames" or client is None:
            return {}
        prompts = extract_prompts(task.get("data") or {}, config, runtime.settings.expression_fields)
    except (UnsupportedLabelConfig, PromptError):
        return {}
    frames = len((task.get("data") or {}).get(config.value_key) or [])
    _, corrected = corrections_of(annotation, parent_prediction(client, annotation), config, prompts)
    last = {obj: max(found) for obj, found in corrected.items()}
    if not any(frame < frames - 1 for frame in last.values()):
        return {"repropagate": "no correction before the last frame"}
    queues: JobQueues = runtime.queues
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    job_id = queues.job_id(PREDICT, "repropagate", task["id"], annotation["id"], stamp)
    payload = {"job_id": job_id, "task_id": int(task["id"]), "project_id": project.get("id"),
               "annotation_id": int(annotation["id"]), "data": task.get("data") or {},
               "label_config": project.get("label_config") or ""}  # fmt: skip
    enqueued = queues.enqueue(PREDICT, REPROPAGATE_FUNC, job_id, payload, runtime.settings.predict_timeout,
                              meta={"task_id": int(task["id"]), "annotation_id": int(annotation["id"])})  # fmt: skip
    return {"repropagate_job": enqueued.job_id, "corrected_objects": {str(o): f + 1 for o, f in last.items()}}


def repropagate_correction(payload: dict) -> dict:
    """The ``repropagate`` job: re-segment each corrected object after its last correction; post the result."""
    from model.repropagation import RepropagationOptions, repropagate

    runtime = current_runtime()
    progress = JobProgress()
    task_id, job_id = int(payload["task_id"]), payload["job_id"]
    config, prompts = task_prompts(runtime, payload, task_id)
    client = runtime.label_studio()
    if client is None:
        raise PermanentJobError("re-propagating a correction reads it from Label Studio: set LABEL_STUDIO_URL and "
                                "LABEL_STUDIO_API_KEY")  # fmt: skip
    annotation = client.request("GET", f"/api/annotations/{int(payload['annotation_id'])}").json()
    annotated, corrected = corrections_of(annotation, parent_prediction(client, annotation), config, prompts)
    source = _frame_files(runtime, list(payload["data"][config.value_key]), task_id)
    n = len(source)
    masks = [[obj.frames.get(i) for i in range(n)] for obj in annotated.objects]
    scores = [[1.0] * n for _ in prompts]
    loaded = runtime.model()
    todo = {obj: found for obj, found in corrected.items() if max(found) < n - 1}
    total = sum(n - max(found) for found in todo.values())
    done = 0
    for obj, found in todo.items():
        options = RepropagationOptions(prompt=runtime.settings.repropagate_prompt)
        for result in repropagate(loaded.segmenter, source, prompts[obj].expression, found, options):
            masks[obj][result.frame_index] = result.mask if result.present else None
            scores[obj][result.frame_index] = result.score
            done += 1
            progress.update("re-propagating", done, total)
    height, width = source.frame(0).shape[:2]
    tracks = [ObjectTrack(p.label, p.expression, masks[i], scores[i]) for i, p in enumerate(prompts)]
    version = loaded.version.version + CORRECTED_SUFFIX
    pred = prediction(frame_sequence_results(tracks, config, width, height), object_scores(tracks), version)
    runtime.queues.put_prediction(job_id, pred)
    posted = _post(runtime, task_id, job_id, pred)  # once, across retries and a crash between post and record
    return {"task_id": task_id, "prediction_id": posted, "model_version": version,
            "objects": {prompts[o].expression: {"last_corrected_frame": max(f), "frames_repropagated": n - 1 - max(f)}
                        for o, f in todo.items()}}  # fmt: skip


def propagate_clicks(payload: dict) -> dict:
    """The interactive job (:mod:`glus_backend.interactive`): one object from the clicked frame ``k`` to the end of
    the task, seeded by the annotator's region of that object on ``k`` when there is one, else by SAM-2's mask for
    the clicks. The prediction is stored (the waiting web process answers it), not posted."""
    from model.clicks import Click, mask_from_clicks
    from model.repropagation import RepropagationOptions, repropagate

    runtime = current_runtime()
    progress = JobProgress()
    task_id, job_id, request = int(payload["task_id"]), payload["job_id"], payload["clicks"]
    config, prompts = task_prompts(runtime, payload, task_id)
    carriers = [i for i, p in enumerate(prompts) if p.label == request["label"]]
    if not carriers:
        shown = ", ".join(f"{p.label!r} ({p.expression})" for p in prompts)
        raise PermanentJobError(f"task {task_id}: the clicked label {request['label']!r} is no object's label "
                                f"(the objects: {shown})")  # fmt: skip
    obj, frame = carriers[0], int(request["frame"])
    source = _frame_files(runtime, list(payload["data"][config.value_key]), task_id)
    if not 0 <= frame < len(source):
        raise PermanentJobError(f"task {task_id}: clicked frame {frame} out of range ({len(source)} frames)")
    clicks = [Click(min(max(c["x"] / 100, 0.0), 1.0), min(max(c["y"] / 100, 0.0), 1.0), c["positive"])
              for c in request["clicks"]]  # fmt: skip
    loaded = runtime.model()
    height, width = source.frame(frame).shape[:2]
    seed, seeded_by = _annotated_region(request["seed_results"], config, prompts, obj, frame, (height, width))
    if seed is None:
        seed = mask_from_clicks(loaded.segmenter, source, frame, clicks)
    n = len(source)
    masks: list = [None] * n
    scores = [0.0] * n
    options = RepropagationOptions(prompt=runtime.settings.repropagate_prompt)
    for done, result in enumerate(repropagate(loaded.segmenter, source, prompts[obj].expression, {frame: seed},
                                              options), 1):  # fmt: skip
        masks[result.frame_index] = result.mask if result.present else None
        scores[result.frame_index] = result.score
        progress.update("re-propagating", done, n - frame)
    tracks = [ObjectTrack(p.label, p.expression, masks if i == obj else [None] * n, scores if i == obj else None)
              for i, p in enumerate(prompts)]  # fmt: skip
    pred = prediction(frame_sequence_results(tracks, config, width, height), object_scores(tracks[obj : obj + 1]),
                      loaded.version.version)  # fmt: skip
    runtime.queues.put_prediction(job_id, pred)
    return {"task_id": task_id, "object": prompts[obj].expression, "frame": frame, "seeded_by": seeded_by,
            "frames": n - frame, "results": len(pred["result"])}  # fmt: skip


def _annotated_region(results: list[dict], config: ServedConfig, prompts: list[ObjectPrompt], obj: int, frame: int,
                      size: tuple[int, int]) -> tuple[Any, str]:  # fmt: skip
    """The annotator's mask of ``obj`` on ``frame`` (their draft's, else their annotation's), or None."""
    decoded = decode_annotation(results, config, prompts)
    mask = decoded.objects[obj].frames.get(frame) if decoded.objects else None
    if mask is None or mask.shape != size or not mask.any():
        return None, "clicks"
    return mask, "annotated region"
