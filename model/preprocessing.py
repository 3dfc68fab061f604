"""Frame preprocessing for the two image streams, without torchvision.

* CLIP: shortest side resized to ``clip_image_size`` with PIL bicubic, centre crop, /255, CLIP mean/std
  (what ``CLIPImageProcessor`` does for ``openai/clip-vit-large-patch14``).
* SAM-2: /255, resized to ``S x S`` ignoring the aspect ratio (bilinear, antialias, as torchvision's tensor
  ``Resize``), ImageNet mean/std.

Frames are ``uint8`` RGB arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import GlusConfig


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"a frame must be an RGB array of shape (H, W, 3), got {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8, got {frame.dtype}")
    return frame


def clip_pixel_values(
    frames: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """CLIP input tensor ``(N, 3, size, size)`` float32."""
    out = []
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    for frame in frames:
        h, w = _check_frame(frame).shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        resized = np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample=Image.BICUBIC))
        top = (new_h - size) // 2
        left = (new_w - size) // 2
        crop = resized[top : top + size, left : left + size].astype(np.float32) * np.float32(1 / 255)
        out.append(((crop - mean_a) / std_a).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def clip_video_pixel_values(
    config: GlusConfig, frame_at: Callable[[int], np.ndarray], indices: Sequence[int], num_frames: int
) -> torch.Tensor:
    """CLIP inputs of frames ``indices`` of a ``num_frames``-frame video, ``(N, 3, size, size)``.

    ``config.vision_motion_channels="frame_difference"`` (a tiny-model aid, off for glus-7b) gives
    ``(N, 9, size, size)``: the frame, the frame minus the previous one and the next one minus the frame (zero at
    the video's ends), all in normalised CLIP units. A frame's patches then show where its objects came from and
    where they go, so its visual tokens can say how their object moves, which a ViT that sees one frame at a
    time cannot.
    """
    size, mean, std = config.clip_image_size, config.clip_mean, config.clip_std
    if config.vision_motion_channels is None:
        return clip_pixel_values([frame_at(i) for i in indices], size, mean, std)
    needed = sorted({j for i in indices for j in (i - 1, i, i + 1) if 0 <= j < num_frames})
    table = dict(zip(needed, clip_pixel_values([frame_at(j) for j in needed], size, mean, std)))
    out = []
    for i in indices:
        frame = table[i]
        backward = frame - table[i - 1] if i - 1 in table else torch.zeros_like(frame)
        forward = table[i + 1] - frame if i + 1 in table else torch.zeros_like(frame)
        out.append(torch.cat([frame, backward, forward]))
    return torch.stack(out)


def sam_pixel_values(
    frames: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """SAM-2 input tensor ``(N, 3, size, size)`` float32."""
    batch = torch.from_numpy(np.stack([_check_frame(f) for f in frames])).permute(0, 3, 1, 2).float() / 255.0
    batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=batch.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t
