"""The Sa2VA network with the released checkpoints' module tree, and its MLLM steps.

Parameter names are the checkpoint's own (``vision_model``, ``mlp1``, ``language_model``,
``grounding_encoder.sam2_model``, ``text_hidden_fcs``), so a released state dict loads with one rename
(the memory encoder's layer scale ``g_weight`` -> ``gamma``, see :mod:`.checkpoint`). The steps:

1. :meth:`Sa2VAModel.visual_tokens` - InternViT, CLS dropped, 2x2 pixel shuffle (space to depth), ``mlp1``:
   256 LLM tokens per 448-px frame;
2. :meth:`Sa2VAModel.prompt_embeddings` - the prompt's token embeddings with the visual tokens in place of the
   ``<IMG_CONTEXT>`` tokens, frame after frame;
3. :meth:`Sa2VAModel.answer` - greedy decoding; the last-layer state of each ``[SEG]`` *fed back as input* is
   what :meth:`Sa2VAModel.seg_embeddings` projects (``text_hidden_fcs``) into SAM-2's prompt space.

SAM-2 (``grounding_encoder.sam2_model``) is the ``sam2`` package's ``SAM2Base`` built as SAM 2.0 Hiera-L; the
video propagation that drives it is :mod:`.video`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from ..modeling.sam2_memory import build_sam2
from .config import Sa2VAConfig
from .intern_vit import InternViT


def pixel_shuffle(tokens: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """``(B, h, w, C)`` -> ``(B, h*r, w*r, C/r^2)`` for ``r = ratio`` < 1: each output cell stacks the ``1/r`` x
    ``1/r`` input cells it covers, channel index ``(row offset * 1/r + column offset) * C + c`` (InternVL's
    "v2" order)."""
    batch, h, w, channels = tokens.shape
    k = round(1 / ratio)
    if h % k or w % k:
        raise ValueError(f"a {h}x{w} token grid cannot be shuffled by {ratio}")
    cells = tokens.reshape(batch, h // k, k, w // k, k, channels).permute(0, 1, 3, 2, 4, 5)
    return cells.reshape(batch, h // k, w // k, k * k * channels)


class GroundingEncoder(nn.Module):
    """Holds SAM-2 as ``sam2_model``; a Sa2VA-i checkpoint's second (fine-tuned) mask decoder is
    ``sam2_model.sam_mask_decoder_modified``, its ``sam_mask_decoder`` being SAM-2.0's original one."""

    def __init__(self, config: Sa2VAConfig) -> None:
        super().__init__()
        self.sam2_model = build_sam2(config.sam2_config, config.sam2_overrides)
        if config.two_decoders:
            self.sam2_model.sam_mask_decoder_modified = copy.deepcopy(self.sam2_model.sam_mask_decoder)

    @property
    def fine_tuned_decoder(self) -> nn.Module:
        """The decoder trained with ``[SEG]`` prompts (the only one in a Sa2VA checkpoint)."""
        return getattr(self.sam2_model, "sam_mask_decoder_modified", self.sam2_model.sam_mask_decoder)


@dataclass
class Answer:
    """A greedy answer: the generated ids (eos included when reached) and, per fed-back generated token, the
    LLM's last-layer state computed with that token as input (``states[k]`` for ``ids[k]``; the last id is never
    fed back)."""

    ids: list[int]
    states: torch.Tensor  # (len(ids) - 1, C_llm)
    step_logits: torch.Tensor  # (len(ids), vocab): the logits each id was chosen from (before any forcing)
    prompt_states: torch.Tensor  # (L, C_llm): the last-layer states of the prompt positions


