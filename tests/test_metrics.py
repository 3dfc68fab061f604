"""J and F: hand-computed cases, the tolerance edge, the official per-frame reference, and the definition itself.

Hand cases pin every empty-mask rule of the official ``metrics.py``; the tolerance cases put a boundary exactly
``bound_pix`` and ``bound_pix + 1`` pixels away; hypothesis compares the vectorised code with a direct
per-pixel statement of the definition (independent of OpenCV); the per-frame cv2 reference
(``cv2.dilate`` with a disk) must agree within 1e-9 (in practice bit for bit).
"""

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.evaluation.metrics import (
    DatasetScore,
    ExpressionScore,
    aggregate,
    bound_pix,
    boundary_prf,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    missing_expression_score,
    parallel_map,
    score_expression,
    score_frames,
    seg2bmap,
)
from model.evaluation.metrics_reference import reference_disk, reference_f_measure, reference_scores, reference_seg2bmap

# ------------------------------------------------------------------------------------------------------------
# Direct per-pixel statement of the definition (no OpenCV, no vectorisation tricks)
# ------------------------------------------------------------------------------------------------------------


def direct_bmap(seg: np.ndarray) -> np.ndarray:
    h, w = seg.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            v = bool(seg[y, x])
            if y < h - 1 and x < w - 1:
                out[y, x] = v != seg[y, x + 1] or v != seg[y + 1, x] or v != seg[y + 1, x + 1]
            elif y == h - 1 and x < w - 1:
                out[y, x] = v != seg[y, x + 1]
            elif x == w - 1 and y < h - 1:
                out[y, x] = v != seg[y + 1, x]
    return out


def direct_prf(pred: np.ndarray, gt: np.ndarray, radius: int) -> tuple[float, float, float]:
    """For each boundary pixel, is any boundary pixel of the other map inside the disk? Then the empty rules."""
    bp = np.argwhere(direct_bmap(pred))
    bg = np.argwhere(direct_bmap(gt))
    if len(bp) == 0 and len(bg) == 0:
        return 1.0, 1.0, 1.0
    if len(bp) == 0:
        return 0.0, 1.0, 0.0
    if len(bg) == 0:
        return 0.0, 0.0, 1.0
    d2 = ((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1)
    within = d2 <= radius * radius
    precision = within.any(axis=1).sum() / len(bp)
    recall = within.any(axis=0).sum() / len(bg)
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f, precision, recall


def direct_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else np.logical_and(pred, gt).sum() / union


# ------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------------------------

EMPTY = np.zeros((10, 12), bool)
SQUARE = np.zeros((10, 12), bool)
SQUARE[3:6, 4:8] = True


def test_both_empty_scores_one():
    assert db_eval_iou(EMPTY, EMPTY) == 1.0
    assert db_eval_boundary(EMPTY, EMPTY) == 1.0
    f, p, r = boundary_prf(EMPTY, EMPTY)
    assert (f[0], p[0], r[0]) == (1.0, 1.0, 1.0)


def test_empty_prediction_of_an_object_scores_zero():
    assert db_eval_iou(EMPTY, SQUARE) == 0.0
    f, p, r = boundary_prf(EMPTY, SQUARE)
    assert (f[0], p[0], r[0]) == (0.0, 1.0, 0.0)


def test_prediction_where_there_is_no_object_scores_zero():
    assert db_eval_iou(SQUARE, EMPTY) == 0.0
    f, p, r = boundary_prf(SQUARE, EMPTY)
    assert (f[0], p[0], r[0]) == (0.0, 0.0, 1.0)


def test_full_frame_masks_have_no_boundary_so_f_is_one():
    # An official quirk worth pinning: a mask covering the whole frame has an empty boundary map.
    full = np.ones((10, 12), bool)
    assert not seg2bmap(full).any()
    assert db_eval_boundary(full, EMPTY) == 1.0
    assert db_eval_iou(full, EMPTY) == 0.0


def test_iou_hand_value():
    pred = np.zeros((6, 6), bool)
    gt = np.zeros((6, 6), bool)
    pred[1:3, 1:3] = True  # 4 px
    gt[1:3, 1:4] = True  # 6 px, contains pred
    assert db_eval_iou(pred, gt) == pytest.approx(4 / 6, abs=0)


def test_identical_masks_score_one():
    j, f = score_frames(SQUARE[None], SQUARE[None])
    assert j.tolist() == [1.0] and f.tolist() == [1.0]


def test_boundary_map_hand_example():
    seg = np.array(
        [
            [0, 0, 0, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 0],
        ],
        bool,
    )
    # Interior: differs from right, lower or lower-right; last column: lower only; last row: right only;
    # bottom-right: never. (1, 1) is inside a uniform 2x2 block of ones, so it is not boundary.
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 0, 1, 0],
        ],
        bool,
    )
    assert np.array_equal(seg2bmap(seg), expected)
    assert np.array_equal(reference_seg2bmap(seg), expected)
    assert np.array_equal(direct_bmap(seg), expected)


