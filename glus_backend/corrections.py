"""Annotators' corrections -> per-object, per-frame masks -> the MeViS layout.

Label Studio results are decoded into masks (numpy only):

* ``brushlabels``: Label Studio's RLE, alpha channel thresholded (the editor anti-aliases strokes);
* ``polygonlabels``: percent points filled at the image size;
* ``videorectangle``: boxes filled, as weak labels, on the keyframes where the track is enabled.

Regions are assigned to the task's objects (its expressions, in the order :func:`extract_prompts` gives them)
by, in order: the id this backend gave the predicted region (``<object>_<frame>_<kind>``, which the editor keeps
when an annotator edits it); the region's label if exactly one object carries it; the only object of a
single-object task. Regions that fit no object are reported, not guessed. Several regions of one object on
one frame are joined (logical OR).

:mod:`.correction_set` writes decoded corrections in the MeViS layout, the format the training and evaluation
code reads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .label_config import ServedConfig, parse_label_config, result_labels
from .prompts import ObjectPrompt
from .rle import rle_to_mask

logger = logging.getLogger(__name__)

_OUR_REGION_ID = re.compile(r"^(\d+)_(\d+_)?(brush|polygon|videorectangle)$")


@dataclass
class ObjectMasks:
    """Masks of one object over a task's frames: ``frames[item_index] -> (H, W) bool``."""

    prompt: ObjectPrompt
    frames: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, index: int, mask: np.ndarray) -> None:
        self.frames[index] = self.frames[index] | mask if index in self.frames else mask


@dataclass
class DecodedAnnotation:
    objects: list[ObjectMasks]
    unassigned: list[str]  # ids of regions that fit no object


def _region_mask(result: dict, height: int, width: int) -> np.ndarray | None:
    value = result.get("value") or {}
    kind = result.get("type")
    if kind == "brushlabels" and value.get("format", "rle") == "rle" and value.get("rle"):
        return rle_to_mask(value["rle"], height, width)
    if kind == "polygonlabels" and len(value.get("points") or []) >= 3:
        points = np.array([[x * width / 100.0, y * height / 100.0] for x, y in value["points"]], dtype=np.float64)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(points - 0.5).astype(np.int32)], 1)
        return mask.astype(bool)
    return None


def _assign(result: dict, prompts: list[ObjectPrompt]) -> int | None:
    match = _OUR_REGION_ID.match(str(result.get("id", "")))
    if match and int(match.group(1)) < len(prompts):
        return int(match.group(1))
    labels = result_labels(result)
    carriers = [i for i, p in enumerate(prompts) if p.label in labels]
    if len(carriers) == 1:
        return carriers[0]
    if len(prompts) == 1:
        return 0
    return None


def decode_annotation(
    results: Iterable[dict],
    config: ServedConfig,
    prompts: list[ObjectPrompt],
    frame_size: tuple[int, int] | None = None,
    frames_count: int | None = None,
) -> DecodedAnnotation:
    """Masks per object and frame from one annotation's results.

    ``frame_size`` ``(height, width)`` is needed for video rectangles (image results carry their own size).
    """
    objects = [ObjectMasks(p) for p in prompts]
    unassigned: list[str] = []
    for result in results:
        obj = _assign(result, prompts)
        if obj is None:
            unassigned.append(str(result.get("id")))
            continue
        if result.get("type") == "videorectangle":
            if frame_size is None:
                raise ValueError("frame_size is needed to rasterise video rectangles")
            for index, mask in _track_masks(result, *frame_size, frames_count):
                objects[obj].add(index, mask)
            continue
        height, width = int(result.get("original_height") or 0), int(result.get("original_width") or 0)
        if not height or not width:
            unassigned.append(str(result.get("id")))
            continue
        mask = _region_mask(result, height, width)
        if mask is not None:
            objects[obj].add(int(result.get("item_index") or 0), mask)
    return DecodedAnnotation(objects, unassigned)


def corrected_frames(
    annotated: DecodedAnnotation, predicted: DecodedAnnotation | None, min_pixels: int = 4, min_fraction: float = 0.01
) -> dict[int, dict[int, np.ndarray]]:
    """Where an annotation differs from the prediction it started from: ``{object: {frame: annotated mask}}``.

    A frame is corrected for an object when the two masks differ by more than ``min_pixels`` and ``min_fraction``
    of the larger mask (a region the annotator left alone is the prediction's RLE verbatim: no difference at all);
    a region the annotator deleted is an empty mask. Without a prediction every annotated frame is a correction.
    """
    out: dict[int, dict[int, np.ndarray]] = {}
    for index, obj in enumerate(annotated.objects):
        before = predicted.objects[index].frames if predicted is not None else {}
        changed: dict[int, np.ndarray] = {}
        for frame in sorted(set(obj.frames) | set(before)):
            after, was = obj.frames.get(frame), before.get(frame)
            if predicted is None or was is None or after is None or after.shape != was.shape:
                if after is not None or was is not None:
                    changed[frame] = after if after is not None else np.zeros_like(was)
                continue
            diff = int(np.count_nonzero(after ^ was))
            area = max(int(np.count_nonzero(after)), int(np.count_nonzero(was)))
            if diff > max(min_pixels, min_fraction * area):
                changed[frame] = after
        if changed:
            out[index] = changed
    return out


def _track_masks(result: dict, height: int, width: int, frames_count: int | None) -> Iterable[tuple[int, np.ndarray]]:
    """Box masks for the frames a video-rectangle track covers (keyframes interpolated linearly, as the editor)."""
    seq = sorted((result.get("value") or {}).get("sequence") or [], key=lambda k: k["frame"])
    last = frames_count or (seq[-1]["frame"] if seq else 0)
    for a, b in zip(seq, seq[1:] + [None]):
        end = b["frame"] if (b is not None and a.get("enabled", True)) else a["frame"] + 1
        for frame in range(a["frame"], min(end, last + 1)):
            t = 0.0 if b is None or b["frame"] == a["frame"] else (frame - a["frame"]) / (b["frame"] - a["frame"])
            box = [a[k] + t * ((b or a)[k] - a[k]) for k in ("x", "y", "width", "height")]
            x0, y0 = round(box[0] * width / 100), round(box[1] * height / 100)
            x1, y1 = round((box[0] + box[2]) * width / 100), round((box[1] + box[3]) * height / 100)
            mask = np.zeros((height, width), bool)
            mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
            yield frame - 1, mask


def latest_annotation(task: dict) -> dict | None:
    """The annotation a task's corrections come from: ground truth first, else the most recently updated."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(annotations, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or "")))


def task_frame_loader(client, settings, label_config: str):
    """``frame_loader(task) -> list of RGB frames`` for a :class:`~.correction_set.CorrectionSet`, fetched as the
    workers fetch media (Label Studio uploads, local files, URLs), cached under ``MODEL_DIR/cache/media``."""
    from model.video_io import VideoFile

    from .media import resolve_media
    from .url_guard import AddressGuard

    config = parse_label_config(label_config)
    cache = settings.model_dir / "cache" / "media"

    def frames_of(task: dict) -> list:
        value = task["data"][config.value_key]
        common = dict(client=client, dest_dir=cache, task_id=task["id"], local_files_root=settings.local_files_root,
                      guard=AddressGuard.from_settings(settings))
        if config.kind == "video":
            video = VideoFile(resolve_media(value, **common))
            return [video.frame(i) for i in range(len(video))]
        return [cv2.cvtColor(cv2.imread(str(resolve_media(v, **common))), cv2.COLOR_BGR2RGB) for v in value]

    return frames_of
