"""Lazy frame sources: a video file (OpenCV), a folder of frames, or frames already in memory.

Inference asks for frames by index and never holds a whole video. A video file is decoded sequentially;
going backwards (key-frame propagation) seeks. A small bounded cache keeps the most recently decoded frames.
All sources return ``uint8`` RGB arrays ``(H, W, 3)``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoReadError(RuntimeError):
    """A video or frame that cannot be read; the message names the file and frame."""


@runtime_checkable
class FrameSource(Protocol):
    """Random access to the frames of one video."""

    def __len__(self) -> int: ...

    def frame(self, index: int) -> np.ndarray: ...

    @property
    def frame_names(self) -> list[str]: ...


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class ArrayFrames:
    """Frames already in memory (a list or an ``(N, H, W, 3)`` array)."""

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray, names: Sequence[str] | None = None) -> None:
        self._frames = frames
        if len(frames) == 0:
            raise VideoReadError("the video has no frames")
        self._names = list(names) if names is not None else [f"{i:05d}" for i in range(len(frames))]
        if len(self._names) != len(frames):
            raise ValueError("one name per frame is needed")

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self._frames[index])

    @property
    def frame_names(self) -> list[str]:
        return self._names


class FrameFiles:
    """A list of image files, one per frame, in the given order (e.g. a frame-sequence task's images)."""

    def __init__(self, paths: Sequence[str | Path], cache_size: int = 16) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise VideoReadError("the frame list is empty")
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def frame(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        bgr = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VideoReadError(f"cannot decode frame {index} ({self.paths[index]})")
        if self._size is None:
            self._size = bgr.shape[:2]
        elif bgr.shape[:2] != self._size:
            raise VideoReadError(
                f"frame {index} ({self.paths[index]}) is {bgr.shape[1]}x{bgr.shape[0]}, "
                f"the first frame is {self._size[1]}x{self._size[0]}: all frames of a video must have one size"
            )
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._cache[index] = rgb
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rgb

    @property
    def frame_names(self) -> list[str]:
        return [p.stem for p in self.paths]


class FrameFolder(FrameFiles):
    """A folder of image files (MeViS ``JPEGImages/<video>/``), in natural filename order."""

    def __init__(self, directory: str | Path, cache_size: int = 16) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise VideoReadError(f"frame folder not found: {self.directory}")
        paths = sorted(
            (p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: _natural_key(p.name),
        )
        if not paths:
            raise VideoReadError(f"no image files in {self.directory}")
        super().__init__(paths, cache_size)


class VideoFile:
    """A video file decoded with OpenCV, sequentially where possible, with a small LRU cache."""

    def __init__(self, path: str | Path, cache_size: int = 16, max_frames: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoReadError(f"video file not found: {self.path}")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise VideoReadError(f"cannot open video {self.path} (unsupported or corrupt)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise VideoReadError(f"cannot decode any frame of {self.path} (corrupt or empty video)")
        self.height, self.width = first.shape[:2]
        self._next = 1
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._put(0, first)
        if count <= 0:
            count = self._count_by_decoding()
        self._len = min(count, max_frames) if max_frames else count

    def _count_by_decoding(self) -> int:
        n = self._next
        while self._cap.grab():
            n += 1
        self._seek(0)
        return n

    def _seek(self, index: int) -> None:
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        self._next = index

    def _put(self, index: int, bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._cache[index] = rgb
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rgb

    def __len__(self) -> int:
        return self._len

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self._len:
            raise IndexError(f"frame {index} out of range for {self.path} ({self._len} frames)")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        if index < self._next or index > self._next + 64:
            self._seek(index)
        while self._next <= index:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                raise VideoReadError(f"cannot decode frame {self._next} of {self.path} (truncated or corrupt)")
            rgb = self._put(self._next, bgr)
            self._next += 1
        return rgb

    @property
    def frame_names(self) -> list[str]:
        return [f"{i:05d}" for i in range(self._len)]

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(path: str | Path, max_frames: int | None = None) -> FrameSource:
    """A video file or a frame folder, by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    return VideoFile(path, max_frames=max_frames)
