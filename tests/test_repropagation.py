"""Correct one frame, the rest follows: pinned memories, mask-input memories and re-propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.inference import SegmentOptions, VideoSegmenter, context_frame_indices
from model.modeling import sam2_memory
from model.modeling.glus import GlusModel
from model.modeling.memory_bank import MemoryBank, MemoryEntry, positions_to_read
from model.preprocessing import sam_pixel_values
from model.repropagation import RepropagationOptions, repropagate
from model.video_io import ArrayFrames

MODES = ("seg", "memory")


class SpySource(ArrayFrames):
    """Frames in memory that record which indices were decoded."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__(frames)
        self.decoded: set[int] = set()

    def frame(self, index: int) -> np.ndarray:
        self.decoded.add(index)
        return super().frame(index)


def _entry(value: float) -> MemoryEntry:
    return MemoryEntry(torch.full((1, 2, 2, 2), value), torch.zeros(1, 2, 2, 2))


def _square(video: np.ndarray, t: int) -> np.ndarray:
    """The red square of ``moving_square_video`` at frame ``t``."""
    mask = np.zeros(video.shape[1:3], dtype=bool)
    mask[30:54, 5 + 8 * t : 29 + 8 * t] = True
    return mask


def _run(tiny, video, corrections, **options) -> list:
    model, tok = tiny
    return list(repropagate(VideoSegmenter(model, tok), video, "the red square", corrections,
                            RepropagationOptions(**options)))  # fmt: skip


# --- memory bank ---
def test_unpinned_bank_reads_glus_positions_and_keeps_at_most_num_maskmem():
    bank = MemoryBank(7, 3)
    for position in range(40):
        assert bank.read_positions(position) == [p for p in positions_to_read(position, 7, 3) if p < position]
        bank.write(position, _entry(position))
        assert len(bank) <= 7 and not bank.pinned


def test_pinned_memories_are_read_first_never_twice_and_never_dropped():
    bank = MemoryBank(7, 3)
    bank.pin(-4, _entry(-4.0))
    bank.pin(0, _entry(0.0))
    assert bank.read_positions(0) == [-4]  # a pin is read by later frames only
    for position in range(1, 40):
        positions = bank.read_positions(position)
        assert positions[:2] == [-4, 0]
        assert len(positions) == len(set(positions))  # position 0 is pinned: not read again as a usual memory
        assert [float(m.features[0, 0, 0, 0]) for m in bank.read(position)] == [float(p) for p in positions]
        bank.write(position, _entry(position))
    assert set(bank.pinned) == {-4, 0} and len(bank.entries) <= 7


# --- memory from a given mask ---
def test_mask_maps_onto_sam_input_like_the_frame(moving_square_video):
    mask = _square(moving_square_video, 3)
    mask[0, :] = True  # asymmetric, so a transposed or flipped mapping fails
    frame = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    resized = sam_pixel_values([frame], 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))[:, :1]
    mapped = sam2_memory.mask_to_sam_input(torch.from_numpy(mask)[None], 64)
    assert mapped.shape == (1, 1, 64, 64)
    assert torch.equal(mapped, (resized >= 0.5).float())


def test_mask_memory_is_the_logit_memory_of_mask_times_20_minus_10(tiny, moving_square_video):
    model, _ = tiny
    size = model.sam_image_size
    with torch.inference_mode():
        pixels = sam_pixel_values([moving_square_video[2]], size, model.config.sam_mean, model.config.sam_std)
        feats = model.encode_frame(pixels)
        conditioned = model.condition_on_memory(feats, [])
        mask = torch.from_numpy(_square(moving_square_video, 2))[None]
        from_mask = model.encode_memory_from_mask(conditioned, feats, mask)
        logits = sam2_memory.mask_to_sam_input(mask, size) * 20 - 10  # already at SAM-2 size: no resampling
        from_logits = model.encode_memory(conditioned, feats, logits)
        empty = model.encode_memory_from_mask(conditioned, feats, torch.zeros_like(mask))
    assert torch.equal(from_mask.features, from_logits.features)
    assert torch.equal(from_mask.pos_enc, from_logits.pos_enc)
    assert not torch.equal(empty.features, from_mask.features)


# --- re-propagation ---
@pytest.mark.parametrize("mode", MODES)
def test_only_frames_from_the_last_correction_are_produced_and_it_is_exact(tiny, moving_square_video, mode):
    video = SpySource(moving_square_video)
    n, last = len(moving_square_video), 7
    corrections = {3: _square(moving_square_video, 3), last: _square(moving_square_video, last).astype(np.uint8)}
    results = _run(tiny, video, corrections, prompt=mode)
    assert [r.frame_index for r in results] == list(range(last, n))
    assert results[0].mask.dtype == bool and np.array_equal(results[0].mask, corrections[last] != 0)
    assert all(r.mask.shape == moving_square_video.shape[1:3] for r in results)
    allowed = set(corrections) | set(range(last, n))
    if mode == "seg":
        allowed |= set(context_frame_indices(n))  # GLUS's context frames of the whole video
    assert video.decoded <= allowed  # no frame before L is decoded unless it is a correction or context
    assert 0 not in video.decoded or 0 in allowed


