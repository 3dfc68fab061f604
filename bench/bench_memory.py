"""Peak memory of whole-video inference versus video length (streaming check).

Writes synthetic videos (a square moving over a noisy ramp) of 100 and 10,000 frames as MP4 files, then, each in
a fresh process, segments them with glus-tiny (random weights with [SEG] forced, so every frame runs the
whole LLM + SAM-2 + memory path) streaming frames from the file and writing nothing but a running count.
Prints peak RSS per length and compares the difference with the size of the decoded frames themselves.

    python bench/bench_memory.py [--lengths 100 10000] [--height 240 --width 320] [--schedule sliding]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def write_video(path: Path, frames: int, height: int, width: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 200, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    for t in range(frames):
        frame = np.clip(ramp.astype(int) + rng.integers(-10, 10, ramp.shape), 0, 255).astype(np.uint8)
        x = (5 + 3 * t) % (width - 40)
        frame[height // 3 : height // 3 + 40, x : x + 40] = (20, 20, 220)
        writer.write(frame)
    writer.release()


def run_one(video: str, schedule: str) -> None:
    """Child process: segment `video` and print peak RSS (MiB) and timing as JSON."""
    import torch

    from model.factory import random_model
    from model.inference import SegmentOptions, VideoSegmenter
    from model.video_io import VideoFile

    torch.set_num_threads(2)
    model, tok = random_model("glus-tiny", seed=0, seg_logit_bias=20.0)
    source = VideoFile(video)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    count = present = 0
    for _, _, result in VideoSegmenter(model, tok).segment_stream(
        source, ["the blue square"], SegmentOptions(schedule=schedule)
    ):
        count += 1
        present += int(result.present)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "frames": count,
                "present": present,
                "seconds": elapsed,
                "peak_rss_mib": peak,
                "rss_after_model_mib": before,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--schedule", choices=("sliding", "clip"), default="sliding")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.schedule)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lengths:
            path = Path(tmp) / f"synthetic_{n}.mp4"
            write_video(path, n, args.height, args.width)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--schedule", args.schedule],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"glus-tiny, {args.schedule} schedule, {args.height}x{args.width} frames, CPU")
    print(f"{'frames':>7} {'seconds':>8} {'frames/s':>9} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['frames']:>7} {r['seconds']:>8.1f} {r['frames'] / r['seconds']:>9.1f} {r['peak_rss_mib']:>13.1f}")
    short, long = rows[0], rows[-1]
    growth = long["peak_rss_mib"] - short["peak_rss_mib"]
    frames_mib = (long["frames"] - short["frames"]) * args.height * args.width * 3 / 2**20
    print(
        f"peak RSS growth {short['frames']} -> {long['frames']} frames: {growth:.1f} MiB; "
        f"the extra frames themselves: {frames_mib:.1f} MiB (uint8 RGB); ratio {growth / frames_mib:.3f}"
    )
    ratio = long["peak_rss_mib"] / short["peak_rss_mib"]
    print(
        f"peak RSS {long['frames']} vs {short['frames']} frames: x{ratio:.3f} "
        f"({'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10 %)"
    )
    print("streaming: OK" if growth < frames_mib else "streaming: FAILED (memory grows with the video)")


if __name__ == "__main__":
    main()
