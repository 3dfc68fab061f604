"""Projection of the hidden state that predicts ``[SEG]`` to one SAM-2 prompt token."""

from __future__ import annotations

import torch
from torch import nn


class SegProjector(nn.Module):
    """Linear -> ReLU -> Linear (LLM width -> SAM-2 prompt width), GLUS's ``text_hidden_fcs``.

    ``hidden_norm="batchnorm"`` standardises the hidden state first. That is an aid for a language model
    trained from scratch, whose pre-[SEG] states otherwise collapse to nearly the same vector for every
    expression (see docs/tiny-model-notes); it is off for glus-7b. ``output_norm="layernorm"`` gives the prompt
token unit-variance features, the scale of SAM-2's learned output tokens, so that a mask decoder trained from
scratch cannot drown it out; also off for glus-7b.
    """

    def __init__(
        self, llm_hidden: int, out_dim: int, hidden_norm: str | None = None, output_norm: str | None = None
    ) -> None:
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm1d(llm_hidden) if hidden_norm == "batchnorm" else nn.Identity()
        self.layers = nn.Sequential(
            nn.Linear(llm_hidden, llm_hidden), nn.ReLU(inplace=True), nn.Linear(llm_hidden, out_dim)
        )
        self.output_norm: nn.Module = nn.LayerNorm(out_dim) if output_norm == "layernorm" else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(K, C_llm)`` hidden states -> ``(K, out_dim)`` prompt embeddings."""
        return self.output_norm(self.layers(self.norm(hidden)))
