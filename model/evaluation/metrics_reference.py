"""Per-frame REFERENCE implementation of the official DAVIS-2017 / MeViS J and F, used by tests and the benchmark.

This restates the official ``metrics.py`` (``db_eval_iou``, ``f_measure``, ``_seg2bmap``) one frame at a time,
with the official dilation ``cv2.dilate(boundary, disk(bound_pix))`` and the official empty-mask branches, so
the vectorised :mod:`model.evaluation.metrics` can be checked against it. It is deliberately straightforward
and slow; do not use it for real evaluations. It imports nothing from the vectorised module.
"""

from __future__ import annotations

import cv2
import numpy as np


def reference_disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: ones where ``x*x + y*y <= r*r`` on a ``(2r+1)^2`` grid."""
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return ((x**2 + y**2) <= radius**2).astype(np.uint8)


def reference_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The official ``_seg2bmap`` for a same-size output (the only case the evaluation uses)."""
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def reference_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Official ``db_eval_iou`` for one frame: |P & G| / |P | G|, 1 when the union is empty."""
    p = np.asarray(pred).astype(bool)
    g = np.asarray(gt).astype(bool)
    inters = np.sum(p & g)
    union = np.sum(p | g)
    return 1.0 if np.isclose(union, 0) else float(inters / union)


def reference_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Official ``f_measure`` for one frame (no void pixels), dilation by ``cv2.dilate`` with a disk kernel."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_boundary = reference_seg2bmap(pred)
    gt_boundary = reference_seg2bmap(gt)
    kernel = reference_disk(int(bound_pix))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel)
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def reference_scores(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> tuple[np.ndarray, np.ndarray]:
    """J and F per frame of ``(T, H, W)`` stacks, one frame at a time (the official loop)."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    j = np.array([reference_iou(pred[t], gt[t]) for t in range(pred.shape[0])], np.float64)
    f = np.array([reference_f_measure(pred[t], gt[t], bound_th) for t in range(pred.shape[0])], np.float64)
    return j, f