@pytest.mark.parametrize("mode", MODES)
def test_pinned_corrections_are_read_at_every_later_frame(tiny, moving_square_video, mode, monkeypatch):
    pinned: list[int] = []
    reads: list[list[int]] = []
    encode_from_mask, condition = GlusModel.encode_memory_from_mask, GlusModel.condition_on_memory

    def spy_encode(self, conditioned, feats, masks):
        entry = encode_from_mask(self, conditioned, feats, masks)
        pinned.append(entry.features.data_ptr())
        return entry

    def spy_condition(self, feats, memories):
        if memories:
            reads.append([m.features.data_ptr() for m in memories])
        return condition(self, feats, memories)

    monkeypatch.setattr(GlusModel, "encode_memory_from_mask", spy_encode)
    monkeypatch.setattr(GlusModel, "condition_on_memory", spy_condition)
    corrections = {t: _square(moving_square_video, t) for t in (1, 2, 4, 5)}
    results = _run(tiny, moving_square_video, corrections, prompt=mode)
    assert len(pinned) == 4  # L = 5 and the 3 most recent before it
    assert len(reads) == len(results) - 1 == len(moving_square_video) - 6
    for read in reads:
        assert set(pinned) <= set(read)
        assert len(read) == len(set(read))


@pytest.mark.parametrize("mode", MODES)
def test_deterministic(tiny, moving_square_video, mode):
    corrections = {4: _square(moving_square_video, 4)}
    first = _run(tiny, moving_square_video, corrections, prompt=mode)
    second = _run(tiny, moving_square_video, corrections, prompt=mode)
    assert all(np.array_equal(a.mask, b.mask) and a.score == b.score for a, b in zip(first, second))


@pytest.mark.parametrize("mode", MODES)
def test_the_correction_steers_later_frames(tiny, moving_square_video, mode):
    square = _run(tiny, moving_square_video, {4: _square(moving_square_video, 4)}, prompt=mode)
    empty = _run(tiny, moving_square_video, {4: np.zeros(moving_square_video.shape[1:3], bool)}, prompt=mode)
    assert [r.score for r in square[1:]] != [r.score for r in empty[1:]]


def test_earlier_corrections_count_only_when_pinned(tiny, moving_square_video):
    last = {6: _square(moving_square_video, 6)}
    both = {2: np.ones(moving_square_video.shape[1:3], bool), **last}
    alone = _run(tiny, moving_square_video, last, prompt="memory")
    unpinned = _run(tiny, moving_square_video, both, prompt="memory", max_earlier=0)
    pinned = _run(tiny, moving_square_video, both, prompt="memory")
    assert all(np.array_equal(a.mask, b.mask) and a.score == b.score for a, b in zip(alone, unpinned))
    assert [r.score for r in pinned[1:]] != [r.score for r in alone[1:]]


def test_clip_schedule_and_a_correction_on_the_last_frame(tiny, moving_square_video):
    n = len(moving_square_video)
    clip = _run(tiny, moving_square_video, {5: _square(moving_square_video, 5)}, prompt="seg",
                segment=SegmentOptions(schedule="clip"))  # fmt: skip
    assert [r.frame_index for r in clip] == list(range(5, n))
    only = _run(tiny, moving_square_video, {n - 1: _square(moving_square_video, n - 1)})
    assert [r.frame_index for r in only] == [n - 1]


def test_the_segmenter_method_and_progress(tiny, moving_square_video):
    model, tok = tiny
    seen = []
    results = list(VideoSegmenter(model, tok).repropagate(
        moving_square_video, "the red square", {8: _square(moving_square_video, 8)}, progress=seen.append))
    assert [r.frame_index for r in results] == [8, 9, 10, 11]
    assert [(p.frames_done, p.frames_total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_bad_input_fails_before_any_work(tiny, moving_square_video):
    model, tok = tiny
    segmenter = VideoSegmenter(model, tok)
    good = _square(moving_square_video, 2)
    n = len(moving_square_video)
    cases = [
        ({}, "at least one"),
        ({n: good}, "out of range"),
        ({-1: good}, "out of range"),
        ({2: good.T}, "shape"),
        ({2: good[None]}, "shape"),
        ({2.0: good}, "integers"),
    ]
    for corrections, message in cases:
        with pytest.raises(ValueError, match=message):
            segmenter.repropagate(moving_square_video, "the red square", corrections)  # not iterated
    with pytest.raises(ValueError):
        segmenter.repropagate(moving_square_video, "  ", {2: good})
    with pytest.raises(ValueError, match="prompt mode"):
        RepropagationOptions(prompt="points")
    with pytest.raises(ValueError, match="use_memory_bank"):
        RepropagationOptions(segment=SegmentOptions(use_memory_bank=False))
    with pytest.raises(ValueError, match="max_earlier"):
        RepropagationOptions(max_earlier=-1)


def test_a_correction_equal_to_the_first_prediction_keeps_it():
    """Bundled demo model: seeding the memory with the model's own mask at frame 3 (seg mode) gives back the
    first prediction after it (the same prompts, a memory that says the same object), up to small drift."""
    from model.checkpoint import from_pretrained
    from model.cli import bundled_checkpoint
    from model.evaluation.metrics import db_eval_iou
    from model.synthetic.dataset import video_seed
    from model.synthetic.world import WorldConfig, generate_video

    model, tok, _ = from_pretrained(bundled_checkpoint())
    segmenter = VideoSegmenter(model.eval(), tok)
    ious = []
    for index in range(3):
        video = generate_video(video_seed(2, index), WorldConfig(frames=12))
        text = video.expressions[0].text
        first = segmenter.segment(video.frames, [text])[0].masks
        again = np.stack([r.mask for r in segmenter.repropagate(video.frames, text, {3: first[3]})])
        assert np.array_equal(again[0], first[3])
        ious.append(db_eval_iou(again[1:], first[4:]))
    assert np.mean(ious) >= 0.97 and np.min(ious) >= 0.9
