"""Prediction writer in the layout the evaluation servers and scripts read: ``<root>/<video>/<exp_id>/<frame>.png``.

Masks are 8-bit grayscale PNGs with values 0/255 (as the reference ``inference_iter.py`` writes them). For the
MeViS ``valid`` / Ref-YTVOS ``valid`` servers, point ``root`` at the folder you zip (``Annotations/`` for
Ref-YTVOS). Every file is written to a temporary name in the same folder and renamed into place, so several
processes may write the same tree at once and a crash never leaves a truncated PNG under a real name: a frame
file either exists complete or not at all, which makes "all frame files exist" a safe resume test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_TMP_SUFFIX = ".tmp"


def _safe_component(value: str, what: str) -> str:
    value = str(value)
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{what} {value!r} cannot be used as a folder or file name")
    return value


def encode_mask_png(mask: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W)`` mask as 8-bit grayscale 0/255 (non-zero input = foreground)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    ok, data = cv2.imencode(".png", np.where(mask != 0, 255, 0).astype(np.uint8))
    if not ok:
        raise OSError("PNG encoding failed")
    return data.tobytes()


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp creates 0600; predictions are ordinary files
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_mask_png(path: str | Path, mask: np.ndarray, fsync: bool = False) -> None:
    """Atomically write one 0/255 grayscale mask PNG."""
    atomic_write_bytes(path, encode_mask_png(mask), fsync=fsync)


class PredictionWriter:
    """Writes and inspects ``<root>/<video>/<exp_id>/<frame>.png`` prediction trees."""

    def __init__(self, root: str | Path, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def expression_dir(self, video_id: str, exp_id: str) -> Path:
        return self.root / _safe_component(video_id, "video id") / _safe_component(exp_id, "expression id")

    def frame_path(self, video_id: str, exp_id: str, frame_name: str) -> Path:
        return self.expression_dir(video_id, exp_id) / f"{_safe_component(frame_name, 'frame name')}.png"

    def write(self, video_id: str, exp_id: str, frame_name: str, mask: np.ndarray) -> Path:
        """Write one frame's mask; returns its path."""
        path = self.frame_path(video_id, exp_id, frame_name)
        write_mask_png(path, mask, fsync=self.fsync)
        return path

    def write_expression(self, video_id: str, exp_id: str, frame_names: Sequence[str],
                         masks: np.ndarray | Sequence[np.ndarray]) -> None:
        """Write a whole expression (``masks[i]`` for ``frame_names[i]``)."""
        if len(masks) != len(frame_names):
            raise ValueError(f"{len(masks)} masks for {len(frame_names)} frame names")
        for name, mask in zip(frame_names, masks, strict=True):
            self.write(video_id, exp_id, name, mask)

    def missing_frames(self, video_id: str, exp_id: str, frame_names: Sequence[str]) -> list[str]:
        """Frame names whose PNG is not there yet."""
        return [n for n in frame_names if not self.frame_path(video_id, exp_id, n).is_file()]

    def is_complete(self, video_id: str, exp_id: str, frame_names: Sequence[str]) -> bool:
        """True when every frame PNG exists (safe as a resume test: files only appear complete)."""
        return not self.missing_frames(video_id, exp_id, frame_names)

    def clean_temporary_files(self) -> int:
        """Remove temporary files left by killed writers; returns how many. Only when no writer is running."""
        removed = 0
        if self.root.is_dir():
            for path in self.root.rglob(f".*{_TMP_SUFFIX}"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed
