"""SAM-2.0 as Sa2VA drives it: key frames prompted by the ``[SEG]`` token, then tracking with SAM-2's own memory.

Unlike GLUS (:mod:`model.modeling.sam2_memory`), Sa2VA keeps SAM-2's video predictor semantics, and so does this
module, step by step on the ``sam2`` package's ``SAM2Base`` modules:

* :func:`backbone`, :func:`frame_features` - image encoder + FPN; the two high-resolution levels go through
  ``conv_s0``/``conv_s1`` of the decoder that will read them (Sa2VA-i's key frames use its fine-tuned decoder's);
* :func:`decode` - the mask decoder with SAM-2's empty-point prompt (two ``not_a_point_embed`` tokens), the
  ``[SEG]`` token appended after them on key frames, multimask output and the best of 3 by predicted IoU, the
  object pointer from the best mask token (``no_obj_ptr`` when the object score is not positive). Sa2VA
  removed SAM-2's object-score gating of the masks; Sa2VA-i's tracking frames (SAM-2's own path) keep it;
* :func:`mask_as_output` - a frame whose mask is given (Sa2VA-i's key frames): the mask itself as +/-10 logits,
  the decoder run on the downsampled mask only for the object pointer;
* :func:`encode_memory` - the memory encoder on the frame's *raw* features and ``sigmoid(logits at 1024 px)``
  (x20 - 10), stored in **bfloat16** as the reference stores it;
* :class:`TrackState` - what a tracked frame attends to: every conditioning frame's memory (temporal slot 0), the
  6 previous tracked frames (slots 1..6), and the object pointers of past conditioning frames plus the 15 previous
  frames, without temporal encoding. Old tracked frames are dropped: memory does not grow with the video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.memory_bank import MemoryEntry
from ..modeling.sam2_memory import FrameFeatures, features_of, padding_point_prompt

MASK_AS_OUTPUT_SCALE = 20.0  # SAM-2's logits for a given mask: +10 inside, -10 outside
MASK_AS_OUTPUT_BIAS = -10.0
NO_OBJECT_LOGIT = -1024.0  # SAM-2's NO_OBJ_SCORE: the logits of a frame where the object is judged absent


def backbone(sam: nn.Module, pixel_values: torch.Tensor) -> dict:
    """SAM-2's image encoder + FPN on ``(B, 3, S, S)`` inputs (the part every decoder shares)."""
    return sam.image_encoder(pixel_values)


def frame_features(sam: nn.Module, encoded: dict, decoder: nn.Module | None = None) -> FrameFeatures:
    """Features of :func:`backbone`'s output as ``decoder`` reads them: levels 0/1 through its ``conv_s0`` /
    ``conv_s1`` (default: ``sam.sam_mask_decoder``; Sa2VA-i's key frames use the fine-tuned decoder's)."""
    decoder = decoder if decoder is not None else sam.sam_mask_decoder
    levels = list(encoded["backbone_fpn"])
    levels[0] = decoder.conv_s0(levels[0])
    levels[1] = decoder.conv_s1(levels[1])
    return features_of(sam, {"backbone_fpn": levels, "vision_pos_enc": encoded["vision_pos_enc"]})


def to_map(flat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return flat.permute(1, 2, 0).reshape(flat.shape[1], flat.shape[2], *size)


@dataclass
class HeadOutput:
    """One mask-decoder call: the chosen low-res logits ``(B, 1, 256, 256)``, the 3 candidates and their IoUs,
    the chosen index, the object score and pointer."""

    lowres_logits: torch.Tensor
    multimask_logits: torch.Tensor
    ious: torch.Tensor
    best: torch.Tensor
    object_score: torch.Tensor
    obj_ptr: torch.Tensor


def _object_pointer(sam: nn.Module, token: torch.Tensor, object_score: torch.Tensor) -> torch.Tensor:
    """SAM-2's pointer with a fixed "no object" pointer: the projected token where the object score is positive,
    ``no_obj_ptr`` elsewhere."""
    ptr = sam.obj_ptr_proj(token)
    appearing = (object_score > 0).float()
    return appearing * ptr + (1 - appearing) * sam.no_obj_ptr


def decode(
    sam: nn.Module,
    decoder: nn.Module,
    image_embed: torch.Tensor,
    feats: FrameFeatures,
    language: torch.Tensor | None = None,
    gate_by_object_score: bool = False,
) -> HeadOutput:
    """Mask decoder on ``image_embed`` ``(B, C, h, w)`` with the empty-point prompt (+ ``language`` ``(B, C)``),
    multimask output, best of 3. ``gate_by_object_score``: upstream SAM-2's blanking of the masks (to -1024)
    where the object score is not positive; Sa2VA removed it, Sa2VA-i's tracking (the original SAM-2 path)
    keeps it."""
    batch = image_embed.shape[0]
    sparse = padding_point_prompt(sam, batch)
    if language is not None:
        sparse = torch.cat([sparse, language.reshape(batch, 1, -1).to(sparse.dtype)], dim=1)
    prompt_encoder = sam.sam_prompt_encoder
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *feats.top_size)
    masks, ious, tokens, object_score = decoder(
        image_embeddings=image_embed,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
        repeat_image=False,
        high_res_features=feats.high_res,
    )
    if gate_by_object_score:
        masks = torch.where((object_score > 0)[:, :, None, None], masks, NO_OBJECT_LOGIT)
    best = ious.argmax(dim=-1)
    rows = torch.arange(batch, device=masks.device)
    lowres = masks[rows, best].unsqueeze(1)
    token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
    return HeadOutput(lowres, masks, ious, best, object_score, _object_pointer(sam, token, object_score))


