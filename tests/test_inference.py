"""Whole-video inference: schedules, key frames, target absent, progress, bad input."""

import collections

import numpy as np
import pytest
import torch

from model.inference import SegmentOptions, VideoSegmenter, context_frame_indices
from model.keyframes import ConfidenceKeyFrames, JsonKeyFrames
from model.prompting import EmptyExpressionError


def _run(tiny, video, options, expressions=("the red square",)):
    model, tok = tiny
    steps = []
    emitted = []
    segmenter = VideoSegmenter(model, tok)
    for expr_index, key, result in segmenter.segment_stream(video, list(expressions), options, trace=steps.append):
        emitted.append((expr_index, key, result, steps[-1]))
    return emitted, steps


def test_context_frames_are_the_middle_of_each_quarter():
    assert context_frame_indices(100) == [12, 37, 62, 87]
    assert context_frame_indices(5) == [0, 1, 2, 4]
    assert context_frame_indices(1) == [0, 0, 0, 0]
    assert all(0 <= i < n for n in range(1, 40) for i in context_frame_indices(n))


@pytest.mark.parametrize("schedule", ["sliding", "clip"])
def test_every_frame_exactly_once_per_expression(tiny, moving_square_video, schedule):
    emitted, steps = _run(tiny, moving_square_video, SegmentOptions(schedule=schedule), ("the red square", "the ramp"))
    counts = collections.Counter((e, r.frame_index) for e, _, r, _ in emitted)
    assert set(counts.values()) == {1} and len(counts) == 2 * len(moving_square_video)
    for _, _, result, step in emitted:
        assert result.mask.shape == (96, 128) and result.mask.dtype == bool
        assert result.frame_index == step.frame_index  # the mask belongs to the frame that was segmented
    if schedule == "clip":
        # one LLM pass per 4 new query frames: prompts have 4 query images (12 frames -> 3 passes/expression)
        assert len({id(s.hidden_states) for s in steps}) == 2 * 3


def test_key_frame_propagates_forward_then_backward(tiny, moving_square_video):
    names = [f"{i:05d}" for i in range(len(moving_square_video))]
    from model.video_io import ArrayFrames

    video = ArrayFrames(moving_square_video, names)
    options = SegmentOptions(key_frames=JsonKeyFrames({"vid_7": 5}), video_id="vid")
    model, tok = tiny
    steps = []
    emitted = [
        r
        for _, _, r in VideoSegmenter(model, tok).segment_stream(
            video, [__import__("model").Expression("the red square", "7")], options, trace=steps.append
        )
    ]
    processed = [s.frame_index for s in steps]
    assert processed == [5, 6, 7, 8, 9, 10, 11, 5, 4, 3, 2, 1, 0]  # forward pass, then backward from the key
    assert [r.frame_index for r in emitted] == [5, 6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0]  # key frame once
    assert [s.stream_position for s in steps] == list(range(7)) + list(range(6))  # fresh bank per pass


def test_key_frame_json_missing_entry_starts_at_zero_and_bad_frame_is_an_error(tiny, moving_square_video):
    emitted, _ = _run(tiny, moving_square_video, SegmentOptions(key_frames=JsonKeyFrames({"other_0": 3})))
    assert [r.frame_index for _, _, r, _ in emitted] == list(range(12))
    with pytest.raises(ValueError, match="not a frame"):
        _run(tiny, moving_square_video, SegmentOptions(key_frames=JsonKeyFrames({"None_0": 99})))


def test_confidence_key_frames_probe_candidates(tiny, moving_square_video):
    selector = ConfidenceKeyFrames(num_candidates=4)
    assert selector.candidates(12) == [0, 4, 7, 11]
    emitted, steps = _run(tiny, moving_square_video, SegmentOptions(key_frames=selector))
    key = emitted[0][1]
    assert key in selector.candidates(12)
    assert sorted(r.frame_index for _, _, r, _ in emitted) == list(range(12))


def test_target_absent_when_no_seg_token_is_predicted(moving_square_video):
    from model.factory import random_model

    model, tok = random_model("glus-tiny", seed=1)  # an untouched random LLM does not predict [SEG]
    results = VideoSegmenter(model, tok).segment(moving_square_video[:6], ["the red square"])
    frames = results[0].frames
    assert all(not f.seg_token_produced and f.absent_reason == "no_seg_token" for f in frames)
    assert all(not f.mask.any() and f.mask.shape == (96, 128) and f.score == 0.0 for f in frames)


def test_target_absent_when_the_mask_is_empty(tiny, moving_square_video):
    model, tok = tiny
    old = model.config.mask_threshold
    model.config.mask_threshold = 1e9
    try:
        results = VideoSegmenter(model, tok).segment(moving_square_video[:3], ["the red square"])
    finally:
        model.config.mask_threshold = old
    assert all(f.seg_token_produced and f.absent_reason == "empty_mask" and not f.present for f in results[0].frames)


def test_memory_bank_switch_changes_masks(tiny, moving_square_video):
    on = VideoSegmenter(*tiny).segment(moving_square_video[:6], ["the red square"])[0].frames
    off = (
        VideoSegmenter(*tiny)
        .segment(moving_square_video[:6], ["the red square"], SegmentOptions(use_memory_bank=False))[0]
        .frames
    )
    assert np.array_equal(on[0].mask, off[0].mask)  # frame 0 reads no memory either way
    assert any(not np.array_equal(a.mask, b.mask) or a.score != b.score for a, b in zip(on[1:], off[1:]))


def test_progress_and_bad_input(tiny, moving_square_video):
    updates = []
    VideoSegmenter(*tiny).segment(moving_square_video[:4], ["a", "b"], progress=updates.append)
    assert [u.frames_done for u in updates] == list(range(1, 9)) and updates[-1].frames_total == 8
    with pytest.raises(EmptyExpressionError):
        VideoSegmenter(*tiny).segment(moving_square_video[:4], ["the dog", "  . "])
    with pytest.raises(ValueError):
        SegmentOptions(schedule="every-other")
    with pytest.raises(ValueError, match="RGB"):
        VideoSegmenter(*tiny).segment(np.zeros((3, 10, 10), dtype=np.uint8), ["x"])


def test_deterministic(tiny, moving_square_video):
    a = VideoSegmenter(*tiny).segment(moving_square_video[:5], ["the red square"])[0]
    b = VideoSegmenter(*tiny).segment(moving_square_video[:5], ["the red square"])[0]
    assert np.array_equal(a.masks, b.masks) and torch.tensor([f.score for f in a.frames]).equal(
        torch.tensor([f.score for f in b.frames])
    )
