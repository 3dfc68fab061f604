"""Correct one frame, the rest follows: re-propagate an object from an annotator's corrected mask(s).

An annotator fixes the mask of one object on frame ``k`` (or on several frames). With ``L`` the last corrected
frame, :func:`repropagate` runs one forward query stream ``L, L+1, ..., N-1`` whose memory is seeded by the
corrections, as SAM-2 seeds its memory with conditioning frames:

* frame ``L``'s output is the correction itself; its memory is encoded from the corrected mask (features of a
  stream's first frame: no memory, so ``no_mem_embed`` is added, as GLUS does) and *pinned*: every later frame
  reads it, nothing drops it (:meth:`~model.modeling.memory_bank.MemoryBank.pin`);
* up to ``max_earlier`` earlier corrections (the most recent before ``L``) are pinned the same way, at their
  (negative) stream positions, so they are read but never segmented again;
* frames ``L+1 .. N-1`` are segmented conditioned on the pinned memories plus GLUS's usual ones (7 slots at
  the memory stride), each writing its own memory as in normal inference.

Frames before ``L`` are never segmented and no result is produced for them. Two prompt modes:

* ``"seg"`` (default): GLUS's own per-frame ``[SEG]`` prompt, as in normal inference (``SegmentOptions.schedule``:
  the sliding window or clips, over the context frames of the whole video; frame ``L`` appears in the window
  as an earlier query round), plus the pinned memories. Costs what normal inference costs per frame.
* ``"memory"``: SAM-2-style tracking, no LLM at all. The mask decoder gets SAM-2's prompt for a frame without
  prompts (its padding point, label -1: ``not_a_point_embed`` twice) and ``no_mask_embed``; only the memory
  carries the object. Per frame that is SAM-2 alone (image encoder, memory attention, decoder, memory
  encoder); at glus-7b it skips the LLM prefill and CLIP, most of a frame's cost.

Why ``"seg"`` is the default: GLUS fine-tunes SAM-2's mask decoder with ``[SEG]`` prompts only, so nothing
says a GLUS decoder still tracks from the padding point. Measured with the bundled demo model
(``bench/bench_correction.py``, 30 synthetic test videos, correction = ground truth of the corrected frame,
J&F of the frames after it): first prediction 0.655, ``"seg"`` 0.658, ``"memory"`` 0.228 - the demo decoder,
trained from scratch with ``[SEG]`` + pointer prompts, loses the object within a frame or two without them.
``"memory"`` was 2.5x cheaper per frame there (and far more at 7B); use it with a decoder that keeps SAM-2's
unprompted tracking (measure first: the benchmark takes ``--checkpoint``).

Nothing is held for the whole video: frames are decoded lazily through :class:`~model.video_context.VideoContext`
(bounded caches), and the memory bank lives for one call.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .inference import Expression, FrameResult, Progress, SegmentOptions, VideoSegmenter, context_frame_indices
from .modeling import sam2_memory
from .modeling.memory_bank import MemoryBank, MemoryEntry
from .modeling.sam2_memory import upsample_logits
from .prompting import clean_expression
from .video_context import VideoContext
from .video_io import ArrayFrames, FrameSource

logger = logging.getLogger(__name__)

PROMPT_MODES = ("seg", "memory")


@dataclass
class RepropagationOptions:
    """How a correction is propagated. ``segment`` supplies the memory stride, the caches and, in ``"seg"``
    mode, the query schedule and context frames; its key-frame selector is not used (the stream starts at the
    last corrected frame)."""

    prompt: str = "seg"  # "seg": GLUS's [SEG] prompt per frame + memory; "memory": SAM-2 tracking, no LLM
    max_earlier: int = 3  # corrections before the last one that are pinned too (the most recent ones)
    segment: SegmentOptions = field(default_factory=SegmentOptions)

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_MODES:
            raise ValueError(f"unknown prompt mode {self.prompt!r}; choose one of {PROMPT_MODES}")
        if self.max_earlier < 0:
            raise ValueError("max_earlier must be >= 0")
        if self.segment.use_memory_bank is False:
            raise ValueError("re-propagation seeds the memory bank: use_memory_bank cannot be False")


def repropagate(
    segmenter: VideoSegmenter,
    frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
    expression: str | Expression,
    corrections: Mapping[int, np.ndarray],
    options: RepropagationOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Iterator[FrameResult]:
    """Re-segment one object from its last corrected frame ``L = max(corrections)`` to the end of the video.

    ``corrections`` maps frame index -> ``(H, W)`` mask of that frame (bool, or numbers: non-zero = object).
    Yields, in frame order, ``FrameResult`` for frames ``L, L+1, ..., N-1``: the first is frame ``L`` with the
    annotator's mask exactly (a copy; score 1.0), so the caller can replace frames ``L..N-1`` of the previous
    prediction wholesale; frames before ``L`` are never yielded. In ``"memory"`` mode no LLM runs: every
    result has ``seg_token_produced=True`` and ``seg_probability=1.0``. ``progress`` counts frames ``L..N-1``.

    Input errors (no corrections, a frame index out of range, a mask whose shape is not its frame's, an empty
    expression, bad options) raise ``ValueError`` here, before any model work; the returned iterator does the
    work as it is consumed.
    """
    options = options or RepropagationOptions()
    text = expression.text if isinstance(expression, Expression) else str(expression)
    clean_expression(text)  # the same check as normal inference, in both modes
    source = frames if isinstance(frames, FrameSource) else ArrayFrames(frames)
    masks = _checked_corrections(source, corrections)
    return _repropagate(segmenter, source, text, masks, options, progress)


def _checked_corrections(source: FrameSource, corrections: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Validated corrections as ``{frame: bool (H, W)}`` in frame order."""
    if not corrections:
        raise ValueError("at least one corrected frame is needed")
    n = len(source)
    out: dict[int, np.ndarray] = {}
    for key, mask in corrections.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ValueError(f"corrected frame indices must be integers, got {key!r}")
        index = int(key)
        if not 0 <= index < n:
            raise ValueError(f"corrected frame {index} out of range for a {n}-frame video")
        array = np.asarray(mask)
        size = tuple(source.frame(index).shape[:2])
        if array.shape != size:
            raise ValueError(f"the mask of frame {index} has shape {array.shape}, the frame is {size}")
        out[index] = array != 0
    return dict(sorted(out.items()))


