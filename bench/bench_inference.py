"""GLUS inference speed: the exact fast path and the throughput modes against the reference-style loop.

In one run, on one video with several expressions:

* ``reference``: :func:`model.reference_loop.reference_style_segment` - preloaded frames, CLIP on all 8
  prompt images every step, whole-prompt prefill and ``generate`` every step, SAM-2 image features once per
  expression (what the reference inference script does);
* ``exact``: :class:`model.inference.VideoSegmenter` with its defaults (prompt-prefix KV cache, per-video
  CLIP / SAM-2 feature caches shared by the expressions, batched encoders, the expressions batched through
  the LLM (right-padded prompt suffixes) and through SAM-2's memory attention, decoder and memory encoder,
  one forward per step, prefetch); its masks must equal the reference's: the max abs mask-logit difference is
  printed. ``exact, one expression at a time`` is the same path without the expression batching;
* throughput modes (not exact): ``clip`` schedule, ``llm_every=2`` and ``llm_every=4``, with their mask IoU
  against the exact masks.

Prints frames/s per expression (best of ``--repeat`` runs per mode) and the ratio to the reference.

    python bench/bench_inference.py                        # bundled glus-tiny on CPU
    python bench/bench_inference.py --frames 48 --expressions 4
    python bench/bench_inference.py --config glus-7b --device cuda --dtype bfloat16   # 7B-shaped, random
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch


def synthetic_video(frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    from model.synthetic.world import WorldConfig, generate_video

    video = generate_video(seed, WorldConfig(frames=frames, size=size))
    return video.frames, [e.text for e in video.expressions]


def load_model(args: argparse.Namespace):
    from model.checkpoint import from_pretrained
    from model.factory import random_model

    dtype = getattr(torch, args.dtype)
    if args.checkpoint:
        model, tok, _ = from_pretrained(args.checkpoint)
    elif args.config == "bundled":
        from model.cli import bundled_checkpoint

        model, tok, _ = from_pretrained(bundled_checkpoint())
    else:
        # random weights, [SEG] forced so that every frame runs the whole LLM + SAM-2 + memory path
        model, tok = random_model(args.config, seed=0, seg_logit_bias=20.0)
    return model.to_serving(args.device, dtype).eval(), tok


def timed(fn, device: str, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (short runs on a shared machine are noisy) and the last output."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, out


def fast_run(model, tok, frames, expressions, device, **options):
    from model.inference import SegmentOptions, VideoSegmenter

    segmenter = VideoSegmenter(model, tok, device=device)
    masks = {}
    logits = {}
    trace_logits = options.pop("trace", False)
    pending = []

    def keep(step):
        pending.append(step)

    for e, _, result in segmenter.segment_stream(
        frames, expressions, SegmentOptions(**options), trace=keep if trace_logits else None
    ):
        masks[(e, result.frame_index)] = result.mask
        if trace_logits and pending:
            logits[(e, result.frame_index)] = pending[-1].mask_logits.float().cpu()
            pending.clear()
    return masks, logits


def mean_iou(a: dict, b: dict) -> float:
    ious = []
    for key, mask in a.items():
        other = b[key]
        union = np.logical_or(mask, other).sum()
        ious.append(1.0 if union == 0 else np.logical_and(mask, other).sum() / union)
    return float(np.mean(ious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="frame side of the synthetic video (px)")
    parser.add_argument("--expressions", type=int, default=3)
    parser.add_argument("--config", default="bundled", help="bundled | glus-tiny | glus-7b (random weights)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per mode, best kept (default 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    frames, texts = synthetic_video(args.frames, args.size)
    while len(texts) < args.expressions:
        texts = texts + [f"the {w} object" for w in ("red", "green", "blue", "white")]
    expressions = texts[: args.expressions]
    model, tok = load_model(args)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    work = args.frames * len(expressions)
    print(f"device {device_name} ({torch.get_num_threads()} threads), model {args.config}, dtype {args.dtype}")
    print(f"video {args.frames} frames {args.size}x{args.size}, {len(expressions)} expressions: {expressions}")

    # warm-up (allocations, lazy inits), not timed
    fast_run(model, tok, frames[:4], expressions[:1], args.device)

    rows = []
    exact_seconds, (exact_masks, exact_logits) = timed(
        lambda: fast_run(model, tok, frames, expressions, args.device), args.device, args.repeat
    )
    _, (_, exact_logits) = (0, fast_run(model, tok, frames, expressions, args.device, trace=True))
    reference_seconds = None
    max_diff = None
    identical = None
    if not args.skip_reference:
        from model.reference_loop import reference_style_segment

        reference_seconds, reference = timed(
            lambda: reference_style_segment(model, tok, frames, expressions, device=args.device),
            args.device,
            args.repeat,
        )
        max_diff = 0.0
        identical = True
        for e, ref in enumerate(reference):
            for t in range(args.frames):
                identical &= bool(np.array_equal(ref["masks"][t], exact_masks[(e, t)]))
                if ref["logits"][t] is not None and (e, t) in exact_logits:
                    max_diff = max(max_diff, float((ref["logits"][t] - exact_logits[(e, t)]).abs().max()))
        rows.append({"mode": "reference-style loop", "seconds": reference_seconds, "iou_vs_exact": 1.0})
    rows.append({"mode": "exact (default)", "seconds": exact_seconds, "iou_vs_exact": 1.0})
    for name, options in (
        ("exact, one expression at a time", {"batch_expressions": False}),
        ("clip schedule", {"schedule": "clip"}),
        ("llm_every=2", {"llm_every": 2}),
        ("llm_every=4", {"llm_every": 4}),
    ):
        seconds, (masks, _) = timed(
            lambda o=options: fast_run(model, tok, frames, expressions, args.device, **o), args.device, args.repeat
        )
        rows.append({"mode": name, "seconds": seconds, "iou_vs_exact": mean_iou(masks, exact_masks)})

    base = reference_seconds or exact_seconds
    print(f"\n{'mode':<34}{'s':>9}{'frames/s/expr':>15}{'x reference':>13}{'IoU vs exact':>14}")
    for row in rows:
        fps = work / row["seconds"]
        print(f"{row['mode']:<34}{row['seconds']:>9.2f}{fps:>15.1f}{base / row['seconds']:>13.2f}"
              f"{row['iou_vs_exact']:>14.3f}")
    if max_diff is not None:
        print(f"\nexact vs reference: masks identical: {identical}; max abs mask-logit difference {max_diff:.2e}")
    print(json.dumps({"rows": rows, "masks_identical": identical, "max_abs_logit_diff": max_diff,
                      "device": device_name, "frames": args.frames, "expressions": len(expressions)}))


if __name__ == "__main__":
    main()
