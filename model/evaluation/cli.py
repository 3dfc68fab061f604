"""``eval``: score a prediction tree ``<pred>/<video>/<exp_id>/<frame>.png`` against a data set's ground truth.

    python -m model.evaluation.cli eval --dataset mevis --root data/mevis --split valid_u --pred out/valid_u

Prints J, F and J&F (percent and raw) and writes one CSV row per expression. Semantics follow the official
MeViS ``eval_mevis.py`` (glus-reference.md section 7) with these documented differences, all about robustness:

- a missing prediction folder for an expression scores J = F = 0, as the official script, but is counted and
  logged as a warning;
- a missing single frame PNG inside an existing expression folder is scored as an empty mask and logged
  (the official script crashes there: ``cv2.imread`` returns None and the assignment fails);
- the frame size comes from the ground truth, not from a ``00000.png`` that may not exist; a prediction of a
  different size is an error naming the file.

Expressions are scored in a process pool (``--workers``, default ``min(cpus, expressions)``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import DATASETS, DEFAULT_SPLITS, DatasetFormatError, MaskSource, VideoDataset, open_dataset
from ..datasets.common import entry_name
from ..datasets.masks import read_binary_png
from .metrics import (
    BOUND_TH,
    DatasetScore,
    ExpressionScore,
    aggregate,
    missing_expression_score,
    parallel_map,
    score_frames,
)

logger = logging.getLogger(__name__)

FRAMES_PER_STEP = 32
"""Frames loaded and scored at a time per expression, to bound a worker's memory on long videos."""

CSV_COLUMNS = ("video", "exp_id", "J", "F", "J&F", "n_frames", "J_recall", "J_decay", "F_recall", "F_decay",
               "pred_missing", "missing_frames")


@dataclass(frozen=True)
class EvalTask:
    """Everything a worker needs to score one expression (picklable, independent of the data set reader)."""

    video_id: str
    exp_id: str
    frame_names: tuple[str, ...]
    pred_dir: str
    gt: MaskSource
    bound_th: float = BOUND_TH


@dataclass(frozen=True)
class TaskResult:
    score: ExpressionScore
    missing_frame_names: tuple[str, ...] = ()


@dataclass
class EvalReport:
    """Per-expression scores (data set order), their aggregate, and what was missing."""

    scores: list[ExpressionScore]
    summary: DatasetScore
    missing_expressions: list[tuple[str, str]] = field(default_factory=list)
    missing_frames: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_missing_frames(self) -> int:
        return sum(len(v) for v in self.missing_frames.values())


def _read_predictions(task: EvalTask, indices: range, size: tuple[int, int], missing: list[str]) -> np.ndarray:
    out = np.zeros((len(indices), *size), bool)
    for slot, index in enumerate(indices):
        name = task.frame_names[index]
        path = Path(task.pred_dir) / f"{name}.png"
        if not path.is_file():
            missing.append(name)  # scored as an empty mask (the official script crashes here)
            continue
        entry = entry_name(task.video_id, task.exp_id, frame=index)
        mask = read_binary_png(path, entry)
        if mask.shape != size:
            raise DatasetFormatError(path, entry, f"prediction is {mask.shape[0]}x{mask.shape[1]}, "
                                                  f"ground truth is {size[0]}x{size[1]}")
        out[slot] = mask
    return out


def _first_prediction_size(task: EvalTask) -> tuple[int, int] | None:
    for index, name in enumerate(task.frame_names):
        path = Path(task.pred_dir) / f"{name}.png"
        if path.is_file():
            return read_binary_png(path, entry_name(task.video_id, task.exp_id, frame=index)).shape
    return None


def evaluate_task(task: EvalTask) -> TaskResult:
    """Score one expression (runs in a worker process): J and F per frame, then means and statistics."""
    n = len(task.frame_names)
    if not Path(task.pred_dir).is_dir():
        return TaskResult(missing_expression_score(task.video_id, task.exp_id, n))
    missing: list[str] = []
    default_size = None
    j_parts, f_parts = [], []
    size: tuple[int, int] | None = None
    for start in range(0, n, FRAMES_PER_STEP):
        indices = range(start, min(n, start + FRAMES_PER_STEP))
        if size is None:
            default_size = _first_prediction_size(task)  # used only if the ground truth cannot tell the size
        gt = task.gt.load(default_size, indices.start, indices.stop)
        if size is None:
            size = (int(gt.shape[1]), int(gt.shape[2]))
        elif gt.shape[1:] != size:
            paths = getattr(task.gt, "paths", None)
            file = paths[indices.start] if paths else getattr(task.gt, "file", task.pred_dir)
            raise DatasetFormatError(file, entry_name(task.video_id, task.exp_id, frame=indices.start),
                                     f"ground truth changes size from {size[0]}x{size[1]} to "
                                     f"{gt.shape[1]}x{gt.shape[2]}")
        pred = _read_predictions(task, indices, size, missing)
        j, f = score_frames(pred, gt, task.bound_th)
        j_parts.append(j)
        f_parts.append(f)
    score = ExpressionScore.from_frames(task.video_id, task.exp_id, np.concatenate(j_parts),
                                        np.concatenate(f_parts), missing_frames=len(missing))
    return TaskResult(score, tuple(missing))


