"""A soft SAM-2 point prompt from where the ``[SEG]`` state points (tiny-model aid, off for glus-7b)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SegPointer(nn.Module):
    """Scores each visual token of a query frame as the place the ``[SEG]`` state refers to.

    GLUS hands SAM-2 only the projected ``[SEG]`` state, so the language model must write the target's
    position into that one vector. A 2-layer LLM trained from scratch does not learn to (its ``[SEG]`` state
    names the colour and shape but not where, see the model card). Here the state that predicts ``[SEG]``
    instead attends over the LLM's last-layer states of that frame's visual tokens, one per pooled cell: a
    dot-product pointer whose weights are differentiable, so the mask loss reaches *which cell* directly.
    :meth:`model.modeling.glus.GlusModel.point_prompt` turns the weights into a SAM-2 point prompt.
    The query standardises the state with a BatchNorm, as the seg projector does, against the same collapse.
    """

    def __init__(self, llm_hidden: int, key_dim: int = 64) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.BatchNorm1d(llm_hidden), nn.Linear(llm_hidden, key_dim))
        self.key = nn.Sequential(nn.LayerNorm(llm_hidden), nn.Linear(llm_hidden, key_dim))
        self.scale = 1.0 / math.sqrt(key_dim)

    def forward(self, seg_hidden: torch.Tensor, frame_hidden: torch.Tensor) -> torch.Tensor:
        """``(K, C)`` states that predict ``[SEG]`` and ``(K, T, C)`` states of their frames' visual tokens ->
        ``(K, T)`` pointer logits."""
        query = self.query(seg_hidden)
        keys = self.key(frame_hidden)
        return torch.einsum("kd,ktd->kt", query, keys) * self.scale


class PointMap(nn.Module):
    """The pointer's cell probabilities as a dense SAM-2 prompt (``seg_point_prompt="pointer_map"``, tiny aid).

    A from-scratch mask decoder learns to ignore the soft point token: forcing the point to a corner cell changed
    0.01 % of the mask pixels of a model trained with it (see the model card). The mask is a dot product of the
    decoder's mask token with each pixel's feature, so a feature that says "the pointer is here" is the shortest
    way to put the pointer into the mask: the probabilities, resized to the image embedding's grid, scale one
    learned embedding that is added to the dense prompt (where SAM-2 adds its mask-prompt embedding)."""

    def __init__(self, sam_hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(sam_hidden))

    def forward(self, probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(K, T)`` cell probabilities on a square grid (raster order) -> ``(K, C_sam, h, w)`` dense prompt."""
        grid = math.isqrt(probabilities.shape[1])
        cells = probabilities.view(-1, 1, grid, grid)
        if (grid, grid) != tuple(size):
            cells = nn.functional.interpolate(cells, size=size, mode="nearest")
        return cells * self.embedding.view(1, -1, 1, 1).to(cells.dtype)
