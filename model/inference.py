"""Whole-video inference: ``segment(frames, expressions) -> masks``.

For each expression (the expressions that share a key frame run in lockstep, batched, with the same result):

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .keyframes import FirstFrame, FrameProbe, KeyFrameRequest, KeyFrameSelector
from .modeling.glus import GlusModel, seg_state_positions
from .modeling.memory_bank import MemoryBank, MemoryEntry
from .modeling.sam2_memory import FrameFeatures, upsample_logits
from .prompting import clean_expression, inference_prompt
from .tokenizer import GlusTokenizer
from .video_context import VideoContext
from .video_io import ArrayFrames, FrameSource

if TYPE_CHECKING:
    from .repropagation import RepropagationOptions

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
    context_frames: bool = True  # False: no global context frames in the prompt (an ablation)
    # --- speed (exact: the same masks) ---
    prefix_cache: bool = True  # KV cache of the prompt prefix (system prompt + context frames), once per video
    batch_expressions: bool = True  # expressions batched: LLM prompt suffixes (right-padded), SAM-2 decoder + memory
    cache_frames: int = 16  # CLIP / SAM-2 features kept per video (bounded, least recently used out)
    encode_batch: int = 4  # frames encoded together by CLIP and by SAM-2's image encoder
    # --- throughput (not exact: measured quality cost in docs/performance.md) ---
    llm_every: int = 1  # sliding schedule: LLM on every k-th frame, SAM-2 memory propagates the prompt between

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.llm_every < 1 or self.cache_frames < 1 or self.encode_batch < 1:
            raise ValueError("llm_every, cache_frames and encode_batch must be >= 1")


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
        self.im_start_id = tokenizer.token_to_id(config.im_start_token)
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
        exprs = as_expressions(expressions)
        source = as_source(frames)
        return collect(self.segment_stream(source, exprs, options, progress, trace), exprs, len(source))

    def segment_stream(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expressions: Sequence[str | Expression],
        options: SegmentOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
        trace: Callable[[StepTrace], None] | None = None,
    ) -> Iterator[tuple[int, int, FrameResult]]:
        """Yield ``(expression_index, key_frame, FrameResult)`` as frames are decided, every frame exactly once
        per expression (frame-major across expressions that share a key frame, so each frame's features are
        computed once; not in frame order when a key frame is used). Nothing is held for the whole video."""
        options = options or SegmentOptions()
        exprs = as_expressions(expressions)
        for e in exprs:
            clean_expression(e.text)  # bad input fails before any work
        source = as_source(frames)
        n = len(source)
        context = context_frame_indices(n, self.config.context_frames) if options.context_frames else []
        total = n * len(exprs)
        done = 0
        with torch.inference_mode(), self.open_video(source, context, options) as video:
            keys = [self._key_frame(video, expr, options) for expr in exprs]
            groups: dict[int, list[int]] = {}
            for index, key in enumerate(keys):
                groups.setdefault(key, []).append(index)
            for key, members in groups.items():
                passes = [list(range(key, n))] + ([list(range(key, -1, -1))] if key > 0 else [])
                for pass_index, stream in enumerate(passes):
                    for position, member, result in self.run_stream(
                        video, stream, [exprs[i].text for i in members], options, trace
                    ):
                        if pass_index > 0 and position == 0:
                            continue  # the key frame was already emitted by the forward pass
                        done += 1
                        yield members[member], key, result
                        if progress is not None:
                            progress(Progress(done, total, members[member], len(exprs)))

    def repropagate(
        self,
        frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
        expression: str | Expression,
        corrections: Mapping[int, np.ndarray],
        options: RepropagationOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[FrameResult]:
        """Frames ``L = max(corrections)`` .. end of one object re-segmented from annotators' corrected masks;
        see :func:`model.repropagation.repropagate`."""
        from .repropagation import repropagate

        return repropagate(self, frames, expression, corrections, options, progress)

    def open_video(self, source: FrameSource, context: list[int], options: SegmentOptions) -> VideoContext:
        """The per-call state of one video (lazily decoded frames, bounded feature caches, the context frames'
        LLM prefix); a context manager. A building block of :meth:`run_stream` callers such as
        :mod:`model.repropagation`: :meth:`segment_stream` opens its own."""
        return VideoContext(
            self.model,
            source,
            context,
            self.device,
            self.dtype,
            cache_frames=options.cache_frames,
            encode_batch=options.encode_batch,
            use_prefix_cache=options.prefix_cache,
            im_start_id=self.im_start_id,
        )

    def run_stream(
        self,
        video: VideoContext,
        stream: list[int],
        expressions: list[str],
        options: SegmentOptions,
        trace: Callable[[StepTrace], None] | None,
        banks: list[MemoryBank] | None = None,
        first_position: int = 0,
    ) -> Iterator[tuple[int, int, FrameResult]]:
        """Segment one query stream (frame indices, in the order the memory bank sees them) for several
        expressions in lockstep (one memory bank each); yields ``(stream_position, expression_index, outcome)``.
        ``banks`` (one per expression, e.g. holding pinned corrections) replace fresh ones; positions before
        ``first_position`` are not segmented, only shown to the LLM as earlier query rounds
        (:mod:`model.repropagation`). ``video`` comes from :meth:`open_video`."""
        cfg = self.config
        window = cfg.query_window
        use_memory = cfg.use_memory_bank if options.use_memory_bank is None else options.use_memory_bank
        if banks is None:
            banks = [MemoryBank(cfg.num_maskmem, options.mem_stride or cfg.mem_stride) for _ in expressions]
        prompt_cache: dict = {}
        last_llm: list[tuple[torch.Tensor | None, float] | None] = [None] * len(expressions)
        step = 1 if options.schedule == "sliding" else window
        for start in range(first_position, len(stream), step):
            if options.schedule == "sliding":
                positions = [start]
                rounds = list(range(max(0, start - window + 1), start + 1))
            else:
                positions = rounds = list(range(start, min(start + window, len(stream))))
            frames_in_prompt = video.context_frames + [stream[r] for r in rounds]
            upcoming = stream[start + 1 : start + 1 + 2 * video.encode_batch]
            video.prefetch(upcoming)
            run_llm = options.schedule != "sliding" or start % options.llm_every == 0
            open_last = options.schedule == "sliding"  # sliding: the last prompt position predicts [SEG]
            # expressions that reuse the last [SEG] prompt (llm_every) skip the LLM: SAM-2 memory propagates it
            asking = [e for e in range(len(expressions)) if run_llm or last_llm[e] is None]
            ids_of = {
                e: self._prompt_ids(expressions[e], len(video.context_frames), len(rounds), open_last, prompt_cache)
                for e in asking
            }
            ids_list = [ids_of[e] for e in asking]
            if options.batch_expressions:
                hidden_list = video.hidden_states_batch(ids_list, frames_in_prompt, upcoming)
            else:
                hidden_list = [video.hidden_states(ids, frames_in_prompt, upcoming) for ids in ids_list]
            hidden_of = dict(zip(asking, hidden_list))
            per_expression = []
            for e in range(len(expressions)):
                if e not in hidden_of:
                    per_expression.append(None)
                    continue
                ids, hidden = ids_of[e], hidden_of[e]
                if open_last:
                    state_positions = torch.tensor([hidden.shape[0] - 1], device=hidden.device)
                else:
                    state_positions = seg_state_positions(ids, self.seg_token_id, self.model.visual_tokens_per_image)
                states = hidden[state_positions]
                logits = self.model.token_logits(states)
                produced = logits.argmax(-1) == self.seg_token_id
                seg_probability = torch.softmax(logits.float(), -1)[:, self.seg_token_id]
                embeddings = self.model.sam_prompts(ids, hidden, state_positions)
                per_expression.append((ids, hidden, logits, produced, seg_probability, embeddings))
            for k, position in enumerate(positions):
                frame_index = stream[position]
                prompts = []  # (embedding or None, P([SEG]), trace) per expression
                for e in range(len(expressions)):
                    llm = per_expression[e]
                    step_trace = None
                    if llm is None:
                        embedding, probability = last_llm[e]
                    else:
                        ids, hidden, logits, produced, seg_probability, embeddings = llm
                        embedding = embeddings[k] if produced[k] else None
                        probability = float(seg_probability[k])
                        last_llm[e] = (embedding, probability)
                        if trace is not None:
                            step_trace = StepTrace(
                                position,
                                frame_index,
                                ids,
                                hidden,
                                logits[k],
                                embeddings[k],
                                banks[e].read_positions(position) if use_memory else [],
                            )
                    prompts.append((embedding, probability, step_trace))
                # SAM-2 image features only for a frame some expression prompts (an absent target needs none)
                feats = None
                if any(embedding is not None for embedding, _, _ in prompts):
                    feats = video.sam_features(frame_index, stream[position + 1 : position + video.encode_batch])
                outcomes = self._segment_frame(
                    video, frame_index, position, feats, prompts, banks, use_memory, options.batch_expressions
                )
                for e, (outcome, (_, probability, step_trace)) in enumerate(zip(outcomes, prompts)):
                    outcome.seg_probability = probability
                    if step_trace is not None:
                        trace(step_trace)
                    yield position, e, outcome

    # --- internals ---
    def _key_frame(self, video: VideoContext, expr: Expression, options: SegmentOptions) -> int:
        source = video.source

        def probe(index: int) -> FrameProbe:
            ((_, _, result),) = self.run_stream(video, [index], [expr.text], options, None)
            return FrameProbe(result.seg_probability, result.score, int(result.mask.sum()))

        request = KeyFrameRequest(
            expr.text, len(source), list(source.frame_names), probe, options.video_id, expr.exp_id
        )
        key = int(options.key_frames.select(request))
        if not 0 <= key < len(source):
            raise ValueError(f"key frame {key} out of range for a {len(source)}-frame video")
        return key

    def _prompt_ids(
        self, expression: str, num_context: int, num_query: int, open_last: bool, cache: dict
    ) -> torch.Tensor:
        key = (expression, num_context, num_query, open_last)
        if key not in cache:
            text = inference_prompt(
                expression, num_context, num_query, open_last, self.config.open_prompt_trailing_space
            )
            ids = self.tokenizer.encode_prompt(text)
            cache[key] = torch.tensor(ids, device=self.device)
        return cache[key]

    def _segment_frame(
        self,
        video: VideoContext,
        frame_index: int,
        position: int,
        feats: FrameFeatures | None,
        prompts: list[tuple[torch.Tensor | None, float, StepTrace | None]],
        banks: list[MemoryBank],
        use_memory: bool,
        batched: bool = True,
    ) -> list[FrameResult]:
        """SAM-2 on one frame for every expression (``prompts``: its ``[SEG]`` embedding or None, ...). The
        expressions whose banks read the same memory positions are decoded as one batch (``batched``)."""
        height, width = video.frame_size(frame_index)
        results: list[FrameResult | None] = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for e, (embedding, _, _) in enumerate(prompts):
            if embedding is None:
                logger.debug("no [SEG] predicted for frame %d: target absent", frame_index)
                results[e] = FrameResult(frame_index, np.zeros((height, width), dtype=bool), 0.0, False, 0.0)
                continue
            key = tuple(banks[e].read_positions(position)) if use_memory else ()
            groups.setdefault(key if batched else (e,), []).append(e)
        cfg = self.config
        for members in groups.values():
            batch = len(members)
            frame_feats = feats.expand(batch)
            memories = _stack_memories([banks[e].read(position) for e in members]) if use_memory else []
            conditioned = self.model.condition_on_memory(frame_feats, memories)
            embeddings = torch.stack([prompts[e][0] for e in members])
            decoded = self.model.decode_masks(conditioned, frame_feats, embeddings)
            mask_logits = upsample_logits(decoded.lowres_logits, (height, width))[:, 0]
            masks = (mask_logits > cfg.mask_threshold).cpu().numpy()
            written = self.model.encode_memory(conditioned, frame_feats, decoded.lowres_logits) if use_memory else None
            for row, e in enumerate(members):
                entry = None
                if written is not None:
                    entry = MemoryEntry(written.features[row : row + 1], written.pos_enc[row : row + 1])
                    banks[e].write(position, entry)
                step_trace = prompts[e][2]
                if step_trace is not None:
                    step_trace.image_embed = conditioned[:, row].T.reshape(-1, *feats.top_size)
                    step_trace.high_res = [h[0] for h in feats.high_res]
                    step_trace.lowres_logits = decoded.lowres_logits[row, 0]
                    step_trace.iou_prediction = decoded.iou_prediction[row]
                    step_trace.object_score_logit = decoded.object_score_logits[row]
                    step_trace.mask_logits = mask_logits[row]
                    step_trace.memory_written = entry
                results[e] = FrameResult(frame_index, masks[row], float(decoded.iou_prediction[row, 0]), True, 0.0)
        return results  # type: ignore[return-value]


def _stack_memories(per_expression: list[list[MemoryEntry]]) -> list[MemoryEntry]:
    """Memories of several expressions at the same positions as batched entries (one batch row each)."""
    if len(per_expression) == 1:
        return per_expression[0]
    return [
        MemoryEntry(torch.cat([m.features for m in slot]), torch.cat([m.pos_enc for m in slot]))
        for slot in zip(*per_expression)
    ]


def collect(stream: Iterator[tuple[int, int, FrameResult]], exprs: list[Expression], num_frames: int
            ) -> list[ExpressionResult]:  # fmt: skip
    """A ``segment_stream`` output gathered into one :class:`ExpressionResult` per expression (any family)."""
    results = [ExpressionResult(e, [None] * num_frames, 0) for e in exprs]  # type: ignore[list-item]
    for expr_index, key_frame, frame in stream:
        results[expr_index].frames[frame.frame_index] = frame
        results[expr_index].key_frame = key_frame
    return results


def as_source(frames: FrameSource | Sequence[np.ndarray] | np.ndarray) -> FrameSource:
    if isinstance(frames, FrameSource):
        return frames
    return ArrayFrames(frames)


def as_expressions(expressions: Sequence[str | Expression]) -> list[Expression]:
    if isinstance(expressions, (str, Expression)):
        expressions = [expressions]
    if not expressions:
        raise ValueError("at least one expression is needed")
    out = []
    for i, e in enumerate(expressions):
        out.append(e if isinstance(e, Expression) else Expression(str(e), str(i)))
    return out
