"""Vision-to-language projector: 4:1 average pooling of CLIP patch tokens, then a linear map."""

from __future__ import annotations

import torch
from torch import nn


class VisionProjector(nn.Module):
    """Pool every ``pool`` consecutive patch tokens (raster order), then project to the LLM width.

    GLUS averages 1-row x 4-column strips of patches (``AvgPool1d(4)`` over the token axis), turning 256
    CLIP-L tokens into 64, and projects with one ``Linear``. ``projector_type="mlp2x_gelu"`` adds a GELU and
    a second ``Linear`` (an aid for models trained from scratch; off for glus-7b).
    """

    def __init__(self, vision_hidden: int, llm_hidden: int, pool: int = 4, projector_type: str = "linear") -> None:
        super().__init__()
        self.pool = nn.AvgPool1d(kernel_size=pool, stride=pool)
        self.linear_1 = nn.Linear(vision_hidden, llm_hidden)
        if projector_type == "mlp2x_gelu":
            self.act: nn.Module = nn.GELU()
            self.linear_2: nn.Module = nn.Linear(llm_hidden, llm_hidden)
        elif projector_type == "linear":
            self.act = nn.Identity()
            self.linear_2 = nn.Identity()
        else:
            raise ValueError(f"unknown projector_type {projector_type!r}")

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``(N, P, C_vision)`` patch tokens -> ``(N, P / pool, C_llm)`` visual tokens."""
        pooled = self.pool(patch_tokens.transpose(1, 2)).transpose(1, 2)
        return self.linear_2(self.act(self.linear_1(pooled)))
