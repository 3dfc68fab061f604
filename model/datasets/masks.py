"""Mask encodings of the data sets: COCO RLE (MeViS ``mask_dict.json``), palette PNG (Ref-YTVOS, Ref-DAVIS17),
and the binary 0/255 PNGs of predictions.

pycocotools encodes; decoding parses the runs with numpy and validates them first, because pycocotools trusts
its input: a compressed RLE whose runs add up to fewer pixels than ``h * w`` decodes to uninitialised memory
without an error. Runs must be non-negative and sum to exactly ``h * w``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from .common import DatasetFormatError


def _string_runs(counts: bytes) -> np.ndarray | None:
    """Runs of a compressed COCO RLE string (pycocotools ``rleFrString``), or None if it is malformed."""
    chars = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, np.int64)
    if chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
        return None
    ends = np.flatnonzero((chars & 0x20) == 0)  # the last character of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:  # more than 60 bits: not a run length of any real image
        return None
    position = np.arange(chars.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    # From the third run on, each run is stored as the difference to the run two before it.
    if runs.size > 3:
        odd = runs[3::2]
        runs[3::2] = np.cumsum(odd) + runs[1]
        even = runs[4::2]
        runs[4::2] = np.cumsum(even) + runs[2]
    return runs


def _validated_runs(rle: Any, file: str | Path, entry: str) -> tuple[int, int, np.ndarray]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DatasetFormatError(file, entry, f"not a COCO RLE (need 'size' and 'counts'), got {type(rle).__name__}")
    size = rle["size"]
    if (not isinstance(size, list | tuple) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise DatasetFormatError(file, entry, f"bad RLE size {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise DatasetFormatError(file, entry, "bad RLE counts (non-ASCII characters)") from None
    if isinstance(counts, bytes):
        runs = _string_runs(counts)
        if runs is None:
            raise DatasetFormatError(file, entry, "bad RLE counts (malformed compressed string)")
    elif isinstance(counts, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        runs = np.asarray(counts, np.int64)
    else:
        raise DatasetFormatError(file, entry, f"bad RLE counts of type {type(counts).__name__}")
    if runs.size and runs.min() < 0:
        raise DatasetFormatError(file, entry, "bad RLE counts (negative run length)")
    total = int(runs.sum()) if runs.size else 0
    if total != height * width:
        raise DatasetFormatError(file, entry, f"bad RLE counts: runs cover {total} pixels, size {height}x{width} "
                                              f"needs {height * width}")
    return height, width, runs


def validate_rle(rle: Any, file: str | Path, entry: str) -> tuple[int, int]:
    """Check one COCO RLE (compressed string or uncompressed list) and return its ``(h, w)``.

    Raises :class:`DatasetFormatError` naming ``file`` and ``entry`` when it is not a valid RLE.
    """
    height, width, _ = _validated_runs(rle, file, entry)
    return height, width


def decode_rle(rle: dict, file: str | Path = "<rle>", entry: str = "") -> np.ndarray:
    """Validate and decode one COCO RLE to an ``(h, w)`` bool mask.

    The runs are already parsed by the validation, so they are expanded here directly (column-major, starting
    with background, exactly pycocotools' ``decode``, which tests cross-check); this also avoids the numpy-2
    DeprecationWarning pycocotools 2.0.11 emits on every ``decode`` call.
    """
    height, width, runs = _validated_runs(rle, file, entry)
    values = (np.arange(runs.size) % 2 == 1)
    return np.ascontiguousarray(np.repeat(values, runs).reshape(width, height).T)


def encode_rle(mask: np.ndarray) -> dict:
    """Encode an ``(h, w)`` mask as a JSON-ready compressed COCO RLE (``counts`` as str, as MeViS stores it)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def read_palette_png(path: str | Path, entry: str = "") -> np.ndarray:
    """Object-id map of an annotation PNG: palette indices (mode ``P``) or grey values (``L``, ``I;16``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, entry, "annotation PNG missing")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I;16", "I"):
                raise DatasetFormatError(path, entry, f"expected a palette or grayscale PNG, got mode {image.mode}")
            return np.array(image)
    except DatasetFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(path, entry, f"cannot read annotation PNG ({exc})") from None


def write_palette_png(path: str | Path, labels: np.ndarray, palette: list[int] | None = None) -> None:
    """Write an object-id map as a palette PNG (DAVIS palette-like default), e.g. for synthetic data sets."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("labels must be an (H, W) array of values 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    if palette is None:
        palette = [0, 0, 0] + [v for i in range(1, 256) for v in ((i * 97) % 256, (i * 57) % 256, (i * 23) % 256)]
    image.putpalette(palette)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def read_binary_png(path: str | Path, entry: str = "") -> np.ndarray:
    """Prediction PNG as a bool mask: read as grayscale like the official script, any non-zero is foreground."""
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        problem = "prediction PNG missing" if not path.exists() else "cannot read prediction PNG"
        raise DatasetFormatError(path, entry, problem)
    return image != 0
