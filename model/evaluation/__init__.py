"""Evaluation of referring video segmentation: J, F and J&F with the official DAVIS / MeViS semantics.

:mod:`.metrics` is the vectorised implementation, :mod:`.metrics_reference` the per-frame restatement of the
official code used by tests and the benchmark, :mod:`.cli` the ``eval`` command.
"""

from .metrics import (
    BOUND_TH,
    DatasetScore,
    ExpressionScore,
    FrameCounts,
    aggregate,
    bound_pix,
    boundary_prf,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    frame_counts,
    missing_expression_score,
    parallel_map,
    score_expression,
    score_frames,
    seg2bmap,
)

__all__ = [
    "BOUND_TH",
    "DatasetScore",
    "ExpressionScore",
    "FrameCounts",
    "aggregate",
    "bound_pix",
    "boundary_prf",
    "db_eval_boundary",
    "db_eval_iou",
    "db_statistics",
    "disk",
    "frame_counts",
    "missing_expression_score",
    "parallel_map",
    "score_expression",
    "score_frames",
    "seg2bmap",
]
