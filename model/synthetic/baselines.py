"""Trivial answers on the synthetic benchmark, the bars a model must clear.

* ``empty``: no pixel (J = 1 only on frames where the target is invisible too);
* ``whole_frame``: every pixel;
* ``all_objects``: the union of all objects' visible masks (perfect objectness, no language);
* ``appearance_union``: the union of the objects that the expression's appearance words match, i.e. the best
  motion-blind answer (for a motion expression among look-alikes it segments every look-alike).

Scores use :mod:`model.evaluation.metrics` (official J / F semantics), aggregated overall, per expression kind
and over the motion expressions among look-alikes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..datasets import decode_rle, open_dataset
from ..evaluation.metrics import DatasetScore, ExpressionScore, aggregate, score_expression
from .dataset import load_split_extras
from .world import KINDS, SyntheticVideo

logger = logging.getLogger(__name__)

BASELINES = ("empty", "whole_frame", "all_objects", "appearance_union")
CATEGORIES = ("all", *KINDS, "motion_lookalikes")
"""Score groups: every expression, each kind, and motion expressions among look-alikes."""
TEMPLATE_PREFIX = "template:"


def template_category(template: str, motion_lookalikes: bool) -> str:
    """The finer score group of one grammar template (``template:motion/linear``), look-alike contrasts apart
    (``template:motion/linear (look-alikes)``): it shows which skill a model lacks (say location, for
    relations and motion alike) where the per-kind means blur it."""
    return f"{TEMPLATE_PREFIX}{template or '?'}" + (" (look-alikes)" if motion_lookalikes else "")


def score_groups(kind: str, motion_lookalikes: bool, template: str | None = None) -> tuple[str, ...]:
    """The categories one expression counts in: ``all``, its kind, ``motion_lookalikes`` if it is one, and its
    :func:`template_category` when ``template`` is given (``--by-template``)."""
    groups = ("all", kind) + (("motion_lookalikes",) if motion_lookalikes else ())
    return groups + ((template_category(template, motion_lookalikes),) if template is not None else ())


@dataclass(frozen=True, eq=False)
class BaselineItem:
    """What the baselines need of one expression: its ground truth, every object's visible masks
    ``(n, T, H, W)``, the objects its appearance words match, and its categories."""

    video_id: str
    exp_id: str
    gt: np.ndarray
    object_masks: np.ndarray
    appearance_match: tuple[int, ...]
    kind: str
    motion_lookalikes: bool
    template: str = ""

    def categories(self, by_template: bool = False) -> tuple[str, ...]:
        return score_groups(self.kind, self.motion_lookalikes, self.template if by_template else None)


def baseline_prediction(name: str, item: BaselineItem) -> np.ndarray:
    """``(T, H, W)`` bool prediction of baseline ``name`` for one expression."""
    shape = item.gt.shape
    if name == "empty":
        return np.zeros(shape, bool)
    if name == "whole_frame":
        return np.ones(shape, bool)
    if name == "all_objects":
        return item.object_masks.any(axis=0) if len(item.object_masks) else np.zeros(shape, bool)
    if name == "appearance_union":
        ids = list(item.appearance_match)
        return item.object_masks[ids].any(axis=0) if ids else np.zeros(shape, bool)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


def items_from_videos(videos: Iterable[SyntheticVideo]) -> Iterator[BaselineItem]:
    """Baseline items of in-memory videos (video ids are the seeds)."""
    for video in videos:
        for index, expression in enumerate(video.expressions):
            yield BaselineItem(
                str(video.seed),
                str(index),
                video.expression_masks(index),
                video.masks,
                expression.appearance_match,
                expression.kind,
                expression.motion_lookalikes,
                expression.template,
            )


def items_from_split(root: str | Path, split: str) -> Iterator[BaselineItem]:
    """Baseline items of a written split, read through the MeViS reader (so the files are what is scored)."""
    dataset = open_dataset("mevis", root, split)
    info, objects = load_split_extras(dataset.split_dir)
    mask_dict = dataset.mask_dict()
    for video_id, video in dataset.videos.items():
        records = objects[video_id]["objects"]
        size = dataset.frame_size(video_id)
        stacks = []
        for record in records:
            rles = mask_dict[str(record["anno_id"])]
            stacks.append(np.stack([np.zeros(size, bool) if rle is None else decode_rle(rle) for rle in rles]))
        object_masks = np.stack(stacks) if stacks else np.zeros((0, len(video.frame_names), *size), bool)
        for expression in video.expressions:
            extra = info[video_id][expression.exp_id]
            yield BaselineItem(
                video_id,
                expression.exp_id,
                dataset.gt_masks(video_id, expression.exp_id),
                object_masks,
                tuple(extra["appearance_match"]),
                extra["kind"],
                bool(extra["motion_lookalikes"]),
                extra.get("template", ""),
            )


def score_baselines(
    items: Iterable[BaselineItem],
    baselines: Iterable[str] = BASELINES,
    progress: bool = False,
    by_template: bool = False,
) -> dict[str, dict[str, DatasetScore]]:
    """``{baseline: {category: DatasetScore}}`` (categories without expressions are left out; with
    ``by_template`` also one :func:`template_category` per template)."""
    baselines = tuple(baselines)
    scores: dict[str, dict[str, list[ExpressionScore]]] = {b: {c: [] for c in CATEGORIES} for b in baselines}
    for item in tqdm(items, unit="expr", desc="baselines", disable=not progress):
        for name in baselines:
            score = score_expression(item.video_id, item.exp_id, baseline_prediction(name, item), item.gt)
            for category in item.categories(by_template):
                scores[name].setdefault(category, []).append(score)
    return {name: {c: aggregate(s) for c, s in by_cat.items() if s} for name, by_cat in scores.items()}


def evaluate_split(
    root: str | Path, split: str = "test", progress: bool = True, by_template: bool = False
) -> dict[str, dict[str, DatasetScore]]:
    """Scores of every baseline on a written split."""
    logger.info("scoring baselines on %s/%s", root, split)
    return score_baselines(items_from_split(root, split), progress=progress, by_template=by_template)


def format_table(results: dict[str, dict[str, DatasetScore]]) -> str:
    """A plain-text table: one row per (category, baseline) with the number of expressions, J, F and J&F."""
    lines = [f"{'category':<18} {'baseline':<17} {'n':>5} {'J':>6} {'F':>6} {'J&F':>6}"]
    lines.append("-" * len(lines[0]))
    for category in CATEGORIES:
        for name, by_cat in results.items():
            score = by_cat.get(category)
            if score is None:
                continue
            lines.append(
                f"{category:<18} {name:<17} {score.n_expressions:>5} {score.j:>6.3f} {score.f:>6.3f} {score.jf:>6.3f}"
            )
    return "\n".join(lines)
