"""``torch.compile`` for SAM-2's per-frame modules, on and off.

Every frame runs SAM-2's image encoder, memory attention, mask decoder and memory encoder: many small kernels at
glus-7b's Hiera-L, where fusion can pay on a GPU. Each part's ``forward`` is replaced by its compiled version on
the instance, as SAM-2's own predictor compiles its image encoder, so parameter names, checkpoints and the
eager code are untouched, and :func:`uncompile_sam2` restores the eager path. Whether it pays is measured by
``bench/gpu_rehearsal.py`` (section ``compile``), not assumed: nothing compiles by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

SAM2_PARTS = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")


def _part(model: nn.Module, name: str) -> nn.Module:
    if name not in SAM2_PARTS:
        raise ValueError(f"unknown SAM-2 part {name!r}; known: {', '.join(SAM2_PARTS)}")
    return getattr(model.sam, name)


def compile_sam2(model: nn.Module, parts: Sequence[str] = SAM2_PARTS, **options) -> list[str]:
    """Compile ``parts`` of ``model.sam`` in place with ``torch.compile(**options)`` (e.g. ``backend``, ``mode``;
    ``None`` values are left out). Compilation happens at the first call of each input shape: the memory
    attention sees one shape per number of memories, so it is compiled with dynamic shapes unless told."""
    chosen = {key: value for key, value in options.items() if value is not None}
    for name in parts:
        module = _part(model, name)
        if "forward" in vars(module):
            continue  # already compiled
        per_part = dict(chosen)
        if name == "memory_attention":
            per_part.setdefault("dynamic", True)
        module.forward = torch.compile(module.forward, **per_part)
    return list(parts)


def uncompile_sam2(model: nn.Module, parts: Sequence[str] = SAM2_PARTS) -> None:
    """Back to the eager ``forward`` of ``parts`` (compiled or not)."""
    for name in parts:
        vars(_part(model, name)).pop("forward", None)


def compiled_parts(model: nn.Module) -> list[str]:
    return [name for name in SAM2_PARTS if "forward" in vars(getattr(model.sam, name))]