def test_bound_pix_values():
    assert bound_pix(480, 854) == 8  # ceil(0.008 * 979.6)
    assert bound_pix(1080, 1920) == 18  # ceil(0.008 * 2202.9)
    assert bound_pix(100, 100) == 2  # ceil(0.008 * 141.4)
    assert bound_pix(10, 10, bound_th=3) == 3
    with pytest.raises(ValueError):
        bound_pix(10, 10, bound_th=2.5)


def test_disk_is_the_skimage_disk():
    for r in range(0, 20):
        k = disk(r)
        assert k.shape == (2 * r + 1, 2 * r + 1) and k.dtype == np.uint8
        assert np.array_equal(k, reference_disk(r))
    assert disk(2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]


@pytest.mark.parametrize("height,width", [(100, 100), (480, 854)])
@pytest.mark.parametrize("axis", [0, 1])
def test_tolerance_edge(height, width, axis):
    """A straight boundary displaced by exactly bound_pix matches everywhere; by bound_pix + 1 nowhere."""
    r = bound_pix(height, width)
    assert r == {100: 2, 480: 8}[height]
    edge = 40

    def half_plane(extent):
        mask = np.zeros((height, width), bool)
        if axis == 1:
            mask[:, :extent] = True  # boundary = column extent - 1, every row (last row: right-neighbour rule)
        else:
            mask[:extent, :] = True  # boundary = row extent - 1, every column (last column: lower rule)
        return mask

    gt = half_plane(edge)
    for shift, expected in [(r, 1.0), (r + 1, 0.0)]:
        pred = half_plane(edge + shift)
        f, p, rec = boundary_prf(pred, gt)
        assert (f[0], p[0], rec[0]) == (expected, expected, expected), shift
        assert reference_f_measure(pred, gt) == expected


@pytest.mark.parametrize("bound_th,expected", [(2, 0.25), (3, 1.0)])
def test_tolerance_is_a_disk_not_a_square(bound_th, expected):
    """Single pixels at (11, 11) and (13, 13): their boundary maps are the 2x2 blocks rows/cols 10-11 and 12-13.

    Radius 2: only (12, 12) <-> (11, 11) (distance^2 2) is within the disk; (12, 13) <-> (11, 11) has distance^2
    5 > 4, although a square window of half-size 2 would contain it. So P = R = 1/4 and F = 1/4.
    Radius 3: the farthest pair (13, 13) <-> (11, 11) has distance^2 8 <= 9, so everything matches.
    """
    gt = np.zeros((30, 30), bool)
    pred = np.zeros((30, 30), bool)
    gt[11, 11] = True
    pred[13, 13] = True
    f, p, r = boundary_prf(pred, gt, bound_th)
    assert (f[0], p[0], r[0]) == (expected, expected, expected)
    assert reference_f_measure(pred, gt, bound_th) == expected


def test_2d_and_3d_inputs():
    stack = np.stack([SQUARE, EMPTY, SQUARE])
    j = db_eval_iou(stack, np.stack([SQUARE, EMPTY, EMPTY]))
    assert j.tolist() == [1.0, 1.0, 0.0]
    f = db_eval_boundary(stack, np.stack([SQUARE, EMPTY, EMPTY]))
    assert f.tolist() == [1.0, 1.0, 0.0]
    assert isinstance(db_eval_iou(SQUARE, SQUARE), float)
    with pytest.raises(ValueError):
        score_frames(SQUARE, SQUARE[:5])


def test_non_binary_values_are_foreground():
    as255 = SQUARE.astype(np.uint8) * 255
    j, f = score_frames(as255[None], SQUARE[None])
    assert j[0] == 1.0 and f[0] == 1.0


# ------------------------------------------------------------------------------------------------------------
# DAVIS statistics and aggregation
# ------------------------------------------------------------------------------------------------------------


def test_db_statistics_hand_values():
    # ids = round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]; bins [0:3], [2:5], [4:6], [5:8].
    mean, recall, decay = db_statistics(np.array([1, 1, 1, 1, 0, 0, 0, 0], float))
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)
    mean, recall, decay = db_statistics(np.array([0.2, 0.6, 0.9, 0.4]))
    assert mean == pytest.approx(0.525)
    assert recall == 0.5
    # ids = round(linspace(1, 4, 5)) - 1 = [0, 1, 2, 2, 3] (1.75 -> 2, 2.5 + 1e-10 -> 3, 3.25 -> 3)
    assert decay == pytest.approx(np.mean([0.2, 0.6]) - np.mean([0.9, 0.4]))


def test_db_statistics_legacy_uint8_wrap():
    values = np.linspace(1, 0, 300)
    assert math.isnan(db_statistics(values)[2])  # official uint8 bin edges wrap past 255
    decay = db_statistics(values, legacy_uint8_bins=False)[2]
    assert 0.7 < decay < 0.8