class Sa2VAModel(nn.Module):
    """One Sa2VA network. Holds weights only: no per-video state."""

    def __init__(self, config: Sa2VAConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = InternViT(config.vision)
        shuffled = config.vision_hidden * round(1 / config.downsample_ratio) ** 2
        llm = config.llm_hidden
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, llm), nn.GELU(), nn.Linear(llm, llm))
        llm_config = Qwen2Config(**config.llm)
        llm_config._attn_implementation = config.llm.get("attn_implementation", "sdpa")
        self.language_model = Qwen2ForCausalLM(llm_config)
        self.grounding_encoder = GroundingEncoder(config)
        sam_dim = int(self.grounding_encoder.sam2_model.hidden_dim)
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(llm, llm), nn.ReLU(inplace=True), nn.Linear(llm, sam_dim), nn.Dropout(0.0)
        )

    @property
    def sam(self) -> nn.Module:
        return self.grounding_encoder.sam2_model

    # --- multimodal LLM ---
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 448, 448)`` MLLM inputs -> ``(N, 256, C_llm)`` visual tokens."""
        tokens = self.vision_model(pixel_values, self.config.select_layer)[:, 1:]
        side = int(tokens.shape[1] ** 0.5)
        grid = tokens.reshape(tokens.shape[0], side, side, -1)
        shuffled = pixel_shuffle(grid, self.config.downsample_ratio)
        return self.mlp1(shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1]))

    def prompt_embeddings(self, input_ids: torch.Tensor, visual: torch.Tensor, image_context_id: int) -> torch.Tensor:
        """``(L,)`` ids -> ``(L, C_llm)`` embeddings, the ``<IMG_CONTEXT>`` positions filled with ``visual``
        ``(N, 256, C_llm)`` in order (frame-major)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        slots = input_ids == image_context_id
        flat = visual.reshape(-1, visual.shape[-1])
        if int(slots.sum()) != flat.shape[0]:
            raise ValueError(f"the prompt has {int(slots.sum())} image-context tokens for {flat.shape[0]} visual ones")
        embeds = embeds.clone()
        embeds[slots] = flat.to(embeds.dtype)
        return embeds

    @torch.no_grad()
    def answer(
        self,
        prompt_embeds: torch.Tensor,
        eos_id: int,
        max_new_tokens: int = 64,
        forced_ids: list[int] | None = None,
    ) -> Answer:
        """Greedy decoding from ``(L, C)`` prompt embeddings until ``eos_id`` or ``max_new_tokens``.

        ``forced_ids`` replaces the choices (teacher forcing: parity tests with random weights, which would not
        answer ``[SEG]``); the states are still the model's own for the forced inputs."""
        lm = self.language_model
        cache = DynamicCache()
        out = lm.model(inputs_embeds=prompt_embeds.unsqueeze(0), past_key_values=cache, use_cache=True)
        prompt_states = out.last_hidden_state[0]
        hidden = prompt_states[-1:]
        ids: list[int] = []
        states: list[torch.Tensor] = []
        logits_seen: list[torch.Tensor] = []
        limit = len(forced_ids) if forced_ids is not None else max_new_tokens
        while len(ids) < limit:
            logits = lm.lm_head(hidden)[0].float()
            logits_seen.append(logits)
            token = forced_ids[len(ids)] if forced_ids is not None else int(logits.argmax())
            ids.append(token)
            if token == eos_id or len(ids) == limit:
                break
            fed = torch.tensor([[token]], device=prompt_embeds.device)
            step = lm.model(input_ids=fed, past_key_values=cache, use_cache=True)  # positions follow the cache
            hidden = step.last_hidden_state[0, -1:]
            states.append(hidden[0])
        empty = prompt_embeds.new_zeros((0, prompt_embeds.shape[-1]))
        return Answer(ids, torch.stack(states) if states else empty, torch.stack(logits_seen), prompt_states)

    @staticmethod
    def seg_states(answer: Answer, seg_id: int) -> torch.Tensor:
        """``(n_seg, C_llm)``: the last-layer states computed with each of the answer's ``[SEG]`` tokens as input."""
        fed = torch.tensor(answer.ids[: len(answer.states)], device=answer.states.device)
        return answer.states[fed == seg_id]

    def seg_embeddings(self, seg_states: torch.Tensor) -> torch.Tensor:
        """``(n_seg, C_sam)``: ``[SEG]`` states projected into SAM-2's prompt space by ``text_hidden_fcs``."""
        return self.text_hidden_fcs(seg_states)
