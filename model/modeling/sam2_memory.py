"""SAM-2 (the ``sam2`` package's ``SAM2Base``) driven with GLUS's memory logic.

Not ``SAM2VideoPredictor``: GLUS reads up to 7 past frames at a stride, adds no temporal encoding, uses no
object pointers and no object-score gating, and encodes each memory from the *memory-conditioned* features
(``no_mem_embed``-added on a stream's first frame). The steps of one query frame are:

1. :func:`encode_frame` - image encoder + FPN, high-res features through ``conv_s0``/``conv_s1``;
2. :func:`condition_on_memory` - memory attention over the memories the bank returns;
3. :func:`decode_masks` - mask decoder prompted by one sparse token per expression (the projected [SEG]
   state) and ``no_mask_embed`` as dense prompt, stability fallback of SAM-2 in eval mode;
4. :func:`encode_memory` - memory encoder on the conditioned features and the 1024-px upsampled logits.

A frame whose mask is given (an annotator's correction) skips 3: :func:`mask_to_sam_input` maps the mask onto
SAM-2's square input as the frame is mapped, and :func:`encode_memory_from_mask` encodes it as SAM-2 encodes
a mask input (``_use_mask_as_output``: logits ``mask * 20 - 10``). :func:`padding_point_prompt` is the prompt
SAM-2 tracks with when a frame has no prompt at all (its padding point, label -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from .memory_bank import MemoryEntry

# SAM-2's logits for a mask given as input (``SAM2Base._use_mask_as_output``): +10 inside, -10 outside.
MASK_INPUT_SCALE = 20.0
MASK_INPUT_BIAS = -10.0

# Post-processing build_sam2 applies by default (GLUS builds SAM-2 with it): fall back to the best
# multimask output when the single-mask output is unstable, in eval mode only.
_POSTPROCESSING_OVERRIDES = [
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]


def build_sam2(config_path: str, overrides: list[str]) -> nn.Module:
    """Instantiate ``SAM2Base`` from a yaml shipped in the ``sam2`` package plus dotlist overrides.

    Uses OmegaConf directly (no global Hydra compose) and never loads weights: checkpoints are loaded by
    :mod:`model.checkpoint`.
    """
    yaml_text = resources.files("sam2").joinpath(config_path).read_text()
    dotlist = [item.lstrip("+") for item in [*_POSTPROCESSING_OVERRIDES, *overrides]]
    cfg = OmegaConf.merge(OmegaConf.create(yaml_text), OmegaConf.from_dotlist(dotlist))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


@dataclass
class FrameFeatures:
    """SAM-2 features of a batch of frames, flattened as SAM-2 keeps them: ``(h*w, B, C)``."""

    top: torch.Tensor  # lowest-resolution level (64x64 at 1024 px), before memory conditioning
    top_pos: torch.Tensor
    high_res: list[torch.Tensor]  # (B, C, H, W) levels after conv_s0 / conv_s1
    top_size: tuple[int, int]

    def expand(self, batch: int) -> FrameFeatures:
        """One frame's features as a batch of ``batch`` rows (views, no copy), e.g. one per expression."""
        if self.top.shape[1] == batch:
            return self
        return FrameFeatures(
            self.top.expand(-1, batch, -1),
            self.top_pos.expand(-1, batch, -1),
            [h.expand(batch, *h.shape[1:]) for h in self.high_res],
            self.top_size,
        )

    def select(self, index: torch.Tensor | list[int]) -> FrameFeatures:
        """Rows of the batch (e.g. one frame repeated for several expressions)."""
        idx = torch.as_tensor(index, device=self.top.device)
        return FrameFeatures(
            self.top.index_select(1, idx),
            self.top_pos.index_select(1, idx),
            [h.index_select(0, idx) for h in self.high_res],
            self.top_size,
        )


def features_of(sam: nn.Module, backbone_out: dict) -> FrameFeatures:
    """:class:`FrameFeatures` of an image-encoder output (its high-resolution levels already projected)."""
    levels = backbone_out["backbone_fpn"][-sam.num_feature_levels :]
    pos = backbone_out["vision_pos_enc"][-sam.num_feature_levels :]
    top = levels[-1]
    return FrameFeatures(
        top=top.flatten(2).permute(2, 0, 1),
        top_pos=pos[-1].flatten(2).permute(2, 0, 1),
        high_res=list(levels[:-1]),
        top_size=(top.shape[-2], top.shape[-1]),
    )


def encode_frame(sam: nn.Module, pixel_values: torch.Tensor) -> FrameFeatures:
    """Image encoder on ``(B, 3, S, S)`` SAM-2 inputs."""
    return features_of(sam, sam.forward_image(pixel_values))


def condition_on_memory(sam: nn.Module, feats: FrameFeatures, memories: list[MemoryEntry]) -> torch.Tensor:
    """Memory-conditioned top-level features ``(h*w, B, C)``; ``no_mem_embed`` added when there is no memory."""
    if not memories:
        return feats.top + sam.no_mem_embed
    memory = torch.cat([m.features.flatten(2).permute(2, 0, 1) for m in memories], dim=0)
    memory_pos = torch.cat([m.pos_enc.flatten(2).permute(2, 0, 1) for m in memories], dim=0)
    batch = feats.top.shape[1]
    if memory.shape[1] != batch:  # one memory stream per expression; broadcast a shared one
        memory = memory.expand(-1, batch, -1)
        memory_pos = memory_pos.expand(-1, batch, -1)
    return sam.memory_attention(
        curr=[feats.top], curr_pos=[feats.top_pos], memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=0
    )


