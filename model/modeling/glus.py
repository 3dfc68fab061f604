"""The GLUS network: CLIP -> pooled projector -> LLaMA -> [SEG] projector -> SAM-2 with a memory bank.

Parameter names (``vision_tower``, ``multi_modal_projector``, ``language_model``, ``seg_projector``,
``sam``) are this project's; :mod:`model.checkpoint` maps the released GLUS / SAM-2 key names onto them.
Running a whole video (prompts, schedules, memory bank) is :mod:`model.inference`; this module is the
network and its per-step pieces.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from ..config import GlusConfig
from ..tokenizer import IMAGE_PLACEHOLDER_ID
from . import sam2_memory
from .point_prompt import PointMap, SegPointer
from .projector import VisionProjector, visual_token_coordinates
from .seg_projector import SegProjector


class GlusModel(nn.Module):
    """One GLUS network. Holds weights only: no memory bank, no per-video state."""

    def __init__(self, config: GlusConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(CLIPVisionConfig(**config.vision))
        self.multi_modal_projector = VisionProjector(
            config.vision_hidden_size,
            config.llm_hidden_size,
            config.vision_token_pool,
            config.projector_type,
            config.vision_token_pool_layout,
            config.projector_output_norm,
            config.vision_position_embedding,
            config.patch_grid,
        )
        llm_config = LlamaConfig(**config.llm)
        llm_config.use_cache = False
        self.language_model = LlamaForCausalLM(llm_config)
        self.sam = sam2_memory.build_sam2(config.sam2_config, config.sam2_overrides)
        self.sam.sam_mask_decoder.dynamic_multimask_via_stability = config.sam_multimask_fallback
        self.seg_projector = SegProjector(
            config.llm_hidden_size, self.sam.hidden_dim, config.seg_hidden_norm, config.seg_output_norm
        )
        self.seg_pointer: SegPointer | None = None
        self.point_map: PointMap | None = None
        centres = None
        if config.seg_point_prompt is not None:
            self.seg_pointer = SegPointer(config.llm_hidden_size)
            if config.seg_point_prompt == "pointer_map":
                if config.visual_tokens_per_image > self.sam.hidden_dim:
                    raise ValueError("seg_point_prompt 'pointer_map' needs at most as many cells as SAM-2 channels")
                self.point_map = PointMap(self.sam.hidden_dim)
            rows_cols = visual_token_coordinates(
                config.patch_grid, config.vision_token_pool, config.vision_token_pool_layout
            )
            centres = (rows_cols.flip(1) + 0.5) / config.patch_grid  # (x, y) in [0, 1], SAM-2's point order
        self.token_cell_centres: torch.Tensor | None
        self.register_buffer("token_cell_centres", centres, persistent=False)  # rebuilt from the config

    # --- sizes ---
    @property
    def sam_image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def visual_tokens_per_image(self) -> int:
        return self.config.visual_tokens_per_image

    # --- multimodal LLM ---
    def encode_images(self, clip_pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, s, s)`` CLIP inputs -> ``(N, T, C_llm)`` visual tokens (penultimate layer, CLS dropped).

        CLIP runs in its own dtype outside any autocast (bf16 training autocasts the rest; on CPU, autocast
        refuses a LayerNorm whose weights are not float32)."""
        vision_dtype = self.vision_tower.get_input_embeddings().weight.dtype
        with torch.autocast(clip_pixel_values.device.type, enabled=False):
            out = self.vision_tower(clip_pixel_values.to(vision_dtype), output_hidden_states=True)
        patches = out.hidden_states[self.config.vision_feature_layer][:, 1:]
        return self.multi_modal_projector(patches)

    def embed_prompt(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``input_ids`` ``(L,)`` with each placeholder (-200) replaced by one image's
        ``T`` visual tokens, in order. Returns ``(L + n_images * (T - 1), C_llm)``."""
        is_image = input_ids == IMAGE_PLACEHOLDER_ID
        n_images, tokens_per_image, width = image_features.shape
        if int(is_image.sum()) != n_images:
            raise ValueError(f"prompt has {int(is_image.sum())} image placeholders but {n_images} images were given")
        text = self.language_model.get_input_embeddings()(input_ids.clamp(min=0)[~is_image])
        starts, length = _expanded_starts(input_ids, tokens_per_image)
        out = text.new_empty(length, width)
        out[starts[~is_image]] = text
        image_pos = image_token_positions(input_ids, tokens_per_image).flatten()
        out[image_pos] = image_features.reshape(-1, width).to(text.dtype)
        return out

    def language_hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states (after the final RMSNorm) of ``(B, E, C)`` embeddings."""
        out = self.language_model.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    def project_seg(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """``(K, C_llm)`` hidden states that predict [SEG] -> ``(K, C_sam)`` SAM-2 prompt tokens."""
        return self.seg_projector(seg_hidden)

    def point_prompt(self, seg_hidden: torch.Tensor, frame_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``seg_point_prompt="pointer"``: ``(K, C_llm)`` states that predict [SEG] and ``(K, T, C_llm)`` states of
        their frames' visual tokens -> ``(K, C_sam)`` soft point prompts and ``(K, T)`` pointer logits.

        The prompt is what SAM-2's prompt encoder makes of a clicked positive point (positional encoding of
        the point + the positive-point embedding), with the positional encoding averaged over the token cells'
        centres under the pointer's softmax."""
        if self.seg_pointer is None or self.token_cell_centres is None:
            raise RuntimeError("this configuration has no seg_point_prompt")
        logits = self.seg_pointer(seg_hidden, frame_hidden)
        encoder, size = self.sam.sam_prompt_encoder, self.sam_image_size
        with self.sam_precision():
            cells = encoder.pe_layer.forward_with_coords(self.token_cell_centres.unsqueeze(0) * size, (size, size))[0]
        point = logits.float().softmax(-1) @ cells.float() + encoder.point_embeddings[1].weight.float()
        return point.to(seg_hidden.dtype), logits

    def compose_prompts(
        self, embeddings: torch.Tensor, seg_hidden: torch.Tensor, frame_hidden: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The SAM-2 prompt of ``(K, C_sam)`` projected ``[SEG]`` states (and, with a pointer, the ``(K, C_llm)``
        states and ``(K, T, C_llm)`` frame states they point into) -> the prompt :meth:`decode_masks` takes and
        the pointer logits (None without a pointer). The prompt is ``(K, C_sam)`` in GLUS; ``(K, 2, C_sam)``
        [SEG] + point with ``"pointer"``; ``(K, 3, C_sam)`` with ``"pointer_map"``, the third row carrying the
        pointer's ``T`` cell probabilities (zero-padded), so that one tensor per expression travels through
        inference and training unchanged."""
        if self.seg_pointer is None:
            return embeddings, None
        point, logits = self.point_prompt(seg_hidden, frame_hidden)
        rows = [embeddings, point]
        if self.point_map is not None:
            probabilities = logits.float().softmax(-1).to(embeddings.dtype)
            rows.append(F.pad(probabilities, (0, embeddings.shape[-1] - probabilities.shape[-1])))
        return torch.stack(rows, 1), logits

    def sam_prompts(self, input_ids: torch.Tensor, hidden: torch.Tensor, state_positions: torch.Tensor) -> torch.Tensor:
        """The SAM-2 prompts (see :meth:`compose_prompts`) of one prompt's ``[SEG]`` states at
        ``state_positions`` (one per query round, the last rounds of ``input_ids``)."""
        states = hidden[state_positions]
        frames = None
        if self.seg_pointer is not None:
            frames = hidden[image_token_positions(input_ids, self.visual_tokens_per_image)[-len(state_positions) :]]
        return self.compose_prompts(self.project_seg(states), states, frames)[0]

    # --- SAM-2 with GLUS's memory (see sam2_memory) ---
    def sam_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to the serving dtype when it is bf16/fp16, around every SAM-2 call. SAM-2 keeps float32
        weights (:meth:`to_serving`) and computes some pieces in float32 on purpose (FPN top-down path, position
        encodings); autocast is how its own predictor meets half precision. A no-op in float32."""
        dtype = self.language_model.lm_head.weight.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.language_model.lm_head.weight.device.type, dtype=dtype)

    def to_serving(self, device: str | torch.device, dtype: torch.dtype) -> GlusModel:
        """Move to ``device``; CLIP, the projectors and the LLM in ``dtype``, SAM-2 in float32 (about 3 % of
        glus-7b), run under autocast to ``dtype`` (:meth:`sam_precision`)."""
        self.to(device)
        for name, child in self.named_children():
            child.to(dtype=torch.float32 if name == "sam" else dtype)
        return self

    def encode_frame(self, sam_pixel_values: torch.Tensor) -> sam2_memory.FrameFeatures:
        with self.sam_precision():
            return sam2_memory.encode_frame(self.sam, sam_pixel_values)

    def condition_on_memory(self, feats: sam2_memory.FrameFeatures, memories: list) -> torch.Tensor:
        with self.sam_precision():
            return sam2_memory.condition_on_memory(self.sam, feats, memories)

    def decode_masks(
        self, conditioned: torch.Tensor, feats: sam2_memory.FrameFeatures, seg_embeddings: torch.Tensor
    ) -> sam2_memory.MaskDecoderOutput:
        dense = None
        with self.sam_precision():
            if self.point_map is not None:  # the third prompt row is the pointer's cell map (compose_prompts)
                cells = seg_embeddings[:, 2, : self.visual_tokens_per_image]
                seg_embeddings, dense = seg_embeddings[:, :2], self.point_map(cells, feats.top_size)
            return sam2_memory.decode_masks(self.sam, conditioned, feats, seg_embeddings, dense)

    def encode_memory(
        self, conditioned: torch.Tensor, feats: sam2_memory.FrameFeatures, lowres_logits: torch.Tensor
    ) -> sam2_memory.MemoryEntry:
        with self.sam_precision():
            return sam2_memory.encode_memory(self.sam, conditioned, feats.top_size, lowres_logits)

    def encode_memory_from_mask(
        self, conditioned: torch.Tensor, feats: sam2_memory.FrameFeatures, masks: torch.Tensor
    ) -> sam2_memory.MemoryEntry:
        """Memory of frames whose masks are given (an annotator's correction) rather than decoded: ``(B, H, W)``
        binary masks at frame resolution, mapped onto SAM-2's square input as the frames are, then encoded as
        SAM-2 encodes a mask input (logits ``mask * 20 - 10``). ``conditioned`` as for :meth:`encode_memory`."""
        mask_inputs = sam2_memory.mask_to_sam_input(masks.to(conditioned.device), self.sam_image_size)  # fp32
        with self.sam_precision():
            return sam2_memory.encode_memory_from_mask(self.sam, conditioned, feats.top_size, mask_inputs)


def seg_state_positions(input_ids: torch.Tensor, seg_token_id: int, tokens_per_image: int) -> torch.Tensor:
    """Positions, in the image-expanded sequence, of the hidden states that predict each ``[SEG]``.

    That is the position right before every ``[SEG]`` token, after each placeholder (-200) is widened to
    ``tokens_per_image`` positions. (The reference builds the same mask the LISA way: shift by one,
    prepend the context images' width, add one image's width before every ``[SEG]``.)
    """
    starts, _ = _expanded_starts(input_ids, tokens_per_image)
    return starts[input_ids == seg_token_id] - 1


def image_token_positions(input_ids: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """``(n_images, tokens_per_image)`` positions of each image's visual tokens in the image-expanded sequence."""
    starts, _ = _expanded_starts(input_ids, tokens_per_image)
    image_starts = starts[input_ids == IMAGE_PLACEHOLDER_ID]
    return image_starts.unsqueeze(1) + torch.arange(tokens_per_image, device=input_ids.device)


def _expanded_starts(input_ids: torch.Tensor, tokens_per_image: int) -> tuple[torch.Tensor, int]:
    """Where each token of ``input_ids`` starts once every placeholder (-200) is ``tokens_per_image`` wide, and
    the expanded length."""
    widths = torch.where(input_ids == IMAGE_PLACEHOLDER_ID, tokens_per_image, 1)
    ends = torch.cumsum(widths, 0)
    return ends - widths, int(ends[-1])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
