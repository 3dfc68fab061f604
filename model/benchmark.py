"""``glus benchmark``: a model's J, F, J&F on a synthetic-benchmark split, per expression category, next to the
trivial baselines, and inference-time ablations.

    glus benchmark --root BENCH --split test [--checkpoint DIR] [--rows full,no-context,no-memory,no-kfs,clip]
                   [--compare no-contrastive=DIR]      # other checkpoints, evaluated with the "full" row

``--rows ablation`` is the paper's ablation table on this data (with ``--compare`` for the model trained
without the contrastive loss). ``--by-template`` adds a second table, J&F per grammar template (look-alike
contrasts apart) next to the motion-blind baselines: it tells which skill is missing (e.g. the relations and
the motion templates failing together point at location, not at motion).

Categories: all, appearance, relation, motion, multi, and motion_lookalikes (motion expressions that tell apart
objects of the same colour and shape: the case the global-local design is for). Baselines: empty masks, the
whole frame, the union of all objects, and the best motion-blind answer (the union of the objects matching
the expression's appearance words).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from .checkpoint import CheckpointChain

logger = logging.getLogger(__name__)

# Inference settings. "full" is GLUS as the paper evaluates it: context frames, memory bank, key-frame selection
# by confidence, sliding schedule; each other row changes one thing. ("first-frame" is the backend's default:
# the full model without key-frame selection, which costs one probe per frame and expression.)
ROWS = {
    "full": {"key_frames": "confidence"},
    "no-context": {"key_frames": "confidence", "context_frames": False},
    "no-memory": {"key_frames": "confidence", "use_memory_bank": False},
    "no-kfs": {},
    "clip": {"key_frames": "confidence", "schedule": "clip"},
    # throughput modes as the backend runs them (first frame): their quality cost against "no-kfs"
    "fast-clip": {"schedule": "clip"},
    "fast-llm-every-2": {"llm_every": 2},
    "fast-llm-every-4": {"llm_every": 4},
}
ABLATION_ROWS = "full,no-context,no-memory,no-kfs,clip"
THROUGHPUT_ROWS = "no-kfs,fast-clip,fast-llm-every-2,fast-llm-every-4"


def evaluate_checkpoint(checkpoint: Path | CheckpointChain, root: Path, split: str, rows: list[str],
                        limit: int | None = None, device: str = "cpu", by_template: bool = False) -> dict[str, dict]:
    """``{row: {category: DatasetScore}}`` for each inference setting in ``rows`` (with ``by_template``, also
    one ``template:...`` category per grammar template). ``checkpoint`` is a folder or a base with deltas. A Sa2VA
    folder is scored in each mode it can run (``sa2va``, and ``sa2va-i`` for a Sa2VA-i folder) instead of
    GLUS's ``rows``."""
    from .checkpoint import CheckpointChain
    from .datasets import open_dataset
    from .evaluation.metrics import aggregate, score_expression
    from .families import family_of, load_video_model
    from .inference import Expression, SegmentOptions, VideoSegmenter
    from .keyframes import ConfidenceKeyFrames, FirstFrame
    from .synthetic.baselines import CATEGORIES, score_groups
    from .synthetic.dataset import load_split_extras
    from .video_io import FrameFiles

    chain = checkpoint if isinstance(checkpoint, CheckpointChain) else CheckpointChain(Path(checkpoint))
    dataset = open_dataset("mevis", root, split)
    info, _objects = load_split_extras(Path(root) / split)
    videos = list(dataset.videos.values())[:limit] if limit else list(dataset.videos.values())
    runners: dict[str, Callable] = {}
    if family_of(chain.base) == "sa2va":  # the family's own settings: one row per mode it can run
        sa2va = load_video_model(chain.base, device, deltas=chain.deltas)
        modes = ["sa2va", "sa2va-i"] if sa2va.segmenter.config.two_decoders else ["sa2va"]
        for mode in modes:
            options = replace(sa2va.options, mode=mode)
            runners[mode] = partial(sa2va.segmenter.segment, options=options)
    else:
        model, tokenizer = chain.load(device)
        segmenter = VideoSegmenter(model, tokenizer, device=device)
        for row in rows:
            settings = dict(ROWS[row])
            key_frames = ConfidenceKeyFrames() if settings.pop("key_frames", None) == "confidence" else FirstFrame()
            runners[row] = partial(segmenter.segment, options=SegmentOptions(key_frames=key_frames, **settings))
    results = {}
    for row, segment in runners.items():
        scores: dict[str, list] = {c: [] for c in CATEGORIES}
        for video in tqdm(videos, desc=row, unit="video"):
            source = FrameFiles(dataset.frame_paths(video.video_id))
            exprs = [Expression(e.text, e.exp_id) for e in video.expressions]
            for expr, result in zip(exprs, segment(source, exprs)):
                gt = dataset.gt_masks(video.video_id, expr.exp_id)
                score = score_expression(video.video_id, expr.exp_id, result.masks, gt)
                extra = info[video.video_id][expr.exp_id]
                template = extra.get("template", "") if by_template else None
                for category in score_groups(extra["kind"], extra["motion_lookalikes"], template):
                    scores.setdefault(category, []).append(score)
        results[row] = {c: aggregate(s) for c, s in scores.items() if s}
    return results


