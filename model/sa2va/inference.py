"""Sa2VA and Sa2VA-i over whole videos: the MLLM on a few key frames, then SAM-2 through every frame.

Two modes (:data:`MODES`), the same checkpoints' weights:

* ``"sa2va"`` (the reference ``predict_forward``): the first ``key_frames`` (5) frames go to the MLLM; each of
  them is segmented on its own by the (fine-tuned) decoder prompted by the ``[SEG]`` token, and SAM-2 then
  tracks forward from frame 0 with those frames as conditioning memories;
* ``"sa2va-i"`` (Sa2VA-i): ``key_frames`` frames spread uniformly over the video (``linspace(0, N-1, k)``) go to
  the MLLM; the fine-tuned decoder segments them (batched, no memory), their binarised masks are given to a
  fresh SAM-2 as mask prompts, and the *original* SAM-2.0 decoder tracks forward from frame 0 (it needs a
  Sa2VA-i checkpoint: two decoders).

Several expressions of one video share the work the method allows: the key frames' visual tokens (one ViT
pass), and per frame one SAM-2 image encoding, the decoder and the memory attention running on all objects as a
batch. Each expression has its own LLM answer. Frames are read lazily from a :class:`~model.video_io.FrameSource`
in order, one at a time; the SAM-2 state keeps the key frames and the last few tracked frames, so memory does
not grow with the video.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import Expression, ExpressionResult, FrameResult, Progress, as_expressions, as_source, collect
from ..video_io import FrameSource
from . import sam2_video as sv
from .config import UnsupportedSa2VA
from .modeling import Sa2VAModel
from .preprocessing import mllm_pixel_values, sam_pixel_values
from .prompting import request_text, video_prompt

logger = logging.getLogger(__name__)

MODES = ("sa2va", "sa2va-i")

Trace = Callable[[str, torch.Tensor], None]
"""``trace(name, tensor)``: every intermediate, for parity checks (``tests/sa2va_fixture.py``). Once per video:
``mllm_pixels``, ``vit``, ``vit_embeds``; per expression: ``input_ids``, ``inputs_embeds``, ``prompt_states``,
``answer_states``, ``step_logits``, ``seg_hidden``, ``seg_embedding``. Per frame ``t``: ``sam_pixels:t``,
``feat0:t`` / ``feat1:t`` / ``feat2:t`` (the tracking decoder's view), ``memory:t``, ``memory_pos:t``,
``obj_ptr:t``, ``lowres:t``, ``video_logits:t``, ``logits:t``; per key frame ``key_feat0:t`` / ``key_feat1:t``
and the decoder call ``key:t:{multimasks,ious,obj_ptr,object_score,image_embed}``; sa2va-i adds ``key_logits:t``
and the mask-prompt call ``prompt:t:...``; tracked frames ``track:t:...``."""


@dataclass
class Sa2VAOptions:
    mode: str = "sa2va"
    key_frames: int = 5  # frames the MLLM sees (sa2va: the first ones; sa2va-i: spread uniformly; 12 in its demo)
    max_new_tokens: int = 32  # the answers are short ("Sure, [SEG].")
    forced_answer: Sequence[int] | None = None  # teacher-forced answer ids (parity tests: random weights)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown Sa2VA mode {self.mode!r}; choose one of {MODES}")
        if self.key_frames < 1 or self.max_new_tokens < 1:
            raise ValueError("key_frames and max_new_tokens must be >= 1")


def key_frame_indices(num_frames: int, mode: str, count: int) -> list[int]:
    """The key frames of a ``num_frames`` video, in the reference's order (sa2va-i may repeat one in a video
    shorter than ``count``; it is used once)."""
    if mode == "sa2va":
        return list(range(min(count, num_frames)))
    return [int(i) for i in np.linspace(0, num_frames - 1, count, dtype=int)]


@dataclass
class _Object:
    """One expression's answer: its ``[SEG]`` prompt (None when the answer has none)."""

    expression: Expression
    seg_embedding: torch.Tensor | None  # (C_sam,)
    seg_probability: float


