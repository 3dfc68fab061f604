"""GLUS for referring video object segmentation: the network, its checkpoints and whole-video inference.

This package knows nothing of Label Studio, Redis or HTTP.
"""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    from_pretrained,
    load_released_glus,
    load_released_state_dict,
    load_sam2_checkpoint,
    save_pretrained,
)
from .config import GlusConfig, get_config, glus_7b_config, glus_tiny_config
from .inference import (
    Expression,
    ExpressionResult,
    FrameResult,
    Progress,
    SegmentOptions,
    VideoSegmenter,
    context_frame_indices,
)
from .keyframes import ConfidenceKeyFrames, FirstFrame, JsonKeyFrames
from .modeling import GlusModel
from .prompting import EmptyExpressionError
from .tokenizer import GlusTokenizer
from .video_io import ArrayFrames, FrameFiles, FrameFolder, VideoFile, VideoReadError, open_frames

__all__ = [
    "CheckpointError",
    "ConfidenceKeyFrames",
    "EmptyExpressionError",
    "Expression",
    "ExpressionResult",
    "FirstFrame",
    "ArrayFrames",
    "FrameFiles",
    "FrameFolder",
    "FrameResult",
    "GlusConfig",
    "GlusModel",
    "GlusTokenizer",
    "JsonKeyFrames",
    "LoadReport",
    "Progress",
    "SegmentOptions",
    "VideoFile",
    "VideoReadError",
    "VideoSegmenter",
    "context_frame_indices",
    "from_pretrained",
    "get_config",
    "glus_7b_config",
    "glus_tiny_config",
    "load_released_glus",
    "load_released_state_dict",
    "load_sam2_checkpoint",
    "open_frames",
    "save_pretrained",
]
