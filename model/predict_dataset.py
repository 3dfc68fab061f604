"""``glus predict-dataset``: run the model over a data set split and write the evaluation-server layout.

Output: ``<out>/<video>/<exp_id>/<frame>.png`` (8-bit, 0/255), written atomically. Resumable: an expression
whose PNGs are all present is skipped, a partial one is recomputed. Several processes (or GPUs) split the work
without coordination and so without races: process ``k`` of ``n`` takes the videos whose stable hash is
``k`` modulo ``n`` (``--shard k/n``), and ``--devices cuda:0,cuda:1`` starts one such process per device.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)


def shard_of(video_id: str, num_shards: int) -> int:
    return int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % num_shards


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError("--shard K/N needs 0 <= K < N")
    return k, n


def add_predict_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=("mevis", "refytvos", "davis17"))
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default=None)
    parser.add_argument("--out", required=True, type=Path, help="prediction root (the server layout)")
    from .cli import add_family_arguments

    add_family_arguments(parser)
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="K/N: this process's share of the videos")
    parser.add_argument("--devices", default=None, help="start one process per device, e.g. cuda:0,cuda:1")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos (smoke runs)")


def run_predict_dataset(args: argparse.Namespace) -> int:
    if args.devices:
        return _spawn(args)
    import torch

    from .cli import video_model_from_args
    from .datasets import open_dataset
    from .datasets.writers import PredictionWriter
    from .inference import Expression
    from .video_io import FrameFiles

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    dataset = open_dataset(args.dataset, args.root, args.split)
    writer = PredictionWriter(args.out)
    writer.clean_temporary_files()
    k, n = args.shard
    videos = [v for v in dataset.videos.values() if shard_of(v.video_id, n) == k]
    if args.limit:
        videos = videos[: args.limit]
    todo = []
    for video in videos:
        missing = [e for e in video.expressions if not writer.is_complete(video.video_id, e.exp_id, video.frame_names)]
        if missing:
            todo.append((video, missing))
    skipped = sum(len(v.expressions) for v in videos) - sum(len(m) for _, m in todo)
    logger.info("shard %d/%d: %d videos, %d expressions to do, %d already complete", k, n, len(todo),
                sum(len(m) for _, m in todo), skipped)
    if not todo:
        return 0
    video_model = video_model_from_args(args, device, dtype)
    started = time.perf_counter()
    frames_done = 0
    with tqdm(total=sum(len(v.frame_names) * len(m) for v, m in todo), unit="frame", desc=f"shard {k}/{n}") as bar:
        for video, expressions in todo:
            source = FrameFiles(dataset.frame_paths(video.video_id))
            exprs = [Expression(e.text, e.exp_id) for e in expressions]
            for index, _key, frame in video_model.for_video(video.video_id).segment_stream(source, exprs):
                writer.write(video.video_id, exprs[index].exp_id, video.frame_names[frame.frame_index], frame.mask)
                frames_done += 1
                bar.update(1)
    logger.info("%d frames in %.1f s", frames_done, time.perf_counter() - started)
    return 0


def _spawn(args: argparse.Namespace) -> int:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    argv = [a for a in sys.argv[1:]]
    cleaned = []
    skip = False
    for a in argv:  # drop --devices X / --shard X from the parent's arguments
        if skip:
            skip = False
            continue
        if a in ("--devices", "--shard", "--device"):
            skip = True
            continue
        if a.startswith(("--devices=", "--shard=", "--device=")):
            continue
        cleaned.append(a)
    children = []
    for i, device in enumerate(devices):
        env = dict(os.environ)
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda"
        cmd = [sys.executable, "-m", "model.cli", *cleaned, "--shard", f"{i}/{len(devices)}", "--device", device]
        children.append(subprocess.Popen(cmd, env=env))
    return max(child.wait() for child in children)
