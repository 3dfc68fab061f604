"""Chunk tasks: frame-sequence tasks that are consecutive pieces of one video.

``glus-backend import-videos`` cuts a video into tasks of ``--frames-per-task`` frames, and any task data can say
the same: ``{"frames": [...], "video": "<name>", "start_frame": <video index of frames[0]>, "frame_step": k}``
(``frame_step`` defaults to 1: ``frames[i]`` is video frame ``start_frame + i * k``). The chunks of one video,
with the same ``frame_step`` and the same expressions, are pre-labeled by one job over the whole video (GLUS's
context frames from the whole video, one memory bank through every chunk): see :mod:`glus_backend.video_jobs`.

No torch here: the web process decides which job a task belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ChunkRef", "VideoFrames", "chunk_ref", "prompt_fields", "video_frames"]


@dataclass(frozen=True)
class ChunkRef:
    """Where a task's frames lie in its video."""

    video: str
    start_frame: int
    frame_step: int


def prompt_fields(data: dict, fields: Iterable[str]) -> dict:
    """The task data that decides a task's objects (its expression fields): chunks of one video share a job only
    when these are equal."""
    return {f: data[f] for f in fields if data.get(f) is not None}


def _index(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def chunk_ref(data: dict, frames_key: str) -> ChunkRef | None:
    """The task's place in its video, or None when its data does not name one (a task of its own)."""
    if not isinstance(data, dict):
        return None
    video, start = data.get("video"), _index(data.get("start_frame"))
    step = _index(data.get("frame_step", 1))
    frames = data.get(frames_key)
    if not isinstance(video, str) or not video.strip() or start is None or start < 0 or step is None or step < 1:
        return None
    if not isinstance(frames, list) or not frames:
        return None
    return ChunkRef(video, start, step)


@dataclass(frozen=True)
class VideoFrames:
    """The chunks of one video laid end to end: ``items[p]`` are the (task id, item index) pairs showing video
    position ``p`` (a frame in two overlapping chunks shows in both); ``urls[p]`` is where it is read from."""

    task_ids: list[int]  # in video order
    urls: list[str]
    items: list[list[tuple[int, int]]]
    frame_numbers: list[int]  # video frame index of each position

    def positions_of(self, task_id: int) -> list[int]:
        return [p for p, pairs in enumerate(self.items) if any(t == task_id for t, _ in pairs)]


def video_frames(tasks: Iterable[dict], frames_key: str, frame_step: int) -> VideoFrames:
    """Order the chunk tasks of one video by ``start_frame`` and merge their frames into one sequence.

    Tasks with another ``frame_step`` or without a valid chunk reference are left out; a frame number present in
    several chunks is read once (from the first chunk that has it) and its mask goes to every chunk."""
    chunks = []
    for task in tasks:
        data = task.get("data") or {}
        ref = chunk_ref(data, frames_key)
        if ref is not None and ref.frame_step == frame_step:
            chunks.append((ref.start_frame, int(task["id"]), data[frames_key]))
    chunks.sort()
    position: dict[int, int] = {}
    urls: list[str] = []
    items: list[list[tuple[int, int]]] = []
    numbers: list[int] = []
    for start, task_id, frames in chunks:
        for i, url in enumerate(frames):
            number = start + i * frame_step
            if number not in position:
                position[number] = len(urls)
                urls.append(url)
                items.append([])
                numbers.append(number)
            items[position[number]].append((task_id, i))
    order = sorted(range(len(urls)), key=lambda p: numbers[p])  # chunks may interleave; play them in video order
    return VideoFrames(
        task_ids=[t for _, t, _ in chunks],
        urls=[urls[p] for p in order],
        items=[items[p] for p in order],
        frame_numbers=[numbers[p] for p in order],
    )
