"""InternViT, the vision encoder of InternVL (and so of Sa2VA), with the released checkpoints' parameter names.

A plain pre-norm ViT: a 14-px patch convolution, a CLS token, learned position embeddings for the 32x32 grid of a
448-px image, then blocks of fused-QKV attention and a GELU MLP, each branch scaled by a learned per-channel
"layer scale" (``ls1``/``ls2``) before the residual add. No final norm: the last block's output is the result.
The 6B variant's RMSNorm and QK normalisation are supported by configuration; the 300M one (every InternViT the
supported Sa2VA sizes use) has LayerNorm and neither.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(config: dict[str, Any], dim: int) -> nn.Module:
    eps = float(config.get("layer_norm_eps", 1e-6))
    kind = config.get("norm_type", "layer_norm")
    if kind == "rms_norm":
        return RMSNorm(dim, eps)
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown InternViT norm_type {kind!r}")


class VisionEmbeddings(nn.Module):
    """Patch embedding + CLS token + learned positions (interpolated bicubically for another grid size)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        dim, patch = int(config["hidden_size"]), int(config.get("patch_size", 14))
        self.grid = int(config.get("image_size", 448)) // patch
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embedding = nn.Conv2d(int(config.get("num_channels", 3)), dim, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, C, h, w)
        batch, dim, h, w = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(batch, 1, dim).to(tokens.dtype)
        positions = self.position_embedding[:, 1:]
        if (h, w) != (self.grid, self.grid):
            grid = positions.float().reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            positions = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)
        positions = torch.cat([self.position_embedding[:, :1], positions.to(tokens.dtype)], dim=1)
        return torch.cat([cls, tokens], dim=1) + positions.to(tokens.dtype)


class VisionAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (optionally RMS-normalised queries/keys)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = dim // self.heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bool(config.get("qkv_bias", True)))
        self.qk_normalization = bool(config.get("qk_normalization", False))
        if self.qk_normalization:
            eps = float(config.get("layer_norm_eps", 1e-6))
            self.q_norm = RMSNorm(dim, eps)
            self.k_norm = RMSNorm(dim, eps)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).unbind(2)  # (B, N, H, D) each
        if self.qk_normalization:  # normalised over all heads together
            q = self.q_norm(q.flatten(2)).view_as(q)
            k = self.k_norm(k.flatten(2)).view_as(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
        attention = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))


class VisionMLP(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        dim, hidden = int(config["hidden_size"]), int(config["intermediate_size"])
        self.act = ACT2FN[config.get("hidden_act", "gelu")]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm residual block; each branch is scaled per channel (layer scale) before it is added."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        dim = int(config["hidden_size"])
        scale = float(config.get("initializer_factor", 1.0))
        self.norm1 = _norm(config, dim)
        self.attn = VisionAttention(config)
        self.ls1 = nn.Parameter(scale * torch.ones(dim))
        self.norm2 = _norm(config, dim)
        self.mlp = VisionMLP(config)
        self.ls2 = nn.Parameter(scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class VisionEncoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(config) for _ in range(int(config["num_hidden_layers"])))


class InternViT(nn.Module):
    """``(B, 3, 448, 448)`` normalised pixels -> ``(B, 1 + 32*32, C)`` tokens (CLS first) of layer ``select_layer``
    (-1: the last block's output)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        layers = self.encoder.layers
        stop = len(layers) + 1 + select_layer if select_layer < 0 else select_layer
        for block in layers[:stop]:
            x = block(x)
        return x
