"""Random Sa2VA networks for tests and the real-scale rehearsal (nothing is downloaded, no weights exist here).

A random LLM never answers ``[SEG]``, so nothing downstream of it would run. :func:`rig_answer` makes a random
network answer ``[SEG]`` and then end, whatever the video, while every state stays the network's own computation:
the residual stream's channel 0 carries only the token embedding (+A, or -A for ``[SEG]``: no layer writes to it),
and the LM head reads only that channel: ``[SEG]`` when positive, eos when negative. The other channels, and so
the ``[SEG]`` state SAM-2 is prompted with, are the network's own and differ from prompt to prompt.
"""

from __future__ import annotations

import torch

from .config import Sa2VAConfig
from .modeling import Sa2VAModel

RIG_SCALE = 1.0  # any positive value: only the embedding writes channel 0, so its sign is exact


def random_sa2va(config: Sa2VAConfig, seed: int = 0) -> Sa2VAModel:
    """A Sa2VA network with seeded random weights (each module's own initialisation)."""
    torch.manual_seed(seed)
    return Sa2VAModel(config).eval()


@torch.no_grad()
def rig_answer(model: Sa2VAModel, seg_id: int, eos_id: int) -> Sa2VAModel:
    """Make ``model`` answer ``[SEG]`` then eos (in place); see the module docstring."""
    lm = model.language_model
    embed = lm.get_input_embeddings().weight
    embed[:, 0] = RIG_SCALE
    embed[seg_id, 0] = -RIG_SCALE
    for layer in lm.model.layers:  # no layer writes channel 0 of the residual stream
        layer.self_attn.o_proj.weight[0] = 0
        layer.mlp.down_proj.weight[0] = 0
    lm.model.norm.weight[0] = 1.0  # the other channels stay: the [SEG] state still depends on the prompt
    head = lm.lm_head.weight
    head.zero_()
    head[seg_id, 0] = 1.0
    head[eos_id, 0] = -1.0
    return model
