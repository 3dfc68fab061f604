"""Whole-video inference: ``segment(frames, expressions) -> masks``, one expression at a time.

For each expression:

1. four context frames are fixed for the whole video (the middle of each quarter, as the reference's
   inference script chooses them);
2. a key frame is chosen (:mod:`model.keyframes`; frame 0 by default) and the video is walked forward
   from it to the end, then backward from it to frame 0, each walk a *query stream* with a fresh memory bank;
3. along a stream, the LLM sees the context frames plus a window of up to 4 query frames and predicts one
   ``[SEG]`` per query frame. ``sliding`` (the reference) runs the LLM once per frame with the window ending
   at that frame; ``clip`` runs it once per 4 new frames, all four answers teacher-forced as in training;
4. each ``[SEG]`` state, projected, prompts SAM-2's mask decoder on that frame, conditioned on up to 7 past
   frames' memories (:class:`~model.modeling.memory_bank.MemoryBank`), and the frame's memory is written.

A frame where the model does not predict ``[SEG]`` gets an empty mask and writes no memory (target absent);
so does nothing else: no crash. Frames are decoded lazily from a :class:`~model.video_io.FrameSource`;
per-stream caches hold at most the context frames and one window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .keyframes import FirstFrame, FrameProbe, KeyFrameRequest, KeyFrameSelector
from .modeling.glus import GlusModel, seg_state_positions
from .modeling.memory_bank import MemoryBank, MemoryEntry
from .modeling.sam2_memory import upsample_logits
from .preprocessing import clip_pixel_values, sam_pixel_values
from .prompting import clean_expression, inference_prompt
from .tokenizer import GlusTokenizer
from .video_io import ArrayFrames, FrameSource

logger = logging.getLogger(__name__)

SCHEDULES = ("sliding", "clip")


@dataclass(frozen=True)
class Expression:
    """A referring expression, with an optional id (used by key-frame JSONs and output folders)."""

    text: str
    exp_id: str | None = None


@dataclass
class SegmentOptions:
    schedule: str = "sliding"
    mem_stride: int | None = None  # None: the model config's (3, as the reference at inference)
    use_memory_bank: bool | None = None  # None: the model config's (on)
    key_frames: KeyFrameSelector = field(default_factory=FirstFrame)
    video_id: str | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")


@dataclass
class FrameResult:
    """The mask of one frame for one expression."""

    frame_index: int
    mask: np.ndarray  # bool (H, W)
    score: float  # SAM-2's predicted IoU of the mask; 0.0 when no [SEG] was predicted
    seg_token_produced: bool
    seg_probability: float  # the LLM's probability of [SEG] as the next token

    @property
    def present(self) -> bool:
        return self.seg_token_produced and bool(self.mask.any())

    @property
    def absent_reason(self) -> str | None:
        """None when the target was found; otherwise why the mask is empty."""
        if not self.seg_token_produced:
            return "no_seg_token"
        return None if self.mask.any() else "empty_mask"


@dataclass
class ExpressionResult:
    expression: Expression
    frames: list[FrameResult]
    key_frame: int

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool masks in frame order."""
        return np.stack([f.mask for f in self.frames])


@dataclass
class Progress:
    frames_done: int
    frames_total: int
    expression_index: int
    expressions_total: int


@dataclass
class StepTrace:
    """Everything computed for one query frame; handed to a ``trace`` callback (debugging, parity tests)."""

    stream_position: int
    frame_index: int
    input_ids: torch.Tensor
    hidden_states: torch.Tensor  # (E, C) last-layer states of the expanded prompt
    next_token_logits: torch.Tensor
    seg_embedding: torch.Tensor | None
    memory_read: list[int]
    image_embed: torch.Tensor | None = None  # (C, h, w) after memory conditioning
    high_res: list[torch.Tensor] | None = None
    lowres_logits: torch.Tensor | None = None
    iou_prediction: torch.Tensor | None = None
    object_score_logit: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    memory_written: MemoryEntry | None = None