def test_aggregate_is_unweighted_over_expressions():
    a = score_expression("v", "0", np.stack([SQUARE] * 4), np.stack([SQUARE] * 4))
    b = ExpressionScore.from_frames("v", "1", np.array([0.0]), np.array([0.5]))
    m = missing_expression_score("w", "0", 7)
    assert (a.j, a.f, a.n_frames) == (1.0, 1.0, 4)
    assert (m.j, m.f, m.pred_missing) == (0.0, 0.0, True)
    summary = aggregate([a, b, m])
    assert isinstance(summary, DatasetScore)
    assert summary.j == pytest.approx(1 / 3)
    assert summary.f == pytest.approx(1.5 / 3)
    assert summary.jf == pytest.approx((1 / 3 + 0.5) / 2)
    assert summary.n_expressions == 3


def _square(x: int) -> int:
    return x * x


def test_parallel_map_keeps_order():
    items = list(range(7))
    assert parallel_map(_square, items, workers=2) == [x * x for x in items]
    assert parallel_map(_square, items, workers=1) == [x * x for x in items]
    with pytest.raises(ValueError):
        parallel_map(_square, items, workers=0)


# ------------------------------------------------------------------------------------------------------------
# Agreement with the per-frame cv2 reference on realistic masks
# ------------------------------------------------------------------------------------------------------------


def _blobs(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    out = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        for _ in range(int(rng.integers(0, 4))):
            center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(1, width // 3)), int(rng.integers(1, height // 3)))
            cv2.ellipse(out[t], center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


@pytest.mark.parametrize(
    "height,width,bound_th", [(48, 64, 0.008), (120, 90, 0.008), (97, 131, 0.05), (480, 854, 0.008)]
)
def test_agrees_with_cv2_reference(height, width, bound_th):
    rng = np.random.default_rng(height * width)
    frames = 2 if height == 480 else 12
    gt = _blobs(rng, frames, height, width)
    shifted = np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(1, 2))
    pred = shifted ^ (rng.random(gt.shape) < 0.01)
    pred[0] = False  # an empty prediction
    gt[-1] = False  # an empty ground truth
    j, f = score_frames(pred, gt, bound_th)
    jr, fr = reference_scores(pred, gt, bound_th)
    assert np.max(np.abs(j - jr)) <= 1e-9
    assert np.max(np.abs(f - fr)) <= 1e-9
    assert np.array_equal(seg2bmap(pred), np.stack([reference_seg2bmap(m) for m in pred]))


# ------------------------------------------------------------------------------------------------------------
# Property tests against the definition
# ------------------------------------------------------------------------------------------------------------


@st.composite
def mask_pairs(draw):
    frames = draw(st.integers(1, 3))
    height = draw(st.integers(1, 20))
    width = draw(st.integers(1, 20))

    def one_mask():
        kind = draw(st.sampled_from(["noise", "boxes", "empty", "full"]))
        if kind == "empty":
            return np.zeros((height, width), bool)
        if kind == "full":
            return np.ones((height, width), bool)
        if kind == "noise":
            seed = draw(st.integers(0, 2**32 - 1))
            return np.random.default_rng(seed).random((height, width)) < draw(st.sampled_from([0.1, 0.5, 0.9]))
        mask = np.zeros((height, width), bool)
        for _ in range(draw(st.integers(1, 3))):
            y0, y1 = sorted(draw(st.tuples(st.integers(0, height), st.integers(0, height))))
            x0, x1 = sorted(draw(st.tuples(st.integers(0, width), st.integers(0, width))))
            mask[y0:y1, x0:x1] = True
        return mask

    pred = np.stack([one_mask() for _ in range(frames)])
    gt = np.stack([one_mask() for _ in range(frames)])
    bound_th = draw(st.sampled_from([0.008, 0.05, 0.1, 1, 2, 3, 4, 6]))
    return pred, gt, bound_th


@settings(max_examples=100, deadline=None, derandomize=True)
@given(mask_pairs())
def test_vectorised_matches_definition(case):
    pred, gt, bound_th = case
    height, width = pred.shape[1:]
    radius = bound_pix(height, width, bound_th)
    f, p, r = boundary_prf(pred, gt, bound_th)
    j = db_eval_iou(pred, gt)
    assert np.array_equal(seg2bmap(pred), np.stack([direct_bmap(m) for m in pred]))
    for t in range(pred.shape[0]):
        df, dp, dr = direct_prf(pred[t], gt[t], radius)
        assert abs(f[t] - df) <= 1e-12 and abs(p[t] - dp) <= 1e-12 and abs(r[t] - dr) <= 1e-12
        assert abs(j[t] - direct_iou(pred[t], gt[t])) <= 1e-12
    jr, fr = reference_scores(pred, gt, bound_th)
    assert np.max(np.abs(f - fr)) <= 1e-9 and np.max(np.abs(j - jr)) <= 1e-9
