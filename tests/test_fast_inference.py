"""Exact-mode speedups: the cached, lockstep path gives the reference-style loop's masks."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from model.inference import SegmentOptions, VideoSegmenter
from model.reference_loop import reference_style_segment
from model.video_io import ArrayFrames

EXPRESSIONS = ["the red square", "the ramp on the left"]
FRAMES = 7  # > query window + 2, so prompts slide and memories are read at a stride


def _logits(tiny, video, options, expressions=EXPRESSIONS):
    """Mask logits per (expression, frame) from the fast path, through the trace hook."""
    model, tok = tiny
    order = []

    def keep(step):
        order.append(step)

    out = {}
    for e, _, result in VideoSegmenter(model, tok).segment_stream(video, expressions, options, trace=keep):
        step = order[-1]
        out[(e, result.frame_index)] = (result.mask, step.mask_logits.clone())
    return out


@contextmanager
def _video_contexts():
    """The :class:`VideoContext` objects created inside the block (to read their ``stats``)."""
    from model import video_context

    created = []
    original = video_context.VideoContext.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    video_context.VideoContext.__init__ = spy
    try:
        yield created
    finally:
        video_context.VideoContext.__init__ = original


@pytest.fixture(scope="module")
def reference(tiny, moving_square_video):
    model, tok = tiny
    return reference_style_segment(model, tok, moving_square_video[:FRAMES], EXPRESSIONS)


@pytest.mark.parametrize(
    "options",
    [
        SegmentOptions(),
        SegmentOptions(prefix_cache=False, encode_batch=1, cache_frames=1),
        SegmentOptions(encode_batch=8, cache_frames=2),
        SegmentOptions(batch_expressions=False),
    ],
    ids=["default", "no-caches", "small-cache-big-batch", "expressions-one-at-a-time"],
)
def test_fast_path_matches_reference_style_loop(tiny, moving_square_video, reference, options):
    fast = _logits(tiny, moving_square_video[:FRAMES], options)
    worst = 0.0
    for e, ref in enumerate(reference):
        for t in range(FRAMES):
            mask, logits = fast[(e, t)]
            assert ref["logits"][t] is not None
            worst = max(worst, float((logits - ref["logits"][t]).abs().max()))
            decisive = ref["logits"][t].abs().numpy() > 1e-4  # a logit within float noise of 0 may flip
            assert np.array_equal(mask[decisive], ref["masks"][t][decisive]), (e, t)
            assert (mask != ref["masks"][t]).sum() <= 2, (e, t)
    assert worst < 1e-3


def test_prefix_cache_fills_once_per_video_and_features_once_per_frame(tiny, moving_square_video):
    model, tok = tiny
    with _video_contexts() as created:
        segmenter = VideoSegmenter(model, tok)
        list(segmenter.segment_stream(moving_square_video, EXPRESSIONS, SegmentOptions(cache_frames=32)))
    (ctx,) = created
    n = len(moving_square_video)
    assert ctx.stats["prefix_fills"] == 1
    assert ctx.stats["sam_frames_encoded"] == n  # shared by the 3 expressions
    assert ctx.stats["clip_frames_encoded"] == n  # context frames are among the video's frames
    assert ctx.stats["llm_positions"] == n * len(EXPRESSIONS)
    assert ctx.stats["llm_batches"] == n  # the expressions' suffixes go through the LLM together


def test_frames_no_expression_prompts_are_not_encoded_by_sam2(moving_square_video):
    from model.factory import random_model

    model, tok = random_model("glus-tiny", seed=0, seg_logit_bias=-20.0)  # the LLM never predicts [SEG]
    with _video_contexts() as created:
        results = list(VideoSegmenter(model, tok).segment_stream(moving_square_video[:5], EXPRESSIONS))
    assert len(results) == 5 * len(EXPRESSIONS)
    assert all(r.absent_reason == "no_seg_token" and r.mask.shape == (96, 128) for _, _, r in results)
    assert created[0].stats["sam_frames_encoded"] == 0 and created[0].stats["clip_frames_encoded"] == 5


def test_llm_every_k_runs_the_llm_on_every_kth_frame(tiny, moving_square_video):
    model, tok = tiny
    steps = []
    results = list(
        VideoSegmenter(model, tok).segment_stream(
            moving_square_video, ["the red square"], SegmentOptions(llm_every=3), trace=steps.append
        )
    )
    assert len(results) == len(moving_square_video)
    assert [s.frame_index for s in steps] == [0, 3, 6, 9]
    assert all(r.seg_token_produced for _, _, r in results)


def test_frame_source_is_read_lazily_and_boundedly(tiny, moving_square_video):
    model, tok = tiny

    class CountingFrames(ArrayFrames):
        reads = 0

        def frame(self, index):
            CountingFrames.reads += 1
            return super().frame(index)

    source = CountingFrames(moving_square_video)
    list(VideoSegmenter(model, tok).segment_stream(source, EXPRESSIONS, SegmentOptions(cache_frames=2)))
    # each frame is decoded a bounded number of times, independent of the number of expressions
    assert CountingFrames.reads <= 4 * len(moving_square_video)


def test_bad_speed_options_are_refused():
    with pytest.raises(ValueError):
        SegmentOptions(llm_every=0)
    with pytest.raises(ValueError):
        SegmentOptions(encode_batch=0)
    torch.manual_seed(0)


def test_the_frame_source_is_only_read_from_one_thread(tiny, moving_square_video):
    """Video readers seek and frame caches mutate: the prefetcher must never read them concurrently."""
    import threading

    model, tok = tiny

    class OneThreadFrames(ArrayFrames):
        threads = set()
        active = 0
        overlaps = 0
        lock = threading.Lock()

        def frame(self, index):
            cls = OneThreadFrames
            with cls.lock:
                cls.active += 1
                cls.overlaps += cls.active > 1
                cls.threads.add(threading.get_ident())
            try:
                import time

                time.sleep(0.002)  # widen the window a concurrent read would fall into
                return super().frame(index)
            finally:
                with cls.lock:
                    cls.active -= 1

    list(VideoSegmenter(model, tok).segment_stream(OneThreadFrames(moving_square_video), EXPRESSIONS))
    assert OneThreadFrames.overlaps == 0 and len(OneThreadFrames.threads) == 1
