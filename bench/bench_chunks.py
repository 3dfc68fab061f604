"""Whole-video job versus chunk-by-chunk: what splitting a video into Label Studio chunk tasks costs GLUS.

A long video imported as chunk tasks (``glus-backend import-videos --frames-per-task``, split by
:func:`glus_backend.video_import.chunk`) is today segmented one task at a time: the context frames come from the
chunk only, the memory bank restarts at every chunk boundary and an object may change identity between chunks.
The whole-video job runs one ``segment()`` over the whole video and posts each chunk's masks. In one run, on
synthetic videos with ground truth (:func:`model.synthetic.world.generate_video`, ``WorldConfig(frames=N)``):

* ``whole``: one :meth:`model.inference.VideoSegmenter.segment` over all frames, masks cut into the chunks;
* ``chunked``: one ``segment()`` per chunk (the frames split as ``chunk()`` splits them, ``--chunks`` tasks of
  about N / chunks frames).

Both use the backend's default options (:class:`glus_backend.settings.Settings`: schedule, key frames and
``llm_every`` mapped to :class:`~model.inference.SegmentOptions` as ``glus_backend/jobs.py`` does). Per mode:

* J, F, J&F over all frames (per expression, then the mean over every expression of every video);
* J&F on the first 2 frames after each chunk boundary (clipped to the chunk);
* identity kept across boundaries: per expression and boundary, the predicted mask on the last frame before and
  the first frame after is matched to the ground-truth object of best IoU (the video's objects, plus the
  expression's target set when it names several objects); ``kept`` when both sides match the same one with
  IoU >= 0.5, ``switched`` when they match different ones, ``lost`` when a side matches none. Boundaries where the
  expression's target is absent on either side are left out (``n/a``); ``on target`` counts kept boundaries
  whose object is the expression's target;
* wall time (seconds, and per video frame) and process CPU time (seconds, all threads; steadier than wall time
  when other processes share the CPU), model load and a warm-up not counted, the two modes alternating which
  goes first from video to video, best of ``--repeat``; and the ratios whole / chunked.

Default: 3 videos of 24 frames (3 chunk tasks of 8 frames, the clip length the demo model was trained on): 2 min
12 s in all (model load included) on the 2-core AMD EPYC of the session that wrote it, at a load average of 6.
``WorldConfig(frames=N)`` makes honest long videos: every expression is checked against the whole generated video,
so with the default speeds (3-4 px/frame on 64 px) moving objects enter, leave or stop, and more stay still than
in the 8-frame benchmark (over seeds 0-59: 55 % still objects at 24 frames, 75 % at 45, 27 % at 8).

    python bench/bench_chunks.py                              # 3 videos x 24 frames, bundled model, CPU
    python bench/bench_chunks.py --videos 8 --frames 45 --json chunks.json
    python bench/bench_chunks.py --chunks 4 --frames 32

Timings are wall clock on a shared machine: other processes make them noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

IOU_MATCH = 0.5
AFTER_BOUNDARY = 2
SYMBOLS = {"kept": "=", "switched": "x", "lost": "-", "n/a": "."}


def machine() -> dict:
    """CPU model and core count from /proc/cpuinfo, torch version and threads, load average."""
    name, cores = platform.processor() or "unknown", os.cpu_count() or 0
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        name, cores = (names[0], len(names)) if names else (name, cores)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": name, "cores": cores, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in load]}


def split(frames: int, chunks: int) -> list[list[int]]:
    """Frame indices of each chunk task, as ``import-videos --frames-per-task ceil(N / chunks)`` cuts them."""
    from glus_backend.video_import import chunk

    parts = chunk(list(range(frames)), math.ceil(frames / chunks))
    if len(parts) != chunks:
        raise ValueError(f"{frames} frames do not split into {chunks} chunk tasks (got {len(parts)}); "
                         f"use at least {chunks} frames, and not 3k+1 frames for small k")
    return parts


def backend_options():
    """The backend's default SegmentOptions, mapped from Settings as ``glus_backend/jobs.py`` maps them."""
    from glus_backend.settings import Settings
    from model.inference import SegmentOptions
    from model.keyframes import ConfidenceKeyFrames, FirstFrame

    settings = Settings()
    key_frames = ConfidenceKeyFrames() if settings.key_frames == "confidence" else FirstFrame()
    options = SegmentOptions(schedule=settings.schedule, key_frames=key_frames, llm_every=settings.llm_every)
    described = {"schedule": settings.schedule, "key_frames": settings.key_frames, "llm_every": settings.llm_every}
    return options, described


def load_bundled(device: str):
    from model.checkpoint import from_pretrained
    from model.cli import bundled_checkpoint
    from model.inference import VideoSegmenter

    model, tok, _ = from_pretrained(bundled_checkpoint())
    return VideoSegmenter(model.to_serving(device, torch.float32).eval(), tok, device=device)