def mask_as_output(sam: nn.Module, decoder: nn.Module, feats: FrameFeatures, mask_inputs: torch.Tensor) -> HeadOutput:
    """A given mask ``(B, 1, S, S)`` (0/1 at SAM-2's input size) as the frame's output: logits ``mask*20-10``
    downsampled 4x (antialiased), the object pointer from ``decoder`` prompted by the downsampled mask (raw
    features, single-mask token), the object present where the mask is not empty."""
    batch = mask_inputs.shape[0]
    mask = mask_inputs.float()
    highres = mask * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
    side = highres.shape[-1] // 4
    lowres = F.interpolate(highres, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    prompt_encoder = sam.sam_prompt_encoder
    dense = prompt_encoder.mask_downscaling(sam.mask_downsample(mask))
    _, ious, tokens, object_score = decoder(
        image_embeddings=to_map(feats.top, feats.top_size),
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=padding_point_prompt(sam, batch),
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=feats.high_res,
    )
    ptr = _object_pointer(sam, tokens[:, 0], object_score)
    appearing = mask.flatten(1).gt(0).any(dim=1, keepdim=True).float()  # the mask, not the decoder, decides
    ptr = appearing * ptr + (1 - appearing) * sam.no_obj_ptr
    zero = torch.zeros(batch, dtype=torch.long, device=mask.device)
    return HeadOutput(lowres, lowres, ious, zero, object_score, ptr)


def encode_memory(sam: nn.Module, feats: FrameFeatures, lowres_logits: torch.Tensor) -> MemoryEntry:
    """The frame's memory from its raw top-level features and its logits upsampled to SAM-2's input size;
    features kept in bfloat16 (as the reference keeps them)."""
    pix_feat = to_map(feats.top, feats.top_size)
    size = int(sam.image_size)
    highres = F.interpolate(lowres_logits.float(), size=(size, size), mode="bilinear", align_corners=False)
    mask_for_mem = torch.sigmoid(highres) * sam.sigmoid_scale_for_mem_enc + sam.sigmoid_bias_for_mem_enc
    out = sam.memory_encoder(pix_feat, mask_for_mem.to(pix_feat.dtype), skip_mask_sigmoid=True)
    return MemoryEntry(features=out["vision_features"].to(torch.bfloat16), pos_enc=out["vision_pos_enc"][-1])


@dataclass
class FrameState:
    """What later frames read of one decided frame."""

    memory: MemoryEntry | None
    obj_ptr: torch.Tensor  # (B, C)


@dataclass
class TrackState:
    """SAM-2's per-object state of one video: conditioning frames (kept) and recent tracked frames (bounded)."""

    num_maskmem: int
    max_obj_ptrs: int
    num_frames: int
    tpos_enc: torch.Tensor  # SAM-2's maskmem_tpos_enc: (num_maskmem, 1, 1, C_mem)
    cond: dict[int, FrameState] = field(default_factory=dict)
    tracked: dict[int, FrameState] = field(default_factory=dict)

    def add_tracked(self, frame: int, state: FrameState) -> None:
        self.tracked[frame] = state
        keep = max(self.num_maskmem, self.max_obj_ptrs)
        for old in [f for f in self.tracked if f < frame - keep]:
            del self.tracked[old]

    def memory_inputs(self, frame: int, mem_dim: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(memory, memory_pos, num_obj_ptr_tokens)`` for forward tracking at ``frame``."""
        memories: list[tuple[int, FrameState]] = [(0, s) for s in self.cond.values()]  # all conditioning frames
        for slot in range(1, self.num_maskmem):
            previous = self.tracked.get(frame - (self.num_maskmem - slot))  # stride 1: frames frame-6 .. frame-1
            if previous is not None:
                memories.append((slot, previous))
        features, positions = [], []
        for slot, state in memories:
            if state.memory is None:
                continue
            features.append(state.memory.features.flatten(2).permute(2, 0, 1))
            positions.append(state.memory.pos_enc.flatten(2).permute(2, 0, 1) + self._tpos(slot))
        pointers = [s.obj_ptr for f, s in self.cond.items() if f <= frame]
        limit = min(self.num_frames, self.max_obj_ptrs)
        for t_diff in range(1, limit):
            if frame - t_diff < 0:
                break
            previous = self.tracked.get(frame - t_diff)
            if previous is not None:
                pointers.append(previous.obj_ptr)
        n_ptr_tokens = 0
        if pointers:
            ptrs = torch.stack(pointers, dim=0)  # (N, B, C)
            n, batch, channels = ptrs.shape
            split = channels // mem_dim
            ptrs = ptrs.reshape(n, batch, split, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            features.append(ptrs)
            positions.append(ptrs.new_zeros(ptrs.shape))  # no temporal encoding of object pointers
            n_ptr_tokens = ptrs.shape[0]
        return torch.cat(features, dim=0), torch.cat(positions, dim=0), n_ptr_tokens

    def _tpos(self, slot: int) -> torch.Tensor:
        return self.tpos_enc[self.num_maskmem - slot - 1]


def condition_on_memory(sam: nn.Module, feats: FrameFeatures, state: TrackState, frame: int) -> torch.Tensor:
    """Memory attention for tracked ``frame``: its top-level features conditioned on ``state``, as the
    ``(B, C, h, w)`` image embedding the mask decoder reads."""
    memory, memory_pos, n_ptr_tokens = state.memory_inputs(frame, int(sam.mem_dim))
    conditioned = sam.memory_attention(
        curr=[feats.top], curr_pos=[feats.top_pos], memory=memory.to(feats.top.dtype),
        memory_pos=memory_pos.to(feats.top.dtype), num_obj_ptr_tokens=n_ptr_tokens,
    )  # fmt: skip
    return to_map(conditioned, feats.top_size)
