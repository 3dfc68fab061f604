"""Region similarity J and boundary accuracy F with the exact semantics of the DAVIS-2017 / MeViS ``metrics.py``.

The official code scores one frame at a time and dilates both boundary maps with a disk kernel
(``cv2.dilate`` with ``skimage.morphology.disk(bound_pix)``), which dominates its cost at high resolution.
Here a whole ``(T, H, W)`` stack is scored at once and the dilation is never materialised: a boundary pixel
is matched when the other boundary map has a pixel inside the disk around it, and the disk is an exact union
of a few axis-aligned rectangles whose pixel counts come from one summed-area table per map. Only the sparse
boundary pixels are queried. Results are identical (same integers, same float operations) to the official
per-frame code, which :mod:`model.evaluation.metrics_reference` restates for tests and the benchmark.

Semantics (glus-reference.md section 7):

- J: ``|P & G| / |P | G|`` per frame; a frame whose union is empty scores 1.
- Boundary map: a pixel is boundary if it differs from its right, lower or lower-right neighbour; on the last
  row only the right neighbour counts, on the last column only the lower one, the bottom-right pixel never is.
- Tolerance: ``bound_pix = ceil(bound_th * ||(H, W)||)`` (``bound_th = 0.008``), or ``bound_th`` itself when
  it is >= 1; a boundary pixel matches when a boundary pixel of the other map lies within the disk
  ``dx^2 + dy^2 <= bound_pix^2``.
- Precision = matched predicted boundary / predicted boundary, recall likewise for the ground truth;
  both boundaries empty -> P = R = 1 (F = 1); exactly one empty -> F = 0; F = 2PR / (P + R), 0 when P + R = 0.
- Per expression: mean over frames; data set: unweighted mean over expressions; J&F = (J + F) / 2.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS / MeViS default)."""

# Frames are processed in chunks of about this many pixels: small enough to stay in cache, large enough to
# amortise the per-call overhead of the sparse queries. Results do not depend on it.
_CHUNK_PIXELS = 1 << 20

_T = TypeVar("_T")
_R = TypeVar("_R")


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