def segment_masks(segmenter, frames: np.ndarray, texts: list[str], options) -> np.ndarray:
    """``(E, T, H, W)`` bool masks of one ``segment()`` call."""
    results = segmenter.segment(frames, texts, options)
    return np.stack([r.masks for r in results]).astype(bool)


def run_whole(segmenter, frames, texts, options, parts) -> np.ndarray:
    return segment_masks(segmenter, frames, texts, options)  # one call; chunk k's masks are [:, parts[k]]


def run_chunked(segmenter, frames, texts, options, parts) -> np.ndarray:
    return np.concatenate([segment_masks(segmenter, frames[part], texts, options) for part in parts], axis=1)


def timed(fn, args: tuple, repeat: int) -> tuple[float, float, np.ndarray]:
    """Best wall time and best process CPU time of ``repeat`` calls ``fn(*args)``, and the last output."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(max(1, repeat)):
        started, started_cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
    return best, best_cpu, out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def match(pred: np.ndarray, candidates: dict[tuple[int, ...], np.ndarray]) -> tuple[tuple[int, ...] | None, float]:
    """The candidate (object ids) of best IoU with ``pred`` on one frame, or None below :data:`IOU_MATCH`."""
    best, best_iou = None, 0.0
    for ids, mask in candidates.items():
        iou = _iou(pred, mask)
        if iou > best_iou:
            best, best_iou = ids, iou
    return (best, best_iou) if best_iou >= IOU_MATCH else (None, best_iou)


def boundary_identity(pred: np.ndarray, video, expression, boundaries: list[int]) -> list[dict]:
    """Per boundary ``b`` (first frame of a chunk): kept / switched / lost / n/a between frames b-1 and b."""
    target = tuple(sorted(expression.object_ids))
    gt = video.masks[list(target)].any(axis=0)
    out = []
    for b in boundaries:
        if not (gt[b - 1].any() and gt[b].any()):
            out.append({"boundary": b, "outcome": "n/a", "on_target": False})
            continue
        sides = []
        for t in (b - 1, b):
            candidates = {(i,): video.masks[i, t] for i in range(len(video.objects))}
            if len(target) > 1:
                candidates[target] = gt[t]
            sides.append(match(pred[t], candidates)[0])
        before, after = sides
        outcome = "lost" if before is None or after is None else "kept" if before == after else "switched"
        out.append({"boundary": b, "outcome": outcome, "on_target": outcome == "kept" and before == target})
    return out


def score(pred: np.ndarray, video, index: int, parts: list[list[int]]) -> dict:
    """J, F, J&F over all frames and on the first frames after each boundary, and the boundary identities."""
    from model.evaluation.metrics import score_frames

    gt = video.expression_masks(index)
    j, f = score_frames(pred, gt)
    after = [t for part in parts[1:] for t in part[:AFTER_BOUNDARY]]
    identity = boundary_identity(pred, video, video.expressions[index], [part[0] for part in parts[1:]])
    return {"j": float(j.mean()), "f": float(f.mean()), "jf": float((j.mean() + f.mean()) / 2),
            "jf_after_boundary": float((j[after].mean() + f[after].mean()) / 2), "identity": identity}


def summarise(rows: list[dict], mode: str, seconds: float, cpu_seconds: float, frames: int) -> dict:
    scores = [r[mode] for r in rows]
    outcomes = [b for s in scores for b in s["identity"]]
    counted = [b for b in outcomes if b["outcome"] != "n/a"]

    def mean(key: str) -> float:
        return float(np.mean([s[key] for s in scores]))

    return {"j": mean("j"), "f": mean("f"), "jf": mean("jf"), "jf_after_boundary": mean("jf_after_boundary"),
            "kept": sum(b["outcome"] == "kept" for b in counted), "total": len(counted),
            "switched": sum(b["outcome"] == "switched" for b in counted),
            "lost": sum(b["outcome"] == "lost" for b in counted),
            "kept_on_target": sum(b["on_target"] for b in counted), "not_applicable": len(outcomes) - len(counted),
            "seconds": seconds, "seconds_per_frame": seconds / frames, "cpu_seconds": cpu_seconds}


def print_report(report: dict) -> None:
    m, c = report["machine"], report["config"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"load average {m['load_average'][0]:.2f} at the start (timings are noisy under load)")
    print(f"model: bundled glus-tiny-demo, {c['device']}, float32; options {c['options']}")
    print(f"{c['videos']} synthetic videos (seeds {c['seeds'][0]}..{c['seeds'][-1]}), {c['frames']} frames "
          f"{c['size']}x{c['size']}, {c['chunks']} chunk tasks of {c['chunk_lengths']} frames; "
          f"{c['expressions']} expressions\n")
    print("per expression (identity per boundary: '=' kept, 'x' switched, '-' lost, '.' target absent)")
    header = f"{'seed':>4}  {'expression':<44}{'J&F whole':>10}{'chunked':>9}{'after-b whole':>14}{'chunked':>9}" \
             f"{'id whole':>10}{'chunked':>9}"
    print(header)
    print("-" * len(header))
    for r in report["rows"]:
        w, k = r["whole"], r["chunked"]
        ids = ["".join(SYMBOLS[b["outcome"]] for b in s["identity"]) for s in (w, k)]
        print(f"{r['seed']:>4}  {r['expression'][:43]:<44}{w['jf']:>10.3f}{k['jf']:>9.3f}"
              f"{w['jf_after_boundary']:>14.3f}{k['jf_after_boundary']:>9.3f}{ids[0]:>10}{ids[1]:>9}")
    print()
    header = f"{'mode':<10}{'J':>7}{'F':>7}{'J&F':>7}{'J&F 2 after boundary':>22}{'identity kept':>15}" \
             f"{'switched':>10}{'lost':>6}{'on target':>11}{'wall s':>8}{'s/frame':>9}{'CPU s':>8}"
    print(header)
    print("-" * len(header))
    for mode in ("whole", "chunked"):
        s = report["summary"][mode]
        print(f"{mode:<10}{s['j']:>7.3f}{s['f']:>7.3f}{s['jf']:>7.3f}{s['jf_after_boundary']:>22.3f}"
              f"{str(s['kept']) + ' / ' + str(s['total']):>15}{s['switched']:>10}{s['lost']:>6}"
              f"{s['kept_on_target']:>11}{s['seconds']:>8.1f}{s['seconds_per_frame']:>9.3f}{s['cpu_seconds']:>8.1f}")
    r = report["ratios"]
    print(f"\nwhole / chunked: J&F {r['jf']:.3f}, J&F after boundary {r['jf_after_boundary']:.3f}, "
          f"wall time {r['seconds']:.2f}, CPU time {r['cpu_seconds']:.2f}")
    print(f"({report['summary']['whole']['not_applicable']} expression-boundaries left out: target absent on a side)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=3, help="synthetic videos (default 3)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video (default 24: 3 chunks of 8)")
    parser.add_argument("--chunks", type=int, default=3, help="chunk tasks per video (default 3)")
    parser.add_argument("--size", type=int, default=64, help="frame side in px (the demo model's is 64)")
    parser.add_argument("--seed", type=int, default=0, help="first video seed; torch and numpy are seeded too")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="timing runs per mode and video, best kept")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from model.synthetic.world import WorldConfig, generate_video

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    parts = split(args.frames, args.chunks)
    options, described = backend_options()
    info = machine()
    segmenter = load_bundled(args.device)
    seeds = list(range(args.seed, args.seed + args.videos))
    videos = [generate_video(s, WorldConfig(frames=args.frames, size=args.size)) for s in seeds]
    segment_masks(segmenter, videos[0].frames[:4], [videos[0].expressions[0].text], options)  # warm-up

    rows, seconds, cpu_seconds = [], {"whole": 0.0, "chunked": 0.0}, {"whole": 0.0, "chunked": 0.0}
    runners = {"whole": run_whole, "chunked": run_chunked}
    for v_index, video in enumerate(videos):
        texts = [e.text for e in video.expressions]
        masks = {}
        for mode in (("whole", "chunked") if v_index % 2 == 0 else ("chunked", "whole")):
            took, took_cpu, masks[mode] = timed(
                runners[mode], (segmenter, video.frames, texts, options, parts), args.repeat
            )
            seconds[mode] += took
            cpu_seconds[mode] += took_cpu
        for e, text in enumerate(texts):
            rows.append({"seed": video.seed, "scenario": video.scenario, "expression": text,
                         "objects": len(video.objects), "targets": list(video.expressions[e].object_ids),
                         **{mode: score(masks[mode][e], video, e, parts) for mode in ("whole", "chunked")}})

    total_frames = args.frames * len(videos)
    summary = {mode: summarise(rows, mode, seconds[mode], cpu_seconds[mode], total_frames)
               for mode in ("whole", "chunked")}
    w, k = summary["whole"], summary["chunked"]
    report = {
        "machine": info,
        "config": {"videos": len(videos), "seeds": seeds, "frames": args.frames, "size": args.size,
                   "chunks": args.chunks, "chunk_lengths": [len(p) for p in parts], "device": args.device,
                   "repeat": args.repeat, "options": described, "expressions": len(rows)},
        "rows": rows,
        "summary": summary,
        "ratios": {"jf": w["jf"] / k["jf"] if k["jf"] else float("nan"),
                   "jf_after_boundary": w["jf_after_boundary"] / k["jf_after_boundary"]
                   if k["jf_after_boundary"] else float("nan"),
                   "seconds": w["seconds"] / k["seconds"], "cpu_seconds": w["cpu_seconds"] / k["cpu_seconds"]},
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
