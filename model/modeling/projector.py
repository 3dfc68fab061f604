"""Vision-to-language projector: 4:1 average pooling of CLIP patch tokens, then a linear map."""

from __future__ import annotations

import math

import torch
from torch import nn


def pool_patch_tokens(tokens: torch.Tensor, pool: int, layout: str) -> torch.Tensor:
    """Average ``(N, P, C)`` patch tokens (raster order on a square patch grid) ``pool`` at a time.

    ``"raster"`` (GLUS) averages ``pool`` consecutive tokens, i.e. 1-row strips; ``"grid"`` averages square
    ``sqrt(pool)`` x ``sqrt(pool)`` cells, so that both axes keep the same resolution.
    """
    if pool == 1:
        return tokens
    if layout == "raster":
        return nn.functional.avg_pool1d(tokens.transpose(1, 2), pool, pool).transpose(1, 2)
    side, (n, p, c) = math.isqrt(pool), tokens.shape
    grid = math.isqrt(p)
    squares = tokens.transpose(1, 2).reshape(n, c, grid, grid)
    return nn.functional.avg_pool2d(squares, side, side).flatten(2).transpose(1, 2)


def visual_token_coordinates(patch_grid: int, pool: int, layout: str) -> torch.Tensor:
    """``(T, 2)`` mean (row, column) patch coordinates of each pooled visual token, in patch units."""
    index = torch.arange(patch_grid * patch_grid, dtype=torch.float32)
    coordinates = torch.stack([index // patch_grid, index % patch_grid], 1).unsqueeze(0)
    return pool_patch_tokens(coordinates, pool, layout)[0]


def sincos_2d(coordinates: torch.Tensor, dim: int) -> torch.Tensor:
    """``(T, 2)`` (row, column) coordinates in patch units -> ``(T, dim)`` fixed sine/cosine embeddings
    (a quarter of the channels each for sin/cos of the row and of the column, at geometric frequencies)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    rows, cols = coordinates[:, :1] * omega, coordinates[:, 1:] * omega
    out = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=1)
    return nn.functional.pad(out, (0, dim - out.shape[1]))


class VisionProjector(nn.Module):
    """Pool every ``pool`` consecutive patch tokens (raster order), then project to the LLM width.

    GLUS averages 1-row x 4-column strips of patches (``AvgPool1d(4)`` over the token axis), turning 256
    CLIP-L tokens into 64, and projects with one ``Linear``. Aids for models trained from scratch, all off for
    glus-7b: ``projector_type="mlp2x_gelu"`` adds a GELU and a second ``Linear``; ``pool_layout="grid"`` pools
    square cells instead of strips; ``output_norm="layernorm"`` gives the visual tokens unit scale (a
    from-scratch projector drifts to tokens thousands of times larger than the text embeddings, which the
    LLM's layers then cannot change); ``position_embedding="sincos2d"`` adds each token's fixed 2-D position
    (a from-scratch CLIP's learned position embeddings stay ~2 % of its patch embeddings, so its tokens do not
    say where they are, and relations and motion need that).
    """

    def __init__(
        self,
        vision_hidden: int,
        llm_hidden: int,
        pool: int = 4,
        projector_type: str = "linear",
        pool_layout: str = "raster",
        output_norm: str | None = None,
        position_embedding: str | None = None,
        patch_grid: int | None = None,
    ) -> None:
        super().__init__()
        self.pool, self.pool_layout = pool, pool_layout
        self.linear_1 = nn.Linear(vision_hidden, llm_hidden)
        if projector_type == "mlp2x_gelu":
            self.act: nn.Module = nn.GELU()
            self.linear_2: nn.Module = nn.Linear(llm_hidden, llm_hidden)
        elif projector_type == "linear":
            self.act = nn.Identity()
            self.linear_2 = nn.Identity()
        else:
            raise ValueError(f"unknown projector_type {projector_type!r}")
        self.output_norm: nn.Module = nn.LayerNorm(llm_hidden) if output_norm == "layernorm" else nn.Identity()
        table = None
        if position_embedding == "sincos2d":
            if patch_grid is None:
                raise ValueError("position_embedding needs the patch grid size")
            table = sincos_2d(visual_token_coordinates(patch_grid, pool, pool_layout), llm_hidden)
        self.position_embedding: torch.Tensor | None
        self.register_buffer("position_embedding", table, persistent=False)  # rebuilt from the config, not saved

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``(N, P, C_vision)`` patch tokens -> ``(N, P / pool, C_llm)`` visual tokens."""
        pooled = pool_patch_tokens(patch_tokens, self.pool, self.pool_layout)
        out = self.output_norm(self.linear_2(self.act(self.linear_1(pooled))))
        if self.position_embedding is not None:
            out = out + self.position_embedding.to(out.dtype)
        return out