def build_tasks(dataset: VideoDataset, pred_root: str | Path, bound_th: float = BOUND_TH) -> list[EvalTask]:
    """One task per (video, expression) of the data set, in file order."""
    if not dataset.has_gt:
        raise DatasetFormatError(getattr(dataset, "split_dir", dataset.meta_path), "",
                                 "this split has no ground truth; score it on the evaluation server")
    pred_root = Path(pred_root)
    return [EvalTask(video.video_id, expression.exp_id, video.frame_names,
                     str(pred_root / video.video_id / expression.exp_id),
                     dataset.mask_source(video.video_id, expression.exp_id), bound_th)
            for video, expression in dataset.iter_expressions()]


def evaluate_predictions(dataset: VideoDataset, pred_root: str | Path, workers: int | None = None,
                         bound_th: float = BOUND_TH, mp_context: str | None = None) -> EvalReport:
    """Score a prediction tree against ``dataset`` (programmatic entry point of ``eval``).

    Workers are forked on Linux by default (cheap: no re-import). From a process that has initialised CUDA or
    runs many native threads (a GPU worker gating a model version), pass ``mp_context="forkserver"`` or
    ``"spawn"``; the tasks are self-contained, so any start method works.
    """
    tasks = build_tasks(dataset, pred_root, bound_th)
    results = parallel_map(evaluate_task, tasks, workers, mp_context)
    scores = [r.score for r in results]
    report = EvalReport(scores, aggregate(scores))
    for result in results:
        key = (result.score.video_id, result.score.exp_id)
        if result.score.pred_missing:
            report.missing_expressions.append(key)
        if result.missing_frame_names:
            report.missing_frames[key] = result.missing_frame_names
    return report


def write_scores_csv(path: str | Path, scores: Sequence[ExpressionScore]) -> None:
    """One row per expression; floats with full precision (``repr``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in scores:
            writer.writerow([s.video_id, s.exp_id, repr(s.j), repr(s.f), repr(s.jf), s.n_frames, repr(s.j_recall),
                             repr(s.j_decay), repr(s.f_recall), repr(s.f_decay), int(s.pred_missing),
                             s.missing_frames])


def format_summary(summary: DatasetScore) -> str:
    """The printed result block: percent with one decimal, then the raw value."""
    rows = [("J", summary.j), ("F", summary.f), ("J&F", summary.jf)]
    return "\n".join(f"{name:<4} {100 * value:5.1f}  {value!r}" for name, value in rows)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the ``eval`` command (kept separate so the project CLI can mount it as a subcommand)."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="data set layout")
    parser.add_argument("--root", required=True, type=Path,
                        help="data set root (MeViS: the folder holding the split folders)")
    parser.add_argument("--split", default=None,
                        help=f"split (default: {', '.join(f'{k}={v}' for k, v in DEFAULT_SPLITS.items())})")
    parser.add_argument("--pred", required=True, type=Path, help="prediction root: <pred>/<video>/<exp_id>/<frame>.png")
    parser.add_argument("--csv", type=Path, default=None,
                        help="per-expression CSV (default: <pred>_<dataset>_<split>_eval.csv next to --pred)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: min(cpus, expressions))")
    parser.add_argument("--bound-th", type=float, default=BOUND_TH,
                        help="boundary tolerance: fraction of the image diagonal, or pixels when >= 1")
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run ``eval`` from parsed arguments; returns the process exit code (0 ok, 2 bad input)."""
    split = args.split or DEFAULT_SPLITS[args.dataset]
    pred_root = Path(args.pred)
    if not pred_root.is_dir():
        logger.error("prediction folder %s not found", pred_root)
        return 2
    if args.workers is not None and args.workers < 1:
        logger.error("--workers must be >= 1")
        return 2
    try:
        dataset = open_dataset(args.dataset, args.root, split)
        report = evaluate_predictions(dataset, pred_root, args.workers, args.bound_th)
    except DatasetFormatError as exc:
        logger.error("%s", exc)
        return 2
    if report.missing_expressions:
        shown = ", ".join(f"{v}/{e}" for v, e in report.missing_expressions[:5])
        more = " ..." if len(report.missing_expressions) > 5 else ""
        logger.warning("%d of %d expressions have no prediction folder and score J = F = 0: %s%s",
                       len(report.missing_expressions), len(report.scores), shown, more)
    if report.missing_frames:
        shown = ", ".join(f"{v}/{e}/{names[0]}.png" for (v, e), names in list(report.missing_frames.items())[:5])
        more = " ..." if len(report.missing_frames) > 5 else ""
        logger.warning("%d frame PNGs missing in %d expressions, scored as empty masks: %s%s",
                       report.n_missing_frames, len(report.missing_frames), shown, more)
    absolute = pred_root.resolve()
    csv_path = args.csv or absolute.parent / f"{absolute.name}_{args.dataset}_{split}_eval.csv"
    write_scores_csv(csv_path, report.scores)
    s = report.summary
    logger.info("%d expressions; J recall %.3f decay %.3f; F recall %.3f decay %.3f; per-expression CSV: %s",
                s.n_expressions, s.j_recall, s.j_decay, s.f_recall, s.f_decay, csv_path)
    print(f"{args.dataset} {split}: {s.n_expressions} expressions")
    print(format_summary(s))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``eval`` command line (``python -m model.evaluation.cli eval ...``)."""
    parser = argparse.ArgumentParser(prog="python -m model.evaluation.cli", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_eval_arguments(commands.add_parser("eval", help="score predictions against a data set's ground truth"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
