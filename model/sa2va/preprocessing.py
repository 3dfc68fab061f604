"""Frames to Sa2VA's two inputs, resized with Pillow as the reference does (torchvision on PIL images).

* MLLM: bicubic resize to 448 x 448 (aspect ratio not kept), ``/255``, ImageNet mean/std;
* SAM-2: Pillow's default resize (bicubic for RGB) to 1024 x 1024 (aspect ratio not kept), ``/255``, then the
  ImageNet mean/std **rounded to bfloat16** (the reference builds those constants in bfloat16), in float32.

A torch bicubic resize does not match Pillow's (antialiasing, kernel support), hence Pillow.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .config import MLLM_IMAGE_SIZE, SAM_IMAGE_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resized(frame: np.ndarray, size: int) -> torch.Tensor:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    image = Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def mllm_pixel_values(frame: np.ndarray) -> torch.Tensor:
    """``(3, 448, 448)`` float32 InternViT input of one RGB frame."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    return (_resized(frame, MLLM_IMAGE_SIZE) - mean) / std


def sam_pixel_values(frame: np.ndarray, size: int = SAM_IMAGE_SIZE) -> torch.Tensor:
    """``(3, size, size)`` float32 SAM-2 input of one RGB frame."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16).float().reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.bfloat16).float().reshape(3, 1, 1)
    return (_resized(frame, size) - mean) / std