def format_rows(model_rows: dict[str, dict], baselines: dict[str, dict]) -> str:
    """Markdown table: one line per (setting or baseline), J&F per category (and J, F overall)."""
    from .synthetic.baselines import CATEGORIES

    header = "| row | J | F | J&F | " + " | ".join(f"J&F {c}" for c in CATEGORIES[1:]) + " |"
    lines = [header, "|" + "---|" * (4 + len(CATEGORIES) - 1)]
    for name, by_cat in [*((f"model: {k}", v) for k, v in model_rows.items()),
                         *((f"baseline: {k}", v) for k, v in baselines.items())]:
        overall = by_cat["all"]
        cells = [f"{by_cat[c].jf:.3f}" if c in by_cat else "–" for c in CATEGORIES[1:]]
        lines.append(f"| {name} | {overall.j:.3f} | {overall.f:.3f} | {overall.jf:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_template_rows(model_rows: dict[str, dict], baselines: dict[str, dict]) -> str:
    """Markdown table: one line per grammar template, with its expression count and the J&F of every model row
    and baseline (``template:`` categories, see :func:`model.synthetic.baselines.template_category`)."""
    from .synthetic.baselines import TEMPLATE_PREFIX

    columns = [*((f"model: {k}", v) for k, v in model_rows.items()), *((k, v) for k, v in baselines.items())]
    templates = sorted({c for _, by_cat in columns for c in by_cat if c.startswith(TEMPLATE_PREFIX)})
    lines = ["| template | n | " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * (2 + len(columns))]
    for template in templates:
        count = next(by_cat[template].n_expressions for _, by_cat in columns if template in by_cat)
        cells = [f"{by_cat[template].jf:.3f}" if template in by_cat else "–" for _, by_cat in columns]
        lines.append(f"| {template[len(TEMPLATE_PREFIX):]} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="synthetic benchmark root (glus synthetic generate)")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--rows",
        default="full",
        help=f"comma-separated settings among {', '.join(ROWS)}; 'ablation' or 'throughput' for those sets",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another checkpoint, evaluated with the 'full' row and printed as 'NAME' (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos")
    parser.add_argument(
        "--by-template", action="store_true", help="also print J&F per grammar template, next to the baselines"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")


def run_benchmark(args: argparse.Namespace) -> int:
    from .cli import resolve_checkpoint
    from .synthetic.baselines import evaluate_split

    spec = {"ablation": ABLATION_ROWS, "throughput": THROUGHPUT_ROWS}.get(args.rows, args.rows)
    rows = [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose among {list(ROWS)}")
    compare = []
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise ValueError(f"--compare expects NAME=DIR with an existing checkpoint folder, got {item!r}")
        compare.append((name, Path(path)))
    from .checkpoint import CheckpointChain

    checkpoint = resolve_checkpoint(args.checkpoint)
    chain = CheckpointChain(checkpoint, tuple(Path(d) for d in args.delta), args.clip_dir, args.sam2_checkpoint,
                            args.sam2_config)  # the model arguments of `glus segment`  # fmt: skip
    by_template = args.by_template
    model_rows = evaluate_checkpoint(chain, args.root, args.split, rows, args.limit, args.device, by_template)
    for name, path in compare:
        model_rows[name] = evaluate_checkpoint(
            path, args.root, args.split, ["full"], args.limit, args.device, by_template
        )["full"]
    baselines = evaluate_split(args.root, args.split, progress=False, by_template=by_template) if not args.limit else {}
    table = format_rows(model_rows, baselines)
    if by_template:
        shown = {k: v for k, v in baselines.items() if k in ("all_objects", "appearance_union")}
        table += "\n\n" + format_template_rows(model_rows, shown)
    print(f"checkpoint {checkpoint}, split {args.split}")
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "glus benchmark " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "glus benchmark"
        args.out.write_text(f"<!-- written by: {command} -->\n{table}\n")
    return 0
