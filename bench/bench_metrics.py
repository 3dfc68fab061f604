"""Frames/s of J&F: the vectorised metrics versus the per-frame reference of the official algorithm.

    .venv/bin/python bench/bench_metrics.py [--frames 50] [--quick] [--seed 0]

Both implementations score the same synthetic prediction / ground-truth stacks (a few ellipses per frame,
the prediction a shifted, slightly noisy copy, some frames empty on either side) at 480p (854x480) and 1080p
(1920x1080), in one process and one run. The reference is the straightforward per-frame restatement of the
official ``metrics.py`` (``cv2.dilate`` with a disk kernel). The table shows frames/s of each, the speed ratio
and the largest absolute difference of per-frame J and F, which must be <= 1e-9 (the exit code is 1 otherwise).
Timings are single-process (no pool) wall-clock; the best of ``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

RESOLUTIONS = {"480p": (480, 854), "1080p": (1080, 1920)}
TOLERANCE = 1e-9


def synthetic_pair(rng: np.random.Generator, frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of 1-3 moving ellipses per frame and a prediction that is shifted and a little noisy."""
    gt = np.zeros((frames, height, width), np.uint8)
    pred = np.zeros((frames, height, width), np.uint8)
    objects = [(rng.uniform(0.15, 0.85, 2), rng.uniform(0.04, 0.2, 2), rng.uniform(0, 180), rng.normal(0, 0.004, 2))
               for _ in range(int(rng.integers(1, 4)))]
    for t in range(frames):
        for center, axes, angle, velocity in objects:
            cx, cy = (center + t * velocity) * (width, height)
            ax, ay = axes * (width, height)
            cv2.ellipse(gt[t], (int(cx), int(cy)), (int(ax), int(ay)), float(angle + t), 0, 360, 1, -1)
            jitter = rng.normal(0, 0.01 * height, 2)
            cv2.ellipse(pred[t], (int(cx + jitter[0]), int(cy + jitter[1])), (int(ax * 1.03), int(ay * 0.97)),
                        float(angle + t + rng.normal(0, 3)), 0, 360, 255, -1)
    pred[rng.random(frames) < 0.1] = 0  # missed frames
    gt[rng.random(frames) < 0.1] = 0  # object absent
    speckle = rng.random(pred.shape) < 2e-5
    pred[speckle] = 255
    return pred, gt


def best_time(fn, args: tuple, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="frames per resolution (default 50)")
    parser.add_argument("--quick", action="store_true", help="10 frames, one repetition")
    parser.add_argument("--repeat", type=int, default=3, help="timing repetitions, best kept (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frames, repeat = (10, 1) if args.quick else (args.frames, args.repeat)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from model.evaluation.metrics import bound_pix, score_frames
    from model.evaluation.metrics_reference import reference_scores

    rng = np.random.default_rng(args.seed)
    print(f"J&F throughput, {frames} frames per resolution, best of {repeat}, 1 process, "
          f"cv2 threads {cv2.getNumThreads()}")
    header = f"{'resolution':<11}{'bound_pix':>9}{'vectorised fps':>16}{'reference fps':>15}{'speed-up':>10}" \
             f"{'max |dJ|':>11}{'max |dF|':>11}"
    print(header)
    print("-" * len(header))
    failed = False
    for label, (height, width) in RESOLUTIONS.items():
        pred, gt = synthetic_pair(rng, frames, height, width)
        t_vec, (j, f) = best_time(score_frames, (pred, gt), repeat)
        t_ref, (jr, fr) = best_time(reference_scores, (pred, gt), repeat)
        dj, df = float(np.max(np.abs(j - jr))), float(np.max(np.abs(f - fr)))
        failed |= max(dj, df) > TOLERANCE
        print(f"{label:<11}{bound_pix(height, width):>9}{frames / t_vec:>16.1f}{frames / t_ref:>15.1f}"
              f"{t_ref / t_vec:>9.1f}x{dj:>11.1e}{df:>11.1e}")
    print(f"agreement within {TOLERANCE:g}: {'yes' if not failed else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
