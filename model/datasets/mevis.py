"""MeViS layout reader: ``<split>/JPEGImages/<video>/<frame>.jpg``, ``meta_expressions.json``, ``mask_dict.json``.

Works for any split folder with that layout (``train``, ``valid_u``, ``valid``, or a data set exported from
Label Studio). ``mask_dict.json`` maps ``str(anno_id)`` to one COCO RLE or ``null`` per frame index; an
expression's ground truth is the union (logical OR) of its ``anno_id`` masks. The official script adds the
masks as uint8, which is the same union unless 256 objects overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import DatasetFormatError, VideoDataset, entry_name, load_json
from .masks import decode_rle, validate_rle


@dataclass(frozen=True)
class RleMaskSource:
    """Ground truth of one MeViS expression: the RLE lists of its ``anno_id``s (picklable, self-contained)."""

    file: str
    video_id: str
    exp_id: str
    n_frames: int
    annotations: tuple[tuple[int, tuple[Any, ...]], ...]  # (anno_id, one RLE or None per frame)
    image_path: str | None = None  # first frame, for the size when every RLE is null

    def size(self, default_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """``(H, W)`` from the first RLE, else ``default_size``, else the first frame's image header."""
        for anno_id, rles in self.annotations:
            for index, rle in enumerate(rles):
                if rle is not None:
                    return validate_rle(rle, self.file, entry_name(self.video_id, self.exp_id, anno_id=anno_id,
                                                                   frame=index))
        if default_size is not None:
            return default_size
        if self.image_path is not None:
            from PIL import Image

            try:
                with Image.open(self.image_path) as image:
                    width, height = image.size
                return height, width
            except (OSError, ValueError):
                pass
        raise DatasetFormatError(self.file, entry_name(self.video_id, self.exp_id),
                                 "every mask of the expression is null and the frame size is unknown "
                                 f"(no readable {self.image_path})")

    def load(self, default_size: tuple[int, int] | None = None, start: int = 0, stop: int | None = None
             ) -> np.ndarray:
        """``(T, H, W)`` bool union of the expression's objects over frames ``start:stop``; raises naming the
        anno_id and frame index on a bad RLE or a size mismatch."""
        height, width = self.size(default_size)
        frames = range(self.n_frames)[start:stop]
        out = np.zeros((len(frames), height, width), bool)
        for anno_id, rles in self.annotations:
            for slot, index in enumerate(frames):
                rle = rles[index]
                if rle is None:
                    continue
                entry = entry_name(self.video_id, self.exp_id, anno_id=anno_id, frame=index)
                mask = decode_rle(rle, self.file, entry)
                if mask.shape != (height, width):
                    raise DatasetFormatError(self.file, entry, f"mask size {mask.shape[0]}x{mask.shape[1]} differs "
                                                               f"from the expression's {height}x{width}")
                out[slot] |= mask
        return out


class MevisDataset(VideoDataset):
    """One MeViS-layout split folder. ``mask_dict.json`` is read lazily, on the first ground-truth request."""

    name = "mevis"

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        if not self.split_dir.is_dir():
            raise DatasetFormatError(self.split_dir, "", "split folder not found")
        self.mask_dict_path = self.split_dir / "mask_dict.json"
        self._mask_dict: dict[str, Any] | None = None
        super().__init__(self.split_dir / "meta_expressions.json", self.split_dir / "JPEGImages")

    @property
    def has_gt(self) -> bool:
        return self.mask_dict_path.is_file()

    def mask_dict(self) -> dict[str, Any]:
        """The parsed ``mask_dict.json`` (cached on this reader)."""
        if self._mask_dict is None:
            data = load_json(self.mask_dict_path, "mask_dict.json")
            if not isinstance(data, dict):
                raise DatasetFormatError(self.mask_dict_path, "", "expected an object keyed by anno_id")
            self._mask_dict = data
        return self._mask_dict

    def mask_source(self, video_id: str, exp_id: str) -> RleMaskSource:
        video = self.video(video_id)
        expression = video.expression(exp_id)
        file = str(self.mask_dict_path)
        if not expression.anno_ids:
            raise DatasetFormatError(self.meta_path, entry_name(video_id, exp_id), "expression has no anno_id")
        masks = self.mask_dict()
        annotations = []
        for anno_id in expression.anno_ids:
            entry = entry_name(video_id, exp_id, anno_id=anno_id)
            rles = masks.get(str(anno_id))
            if rles is None:
                raise DatasetFormatError(file, entry, "anno_id not in mask_dict.json")
            if not isinstance(rles, list):
                raise DatasetFormatError(file, entry, "expected a list with one RLE or null per frame")
            if len(rles) != len(video.frame_names):
                raise DatasetFormatError(file, entry, f"{len(rles)} masks for {len(video.frame_names)} frames")
            annotations.append((anno_id, tuple(rles)))
        first = self.frame_path(video_id, video.frame_names[0])
        return RleMaskSource(file, video_id, exp_id, len(video.frame_names), tuple(annotations), str(first))
