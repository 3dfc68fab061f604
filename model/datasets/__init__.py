"""Referring video segmentation data sets (MeViS, Ref-YouTube-VOS, Ref-DAVIS17) and prediction writers.

All readers share :class:`VideoDataset`: videos and expressions as frozen dataclasses, ground truth per
expression through a picklable :class:`MaskSource`, and :class:`DatasetFormatError` for malformed input,
whose message names the file and the entry (video, expression, anno_id, frame index).
"""

from __future__ import annotations

from pathlib import Path

from .common import DatasetFormatError, ExpressionEntry, MaskSource, VideoDataset, VideoEntry, parse_meta_expressions
from .masks import decode_rle, encode_rle, read_binary_png, read_palette_png, validate_rle, write_palette_png
from .mevis import MevisDataset, RleMaskSource
from .refytvos import PaletteMaskSource, RefYtvosDataset, open_refdavis
from .writers import PredictionWriter, atomic_write_bytes, encode_mask_png, write_mask_png

DATASETS = ("mevis", "refytvos", "davis17")

DEFAULT_SPLITS = {"mevis": "valid_u", "refytvos": "train", "davis17": "valid"}
"""Splits with public ground truth (MeViS valid and Ref-YTVOS valid are scored by their servers)."""


def open_dataset(name: str, root: str | Path, split: str | None = None) -> VideoDataset:
    """Open ``split`` of data set ``name`` under ``root``.

    ``mevis``: ``root/<split>/`` (or ``root`` itself when it is already a split folder, i.e. holds
    ``meta_expressions.json``); ``refytvos`` / ``davis17``: ReferFormer layout under ``root``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    split = split or DEFAULT_SPLITS[name]
    root = Path(root)
    if name == "mevis":
        if (root / "meta_expressions.json").is_file() and not (root / split).is_dir():
            return MevisDataset(root)
        return MevisDataset(root / split)
    return RefYtvosDataset(root, split, name=name)


__all__ = [
    "DATASETS",
    "DEFAULT_SPLITS",
    "DatasetFormatError",
    "ExpressionEntry",
    "MaskSource",
    "MevisDataset",
    "PaletteMaskSource",
    "PredictionWriter",
    "RefYtvosDataset",
    "RleMaskSource",
    "VideoDataset",
    "VideoEntry",
    "atomic_write_bytes",
    "decode_rle",
    "encode_mask_png",
    "encode_rle",
    "open_dataset",
    "open_refdavis",
    "parse_meta_expressions",
    "read_binary_png",
    "read_palette_png",
    "validate_rle",
    "write_mask_png",
    "write_palette_png",
]