@dataclass
class MaskDecoderOutput:
    lowres_logits: torch.Tensor  # (B, 1, 4h, 4w) after the stability-based selection
    iou_prediction: torch.Tensor  # (B, 1)
    object_score_logits: torch.Tensor  # (B, 1); recorded, not used by GLUS


def _to_map(flat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return flat.permute(1, 2, 0).reshape(flat.shape[1], flat.shape[2], *size)


def decode_masks(
    sam: nn.Module,
    conditioned: torch.Tensor,
    feats: FrameFeatures,
    seg_embeddings: torch.Tensor,
    dense_extra: torch.Tensor | None = None,
) -> MaskDecoderOutput:
    """Mask decoder prompted by ``seg_embeddings``: ``(B, C)``, one sparse token per batch row, or ``(B, n, C)``;
    ``dense_extra`` ``(B, C, h, w)`` is added to the dense prompt (SAM-2's "no mask" embedding) when given."""
    batch = seg_embeddings.shape[0]
    sparse = seg_embeddings.unsqueeze(1) if seg_embeddings.dim() == 2 else seg_embeddings
    image_embed = _to_map(conditioned, feats.top_size)
    prompt_encoder = sam.sam_prompt_encoder
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *feats.top_size)
    if dense_extra is not None:
        dense = dense + dense_extra.to(dense.dtype)
    image_pe = prompt_encoder.get_dense_pe().to(image_embed.dtype)
    lowres, iou, _, obj = sam.sam_mask_decoder(
        image_embeddings=image_embed,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse.to(image_embed.dtype),
        dense_prompt_embeddings=dense.to(image_embed.dtype),
        multimask_output=False,
        repeat_image=False,
        high_res_features=feats.high_res,
    )
    return MaskDecoderOutput(lowres, iou, obj)


def upsample_logits(lowres_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of ``(B, 1, h, w)`` logits, in float32."""
    return F.interpolate(lowres_logits.float(), size=size, mode="bilinear", align_corners=False)


def encode_memory(
    sam: nn.Module, conditioned: torch.Tensor, top_size: tuple[int, int], lowres_logits: torch.Tensor
) -> MemoryEntry:
    """Memory of a decoded frame, from the memory-conditioned features and the logits at SAM-2 input size."""
    pix_feat = _to_map(conditioned, top_size)
    mask = upsample_logits(lowres_logits, (sam.image_size, sam.image_size)).to(pix_feat.dtype)
    mask_for_mem = torch.sigmoid(mask) * sam.sigmoid_scale_for_mem_enc + sam.sigmoid_bias_for_mem_enc
    out = sam.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
    return MemoryEntry(features=out["vision_features"], pos_enc=out["vision_pos_enc"][-1])


def mask_to_sam_input(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, H, W)`` binary masks at frame resolution -> ``(B, 1, size, size)`` float 0/1 masks on SAM-2's square
    input: resized like the frames (:func:`model.preprocessing.sam_pixel_values`: bilinear, antialias, aspect
    ratio ignored), then thresholded at 0.5 as SAM-2's video predictor does with a mask prompt."""
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, H, W), got {tuple(masks.shape)}")
    out = masks.float().unsqueeze(1)
    if out.shape[-2:] != (size, size):
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (out >= 0.5).float()


def encode_memory_from_mask(
    sam: nn.Module, conditioned: torch.Tensor, top_size: tuple[int, int], mask_inputs: torch.Tensor
) -> MemoryEntry:
    """Memory of a frame whose mask is given instead of decoded: ``mask_inputs`` ``(B, 1, S, S)`` 0/1 on SAM-2's
    input (:func:`mask_to_sam_input`) become logits ``mask * 20 - 10`` (SAM-2's ``_use_mask_as_output``), then
    the same path as :func:`encode_memory` (sigmoid, scale/bias, memory encoder on ``conditioned``)."""
    pix_feat = _to_map(conditioned, top_size)
    logits = (mask_inputs.float() * MASK_INPUT_SCALE + MASK_INPUT_BIAS).to(pix_feat.dtype)
    mask_for_mem = torch.sigmoid(logits) * sam.sigmoid_scale_for_mem_enc + sam.sigmoid_bias_for_mem_enc
    out = sam.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
    return MemoryEntry(features=out["vision_features"], pos_enc=out["vision_pos_enc"][-1])


def padding_point_prompt(sam: nn.Module, batch: int) -> torch.Tensor:
    """``(B, 2, C)`` sparse prompt of a frame with no prompt, as SAM-2 tracks one (``_forward_sam_heads``): one
    point with label -1 plus the prompt encoder's padding point, both embedded as ``not_a_point_embed``."""
    token = sam.sam_prompt_encoder.not_a_point_embed.weight  # (1, C)
    return token.reshape(1, 1, -1).expand(batch, 2, -1)
