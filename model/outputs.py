"""Writing masks for people and evaluation servers: per-frame PNGs (MeViS layout) and an overlay MP4."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .datasets.writers import write_mask_png
from .video_io import FrameSource

__all__ = ["PALETTE", "overlay", "read_mask_png", "write_mask_png", "write_overlay_video"]

# Distinct colours (RGB) for up to 10 expressions in the overlay, then repeated.
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    dtype=np.uint8,
)


def read_mask_png(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OSError(f"cannot read mask {path}")
    return image > 0


def overlay(frame: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """The frame with each mask tinted in its palette colour and outlined."""
    out = frame.astype(np.float32)
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        colour = PALETTE[i % len(PALETTE)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    out = out.astype(np.uint8)
    for i, mask in enumerate(masks):
        if mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in PALETTE[i % len(PALETTE)]), 2)
    return out


def write_overlay_video(
    path: str | Path, source: FrameSource, mask_dirs: Sequence[Path], frame_names: Sequence[str], fps: float = 10.0
) -> Path:
    """An MP4 of the video with every expression's masks (read back from its PNG folder) overlaid.

    Frames are composed one at a time, so memory does not grow with the video length.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = source.frame(0)
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot open an MP4 writer for {path}")
    try:
        for index, name in enumerate(frame_names):
            masks = [read_mask_png(d / f"{name}.png") for d in mask_dirs]
            writer.write(cv2.cvtColor(overlay(source.frame(index), masks), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