def _repropagate(
    segmenter: VideoSegmenter,
    source: FrameSource,
    text: str,
    masks: dict[int, np.ndarray],
    options: RepropagationOptions,
    progress: Callable[[Progress], None] | None,
) -> Iterator[FrameResult]:
    cfg, seg = segmenter.config, options.segment
    n = len(source)
    last = max(masks)
    earlier = [k for k in masks if k < last][-options.max_earlier :] if options.max_earlier else []
    stream = list(range(last, n))
    use_llm = options.prompt == "seg"
    context = context_frame_indices(n, cfg.context_frames) if use_llm and seg.context_frames else []
    logger.debug("re-propagating frames %d..%d, pinned corrections %s, prompt %s", last, n - 1,
                 [*earlier, last], options.prompt)  # fmt: skip
    video = segmenter.open_video(source, context, seg)
    with torch.inference_mode(), video:
        bank = MemoryBank(cfg.num_maskmem, seg.mem_stride or cfg.mem_stride)
        video.prefetch([*earlier, *stream[: 2 * video.encode_batch]])
        for k in [*earlier, last]:
            bank.pin(k - last, _correction_memory(segmenter, video, k, masks[k], stream[1 : video.encode_batch]))
        results: Iterator[FrameResult] = iter([FrameResult(last, masks[last].copy(), 1.0, True, 1.0)])
        if use_llm:
            # GLUS's own loop over the stream, seeded bank, frame L shown to the LLM but not segmented again
            steps = segmenter.run_stream(video, stream, [text], seg, None, banks=[bank], first_position=1)
            later: Iterator[FrameResult] = (result for _, _, result in steps)
        else:
            later = _track(segmenter, video, stream, bank)
        for done, result in enumerate(itertools.chain(results, later), start=1):
            yield result
            if progress is not None:
                progress(Progress(done, len(stream), 0, 1))


def _correction_memory(
    segmenter: VideoSegmenter, video: VideoContext, index: int, mask: np.ndarray, upcoming: Sequence[int]
) -> MemoryEntry:
    """Memory of a corrected frame: its features as a stream's first frame (no memory, ``no_mem_embed``) and
    the annotator's mask as SAM-2 encodes a mask input."""
    model = segmenter.model
    feats = video.sam_features(index, upcoming)
    conditioned = model.condition_on_memory(feats, [])
    return model.encode_memory_from_mask(conditioned, feats, torch.from_numpy(mask).unsqueeze(0))


def _track(
    segmenter: VideoSegmenter, video: VideoContext, stream: list[int], bank: MemoryBank
) -> Iterator[FrameResult]:
    """``"memory"`` mode: SAM-2 on stream positions 1.. prompted by its padding point only; the memory bank
    (pinned corrections + the frames decoded since) is the prompt."""
    model, threshold = segmenter.model, segmenter.config.mask_threshold
    for position in range(1, len(stream)):
        index = stream[position]
        video.prefetch(stream[position + 1 : position + 1 + 2 * video.encode_batch])
        feats = video.sam_features(index, stream[position + 1 : position + video.encode_batch])
        conditioned = model.condition_on_memory(feats, bank.read(position))
        with model.sam_precision():
            prompt = sam2_memory.padding_point_prompt(model.sam, 1)
            decoded = sam2_memory.decode_masks(model.sam, conditioned, feats, prompt)
        mask = (upsample_logits(decoded.lowres_logits, video.frame_size(index))[0, 0] > threshold).cpu().numpy()
        bank.write(position, model.encode_memory(conditioned, feats, decoded.lowres_logits))
        yield FrameResult(index, mask, float(decoded.iou_prediction[0, 0]), True, 1.0)
