"""The small API every referring-video data set reader shares: entries, ground-truth sources, errors.

Readers parse ``meta_expressions.json`` once and expose videos and expressions as frozen dataclasses.
Ground truth is handed out as a picklable :class:`MaskSource` that carries only what it needs (RLE strings
or PNG paths), so evaluation workers in other processes can decode it without the whole data set.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class DatasetFormatError(ValueError):
    """A malformed data set or prediction file; the message names the file and the entry.

    ``file`` is the offending path, ``entry`` says where in it (``video 'v', exp '3', anno_id 7, frame 4``),
    ``problem`` what is wrong.
    """

    def __init__(self, file: str | Path, entry: str, problem: str) -> None:
        self.file = str(file)
        self.entry = entry
        self.problem = problem
        super().__init__(f"{file}: {entry}: {problem}" if entry else f"{file}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the three fields when the error crosses a process boundary (evaluation workers).
        return (type(self), (self.file, self.entry, self.problem))


def entry_name(video_id: str, exp_id: str | None = None, **more: Any) -> str:
    """Uniform entry description for error messages."""
    parts = [f"video {video_id!r}"]
    if exp_id is not None:
        parts.append(f"exp {exp_id!r}")
    parts.extend(f"{key} {value!r}" for key, value in more.items())
    return ", ".join(parts)


@dataclass(frozen=True)
class ExpressionEntry:
    """One referring expression: its id within the video, its text and the objects it refers to.

    ``obj_ids`` are object ids (palette values for Ref-YouTube-VOS / Ref-DAVIS, MeViS object ids);
    ``anno_ids`` index MeViS's ``mask_dict.json`` (empty for palette data sets).
    """

    exp_id: str
    text: str
    obj_ids: tuple[int, ...] = ()
    anno_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class VideoEntry:
    """One video: its id, its frame names (no extension, in order) and its expressions (file order)."""

    video_id: str
    frame_names: tuple[str, ...]
    expressions: tuple[ExpressionEntry, ...]

    def expression(self, exp_id: str) -> ExpressionEntry:
        for expression in self.expressions:
            if expression.exp_id == exp_id:
                return expression
        raise KeyError(f"video {self.video_id!r} has no expression {exp_id!r}")


@runtime_checkable
class MaskSource(Protocol):
    """Picklable recipe for one expression's ground truth."""

    n_frames: int

    def load(self, default_size: tuple[int, int] | None = None, start: int = 0, stop: int | None = None
             ) -> np.ndarray:
        """``(stop - start, H, W)`` bool stack of frames ``start:stop`` (all by default); ``default_size`` is
        used only when the source cannot tell the frame size itself."""
        ...


class VideoDataset(ABC):
    """A split of a referring video segmentation data set."""

    name: str = ""

    def __init__(self, meta_path: Path, images_dir: Path) -> None:
        self.meta_path = Path(meta_path)
        self.images_dir = Path(images_dir)
        self._videos = parse_meta_expressions(self.meta_path)

    @property
    def videos(self) -> Mapping[str, VideoEntry]:
        """Videos by id, in file order."""
        return self._videos

    def video(self, video_id: str) -> VideoEntry:
        try:
            return self._videos[video_id]
        except KeyError:
            raise KeyError(f"{self.meta_path}: no video {video_id!r}") from None

    def iter_expressions(self) -> Iterator[tuple[VideoEntry, ExpressionEntry]]:
        """Every (video, expression) pair in file order."""
        for video in self._videos.values():
            for expression in video.expressions:
                yield video, expression

    def __len__(self) -> int:
        return sum(len(v.expressions) for v in self._videos.values())

    def frame_path(self, video_id: str, frame_name: str) -> Path:
        """Path of one JPEG frame (it may not exist; see :meth:`frame_paths`)."""
        return self.images_dir / video_id / f"{frame_name}.jpg"

    def frame_paths(self, video_id: str, check: bool = True) -> list[Path]:
        """Paths of all frames of a video; with ``check``, a missing one raises naming the file and index."""
        video = self.video(video_id)
        paths = [self.frame_path(video_id, name) for name in video.frame_names]
        if check:
            for index, path in enumerate(paths):
                if not path.is_file():
                    raise DatasetFormatError(path, entry_name(video_id, frame=index), "frame image missing")
        return paths

    def frame_size(self, video_id: str) -> tuple[int, int]:
        """``(H, W)`` of the first frame, read from the image header only."""
        from PIL import Image

        path = self.frame_paths(video_id, check=False)[0]
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(path, entry_name(video_id, frame=0), f"cannot read frame image ({exc})") from None
        return height, width

    @property
    @abstractmethod
    def has_gt(self) -> bool:
        """Whether this split ships ground-truth masks."""

    @abstractmethod
    def mask_source(self, video_id: str, exp_id: str) -> MaskSource:
        """Picklable ground-truth recipe for one expression (raises if the split has no ground truth)."""

    def gt_masks(self, video_id: str, exp_id: str) -> np.ndarray:
        """``(T, H, W)`` bool ground truth of one expression (union of its objects)."""
        return self.mask_source(video_id, exp_id).load()


def load_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning every failure into a :class:`DatasetFormatError` that names it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "", f"{what} not found")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(path, "", f"cannot parse {what} ({exc})") from None


def _int_list(value: Any, path: Path, entry: str, key: str) -> tuple[int, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        try:
            if isinstance(item, bool) or float(item) != int(item):
                raise ValueError
            out.append(int(item))
        except (TypeError, ValueError):
            raise DatasetFormatError(path, entry, f"{key} must be integers, got {value!r}") from None
    return tuple(out)


def parse_meta_expressions(path: Path) -> dict[str, VideoEntry]:
    """Parse the shared ``meta_expressions.json`` layout of MeViS, Ref-YouTube-VOS and Ref-DAVIS17.

    ``{"videos": {vid: {"frames": [names], "expressions": {exp_id: {"exp": text, "obj_id": ..,
    "anno_id": ..}}}}}``; ``obj_id`` / ``anno_id`` may be a list (MeViS) or a single value (Ref-YTVOS),
    and may be absent (splits without ground truth).
    """
    data = load_json(path, "meta_expressions.json")
    videos_raw = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos_raw, dict):
        raise DatasetFormatError(path, "", 'expected an object with a "videos" mapping')
    videos: dict[str, VideoEntry] = {}
    for video_id, raw in videos_raw.items():
        if not isinstance(raw, dict):
            raise DatasetFormatError(path, entry_name(video_id), "video entry is not an object")
        frames = raw.get("frames")
        if not isinstance(frames, list) or not frames or not all(isinstance(f, str) and f for f in frames):
            raise DatasetFormatError(path, entry_name(video_id), '"frames" must be a non-empty list of names')
        if len(set(frames)) != len(frames):
            raise DatasetFormatError(path, entry_name(video_id), '"frames" has duplicate names')
        expressions_raw = raw.get("expressions", {})
        if not isinstance(expressions_raw, dict):
            raise DatasetFormatError(path, entry_name(video_id), '"expressions" must be an object')
        expressions = []
        for exp_id, exp in expressions_raw.items():
            entry = entry_name(video_id, exp_id)
            if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
                raise DatasetFormatError(path, entry, 'expression needs an "exp" text')
            expressions.append(ExpressionEntry(
                exp_id=str(exp_id),
                text=exp["exp"],
                obj_ids=_int_list(exp.get("obj_id"), path, entry, "obj_id"),
                anno_ids=_int_list(exp.get("anno_id"), path, entry, "anno_id"),
            ))
        videos[str(video_id)] = VideoEntry(str(video_id), tuple(frames), tuple(expressions))
    return videos
