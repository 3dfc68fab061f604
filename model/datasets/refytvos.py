"""Ref-YouTube-VOS and Ref-DAVIS17 readers (ReferFormer layout, which GLUS uses).

::

    <root>/meta_expressions/<split>/meta_expressions.json
    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png      (palette PNG, pixel value = obj_id; absent for
                                                          Ref-YTVOS valid/test, which the server scores)

Each expression refers to one ``obj_id`` (a string in the JSON); its ground truth is ``annotation == obj_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DatasetFormatError, VideoDataset, entry_name
from .masks import read_palette_png


@dataclass(frozen=True)
class PaletteMaskSource:
    """Ground truth of one expression from palette PNGs (picklable, self-contained)."""

    video_id: str
    exp_id: str
    paths: tuple[str, ...]  # one annotation PNG per frame
    obj_ids: tuple[int, ...]

    @property
    def n_frames(self) -> int:
        return len(self.paths)

    def load(self, default_size: tuple[int, int] | None = None, start: int = 0, stop: int | None = None
             ) -> np.ndarray:
        """``(T, H, W)`` bool over frames ``start:stop``: pixels whose object id is one of ``obj_ids``; raises
        naming the file and frame index for a missing or unreadable PNG or a size mismatch."""
        frames = range(len(self.paths))[start:stop]
        out: np.ndarray | None = None
        ids = np.asarray(self.obj_ids)
        for slot, index in enumerate(frames):
            path = self.paths[index]
            entry = entry_name(self.video_id, self.exp_id, frame=index)
            labels = read_palette_png(path, entry)
            if out is None:
                out = np.zeros((len(frames), *labels.shape), bool)
            elif labels.shape != out.shape[1:]:
                raise DatasetFormatError(path, entry, f"annotation size {labels.shape[0]}x{labels.shape[1]} differs "
                                                      f"from the other frames' {out.shape[1]}x{out.shape[2]}")
            out[slot] = np.isin(labels, ids)
        if out is None:
            height, width = default_size if default_size is not None else (0, 0)
            out = np.zeros((0, height, width), bool)
        return out


class RefYtvosDataset(VideoDataset):
    """One split of a ReferFormer-layout data set (``name`` is ``refytvos`` or ``davis17``)."""

    name = "refytvos"

    def __init__(self, root: str | Path, split: str, name: str = "refytvos") -> None:
        self.root = Path(root)
        self.split = split
        self.name = name
        if not self.root.is_dir():
            raise DatasetFormatError(self.root, "", "data set root not found")
        self.annotations_dir = self.root / split / "Annotations"
        super().__init__(self.root / "meta_expressions" / split / "meta_expressions.json",
                         self.root / split / "JPEGImages")

    @property
    def has_gt(self) -> bool:
        return self.annotations_dir.is_dir()

    def annotation_path(self, video_id: str, frame_name: str) -> Path:
        return self.annotations_dir / video_id / f"{frame_name}.png"

    def mask_source(self, video_id: str, exp_id: str) -> PaletteMaskSource:
        video = self.video(video_id)
        expression = video.expression(exp_id)
        if not self.has_gt:
            raise DatasetFormatError(self.annotations_dir, entry_name(video_id, exp_id),
                                     f"split {self.split!r} has no ground truth (no Annotations folder)")
        if not expression.obj_ids:
            raise DatasetFormatError(self.meta_path, entry_name(video_id, exp_id), "expression has no obj_id")
        paths = tuple(str(self.annotation_path(video_id, name)) for name in video.frame_names)
        return PaletteMaskSource(video_id, exp_id, paths, expression.obj_ids)


def open_refdavis(root: str | Path, split: str = "valid") -> RefYtvosDataset:
    """Ref-DAVIS17 in the ReferFormer conversion (same layout as Ref-YouTube-VOS)."""
    return RefYtvosDataset(root, split, name="davis17")
