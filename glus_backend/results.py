"""Per-frame object masks -> Label Studio prediction results (no torch: masks are numpy arrays).

Formats follow what Label Studio 1.23.2 imports and renders (shared/docs/label-studio-facts.md sections 3a-3c):

* **frame sequences** (``<Image valueList>``): one ``brushlabels`` and/or ``polygonlabels`` result per
  (object, frame) where the object is present, with top-level ``item_index`` (0-based index into the list),
  ``original_width``/``original_height`` and ``image_rotation: 0``; ids are ``f"{object}_{item}_{kind}"``;
* **videos** (``<Video>``): one ``videorectangle`` result per object with a keyframe for every present frame
  (per frame a mask, or a box already reduced by :func:`mask_to_box`).

Choices made here:

* an object is *present* in a frame when its mask has at least ``min_area`` foreground pixels (``None`` = absent);
* a result is written for a control only when the object's label is one of that control's labels (a label known to
  neither control is a ``ValueError``);
* polygons trace the largest external contour through pixel centres (holes and other components are dropped; the
  brush result keeps them); boxes cover whole pixels;
* video keyframes: Label Studio shows a box on a keyframe with ``enabled: false`` *at that frame* and hides it after
  (``isInLifespan``/``visibleRanges`` in the editor), so the **last present frame of a run** carries
  ``enabled: false`` when the object is absent in the next frame; no extra keyframe is added at the absent frame
  (one there would show the box one frame too long). ``time`` is ``(frame - 1) / fps`` (informational);
* scores: every result of an object carries the object's score = mean of its per-frame scores over the frames where
  it is present and a finite score is given (no ``score`` key when there is none); :func:`mean_score` averages those
  object scores for the prediction (0.0 when none). Scores are clipped to [0, 1], the range Label Studio accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .label_config import ControlSpec, ServedConfig
from .rle import mask_to_rle

__all__ = [
    "ObjectTrack",
    "frame_sequence_results",
    "mask_to_box",
    "mask_to_polygon",
    "mean_score",
    "prediction",
    "video_rectangle_results",
]

_DIGITS = 4  # percent coordinates: 1e-4 % of 4K is < 0.01 px

Box = tuple[float, float, float, float]  # x, y, width, height in percent of the frame, as mask_to_box returns


@dataclass
class ObjectTrack:
    """One object over a task's frames: ``masks[i]`` is an (H, W) mask for frame/item ``i``; None or empty = absent.

    For videos an entry may instead be the (x, y, w, h) percent box of :func:`mask_to_box`, so that long videos need
    not keep every full-resolution mask (``min_area`` cannot apply to such an entry: a box with area is present).
    """

    label: str
    expression: str
    masks: Sequence[np.ndarray | Box | None]
    scores: Sequence[float] | None = None


def _as_mask(mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"masks must be 2-D (H, W), got shape {m.shape}")
    return m if m.dtype == bool else m.astype(bool)


def _as_entry(entry: np.ndarray | Box | None, boxes_ok: bool) -> np.ndarray | Box | None:
    """A frame's mask, or (videos only) a box already reduced by :func:`mask_to_box`."""
    if entry is None:
        return None
    if np.ndim(entry) == 2:
        return _as_mask(entry)
    if boxes_ok and np.ndim(entry) == 1 and len(entry) == 4:
        return tuple(float(v) for v in entry)
    raise ValueError(f"a frame entry must be None, a 2-D (H, W) mask or an (x, y, w, h) percent box, got {entry!r}")


def _present(entry: np.ndarray | Box | None, min_area: int) -> bool:
    if entry is None:
        return False
    if isinstance(entry, tuple):
        return entry[2] > 0 and entry[3] > 0
    return int(np.count_nonzero(entry)) >= max(min_area, 1)


def _clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def _object_score(track: ObjectTrack, present: Sequence[bool]) -> float | None:
    if track.scores is None:
        return None
    values = [float(s) for s, here in zip(track.scores, present) if here and s is not None and math.isfinite(float(s))]
    return _clip01(sum(values) / len(values)) if values else None


