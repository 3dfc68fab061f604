"""Real-scale rehearsal of the Sa2VA family: a Sa2VA-i folder at Sa2VA-1B's shapes, loaded and served on this machine.

It writes seeded random weights at the full Sa2VA-1B shapes (InternViT-300M, Qwen2.5-0.5B, SAM-2.0 Hiera-L, plus
Sa2VA-i's second mask decoder: :func:`model.sa2va.config.sa2va_1b_config`) in the released layout (``config.json``
with ``"model_type": "sa2va_chat"``, one ``model.safetensors`` in float32 as the hub's 1B folder, the memory
encoder's ``g_weight`` names, the tokenizer files), then, each phase in a fresh process so that its peak memory is
its own:

* ``load``    - ``model.sa2va.checkpoint.load_sa2va`` (what the worker and ``glus segment`` call), float32 on CPU:
  load time and peak RSS against the bytes of the weights;
* ``segment`` - ``glus segment`` on the first frames of ``../shared/data/videos/dog.mp4`` in ``sa2va-i`` mode
  (seconds per frame, peak RSS), and in ``sa2va`` mode;
* ``worker``  - ``/predict`` through the web app, then a ``glus-backend worker --burst`` serving the folder on a
  Redis prefix of its own: the prediction's ``model_version`` (it names the family) and the worker's time.

The weights are random, so the masks mean nothing; the LLM is rigged to answer ``[SEG]``
(:func:`model.sa2va.factory.rig_answer`) so that every phase runs the whole MLLM -> ``[SEG]`` -> SAM-2 path. The
tokenizer is the parity fixture's (the Qwen2.5 one cannot be downloaded here); its ids fall inside the embedding.

    python bench/rehearse_sa2va.py                         # sa2va-i-1b: ~5 GB of files under --workdir
    python bench/rehearse_sa2va.py --config sa2va-i-tiny   # the same code at test size (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from rehearse_7b import DOG, _peak_rss_of, machine, worker_round_trip  # noqa: E402

FIXTURE_TOKENIZER = ROOT.parent / "shared" / "fixtures" / "sa2va-i-reference-tiny-a" / "tokenizer"
PHASES = ("write", "load", "segment", "worker")


def config_of(name: str):
    from model.sa2va.config import sa2va_1b_config, sa2va_tiny_config

    if name == "sa2va-i-1b":
        return sa2va_1b_config(two_decoders=True)
    return sa2va_tiny_config(two_decoders=True)


def folder_of(args: argparse.Namespace) -> Path:
    return args.workdir / "Sa2VA-i-1B" if args.config == "sa2va-i-1b" else args.workdir / "Sa2VA-i-tiny"


# --- phases (each runs in its own process; prints one JSON line) ---
def phase_write(args: argparse.Namespace) -> dict:
    import torch

    from model.sa2va.checkpoint import load_tokenizer, save_released_sa2va
    from model.sa2va.factory import random_sa2va, rig_answer

    started = time.perf_counter()
    tokenizer = load_tokenizer(FIXTURE_TOKENIZER)
    config = config_of(args.config)
    if args.config != "sa2va-i-1b":
        config.llm["vocab_size"] = len(tokenizer)
    model = random_sa2va(config, seed=0)
    rig_answer(model, tokenizer.convert_tokens_to_ids("[SEG]"), tokenizer.eos_token_id)
    files = save_released_sa2va(model, tokenizer, folder_of(args), dtype=torch.float32, max_shard_bytes=10 * 10**9)
    return {"seconds": time.perf_counter() - started, "bytes": sum(f.stat().st_size for f in files),
            "files": [f.name for f in files], "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip


def phase_load(args: argparse.Namespace) -> dict:
    import torch

    from model.sa2va.checkpoint import load_sa2va

    torch.set_num_threads(args.threads)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    model, _, report = load_sa2va(folder_of(args))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "parameters": sum(p.numel() for p in model.parameters()), "tensors": report.loaded,
            "two_decoders": model.config.two_decoders, "baseline_rss": baseline,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip


def phase_segment(args: argparse.Namespace) -> dict:
    out = {}
    for mode in ("sa2va-i", "sa2va"):
        target = args.workdir / f"segment-{mode}"
        command = [sys.executable, "-m", "model.cli", "segment", str(args.video), "-e", "the dog",
                   "--max-frames", str(args.frames), "--checkpoint", str(folder_of(args)), "--sa2va-mode", mode,
                   "--device", "cpu", "--out", str(target), "--no-overlay", "--quiet"]  # fmt: skip
        output, peak, seconds = _peak_rss_of(command, {**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        frames, expressions, run = re.findall(r"(\d+) frames x (\d+) expressions in ([\d.]+) s", output)[-1]
        summary = json.loads((target / args.video.stem / "expressions.json").read_text())
        out[mode] = {"wall_seconds": seconds, "peak_rss": peak, "frames": int(frames), "segment_seconds": float(run),
                     "seconds_per_frame": float(run) / int(frames), "present": summary["0"]["present"]}  # fmt: skip
    return out


def phase_worker(args: argparse.Namespace) -> dict:
    """The folder served by a burst worker (float32, CPU): the prediction's model version names the family."""
    served = worker_round_trip(args, {"GLUS_CHECKPOINT": str(folder_of(args))}, "sa2varehearsal")
    result = served["ready"]
    return {"first": served["first"]["model_version"], "model_version": result["model_version"],
            "results": len(result["result"]), "frames": served["frames"], "worker_seconds": served["seconds"],
            "peak_rss": served["peak_rss"]}  # fmt: skip


