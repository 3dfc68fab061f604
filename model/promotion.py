"""The promotion gate: a fine-tuned candidate replaces the current model only if J&F does not drop.

Both checkpoints segment the same held-out split (MeViS layout: the corrected tasks kept out of training) with
the serving defaults, and are scored with the official J/F (:mod:`model.evaluation.metrics`). The candidate
passes when ``candidate J&F >= current J&F - tolerance``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import CheckpointChain

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    candidate_jf: float
    current_jf: float
    expressions: int
    tolerance: float

    @property
    def promoted(self) -> bool:
        return self.candidate_jf >= self.current_jf - self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "promoted": self.promoted}


def score_checkpoint(
    checkpoint: str | Path | CheckpointChain, root: str | Path, split: str, device: str = "cpu"
) -> tuple[float, int]:
    """J&F of a checkpoint (a folder, or a base with deltas) on a MeViS-layout split (serving defaults: sliding
    schedule, first frame)."""
    from .datasets import open_dataset
    from .evaluation.metrics import aggregate, score_expression
    from .inference import Expression, VideoSegmenter
    from .video_io import FrameFiles

    chain = checkpoint if isinstance(checkpoint, CheckpointChain) else CheckpointChain(Path(checkpoint))
    model, tokenizer = chain.load(device)
    segmenter = VideoSegmenter(model, tokenizer, device=device)
    dataset = open_dataset("mevis", root, split)
    scores = []
    for video in dataset.videos.values():
        if not video.expressions:
            continue
        source = FrameFiles(dataset.frame_paths(video.video_id))
        exprs = [Expression(e.text, e.exp_id) for e in video.expressions]
        for expr, result in zip(exprs, segmenter.segment(source, exprs)):
            gt = dataset.gt_masks(video.video_id, expr.exp_id)
            scores.append(score_expression(video.video_id, expr.exp_id, result.masks, gt))
    if not scores:
        raise ValueError(f"no expression to evaluate in {root}/{split}")
    return float(aggregate(scores).jf), len(scores)


def promotion_gate(
    candidate: str | Path | CheckpointChain,
    current: str | Path | CheckpointChain,
    root: str | Path,
    split: str,
    tolerance: float = 0.0,
    device: str = "cpu",
) -> GateResult:
    """Score both checkpoints on the held-out split and decide."""
    current_jf, n = score_checkpoint(current, root, split, device)
    candidate_jf, _ = score_checkpoint(candidate, root, split, device)
    result = GateResult(candidate_jf, current_jf, n, tolerance)
    logger.info(
        "promotion gate on %d held-out expressions: candidate J&F %.3f vs current %.3f -> %s",
        n,
        candidate_jf,
        current_jf,
        "promote" if result.promoted else "refuse",
    )
    return result