def mean_score(tracks: Sequence[ObjectTrack], min_area: int = 4) -> float:
    """Prediction score: mean of the object scores (see module docstring) of objects that have one, else 0.0."""
    scores = []
    for track in tracks:
        masks = [_as_entry(m, boxes_ok=True) for m in track.masks]
        score = _object_score(track, [_present(m, min_area) for m in masks])
        if score is not None:
            scores.append(score)
    return _clip01(sum(scores) / len(scores)) if scores else 0.0


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the foreground as percent (x, y, width, height) of the mask size; None if empty.

    The box covers whole pixels: a mask with columns 10..19 set in a 100-px-wide frame gives x=10, width=10.
    """
    m = _as_mask(mask)
    if m is None or not m.any():
        return None
    h, w = m.shape
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    return (
        round(x0 / w * 100, _DIGITS),
        round(y0 / h * 100, _DIGITS),
        round((x1 - x0) / w * 100, _DIGITS),
        round((y1 - y0) / h * 100, _DIGITS),
    )


def mask_to_polygon(mask: np.ndarray, width: int, height: int, tolerance: float = 1.0) -> list[list[float]] | None:
    """Largest external contour, simplified with ``cv2.approxPolyDP(tolerance px)``, as [[x%, y%], ...].

    Points are pixel centres in percent of ``width``/``height`` (the mask must be height x width). None when the
    foreground is empty or the simplified outline has fewer than 3 points.
    """
    m = _as_mask(mask)
    if m is None or not m.any():
        return None
    if m.shape != (height, width):
        raise ValueError(f"mask shape {m.shape} does not match height x width = {(height, width)}")
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)  # max keeps the first of equal areas
    approx = cv2.approxPolyDP(largest, float(tolerance), True).reshape(-1, 2)
    if len(approx) < 3:
        return None
    return [
        [round((float(x) + 0.5) / width * 100, _DIGITS), round((float(y) + 0.5) / height * 100, _DIGITS)]
        for x, y in approx
    ]


def _accepts(control: ControlSpec | None, label: str) -> bool:
    return control is not None and (not control.labels or any(o.value == label for o in control.labels))


def frame_sequence_results(
    tracks: list[ObjectTrack],
    config: ServedConfig,
    width: int,
    height: int,
    polygon_tolerance: float = 1.0,
    min_area: int = 4,
) -> list[dict]:
    """Results for an ``<Image valueList>`` task: brush and/or polygon per (object, item) where the object is there."""
    if config.kind != "frames":
        raise ValueError(f"frame_sequence_results needs a frame-sequence config, got kind {config.kind!r}")
    results: list[dict] = []
    for obj, track in enumerate(tracks):
        use_brush, use_polygon = _accepts(config.brush, track.label), _accepts(config.polygon, track.label)
        if not (use_brush or use_polygon):
            raise ValueError(f"label {track.label!r} of object {obj} is not a label of the brush or polygon control")
        masks = [_as_mask(m) for m in track.masks]
        present = [_present(m, min_area) for m in masks]
        score = _object_score(track, present)
        for item, (mask, here) in enumerate(zip(masks, present)):
            if not here:
                continue
            if mask.shape != (height, width):
                raise ValueError(f"object {obj} item {item}: mask shape {mask.shape} is not {(height, width)}")
            common = {
                "item_index": item,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "to_name": config.object_name,
                "origin": "prediction",
            }
            if score is not None:
                common["score"] = score
            if use_brush:
                results.append(
                    {
                        "id": f"{obj}_{item}_brush",
                        "from_name": config.brush.name,
                        "type": "brushlabels",
                        **common,
                        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [track.label]},
                    }
                )
            if use_polygon:
                points = mask_to_polygon(mask, width, height, polygon_tolerance)
                if points is not None:
                    results.append(
                        {
                            "id": f"{obj}_{item}_polygon",
                            "from_name": config.polygon.name,
                            "type": "polygonlabels",
                            **common,
                            "value": {"points": points, "closed": True, "polygonlabels": [track.label]},
                        }
                    )
    return results


def video_rectangle_results(
    tracks: list[ObjectTrack],
    config: ServedConfig,
    frames_count: int,
    fps: float,
    min_area: int = 4,
) -> list[dict]:
    """One ``videorectangle`` track per object that is present in at least one frame (see module docstring)."""
    if config.kind != "video" or config.video_rectangle is None:
        raise ValueError(f"video_rectangle_results needs a video config, got kind {config.kind!r}")
    if frames_count < 1 or not fps > 0:
        raise ValueError(f"frames_count must be >= 1 and fps > 0, got {frames_count} and {fps}")
    palette = {o.value for o in config.labels.labels} if config.labels is not None else set()
    results: list[dict] = []
    for obj, track in enumerate(tracks):
        if len(track.masks) > frames_count:
            raise ValueError(f"object {obj} has {len(track.masks)} masks for a {frames_count}-frame video")
        if track.label and palette and track.label not in palette:
            raise ValueError(f"label {track.label!r} of object {obj} is not in <Labels name='{config.labels.name}'>")
        masks = [_as_entry(m, boxes_ok=True) for m in track.masks]
        present = [_present(m, min_area) for m in masks]
        sequence: list[dict] = []
        for t, (mask, here) in enumerate(zip(masks, present)):
            if not here:
                continue
            x, y, w, h = mask if isinstance(mask, tuple) else mask_to_box(mask)
            ends_run = t + 1 < frames_count and not (t + 1 < len(present) and present[t + 1])
            sequence.append(
                {
                    "frame": t + 1,
                    "enabled": not ends_run,
                    "rotation": 0,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "time": t / fps,
                }
            )
        if not sequence:
            continue
        value: dict = {"framesCount": int(frames_count), "duration": frames_count / fps, "sequence": sequence}
        if track.label:
            value["labels"] = [track.label]
        result = {
            "id": f"{obj}_videorectangle",
            "from_name": config.video_rectangle.name,
            "to_name": config.object_name,
            "type": "videorectangle",
            "origin": "prediction",
            "value": value,
        }
        score = _object_score(track, present)
        if score is not None:
            result["score"] = score
        results.append(result)
    return results


def prediction(results: list[dict], score: float, model_version: str) -> dict:
    """A Label Studio prediction for one task."""
    return {"result": results, "score": float(score), "model_version": model_version}