def context_frame_indices(num_frames: int, num_context: int = 4) -> list[int]:
    """The reference's inference choice: about the middle frame of each of ``num_context`` equal segments.

    With ``bounds = linspace(0, N, num_context + 1)`` (truncated to int) and ``K = ceil(N / num_context)``,
    segment ``j`` contributes ``min(bounds[j] + K // 2, bounds[j + 1] - 1)``; e.g. N=100 -> 12, 37, 62, 87.
    Videos shorter than ``num_context`` repeat frames (clamped at 0), where the reference would fail.
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    bounds = np.linspace(0, num_frames, num_context + 1, dtype=int)
    half = math.ceil(num_frames / num_context) // 2
    return [max(0, min(int(bounds[j]) + half, int(bounds[j + 1]) - 1)) for j in range(num_context)]


class VideoSegmenter:
    """Runs one :class:`GlusModel` over whole videos. Holds no per-video state between calls."""

    def __init__(self, model: GlusModel, tokenizer: GlusTokenizer, device: str | torch.device = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        config = model.config
        self.config = config
        self.seg_token_id = tokenizer.token_to_id(config.seg_token)
        if len(tokenizer) > config.llm["vocab_size"]:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the LLM vocabulary is {config.llm['vocab_size']}"
            )

    # --- public API ---
    def segment(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expressions: Sequence[str | Expression],
        options: SegmentOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        trace: Callable[[StepTrace], None] | None = None,
    ) -> list[ExpressionResult]:
        """Masks for every frame and expression, collected in memory (convenient for short videos)."""
        exprs = _as_expressions(expressions)
        source = _as_source(frames)
        results = [ExpressionResult(e, [None] * len(source), 0) for e in exprs]  # type: ignore[list-item]
        for expr_index, key_frame, frame in self.segment_stream(source, exprs, options, progress, trace):
            results[expr_index].frames[frame.frame_index] = frame
            results[expr_index].key_frame = key_frame
        return results

    def segment_stream(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expressions: Sequence[str | Expression],
        options: SegmentOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        trace: Callable[[StepTrace], None] | None = None,
    ) -> Iterator[tuple[int, int, FrameResult]]:
        """Yield ``(expression_index, key_frame, FrameResult)`` as frames are decided, every frame exactly once
        per expression (not in frame order when a key frame is used). Nothing is held for the whole video."""
        options = options or SegmentOptions()
        exprs = _as_expressions(expressions)
        for e in exprs:
            clean_expression(e.text)  # bad input fails before any work
        source = _as_source(frames)
        n = len(source)
        context = context_frame_indices(n, self.config.context_frames)
        total = n * len(exprs)
        done = 0
        with torch.inference_mode():
            for expr_index, expr in enumerate(exprs):
                key = self._key_frame(source, expr, context, options)
                passes = [list(range(key, n))] + ([list(range(key, -1, -1))] if key > 0 else [])
                for pass_index, stream in enumerate(passes):
                    for position, result in self._run_stream(source, stream, expr.text, context, options, trace):
                        if pass_index > 0 and position == 0:
                            continue  # the key frame was already emitted by the forward pass
                        done += 1
                        yield expr_index, key, result
                        if progress is not None:
                            progress(Progress(done, total, expr_index, len(exprs)))

    # --- internals ---
    def _key_frame(self, source: FrameSource, expr: Expression, context: list[int], options: SegmentOptions) -> int:
        def probe(index: int) -> FrameProbe:
            ((_, result),) = self._run_stream(source, [index], expr.text, context, options, None)
            return FrameProbe(result.seg_probability, result.score, int(result.mask.sum()))

        request = KeyFrameRequest(
            expr.text, len(source), list(source.frame_names), probe, options.video_id, expr.exp_id
        )
        key = int(options.key_frames.select(request))
        if not 0 <= key < len(source):
            raise ValueError(f"key frame {key} out of range for a {len(source)}-frame video")
        return key

    def _visual_tokens(self, source: FrameSource, indices: list[int], cache: dict[int, torch.Tensor]) -> torch.Tensor:
        missing = [i for i in dict.fromkeys(indices) if i not in cache]
        if missing:
            pixels = clip_pixel_values(
                [source.frame(i) for i in missing],
                self.config.clip_image_size,
                self.config.clip_mean,
                self.config.clip_std,
            )
            tokens = self.model.encode_images(pixels.to(self.device, self.dtype))
            cache.update(zip(missing, tokens))
        return torch.stack([cache[i] for i in indices])

    def _prompt_ids(self, expression: str, num_query: int, open_last: bool, cache: dict) -> torch.Tensor:
        key = (num_query, open_last)
        if key not in cache:
            ids = self.tokenizer.encode_prompt(
                inference_prompt(expression, self.config.context_frames, num_query, open_last)
            )
            cache[key] = torch.tensor(ids, device=self.device)
        return cache[key]

    def _run_stream(
        self,
        source: FrameSource,
        stream: list[int],
        expression: str,
        context: list[int],
        options: SegmentOptions,
        trace: Callable[[StepTrace], None] | None,
    ) -> Iterator[tuple[int, FrameResult]]:
        """Segment the frames of one query stream in order; yields ``(stream_position, outcome)``."""
        cfg = self.config
        window = cfg.query_window
        use_memory = cfg.use_memory_bank if options.use_memory_bank is None else options.use_memory_bank
        bank = MemoryBank(cfg.num_maskmem, options.mem_stride or cfg.mem_stride)
        token_cache: dict[int, torch.Tensor] = {}
        prompt_cache: dict = {}
        step = 1 if options.schedule == "sliding" else window
        for start in range(0, len(stream), step):
            if options.schedule == "sliding":
                positions = [start]
                rounds = list(range(max(0, start - window + 1), start + 1))
                ids = self._prompt_ids(expression, len(rounds), True, prompt_cache)
                seg_pos = None  # the state predicting [SEG] is the last prompt position
            else:
                positions = rounds = list(range(start, min(start + window, len(stream))))
                ids = self._prompt_ids(expression, len(rounds), False, prompt_cache)
                seg_pos = seg_state_positions(ids, self.seg_token_id, self.model.visual_tokens_per_image)
            frames_in_prompt = context + [stream[r] for r in rounds]
            for f in list(token_cache):  # keep only what a later prompt can reuse
                if f not in frames_in_prompt:
                    del token_cache[f]
            tokens = self._visual_tokens(source, frames_in_prompt, token_cache)
            embeds = self.model.embed_prompt(ids, tokens)
            hidden = self.model.language_hidden_states(embeds.unsqueeze(0))[0]
            state_positions = torch.tensor([hidden.shape[0] - 1]) if seg_pos is None else seg_pos
            states = hidden[state_positions]
            logits = self.model.token_logits(states)
            produced = logits.argmax(-1) == self.seg_token_id
            seg_probability = torch.softmax(logits.float(), -1)[:, self.seg_token_id]
            embeddings = self.model.project_seg(states)
            for k, position in enumerate(positions):
                step_trace = None
                if trace is not None:
                    step_trace = StepTrace(
                        position,
                        stream[position],
                        ids,
                        hidden,
                        logits[k],
                        embeddings[k],
                        bank.read_positions(position) if use_memory else [],
                    )
                outcome = self._segment_frame(
                    source,
                    stream[position],
                    position,
                    embeddings[k] if produced[k] else None,
                    bank,
                    use_memory,
                    step_trace,
                )
                outcome.seg_probability = float(seg_probability[k])
                if step_trace is not None:
                    trace(step_trace)
                yield position, outcome

    def _segment_frame(
        self,
        source: FrameSource,
        frame_index: int,
        position: int,
        seg_embedding: torch.Tensor | None,
        bank: MemoryBank,
        use_memory: bool,
        step_trace: StepTrace | None,
    ) -> FrameResult:
        frame = source.frame(frame_index)
        height, width = frame.shape[:2]
        if seg_embedding is None:
            logger.debug("no [SEG] predicted for frame %d: target absent", frame_index)
            return FrameResult(frame_index, np.zeros((height, width), dtype=bool), 0.0, False, 0.0)
        cfg = self.config
        pixels = sam_pixel_values([frame], self.model.sam_image_size, cfg.sam_mean, cfg.sam_std)
        feats = self.model.encode_frame(pixels.to(self.device, self.dtype))
        memories = bank.read(position) if use_memory else []
        conditioned = self.model.condition_on_memory(feats, memories)
        decoded = self.model.decode_masks(conditioned, feats, seg_embedding.unsqueeze(0))
        mask_logits = upsample_logits(decoded.lowres_logits, (height, width))[0, 0]
        mask = (mask_logits > cfg.mask_threshold).cpu().numpy()
        written = None
        if use_memory:
            written = self.model.encode_memory(conditioned, feats, decoded.lowres_logits)
            bank.write(position, written)
        if step_trace is not None:
            step_trace.image_embed = conditioned.permute(1, 2, 0).reshape(-1, *feats.top_size)
            step_trace.high_res = [h[0] for h in feats.high_res]
            step_trace.lowres_logits = decoded.lowres_logits[0, 0]
            step_trace.iou_prediction = decoded.iou_prediction[0]
            step_trace.object_score_logit = decoded.object_score_logits[0]
            step_trace.mask_logits = mask_logits
            step_trace.memory_written = written
        return FrameResult(frame_index, mask, float(decoded.iou_prediction[0, 0]), True, 0.0)


def _as_source(frames: FrameSource | Sequence[np.ndarray] | np.ndarray) -> FrameSource:
    if isinstance(frames, FrameSource):
        return frames
    return ArrayFrames(frames)


def _as_expressions(expressions: Sequence[str | Expression]) -> list[Expression]:
    if isinstance(expressions, (str, Expression)):
        expressions = [expressions]
    if not expressions:
        raise ValueError("at least one expression is needed")
    out = []
    for i, e in enumerate(expressions):
        out.append(e if isinstance(e, Expression) else Expression(str(e), str(i)))
    return out