def bound_pix(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels, computed with the official float expression so the ceiling never differs."""
    if bound_th >= 1:
        if float(bound_th) != int(bound_th):
            # The official disk() of a fractional radius is an even-sized, off-centre kernel: never intended.
            raise ValueError(f"a pixel tolerance (bound_th >= 1) must be an integer, got {bound_th}")
        return int(bound_th)
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` uint8 kernel with ``x*x + y*y <= r*r``: exactly ``skimage.morphology.disk(r)``."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    coords = np.arange(-radius, radius + 1)
    return ((coords[:, None] ** 2 + coords[None, :] ** 2) <= radius * radius).astype(np.uint8)


def _disk_rectangles(radius: int) -> list[tuple[int, int]]:
    """The disk as a union of rectangles ``|dy| <= k, |dx| <= w``, largest first.

    ``w(k) = isqrt(r^2 - k^2)`` is the half-width of row ``k``; keeping only the rows where the half-width
    drops is enough to cover the disk exactly. Largest first so most pixels are settled by the first query.
    """
    half = [math.isqrt(radius * radius - k * k) for k in range(radius + 1)]
    rects = [(k, half[k]) for k in range(radius + 1) if k == radius or half[k] > half[k + 1]]
    rects.sort(key=lambda kw: -(2 * kw[0] + 1) * (2 * kw[1] + 1))
    return rects


def _as_stack(masks: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(masks)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (T, H, W), got shape {array.shape}")
    return array


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    single = np.ndim(pred) == 2
    p, g = _as_stack(pred, "pred"), _as_stack(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {np.shape(pred)} and gt {np.shape(gt)} shapes differ")
    return p, g, single


def _binary_u8(masks: np.ndarray) -> np.ndarray:
    """0/1 uint8 C-contiguous masks (any non-zero value is foreground, as the official ``astype(bool)``)."""
    if masks.dtype == bool:
        return np.ascontiguousarray(masks).view(np.uint8)
    return np.not_equal(masks, 0).view(np.uint8)


def _bmap_tall(tall: np.ndarray, height: int) -> np.ndarray:
    """Boundary maps (0/1 uint8) of frames stacked vertically into one ``(k*H, W)`` image.

    A pixel is boundary iff its 2x2 block (itself, right, lower, lower-right) is not uniform, i.e. the block's
    max differs from its min; outside pixels replicate the edge, which yields the official last-column rule.
    Each frame's last row looked into the next frame, so it is recomputed with the official last-row rule.
    """
    block = np.ones((2, 2), np.uint8)
    hi = cv2.dilate(tall, block, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    lo = cv2.erode(tall, block, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    bmap = cv2.bitwise_xor(hi, lo)
    frames = bmap.reshape(-1, height, tall.shape[1])
    last = tall.reshape(-1, height, tall.shape[1])[:, -1, :]
    frames[:, -1, :-1] = last[:, :-1] ^ last[:, 1:]
    frames[:, -1, -1] = 0
    return bmap


def seg2bmap(masks: np.ndarray) -> np.ndarray:
    """Boundary map(s) of ``(H, W)`` or ``(T, H, W)`` masks, as the official ``_seg2bmap`` (bool, same shape)."""
    stack = _as_stack(masks, "masks")
    t, h, w = stack.shape
    if stack.size == 0:
        return np.zeros(np.shape(masks), bool)
    out = _bmap_tall(np.ascontiguousarray(_binary_u8(stack)).reshape(t * h, w), h)
    return out.view(bool).reshape(np.shape(masks))


def _padded(bmap: np.ndarray, frames: int, height: int, width: int, pad: int) -> np.ndarray:
    """Frames of a tall boundary map, each surrounded by ``pad`` zero pixels, stacked vertically again.

    With this margin a disk around any boundary pixel stays inside its own padded frame, so the rectangle
    queries need no clipping and never reach a neighbouring frame.
    """
    out = np.zeros((frames, height + 2 * pad, width + 2 * pad), np.uint8)
    out[:, pad:pad + height, pad:pad + width] = bmap.reshape(frames, height, width)
    return out.reshape(frames * (height + 2 * pad), width + 2 * pad)


def _matched(queries: np.ndarray, table: np.ndarray, stride: int, rects: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which query pixels have a pixel of the other boundary map inside their disk.

    ``queries`` are positions ``row * stride + col`` in the flattened summed-area table (``cv2.integral``,
    ``stride`` = padded width + 1) of the other map; each rectangle's pixel count is four look-ups.
    """
    hit = np.zeros(queries.shape[0], bool)
    active = np.arange(queries.shape[0])
    q = queries
    for k, w in rects:
        if active.size == 0:
            break
        below, above = (k + 1) * stride, -k * stride
        found = (table[q + (below + w + 1)] - table[q + (above + w + 1)]
                 - table[q + (below - w)] + table[q + (above - w)]) > 0
        hit[active[found]] = True
        active = active[~found]
        q = queries[active]
    return hit


@dataclass(frozen=True)
class FrameCounts:
    """Per-frame integer counts from which J and F follow (all arrays of shape ``(T,)``, int64)."""

    intersection: np.ndarray
    union: np.ndarray
    pred_boundary: np.ndarray
    gt_boundary: np.ndarray
    pred_matched: np.ndarray
    gt_matched: np.ndarray


def frame_counts(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> FrameCounts:
    """Count everything J and F need for a ``(T, H, W)`` pair of mask stacks in one pass."""
    p_all, g_all, _ = _check_pair(pred, gt)
    t_total, height, width = p_all.shape
    counts = {key: np.zeros(t_total, np.int64) for key in FrameCounts.__dataclass_fields__}
    if t_total == 0 or height == 0 or width == 0:
        return FrameCounts(**counts)
    # A radius beyond the frame's diagonal matches every pair, exactly like the diagonal itself.
    radius = min(bound_pix(height, width, bound_th), math.isqrt((height - 1) ** 2 + (width - 1) ** 2) + 1)
    rects = _disk_rectangles(radius)
    padded_h, padded_w = height + 2 * radius, width + 2 * radius
    step = max(1, _CHUNK_PIXELS // (height * width))
    for start in range(0, t_total, step):
        stop = min(t_total, start + step)
        k = stop - start
        p = _binary_u8(p_all[start:stop]).reshape(k * height, width)
        g = _binary_u8(g_all[start:stop]).reshape(k * height, width)
        pf, gf = p.view(bool).reshape(k, -1), g.view(bool).reshape(k, -1)
        for i in range(k):
            inter = np.count_nonzero(pf[i] & gf[i])
            counts["intersection"][start + i] = inter
            counts["union"][start + i] = np.count_nonzero(pf[i]) + np.count_nonzero(gf[i]) - inter
        bp = _padded(_bmap_tall(p, height), k, height, width, radius)
        bg = _padded(_bmap_tall(g, height), k, height, width, radius)
        p_idx, g_idx = np.flatnonzero(bp.view(bool)), np.flatnonzero(bg.view(bool))
        p_row, g_row = p_idx // padded_w, g_idx // padded_w
        p_frame, g_frame = p_row // padded_h, g_row // padded_h
        counts["pred_boundary"][start:stop] = np.bincount(p_frame, minlength=k)
        counts["gt_boundary"][start:stop] = np.bincount(g_frame, minlength=k)
        if p_idx.size and g_idx.size:
            # Position in the (rows + 1, cols + 1) summed-area table of the pixel's top-left corner.
            hit_p = _matched(p_idx + p_row, cv2.integral(bg).ravel(), padded_w + 1, rects)
            hit_g = _matched(g_idx + g_row, cv2.integral(bp).ravel(), padded_w + 1, rects)
            counts["pred_matched"][start:stop] = np.bincount(p_frame[hit_p], minlength=k)
            counts["gt_matched"][start:stop] = np.bincount(g_frame[hit_g], minlength=k)
    return FrameCounts(**counts)


def _iou_from_counts(c: FrameCounts) -> np.ndarray:
    union = c.union.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = c.intersection / union
    j[c.union == 0] = 1.0
    return j


def _prf_from_counts(c: FrameCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_p, n_g = c.pred_boundary, c.gt_boundary
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = c.pred_matched / n_p.astype(np.float64)
        recall = c.gt_matched / n_g.astype(np.float64)
    # The official empty rules, in its order of cases.
    precision[(n_p == 0) & (n_g > 0)], recall[(n_p == 0) & (n_g > 0)] = 1.0, 0.0
    precision[(n_p > 0) & (n_g == 0)], recall[(n_p > 0) & (n_g == 0)] = 0.0, 1.0
    precision[(n_p == 0) & (n_g == 0)], recall[(n_p == 0) & (n_g == 0)] = 1.0, 1.0
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * precision * recall / total  # same operation order as the official scalar code
    f[total == 0] = 0.0
    return f, precision, recall


def _unwrap(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


# ----------------------------------------------------------------------------------------------------------
# Public metric functions (official names; prediction first, ground truth second)
# ----------------------------------------------------------------------------------------------------------


def db_eval_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray | float:
    """Region similarity J per frame (``(T,)`` float64, or a float for one ``(H, W)`` frame)."""
    p, g, single = _check_pair(pred, gt)
    t = p.shape[0]
    inter = np.array([np.count_nonzero((p[i] != 0) & (g[i] != 0)) for i in range(t)], np.int64)
    union = np.array([np.count_nonzero((p[i] != 0) | (g[i] != 0)) for i in range(t)], np.int64)
    zeros = np.zeros(t, np.int64)
    return _unwrap(_iou_from_counts(FrameCounts(inter, union, zeros, zeros, zeros, zeros)), single)


def boundary_prf(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> tuple[np.ndarray, ...]:
    """Boundary F, precision and recall per frame (three ``(T,)`` float64 arrays)."""
    f, precision, recall = _prf_from_counts(frame_counts(pred, gt, bound_th))
    return f, precision, recall


def db_eval_boundary(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> np.ndarray | float:
    """Boundary accuracy F per frame (``(T,)`` float64, or a float for one ``(H, W)`` frame)."""
    single = np.ndim(pred) == 2
    return _unwrap(boundary_prf(pred, gt, bound_th)[0], single)


def score_frames(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """J and F per frame of a ``(T, H, W)`` stack pair in one pass (both ``(T,)`` float64)."""
    counts = frame_counts(pred, gt, bound_th)
    return _iou_from_counts(counts), _prf_from_counts(counts)[0]


def db_statistics(per_frame_values: np.ndarray, legacy_uint8_bins: bool = True) -> tuple[float, float, float]:
    """DAVIS mean, recall (fraction > 0.5) and decay (first minus last of 4 bins), as ``utils.db_statistics``.

    The official code casts the bin edges to ``uint8``, so for sequences longer than 256 frames the edges wrap
    (and the decay is usually NaN). ``legacy_uint8_bins=True`` reproduces that (wrapping modulo 256, the x86
    result of the cast) for identical numbers; ``False`` uses the intended edges.
    """
    values = np.asarray(per_frame_values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
    n_bins = 4
    ids = (np.round(np.linspace(1, len(values), n_bins + 1) + 1e-10) - 1).astype(np.int64)
    if legacy_uint8_bins:
        ids %= 256
    bins = [values[ids[i]:ids[i + 1] + 1] for i in range(n_bins)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


# ----------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpressionScore:
    """Scores of one (video, expression): means over its frames plus DAVIS statistics."""

    video_id: str
    exp_id: str
    j: float
    f: float
    n_frames: int
    j_recall: float = float("nan")
    j_decay: float = float("nan")
    f_recall: float = float("nan")
    f_decay: float = float("nan")
    pred_missing: bool = False
    missing_frames: int = 0

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    @classmethod
    def from_frames(cls, video_id: str, exp_id: str, j: np.ndarray, f: np.ndarray,
                    missing_frames: int = 0) -> ExpressionScore:
        """Frame means (as the official ``.mean()``) and DAVIS statistics of per-frame J and F."""
        j = np.asarray(j, np.float64)
        f = np.asarray(f, np.float64)
        if j.shape != f.shape or j.ndim != 1 or j.size == 0:
            raise ValueError(f"need two equal non-empty 1-D arrays, got {j.shape} and {f.shape}")
        _, jo, jd = db_statistics(j)
        _, fo, fd = db_statistics(f)
        return cls(video_id, exp_id, float(j.mean()), float(f.mean()), int(j.size), jo, jd, fo, fd,
                   missing_frames=missing_frames)


@dataclass(frozen=True)
class DatasetScore:
    """Unweighted means over expressions (J&F = (J + F) / 2, as the MeViS script)."""

    j: float
    f: float
    n_expressions: int
    j_recall: float = float("nan")
    j_decay: float = float("nan")
    f_recall: float = float("nan")
    f_decay: float = float("nan")

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def score_expression(video_id: str, exp_id: str, pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH,
                     missing_frames: int = 0) -> ExpressionScore:
    """Score one expression's ``(T, H, W)`` prediction against its ground truth (frame means + statistics)."""
    j, f = score_frames(pred, gt, bound_th)
    return ExpressionScore.from_frames(video_id, exp_id, j, f, missing_frames)


def missing_expression_score(video_id: str, exp_id: str, n_frames: int) -> ExpressionScore:
    """An expression without predictions scores J = F = 0, as in the official MeViS script."""
    zeros = np.zeros(max(n_frames, 1))
    _, jo, jd = db_statistics(zeros)
    return ExpressionScore(video_id, exp_id, 0.0, 0.0, n_frames, jo, jd, jo, jd, pred_missing=True)


def aggregate(scores: Sequence[ExpressionScore]) -> DatasetScore:
    """Data-set means over expressions (each expression counts once, whatever its length)."""
    if not scores:
        nan = float("nan")
        return DatasetScore(nan, nan, 0)

    def mean(name: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return float(np.nanmean([getattr(s, name) for s in scores]))

    return DatasetScore(float(np.mean([s.j for s in scores])), float(np.mean([s.f for s in scores])), len(scores),
                        mean("j_recall"), mean("j_decay"), mean("f_recall"), mean("f_decay"))


# ----------------------------------------------------------------------------------------------------------
# Parallel map over expressions
# ----------------------------------------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the platform says)."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_workers(n_items: int, workers: int | None = None) -> int:
    """``workers`` if given, else ``min(cpus, n_items)``; always at least 1."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, workers if workers is not None else min(available_cpus(), n_items))


def parallel_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int | None = None,
                 mp_context: str | None = None) -> list[_R]:
    """``[fn(x) for x in items]`` over a process pool, in order; in-process when one worker suffices.

    ``fn`` and the items must be picklable. The default start method is ``fork`` on Linux (workers inherit
    the already imported packages instead of re-importing them; they use only numpy/OpenCV, never CUDA),
    the platform default elsewhere. Exceptions raised by ``fn`` propagate to the caller.
    """
    items = list(items)
    n = default_workers(len(items), workers)
    if n == 1 or len(items) <= 1:
        return [fn(item) for item in items]
    if mp_context is None and sys.platform.startswith("linux"):
        mp_context = "fork"
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(mp_context))
    try:
        return list(pool.map(fn, items, chunksize=1))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not finish the remaining items first
