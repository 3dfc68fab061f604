"""GLUS for referring video object segmentation: the network, its checkpoints and whole-video inference.

This package knows nothing of Label Studio, Redis or HTTP. Names are imported lazily, so that the torch-free
parts (``model.evaluation``, ``model.datasets``) load without importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointChain": "checkpoint",
    "CheckpointError": "checkpoint",
    "LoadReport": "checkpoint",
    "from_pretrained": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_released_glus": "checkpoint",
    "load_released_state_dict": "checkpoint",
    "load_sam2_checkpoint": "checkpoint",
    "save_pretrained": "checkpoint",
    "GlusConfig": "config",
    "get_config": "config",
    "glus_7b_config": "config",
    "glus_tiny_config": "config",
    "Expression": "inference",
    "ExpressionResult": "inference",
    "FrameResult": "inference",
    "Progress": "inference",
    "SegmentOptions": "inference",
    "VideoSegmenter": "inference",
    "context_frame_indices": "inference",
    "ConfidenceKeyFrames": "keyframes",
    "FirstFrame": "keyframes",
    "JsonKeyFrames": "keyframes",
    "GlusModel": "modeling",
    "EmptyExpressionError": "prompting",
    "GlusTokenizer": "tokenizer",
    "ArrayFrames": "video_io",
    "FrameFiles": "video_io",
    "FrameFolder": "video_io",
    "VideoFile": "video_io",
    "VideoReadError": "video_io",
    "open_frames": "video_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