class Sa2VASegmenter:
    """Runs one :class:`Sa2VAModel` over whole videos. Holds no per-video state between calls."""

    def __init__(self, model: Sa2VAModel, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = next(model.vision_model.parameters()).dtype  # the MLLM's
        self.sam_dtype = next(model.sam.parameters()).dtype  # float32 unless loaded otherwise
        config = model.config
        self.config = config
        wanted = [config.seg_token, config.image_context_token, config.image_start_token, config.image_end_token]
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in wanted}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise UnsupportedSa2VA(f"the tokenizer lacks Sa2VA's special tokens {missing}")
        self.seg_id = ids[config.seg_token]
        self.image_context_id = ids[config.image_context_token]
        if tokenizer.eos_token_id is None:
            raise UnsupportedSa2VA("the tokenizer has no eos token")
        self.eos_id = int(tokenizer.eos_token_id)

    # --- public API ---
    def segment(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expressions: Sequence[str | Expression],
        options: Sa2VAOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        trace: Trace | None = None,
    ) -> list[ExpressionResult]:
        """Masks for every frame and expression, collected in memory (convenient for short videos)."""
        exprs = as_expressions(expressions)
        source = as_source(frames)
        return collect(self.segment_stream(source, exprs, options, progress, trace), exprs, len(source))

    def segment_stream(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expressions: Sequence[str | Expression],
        options: Sa2VAOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        trace: Trace | None = None,
    ) -> Iterator[tuple[int, int, FrameResult]]:
        """Yield ``(expression_index, first_key_frame, FrameResult)`` in frame order, every expression of a frame
        before the next frame. Input errors (an empty expression, no frames) raise before any model work."""
        options = options or Sa2VAOptions()
        exprs = as_expressions(expressions)
        for e in exprs:
            request_text(e.text)  # an empty expression fails before any work
        source = as_source(frames)
        if len(source) < 2:
            raise UnsupportedSa2VA(
                "image-only requests are not served by the Sa2VA family: its image path (dynamic 448-px tiling, a "
                "different prompt) is not implemented; give a video or a sequence of at least 2 frames"
            )
        if options.mode == "sa2va-i" and not self.config.two_decoders:
            raise UnsupportedSa2VA(
                "mode 'sa2va-i' needs a Sa2VA-i checkpoint (sam_mask_decoder_modified keys: the fine-tuned decoder "
                "beside SAM-2.0's original one); this one has one decoder"
            )
        with torch.inference_mode():
            yield from self._run(source, exprs, options, progress, trace)

    # --- the method ---
    def _run(
        self,
        source: FrameSource,
        exprs: list[Expression],
        options: Sa2VAOptions,
        progress: Callable[[Progress], None] | None,
        trace: Trace | None,
    ) -> Iterator[tuple[int, int, FrameResult]]:
        num_frames = len(source)
        keys = key_frame_indices(num_frames, options.mode, options.key_frames)
        mllm_frames = sorted(set(keys))
        objects = self._answers(source, exprs, mllm_frames, options, trace)
        active = [i for i, o in enumerate(objects) if o.seg_embedding is not None]
        logger.debug("key frames %s; objects with [SEG]: %d of %d", keys, len(active), len(exprs))
        height, width = source.frame(0).shape[:2]
        done, total = 0, num_frames * len(exprs)
        empty = np.zeros((height, width), bool)
        if not active:  # nothing to track: every frame empty
            for t in range(num_frames):
                for i, o in enumerate(objects):
                    done += 1
                    yield i, keys[0], FrameResult(t, empty, 0.0, False, o.seg_probability)
                    if progress is not None:
                        progress(Progress(done, total, i, len(exprs)))
            return
        language = torch.stack([objects[i].seg_embedding for i in active]).to(self.sam_dtype)  # (B, C_sam)
        sam = self.model.sam
        state = sv.TrackState(int(sam.num_maskmem), int(sam.max_obj_ptrs_in_encoder), num_frames,
                              sam.maskmem_tpos_enc)  # fmt: skip
        key_outputs = self._key_frames(source, sorted(set(keys)), language, state, options, trace)
        for t in range(num_frames):
            frame_size = source.frame(t).shape[:2]
            if t in key_outputs:
                lowres, ious = key_outputs.pop(t)
            else:
                lowres, ious = self._track(source, t, len(active), state, options, trace)
            logits = self._frame_logits(lowres, frame_size, t, trace)
            masks = (logits > 0).cpu().numpy()
            row = {i: b for b, i in enumerate(active)}
            for i, o in enumerate(objects):
                done += 1
                if i in row:
                    b = row[i]
                    result = FrameResult(t, masks[b], float(ious[b]), True, o.seg_probability)
                else:
                    result = FrameResult(t, np.zeros(frame_size, bool), 0.0, False, o.seg_probability)
                yield i, keys[0], result
                if progress is not None:
                    progress(Progress(done, total, i, len(exprs)))

    def _answers(self, source: FrameSource, exprs: list[Expression], mllm_frames: list[int], options: Sa2VAOptions,
                 trace: Trace | None) -> list[_Object]:  # fmt: skip
        """Each expression's LLM answer over the MLLM frames (their visual tokens computed once)."""
        model = self.model
        pixels = torch.stack([mllm_pixel_values(source.frame(t)) for t in mllm_frames]).to(self.device, self.dtype)
        visual = model.visual_tokens(pixels)
        if trace is not None:
            _record(trace, "", mllm_pixels=pixels, vit=model.vision_model(pixels, self.config.select_layer),
                    vit_embeds=visual)  # fmt: skip
        forced = list(options.forced_answer) if options.forced_answer is not None else None
        objects = []
        for expr in exprs:
            text = video_prompt(self.config, expr.text, len(mllm_frames))
            ids = torch.tensor(self.tokenizer.encode(text), device=self.device)
            embeds = model.prompt_embeddings(ids, visual, self.image_context_id)
            answer = model.answer(embeds, self.eos_id, options.max_new_tokens, forced)
            seg_states = model.seg_states(answer, self.seg_id)
            seg = model.seg_embeddings(seg_states)
            if trace is not None:
                _record(trace, "", input_ids=ids, inputs_embeds=embeds, prompt_states=answer.prompt_states,
                        answer_states=answer.states, step_logits=answer.step_logits, seg_hidden=seg_states,
                        seg_embedding=seg)  # fmt: skip
            probabilities = torch.softmax(answer.step_logits, dim=-1)[:, self.seg_id]
            produced = [k for k, token in enumerate(answer.ids) if token == self.seg_id]
            probability = float(probabilities[produced[0]] if produced else probabilities.max())
            objects.append(_Object(expr, seg[0] if len(seg) else None, probability))
            if len(seg) > 1:
                logger.info("the answer for %r has %d [SEG] tokens; the first one is used", expr.text, len(seg))
        return objects

    def _encode(self, source: FrameSource, t: int, trace: Trace | None) -> dict:
        """SAM-2's backbone output of frame ``t``."""
        sam = self.model.sam
        pixels = sam_pixel_values(source.frame(t), int(sam.image_size)).unsqueeze(0)
        if trace is not None:
            trace(f"sam_pixels:{t}", pixels)
        return sv.backbone(sam, pixels.to(self.device, self.sam_dtype))

    def _tracking_decoder(self, options: Sa2VAOptions) -> torch.nn.Module:
        """Sa2VA tracks with its fine-tuned decoder; Sa2VA-i with SAM-2.0's original one."""
        if options.mode == "sa2va":
            return self.model.grounding_encoder.fine_tuned_decoder
        return self.model.sam.sam_mask_decoder

    def _state_features(self, encoded: dict, t: int, batch: int, decoder: torch.nn.Module,
                        trace: Trace | None) -> sv.FrameFeatures:  # fmt: skip
        """Frame ``t``'s features as the tracking ``decoder`` reads them, one row per object."""
        feats = sv.frame_features(self.model.sam, encoded, decoder)
        if trace is not None:
            _record(trace, f":{t}", feat0=feats.high_res[0], feat1=feats.high_res[1],
                    feat2=sv.to_map(feats.top, feats.top_size))  # fmt: skip
        return feats.expand(batch)

    def _key_frames(
        self,
        source: FrameSource,
        keys: list[int],
        language: torch.Tensor,
        state: sv.TrackState,
        options: Sa2VAOptions,
        trace: Trace | None,
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Segment the key frames, make them SAM-2's conditioning frames in ``state``; their outputs by frame."""
        sam = self.model.sam
        fine_tuned = self.model.grounding_encoder.fine_tuned_decoder
        batch = language.shape[0]
        outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in keys:
            encoded = self._encode(source, t, trace)
            key_feats = sv.frame_features(sam, encoded, fine_tuned)
            if trace is not None:
                _record(trace, f":{t}", key_feat0=key_feats.high_res[0], key_feat1=key_feats.high_res[1])
            key_feats = key_feats.expand(batch)
            image_embed = sv.to_map(key_feats.top + sam.no_mem_embed, key_feats.top_size)  # no memory on key frames
            out = sv.decode(sam, fine_tuned, image_embed, key_feats, language)
            chosen_iou = out.ious.gather(1, out.best[:, None])[:, 0]
            if trace is not None:
                _record_head(trace, f"key:{t}", out, image_embed)
            if options.mode == "sa2va":
                feats = key_feats  # one decoder reads the key frames and tracks
                if trace is not None:
                    _record(trace, f":{t}", feat0=feats.high_res[0][:1], feat1=feats.high_res[1][:1],
                            feat2=sv.to_map(feats.top[:, :1], feats.top_size))  # fmt: skip
                lowres, obj_ptr = out.lowres_logits, out.obj_ptr
            else:  # sa2va-i: the binarised key mask, given to the original decoder's SAM-2 as a mask prompt
                key_logits = F.interpolate(out.lowres_logits.float(), size=source.frame(t).shape[:2], mode="bilinear",
                                           align_corners=False)  # fmt: skip
                side = int(sam.image_size)
                mask = F.interpolate((key_logits > 0).float(), size=(side, side), mode="bilinear",
                                     align_corners=False, antialias=True) >= 0.5  # fmt: skip
                tracking = self._tracking_decoder(options)
                feats = self._state_features(encoded, t, batch, tracking, trace)
                given = sv.mask_as_output(sam, tracking, feats, mask)
                lowres, obj_ptr = given.lowres_logits, given.obj_ptr
                if trace is not None:
                    trace(f"key_logits:{t}", key_logits)
                    _record_head(trace, f"prompt:{t}", given, None)
            memory = sv.encode_memory(sam, feats, lowres)
            state.cond[t] = sv.FrameState(memory, obj_ptr)
            outputs[t] = (lowres, chosen_iou)
            if trace is not None:
                _record(trace, f":{t}", memory=memory.features, memory_pos=memory.pos_enc, obj_ptr=obj_ptr)
        return outputs

    def _track(self, source: FrameSource, t: int, batch: int, state: sv.TrackState, options: Sa2VAOptions,
               trace: Trace | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Frame ``t`` tracked from ``state`` (which it joins): its low-res logits and predicted IoUs."""
        sam = self.model.sam
        decoder = self._tracking_decoder(options)
        feats = self._state_features(self._encode(source, t, trace), t, batch, decoder, trace)
        image_embed = sv.condition_on_memory(sam, feats, state, t)
        out = sv.decode(sam, decoder, image_embed, feats, None, gate_by_object_score=options.mode == "sa2va-i")
        memory = sv.encode_memory(sam, feats, out.lowres_logits)
        state.add_tracked(t, sv.FrameState(memory, out.obj_ptr))
        if trace is not None:
            _record_head(trace, f"track:{t}", out, image_embed)
            _record(trace, f":{t}", memory=memory.features, memory_pos=memory.pos_enc, obj_ptr=out.obj_ptr)
        return out.lowres_logits, out.ious.gather(1, out.best[:, None])[:, 0]

    def _frame_logits(self, lowres: torch.Tensor, size: tuple[int, int], t: int, trace: Trace | None) -> torch.Tensor:
        """``(B, H, W)`` logits at frame size, as the reference gets them: low-res -> SAM-2's input size -> frame."""
        side = int(self.model.sam.image_size)
        video = F.interpolate(lowres.float(), size=(side, side), mode="bilinear", align_corners=False)
        logits = F.interpolate(video, size=size, mode="bilinear", align_corners=False)[:, 0]
        if trace is not None:
            _record(trace, f":{t}", lowres=lowres, video_logits=video, logits=logits)
        return logits


def _record(trace: Trace, suffix: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        trace(name + suffix, tensor)


def _record_head(trace: Trace, prefix: str, out: sv.HeadOutput, image_embed: torch.Tensor | None) -> None:
    trace(f"{prefix}:multimasks", out.multimask_logits)
    trace(f"{prefix}:ious", out.ious)
    trace(f"{prefix}:obj_ptr", out.obj_ptr)
    trace(f"{prefix}:object_score", out.object_score)
    if image_embed is not None:
        trace(f"{prefix}:image_embed", image_embed)
