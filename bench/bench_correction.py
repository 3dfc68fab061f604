"""Correct one frame, the rest follows: J&F after an annotator's correction, re-propagated in both prompt modes.

    .venv/bin/python bench/bench_correction.py                  # 30 videos of 16 frames, bundled demo model
    .venv/bin/python bench/bench_correction.py --videos 150     # more videos (about 5x longer)

For each synthetic video (the test split's generator seeds, :mod:`model.synthetic`, which come with ground-truth
masks) and each of its expressions:

1. the first prediction: normal inference (:meth:`model.inference.VideoSegmenter.segment`, one expression);
2. the corrected frame ``k``: the first frame of the first half of the video (``k < N // 2``) where the first
   prediction's J is below 0.5 (the frame an annotator would fix first); if there is none, ``k = N // 4``.
   The annotator's correction is the ground-truth mask of frame ``k``;
3. re-propagation from ``k`` (:func:`model.repropagation.repropagate`) in ``"seg"`` mode (GLUS's [SEG] prompt
   per frame + the pinned memory) and in ``"memory"`` mode (SAM-2 tracking, no LLM).

J&F (``model.evaluation.metrics``) is scored on frames ``k+1 .. N-1`` only (the frames re-propagation
changes), per expression, then averaged over expressions; rows split the expressions by how ``k`` was chosen.
Seconds per frame: wall time of each run divided by the frames it produced (best of one run, after a
warm-up). Everything is seeded (video seeds, ``torch.manual_seed(0)``); one process, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TEST_SPLIT_SEED = 3  # model.synthetic.dataset.SPLITS["test"]: videos the demo model was not trained on
FAIL_J = 0.5


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (the machine the numbers belong to)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def corrected_frame(first_j: np.ndarray) -> tuple[int, bool]:
    """The frame an annotator corrects: the first of the first half with J < 0.5, else N // 4 (and whether the
    rule found a failing frame)."""
    n = len(first_j)
    failing = [t for t in range(n // 2) if first_j[t] < FAIL_J]
    return (failing[0], True) if failing else (n // 4, False)


@dataclass
class Row:
    jf: dict[str, list[float]] = field(default_factory=lambda: {"first": [], "seg": [], "memory": []})
    seconds: dict[str, float] = field(default_factory=lambda: {"first": 0.0, "seg": 0.0, "memory": 0.0})
    frames: dict[str, int] = field(default_factory=lambda: {"first": 0, "seg": 0, "memory": 0})


def jf(pred: np.ndarray, gt: np.ndarray) -> float:
    from model.evaluation.metrics import score_frames

    j, f = score_frames(pred, gt)
    return float((j.mean() + f.mean()) / 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=30, help="synthetic videos (default 30)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    parser.add_argument("--size", type=int, default=64, help="frame side in px (default 64, the demo model's)")
    parser.add_argument("--checkpoint", default=None, help="a GLUS folder (default: the bundled demo model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="serving dtype (bfloat16 on a GPU)")
    parser.add_argument("--schedule", default="sliding", choices=("sliding", "clip"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 spinning threads ran 10x slower)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from tqdm import tqdm

    from model.checkpoint import from_pretrained
    from model.cli import bundled_checkpoint
    from model.evaluation.metrics import db_eval_iou
    from model.inference import SegmentOptions, VideoSegmenter
    from model.repropagation import RepropagationOptions
    from model.synthetic.dataset import video_seed
    from model.synthetic.world import WorldConfig, generate_video

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok, _ = from_pretrained(args.checkpoint or bundled_checkpoint())
    model = model.to_serving(args.device, getattr(torch, args.dtype)).eval()
    segmenter = VideoSegmenter(model, tok, device=args.device)
    segment_options = SegmentOptions(schedule=args.schedule)
    world = WorldConfig(frames=args.frames, size=args.size)
    videos = [generate_video(video_seed(TEST_SPLIT_SEED, i), world) for i in range(args.videos)]
    warm = videos[0]  # warm-up of every path (allocations, lazy inits), not timed
    segmenter.segment(warm.frames, [warm.expressions[0].text], segment_options)
    for mode in ("seg", "memory"):
        options = RepropagationOptions(prompt=mode, segment=segment_options)
        list(segmenter.repropagate(warm.frames, warm.expressions[0].text, {1: warm.expression_masks(0)[1]}, options))

    rows = {"failing frame": Row(), "fixed k=N//4": Row()}
    for video in tqdm(videos, desc="videos", unit="video"):
        for e, expression in enumerate(video.expressions):
            gt = video.expression_masks(e)
            n = len(gt)
            started = time.perf_counter()
            first = segmenter.segment(video.frames, [expression.text], segment_options)[0].masks
            first_seconds = time.perf_counter() - started
            k, failing = corrected_frame(np.atleast_1d(db_eval_iou(first, gt)))
            row = rows["failing frame" if failing else "fixed k=N//4"]
            row.jf["first"].append(jf(first[k + 1 :], gt[k + 1 :]))
            row.seconds["first"] += first_seconds
            row.frames["first"] += n
            for mode in ("seg", "memory"):
                options = RepropagationOptions(prompt=mode, segment=segment_options)
                started = time.perf_counter()
                results = list(segmenter.repropagate(video.frames, expression.text, {k: gt[k]}, options))
                row.seconds[mode] += time.perf_counter() - started
                row.frames[mode] += len(results)
                assert results[0].frame_index == k and np.array_equal(results[0].mask, gt[k])
                row.jf[mode].append(jf(np.stack([r.mask for r in results[1:]]), gt[k + 1 :]))

    total = Row()
    for row in rows.values():
        for mode in total.jf:
            total.jf[mode] += row.jf[mode]
            total.seconds[mode] += row.seconds[mode]
            total.frames[mode] += row.frames[mode]
    rows["all"] = total
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, {device}; model "
          f"{args.checkpoint or 'bundled glus-tiny-demo'}, {args.dtype}")  # fmt: skip
    print(f"{args.videos} synthetic test videos x {args.frames} frames at {args.size} px, {args.schedule} schedule; "
          f"correction = ground truth of frame k; J&F on frames k+1..N-1")  # fmt: skip
    header = (f"{'k chosen by':<16}{'exprs':>6}{'J&F first':>11}{'J&F seg':>9}{'J&F memory':>12}"
              f"{'seg/first':>11}{'memory/first':>14}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        if not row.jf["first"]:
            continue
        first, seg, mem = (float(np.mean(row.jf[m])) for m in ("first", "seg", "memory"))
        print(f"{name:<16}{len(row.jf['first']):>6}{first:>11.3f}{seg:>9.3f}{mem:>12.3f}"
              f"{seg / max(first, 1e-9):>11.2f}{mem / max(first, 1e-9):>14.2f}")  # fmt: skip
    spf = {m: total.seconds[m] / max(1, total.frames[m]) for m in total.seconds}
    print(f"seconds per frame: first {spf['first'] * 1e3:.1f} ms, seg {spf['seg'] * 1e3:.1f} ms, memory "
          f"{spf['memory'] * 1e3:.1f} ms; first/memory {spf['first'] / spf['memory']:.2f}x, seg/memory "
          f"{spf['seg'] / spf['memory']:.2f}x")  # fmt: skip
    better = {m: float(np.mean(np.array(total.jf[m]) > np.array(total.jf["first"]) + 1e-9)) for m in ("seg", "memory")}
    worse = {m: float(np.mean(np.array(total.jf[m]) < np.array(total.jf["first"]) - 1e-9)) for m in ("seg", "memory")}
    print(f"expressions improved / worsened after k: seg {better['seg']:.0%} / {worse['seg']:.0%}, "
          f"memory {better['memory']:.0%} / {worse['memory']:.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
