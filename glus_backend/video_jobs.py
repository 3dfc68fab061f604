"""The whole-video predict job: every chunk task of one video pre-labeled by one GLUS pass.

Chunk tasks (:mod:`glus_backend.video_chunks`) of one video, with the same expressions, share a job: the web process
gives them one job id (video, frame step, expressions, labeling config, model version), so asking for any chunk,
or all of them, runs the video once. The job:

1. reads the video's chunk tasks from Label Studio (``data.video`` filter) and lays their frames end to end;
2. segments the whole sequence: GLUS's context frames come from the whole video and one memory bank per object runs
   through every chunk boundary, so an object keeps its identity, label and region id pattern across chunks;
3. as soon as every frame of a chunk is decided for every object, stores that chunk's prediction (result store,
   per task) and posts it, then drops its masks: only the chunks in progress are held in memory;
4. a chunk whose post fails does not stop the others; the job then fails as transient and its retry only posts
   (the stored predictions are reused, nothing is segmented again).

Progress shows on every chunk's placeholder in Label Studio (:mod:`glus_backend.progress`).
"""

from __future__ import annotations

import logging

import numpy as np

from .jobs import _frame_files, _post, object_scores, segment_frames, task_prompts
from .ls_client import LabelStudioError
from .progress import JobProgress
from .results import ObjectTrack, frame_sequence_results, prediction
from .video_chunks import VideoFrames, prompt_fields, video_frames
from .worker import PermanentJobError, WorkerRuntime, current_runtime

logger = logging.getLogger(__name__)


class ChunkPostsFailed(RuntimeError):
    """Some chunks' predictions could not be posted; they are stored, and the retry posts them."""

    transient = True


def _video_tasks(runtime: WorkerRuntime, payload: dict, frames_key: str) -> VideoFrames:
    client = runtime.label_studio()
    if client is None:
        raise PermanentJobError("a whole-video job reads the video's chunk tasks from Label Studio: set "
                                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or GLUS_WHOLE_VIDEO=false)")  # fmt: skip
    fields = runtime.settings.expression_fields
    requester = {"id": int(payload["task_id"]), "data": payload.get("data") or {}}
    wanted = prompt_fields(requester["data"], fields)
    tasks = client.tasks_of_video(int(payload["project_id"]), payload["video"])
    siblings = [t for t in tasks
                if int(t["id"]) != requester["id"] and prompt_fields(t.get("data") or {}, fields) == wanted]
    return video_frames([requester, *siblings], frames_key, int(payload["frame_step"]))


def predict_video(payload: dict) -> dict:
    """Pre-label every chunk task of one video with one pass over the whole video; post each chunk when done."""
    runtime = current_runtime()
    progress = JobProgress()
    job_id, requester = payload["job_id"], int(payload["task_id"])
    config, prompts = task_prompts(runtime, payload, requester)
    progress.update("listing the video's chunk tasks", force=True)
    video = _video_tasks(runtime, payload, config.value_key)
    progress.meta(task_ids=video.task_ids)
    if len(video.urls) > runtime.settings.max_frames:
        raise PermanentJobError(
            f"video {payload['video']!r} has {len(video.urls)} frames in {len(video.task_ids)} tasks, over the limit "
            f"of {runtime.settings.max_frames} (GLUS_MAX_FRAMES)"
        )
    stored = {t: runtime.queues.get_prediction(job_id, t) for t in video.task_ids}
    todo = [t for t, pred in stored.items() if pred is None]
    version = None
    if todo:
        progress.update("fetching media", force=True)
        source = _frame_files(runtime, video.urls, requester)
        progress.show_in_label_studio(runtime.progress_client(), todo)
        loaded = runtime.model()
        version = loaded.version.version
        chunks = _ChunkCollector(video, prompts, config, set(todo), version)
        for obj, frame in segment_frames(loaded, source, prompts, progress):
            for task_id, pred in chunks.add(obj, frame):
                runtime.queues.put_prediction(job_id, pred, task_id)
                stored[task_id] = pred
                _post_chunk(runtime, job_id, task_id, pred, progress)
    failed = []
    for task_id, pred in stored.items():  # chunks stored by an earlier run, and any whose post failed above
        if runtime.queues.posted(job_id, task_id) is None and not _post_chunk(runtime, job_id, task_id, pred, progress):
            failed.append(task_id)
    summary = {
        "video": payload["video"],
        "task_ids": video.task_ids,
        "frames": len(video.urls),
        "objects": [{"expression": p.expression, "label": p.label} for p in prompts],
        "model_version": version or next(iter(stored.values()))["model_version"],
        "segmented": bool(todo),
        "predictions": {str(t): runtime.queues.posted(job_id, t) for t in video.task_ids},
    }
    if failed:
        raise ChunkPostsFailed(f"the predictions of tasks {failed} are stored but could not be posted; the retry "
                               "posts them")  # fmt: skip
    return summary


def _post_chunk(runtime: WorkerRuntime, job_id: str, task_id: int, pred: dict, progress: JobProgress) -> bool:
    """Post one chunk's prediction; a failure is logged, never raised (the other chunks go on; the result store's
    ``posted`` marker says which chunks are still to post)."""
    try:
        _post(runtime, task_id, job_id, pred, per_task=True)
    except LabelStudioError as exc:
        logger.warning("posting the prediction of task %d failed (%s): it is stored, the job's retry posts it",
                       task_id, exc)  # fmt: skip
        return False
    progress.done_with(task_id)
    return True


class _ChunkCollector:
    """Holds each chunk's masks until every (object, frame) of it is decided, then turns them into its prediction."""

    def __init__(self, video: VideoFrames, prompts: list, config, wanted: set[int], version: str) -> None:
        self.video, self.prompts, self.config, self.version = video, prompts, config, version
        n_objects = len(prompts)
        self.items = {t: len(video.positions_of(t)) for t in video.task_ids}
        self.remaining = {t: self.items[t] * n_objects for t in video.task_ids}
        self.wanted = wanted
        self.masks: dict[int, list[list[np.ndarray | None]]] = {}
        self.scores: dict[int, list[list[float]]] = {}
        self.size: dict[int, tuple[int, int]] = {}

    def add(self, obj: int, frame) -> list[tuple[int, dict]]:
        """Record one decided frame; return ``(task id, prediction)`` for every chunk it completes."""
        done = []
        for task_id, item in self.video.items[frame.frame_index]:
            if task_id not in self.wanted:
                continue
            if task_id not in self.masks:
                self.masks[task_id] = [[None] * self.items[task_id] for _ in self.prompts]
                self.scores[task_id] = [[0.0] * self.items[task_id] for _ in self.prompts]
            if item == 0:
                self.size[task_id] = frame.mask.shape[:2]
            if frame.present:
                self.masks[task_id][obj][item] = frame.mask
                self.scores[task_id][obj][item] = frame.score
            self.remaining[task_id] -= 1
            if self.remaining[task_id] == 0:
                done.append((task_id, self._prediction(task_id)))
        return done

    def _prediction(self, task_id: int) -> dict:
        masks, scores = self.masks.pop(task_id), self.scores.pop(task_id)
        tracks = [ObjectTrack(label=p.label, expression=p.expression, masks=masks[i], scores=scores[i])
                  for i, p in enumerate(self.prompts)]  # fmt: skip
        height, width = self.size.pop(task_id)
        results = frame_sequence_results(tracks, self.config, width, height)
        return prediction(results, object_scores(tracks), self.version)
