"""Sa2VA / Sa2VA-i: this backend's streaming segmenter against the reference-style loop, in each mode.

    .venv/bin/python bench/bench_sa2va.py                       # 16 frames of dog.mp4, 3 expressions, tiny network
    .venv/bin/python bench/bench_sa2va.py --frames 32 --expressions 4

The reference (``predict_forward``, and its evaluation scripts) runs one expression per call and prepares every
frame's SAM-2 input before the first one is segmented (a ``(T, 3, 1024, 1024)`` stack). The reference-style loop
here does the same with this project's code: one :meth:`Sa2VASegmenter.segment` call per expression, the whole
SAM-2 input stack built first and held. This backend's way is one call for all expressions: the key frames'
ViT pass, each frame's decoding and SAM-2 image encoding, the decoder and the memory attention are shared (one
batch row per object), and frames are read and encoded one at a time.

Both produce the masks of each expression; the benchmark counts the pixels where they differ and the largest
|logit| at those pixels (batching changes the order of float sums: only pixels at the threshold may flip),
then prints seconds per frame (per expression and frame), their ratio, and the memory the input stack holds.
The network is the parity fixture's tiny Sa2VA-i (SAM-2 at 1024 px, as released) with its LLM rigged to answer
``[SEG]`` (:func:`model.sa2va.factory.rig_answer`), so every path runs; each object's prompt is made distinct.
Seeded; one process; ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_correction import cpu_name  # noqa: E402

DOG = ROOT.parent / "shared" / "data" / "videos" / "dog.mp4"
TEXTS = ["the dog", "the grass", "the fence", "the ball", "the person", "the sky"]


def read_frames(video: Path, count: int, side: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        height, width = frame.shape[:2]
        scale = side / max(height, width)
        frame = cv2.resize(frame, (round(width * scale), round(height * scale)))
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def _largest_logit_at(segmenter, frames, text, options, where: np.ndarray) -> float:
    """The largest |logit| of ``text``'s own run at the pixels ``where`` (N, H, W)."""
    logits: dict[str, torch.Tensor] = {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        if name.startswith("logits:"):
            logits[name] = tensor[0]

    segmenter.segment(frames, [text], options, trace=keep)
    stacked = torch.stack([logits[f"logits:{t}"] for t in range(len(frames))]).numpy()
    return float(np.abs(stacked[where]).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--expressions", type=int, default=3)
    parser.add_argument("--side", type=int, default=320, help="frames resized to this longer side (default 320)")
    parser.add_argument("--video", type=Path, default=DOG)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from sa2va_fixture import answering_folder

    from model.sa2va.checkpoint import load_sa2va
    from model.sa2va.inference import Sa2VAOptions, Sa2VASegmenter
    from model.sa2va.preprocessing import sam_pixel_values

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = read_frames(args.video, args.frames, args.side)
    texts = TEXTS[: args.expressions]
    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer, _ = load_sa2va(answering_folder(Path(scratch) / "sa2va-i-tiny"))
    segmenter = Sa2VASegmenter(model, tokenizer)
    answers = segmenter._answers

    def distinct(*a, **k):  # a random LLM barely tells prompts apart: give each object its own prompt token
        objects = answers(*a, **k)
        for found in objects:
            rank = texts.index(found.expression.text)
            found.seg_embedding = found.seg_embedding * (1 + rank) * (-1) ** rank
        return objects

    segmenter._answers = distinct
    segmenter.segment(frames[:2], texts[:1], Sa2VAOptions(mode="sa2va", key_frames=1))  # warm-up
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads; tiny Sa2VA-i network (SAM-2 at "
          f"{int(model.sam.image_size)} px); {len(frames)} frames of {args.video.name} at "
          f"{frames.shape[2]}x{frames.shape[1]}; {len(texts)} expressions")  # fmt: skip
    header = (f"{'mode':<9}{'this backend s/frame':>22}{'reference-style s/frame':>25}{'ratio':>8}"
              f"{'pixels differing':>18}{'max |logit| there':>19}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for mode in ("sa2va", "sa2va-i"):
        options = Sa2VAOptions(mode=mode)
        started = time.perf_counter()
        together = segmenter.segment(frames, texts, options)
        ours = time.perf_counter() - started
        started = time.perf_counter()
        alone = []
        for text in texts:
            stack = torch.stack([sam_pixel_values(f) for f in frames])  # what the reference prepares and holds
            alone.append(segmenter.segment(frames, [text], options)[0])
            del stack
        theirs = time.perf_counter() - started
        count, at = 0, 0.0
        for text, a, b in zip(texts, together, alone):
            differing = a.masks != b.masks
            if differing.any():  # untimed: the logits there, from a traced run of the expression alone
                count += int(differing.sum())
                at = max(at, _largest_logit_at(segmenter, frames, text, options, differing))
        cells = len(texts) * alone[0].masks.size
        work = len(frames) * len(texts)
        print(f"{mode:<9}{ours / work:>22.3f}{theirs / work:>25.3f}{theirs / ours:>7.2f}x"
              f"{f'{count} of {cells}':>18}{at:>19.1e}")  # fmt: skip
    print("(a pixel differs only where the logit is within float32 noise of the threshold: batching changes the "
          "order of sums)")
    stack_bytes = len(frames) * 3 * int(model.sam.image_size) ** 2 * 4
    print(f"SAM-2 input stack the reference-style loop holds: {stack_bytes / 2**20:.0f} MiB for {len(frames)} "
          f"frames ({stack_bytes / len(frames) / 2**20:.0f} MiB a frame, float32); this backend holds one frame's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
