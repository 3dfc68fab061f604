"""Clicks -> a mask on one frame: SAM-2's point prompt on a frame with no memory.

An annotator who clicks an object (positive) or the background (negative) on frame ``k`` says where the object is
without drawing it. SAM-2 turns the clicks into a mask: its prompt encoder embeds the points (coordinates on its
square input, which frames are resized to ignoring the aspect ratio, see :mod:`model.preprocessing`), and the mask
decoder reads the frame's features as a stream's first frame (no memory: ``no_mem_embed``). The mask can then seed
:func:`model.repropagation.repropagate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .inference import SegmentOptions, VideoSegmenter
from .modeling import sam2_memory
from .video_io import ArrayFrames, FrameSource


@dataclass(frozen=True)
class Click:
    """A click at ``(x, y)``, fractions of the frame's width and height in [0, 1]; ``positive``: on the object."""

    x: float
    y: float
    positive: bool = True


def mask_from_clicks(
    segmenter: VideoSegmenter, frames: FrameSource | Sequence[np.ndarray], index: int, clicks: Sequence[Click]
) -> np.ndarray:
    """The ``(H, W)`` bool mask SAM-2 draws on frame ``index`` for ``clicks`` (at least one positive)."""
    source = frames if isinstance(frames, FrameSource) else ArrayFrames(frames)
    if not 0 <= index < len(source):
        raise ValueError(f"frame {index} out of range for a {len(source)}-frame video")
    if not any(c.positive for c in clicks):
        raise ValueError("at least one positive click is needed")
    for c in clicks:
        if not (0.0 <= c.x <= 1.0 and 0.0 <= c.y <= 1.0):
            raise ValueError(f"click ({c.x}, {c.y}) is outside the frame (fractions in [0, 1] expected)")
    model = segmenter.model
    sam = model.sam
    size = model.sam_image_size
    video = segmenter.open_video(source, [], SegmentOptions(cache_frames=1, encode_batch=1, prefix_cache=False))
    with torch.inference_mode(), video:
        feats = video.sam_features(index)
        conditioned = model.condition_on_memory(feats, [])
        coords = torch.tensor([[[c.x * size, c.y * size] for c in clicks]], dtype=torch.float32,
                              device=segmenter.device)  # fmt: skip
        labels = torch.tensor([[1 if c.positive else 0 for c in clicks]], dtype=torch.int32, device=segmenter.device)
        with model.sam_precision():
            sparse, _ = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            decoded = sam2_memory.decode_masks(sam, conditioned, feats, sparse)
        logits = sam2_memory.upsample_logits(decoded.lowres_logits, video.frame_size(index))[0, 0]
        return (logits > segmenter.config.mask_threshold).cpu().numpy()