def run_phase(args: argparse.Namespace) -> int:
    handler = {"write": phase_write, "load": phase_load, "segment": phase_segment, "worker": phase_worker}
    print("RESULT " + json.dumps(handler[args.phase](args)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sa2va-rehearsal"))
    parser.add_argument("--config", choices=("sa2va-i-1b", "sa2va-i-tiny"), default="sa2va-i-1b")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma separated, of {', '.join(PHASES)}")
    parser.add_argument("--frames", type=int, default=6, help="frames of the video to segment")
    parser.add_argument("--video", type=Path, default=DOG)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return run_phase(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase not in PHASES:
            raise SystemExit(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
        command = [sys.executable, __file__, "--phase", phase, "--workdir", str(args.workdir), "--config",
                   args.config, "--frames", str(args.frames), "--video", str(args.video), "--threads",
                   str(args.threads), "--redis-url", args.redis_url]  # fmt: skip
        output, peak, seconds = _peak_rss_of(command)
        found = [line for line in output.splitlines() if line.startswith("RESULT ")]
        result = json.loads(found[-1][len("RESULT ") :])
        results[phase] = {**result, "process_peak_rss": peak, "process_seconds": seconds}
        print(f"{phase}: {json.dumps(results[phase])}", flush=True)
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict) -> None:
    gb = 1e9
    print(f"\nmachine: {machine()}; config {args.config}; {args.frames} frames of {args.video.name}")
    if "write" in results:
        w = results["write"]
        print(f"files: {w['bytes'] / gb:.2f} GB ({', '.join(w['files'])}), {w['parameters'] / 1e9:.3f} B parameters, "
              f"written in {w['seconds']:.0f} s")  # fmt: skip
    if "load" in results:
        load = results["load"]
        print(f"load: {load['seconds']:.1f} s for {load['parameters'] / 1e9:.3f} B parameters "
              f"({load['tensors']} tensors, two decoders: {load['two_decoders']}); "
              f"peak RSS {load['process_peak_rss'] / gb:.2f} GB = "
              f"{load['process_peak_rss'] / load['weights_bytes']:.3f}x the weights as served "
              f"({load['weights_bytes'] / gb:.2f} GB, float32)")  # fmt: skip
    if "segment" in results:
        for mode in ("sa2va-i", "sa2va"):
            seg = results["segment"][mode]
            print(f"glus segment ({mode}): {seg['seconds_per_frame']:.2f} s/frame over {seg['frames']} frames "
                  f"({seg['segment_seconds']:.1f} s after loading, {seg['wall_seconds']:.1f} s in all); peak RSS "
                  f"{seg['peak_rss'] / gb:.2f} GB; object on {seg['present']}/{seg['frames']} frames")  # fmt: skip
    if "worker" in results:
        worker = results["worker"]
        print(f"worker: prediction {worker['model_version']} with {worker['results']} results for "
              f"{worker['frames']} frames, {worker['worker_seconds']:.1f} s including the load; peak RSS "
              f"{worker['peak_rss'] / gb:.2f} GB")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
