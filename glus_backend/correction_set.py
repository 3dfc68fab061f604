"""A project's corrections as a MeViS-layout training set, updated one task at a time.

``MODEL_DIR/data/mevis/project_<id>/`` holds::

    JPEGImages/task<id>/<00000>.jpg     the task's frames
    tasks/task<id>.json                 the task's entry: annotation id, expressions, COCO RLE masks per frame
    meta_expressions.json, mask_dict.json   the MeViS index, rebuilt from tasks/ after every change

A task has one entry, written from its latest annotation: a re-submitted or updated annotation replaces it, a
deleted annotation removes it. The index is rebuilt under a file lock, so ingest jobs of several workers on the
same project do not lose each other's tasks. The MeViS reader (``model.datasets.open_dataset("mevis", ...)``) and
``glus train`` read the folder as a split; :meth:`CorrectionSet.write_split` writes subsets (the training run's
train and held-out splits) whose frames are hard links to the set's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from .corrections import decode_annotation, latest_annotation
from .label_config import parse_label_config
from .prompts import DEFAULT_EXPRESSION_FIELDS, extract_prompts

logger = logging.getLogger(__name__)

FrameLoader = Callable[[dict], list]  # task -> RGB frames
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
"""Frames are re-encoded at quality 95 without chroma subsampling: 4:2:0 smears the colour of small objects,
and a model fine-tuned on smeared colours is judged by the gate on smeared colours."""


def _atomic_write(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def task_entry(
    task: dict, annotation: dict, label_config: str, frames: list[np.ndarray], expression_fields: Sequence[str]
) -> dict:
    """The entry of one corrected task: its expressions and, per expression, a COCO RLE (or None) per frame."""
    from model.datasets.masks import encode_rle

    config = parse_label_config(label_config)
    prompts = extract_prompts(task.get("data") or {}, config, tuple(expression_fields))
    height, width = frames[0].shape[:2]
    decoded = decode_annotation(annotation.get("result") or [], config, prompts, (height, width), len(frames))
    expressions, masks = {}, {}
    for i, obj in enumerate(decoded.objects):
        per_frame = []
        for t in range(len(frames)):
            mask = obj.frames.get(t)
            if mask is not None and mask.shape != (height, width):  # drawn on a differently sized copy
                mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
            per_frame.append(encode_rle(mask) if mask is not None and mask.any() else None)
        expressions[str(i)] = {"exp": obj.prompt.expression, "obj_id": [i]}
        masks[str(i)] = per_frame
    return {
        "task_id": int(task["id"]),
        "annotation_id": annotation.get("id"),
        "updated_at": annotation.get("updated_at"),
        "frames": [f"{t:05d}" for t in range(len(frames))],
        "expressions": expressions,
        "masks": masks,
        "unassigned_regions": decoded.unassigned,
    }


class CorrectionSet:
    """One project's corrections in the MeViS layout (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_project(cls, model_dir: str | Path, project_id: int) -> CorrectionSet:
        return cls(Path(model_dir) / "data" / "mevis" / f"project_{int(project_id)}")

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    def task_ids(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.tasks_dir.glob("task*.json")) if self.tasks_dir.is_dir() else []

    def _entry_path(self, task_id: int) -> Path:
        return self.tasks_dir / f"task{int(task_id)}.json"

    def _frames_dir(self, task_id: int) -> Path:
        return self.root / "JPEGImages" / f"task{int(task_id)}"

    def entry(self, task_id: int) -> dict:
        return json.loads(self._entry_path(task_id).read_text())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def put(
        self,
        task: dict,
        annotation: dict,
        label_config: str,
        frames: list[np.ndarray],
        expression_fields: Sequence[str] = DEFAULT_EXPRESSION_FIELDS,
    ) -> dict:
        """Write (or replace) a task's entry from ``annotation``; returns the entry."""
        entry = task_entry(task, annotation, label_config, frames, expression_fields)
        with self._locked():
            self._write_entry(entry, frames)
            self._rebuild_index()
        return entry

    def remove_annotation(self, annotation_id: int) -> list[int]:
        """Drop the entries written from ``annotation_id``; returns their task ids."""
        removed = []
        with self._locked():
            for task_id in self.task_ids():
                if str(self.entry(task_id).get("annotation_id")) == str(annotation_id):
                    self._remove(task_id)
                    removed.append(task_id)
            if removed:
                self._rebuild_index()
        return removed

    def rebuild(
        self,
        tasks: list[dict],
        label_config: str,
        frame_loader: FrameLoader,
        expression_fields: Sequence[str] = DEFAULT_EXPRESSION_FIELDS,
    ) -> dict:
        """Make the set exactly the annotated ``tasks`` (a project's export): entries of other tasks go. A task
        whose entry already comes from the same annotation version is not fetched or decoded again."""
        summary = {"tasks": 0, "expressions": 0, "written": 0, "removed": 0, "unassigned_regions": 0}
        keep = set()
        with self._locked():  # held throughout: an ingest meanwhile waits, then writes the newer annotation
            for task in tasks:
                annotation = latest_annotation(task)
                if annotation is None:
                    continue
                entry = self._existing(int(task["id"]), annotation)
                if entry is None:
                    frames = frame_loader(task)
                    entry = task_entry(task, annotation, label_config, frames, expression_fields)
                    self._write_entry(entry, frames)
                    summary["written"] += 1
                keep.add(entry["task_id"])
                summary["tasks"] += 1
                summary["expressions"] += len(entry["expressions"])
                summary["unassigned_regions"] += len(entry["unassigned_regions"])
            for task_id in set(self.task_ids()) - keep:
                self._remove(task_id)
                summary["removed"] += 1
            self._rebuild_index()
        return summary

    def write_split(self, out_dir: str | Path, task_ids: Sequence[int]) -> Path:
        """A MeViS split of some tasks, e.g. a training run's held-out split. Frames are hard links (no copy, and
        the split stays whole when a task later leaves the set)."""
        out_dir = Path(out_dir)
        (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
        with self._locked():
            entries = [self.entry(t) for t in sorted(task_ids)]
            for entry in entries:
                source = self._frames_dir(entry["task_id"])
                folder = out_dir / "JPEGImages" / source.name
                folder.mkdir(exist_ok=True)
                for frame in source.glob("*.jpg"):
                    if not (folder / frame.name).exists():
                        _link_or_copy(frame, folder / frame.name)
        _write_index(out_dir, entries)
        return out_dir

    def _existing(self, task_id: int, annotation: dict) -> dict | None:
        if not self._entry_path(task_id).is_file():
            return None
        entry = self.entry(task_id)
        same = (entry.get("annotation_id"), entry.get("updated_at")) == (
            annotation.get("id"),
            annotation.get("updated_at"),
        )
        return entry if same else None

    def _write_entry(self, entry: dict, frames: list[np.ndarray]) -> None:
        self._write_frames(entry["task_id"], frames)
        self.tasks_dir.mkdir(exist_ok=True)
        _atomic_write(self._entry_path(entry["task_id"]), entry)

    def _remove(self, task_id: int) -> None:
        self._entry_path(task_id).unlink(missing_ok=True)
        shutil.rmtree(self._frames_dir(task_id), ignore_errors=True)

    def _write_frames(self, task_id: int, frames: list[np.ndarray]) -> None:
        folder = self._frames_dir(task_id)
        if folder.is_dir() and len(list(folder.glob("*.jpg"))) == len(frames):
            return  # a task's media does not change between its annotations
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for t, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{t:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), JPEG_PARAMS)

    def _rebuild_index(self) -> None:
        _write_index(self.root, [self.entry(t) for t in self.task_ids()])


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system
        shutil.copyfile(source, dest)


def _write_index(folder: Path, entries: list[dict]) -> None:
    """``meta_expressions.json`` and ``mask_dict.json`` of task entries (annotation ids in entry order); the
    mask file first, so a reader never sees expressions without their masks."""
    videos: dict[str, dict] = {}
    mask_dict: dict[str, list] = {}
    for entry in entries:
        expressions = {}
        for exp_id, expression in entry["expressions"].items():
            anno_id = len(mask_dict)
            mask_dict[str(anno_id)] = entry["masks"][exp_id]
            expressions[exp_id] = {**expression, "anno_id": [anno_id]}
        videos[f"task{entry['task_id']}"] = {"frames": entry["frames"], "expressions": expressions}
    _atomic_write(folder / "mask_dict.json", mask_dict)
    _atomic_write(folder / "meta_expressions.json", {"videos": videos})
