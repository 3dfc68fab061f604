"""GPU rehearsal: the glus-7b path measured on one GPU in one short call (``bench/gpu_rehearsal.sh`` runs it).

GPU machines are lent to few tasks, for minutes, with nothing downloadable there. So this one script, prepared and
dry-run on CPU, does everything on the machine itself and keeps within a time budget (``--budget-s``): it writes
seeded random weights at glus-7b shapes in the released layouts (``bench/rehearse_7b.py``'s writer; the random
numbers are drawn on the GPU, so nothing large travels), then, with the model loaded once:

========== =====================================================================================================
write      the released GLUS folder (bf16 ``.bin`` shards), a hub CLIP folder and a SAM-2 Hiera-L ``.pt``
load       ``load_checkpoint`` onto the device in bf16, page cache dropped first where the user may (root)
exact      exact mode vs the reference-style loop on the same video and expressions: frames/s per expression,
           the ratio, masks identical or not, the max abs mask-logit difference and the differing pixels
modes      the throughput modes (``clip``, ``llm_every=2/4``): frames/s and mask IoU against exact
syncs      host-device synchronisations per frame of exact mode (CUDA's sync debug mode), by source line
precision  bf16 vs float32 compute (the same bf16-rounded weights): mask IoU on the same input
memory     peak device memory streaming ``--short-frames`` vs ``--long-frames`` frames (a synthetic stream)
compile    ``torch.compile`` of SAM-2's per-frame modules (:mod:`model.compilation`) on vs off: compile time,
           frames/s, masks against uncompiled
finetune   one step of the LoRA fine-tuning recipe at these shapes (last: it changes the model): time and
           peak device memory
========== =====================================================================================================

Each section's figures are written to ``--out``/gpu_rehearsal.json as soon as it ends (a run cut short keeps what
it measured); a failing section records its error and the next one runs; a section that would not fit in the time
left is skipped and says so. The weights are random, so masks mean nothing: the LLM is made to predict ``[SEG]``
so that every frame runs the whole LLM -> SAM-2 -> memory path.

    bash bench/gpu_rehearsal.sh --device cuda                          # the device machine (see the .sh)
    python bench/gpu_rehearsal.py --device cpu --config glus-tiny      # the dry run CI does (tiny, CPU)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

logger = logging.getLogger("gpu_rehearsal")
SECTIONS = ("write", "load", "exact", "modes", "syncs", "precision", "memory", "compile", "finetune")
EXPRESSIONS = ("the red square", "the moving object on the left", "the square that moves right")


class SyntheticStream:
    """A deterministic video made frame by frame on request (a red square moving over a noisy ramp): a
    :class:`model.video_io.FrameSource` of any length that holds no frame."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        self.frames, self.height, self.width = frames, height, width
        self._ramp = np.tile(np.linspace(0, 200, width, dtype=np.uint8)[None, :, None], (height, 1, 3))

    def __len__(self) -> int:
        return self.frames

    def box(self, index: int) -> tuple[int, int, int, int]:
        side = max(4, min(self.height, self.width) // 6)
        x = (5 + 3 * index) % max(1, self.width - side)
        y = self.height // 3
        return y, y + side, x, x + side

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frames:
            raise IndexError(index)
        noise = np.random.default_rng(index).integers(-10, 10, self._ramp.shape)
        frame = np.clip(self._ramp.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        y0, y1, x0, x1 = self.box(index)
        frame[y0:y1, x0:x1] = (220, 20, 20)
        return frame

    @property
    def frame_names(self) -> list[str]:
        return [f"{i:05d}" for i in range(self.frames)]


@dataclass
class Run:
    """What the sections share: the arguments, the loaded model, the exact masks and timings, the clock."""

    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)
    model: object = None
    tokenizer: object = None
    exact: dict = field(default_factory=dict)  # masks, logits, seconds of exact mode on the test video

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def cuda(self) -> bool:
        return self.args.device.startswith("cuda")

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def video(self) -> SyntheticStream:
        return SyntheticStream(self.args.frames, self.args.height, self.args.width)

    def expressions(self) -> list[str]:
        return list(EXPRESSIONS[: self.args.expressions])

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def need_model(self) -> None:
        if self.model is None:
            raise RuntimeError("no model: the load section did not run or failed")


# --- measuring helpers ---
def timed(run: Run, fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls of ``fn`` (device work included) and the last result
    (``bench/bench_inference.py``'s timer)."""
    from bench_inference import timed as best_of

    return best_of(fn, run.device, repeat)


def segment(run: Run, frames, expressions: list[str], trace: bool = False, **options) -> tuple[dict, dict]:
    """Exact mode (or ``options``) on ``frames``: ``{(expression, frame): mask}`` and, with ``trace``, the
    full-resolution mask logits on the CPU (``bench/bench_inference.py``'s runner)."""
    from bench_inference import fast_run

    return fast_run(run.model, run.tokenizer, frames, expressions, run.device, trace=trace, **options)


def mean_iou(a: dict, b: dict) -> float:
    from bench_inference import mean_iou as iou

    return iou(a, b)


def mask_agreement(a: dict, b: dict) -> dict:
    differing = sum(int(np.logical_xor(mask, b[key]).sum()) for key, mask in a.items())
    return {"identical": differing == 0, "differing_pixels": differing,
            "pixels": int(sum(m.size for m in a.values())), "mean_iou": mean_iou(a, b)}  # fmt: skip


def device_memory(run: Run) -> dict:
    """Device memory now and at its peak since the last reset (CUDA); the process's resident memory (CPU)."""
    if run.cuda:
        import torch

        return {"allocated": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated(),
                "reserved": torch.cuda.memory_reserved()}  # fmt: skip
    import psutil

    return {"rss": psutil.Process().memory_info().rss}


def reset_peak(run: Run) -> None:
    if run.cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def weights_folders(run: Run) -> dict[str, Path]:
    from rehearse_7b import folders

    return folders(run.args.workdir)


def filesystem_of(path: Path) -> str:
    """The mount holding ``path`` and its type (a tmpfs /tmp would make "from local disk" a read from memory)."""
    best = ("?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
                best = (mount, kind)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def weights_written(args: argparse.Namespace) -> bool:
    """Whether ``--workdir`` already holds the weights of this configuration (a second call on a warm machine)."""
    from rehearse_7b import has_weights

    return has_weights(args.workdir, args.config, args.sam2_config, args.sam2_overrides)


# --- sections ---
def section_write(run: Run) -> dict:
    from rehearse_7b import write_weights

    args = run.args
    if weights_written(args):
        return {"reused": str(args.workdir)}
    free = __import__("shutil").disk_usage(args.workdir).free
    written = write_weights(args.config, args.sam2_config, args.workdir, "bin", int(args.shard_gb * 1e9),
                            device=run.device, sam2_overrides=args.sam2_overrides)  # fmt: skip
    total = sum(written["bytes"].values())
    return {**written, "total_bytes": total, "gb_per_s": total / 1e9 / written["seconds"], "disk_free_before": free}


def section_load(run: Run) -> dict:
    import torch
    from rehearse_7b import drop_page_cache

    from model.checkpoint import load_checkpoint

    paths = weights_folders(run)
    cold = drop_page_cache()
    reset_peak(run)
    started = time.perf_counter()
    model, tokenizer = load_checkpoint(paths["glus"], paths["clip"], paths["sam2"], run.device, run.args.torch_dtype,
                                       run.args.sam2_config, sam2_overrides=run.args.sam2_overrides)  # fmt: skip
    run.sync()
    seconds = time.perf_counter() - started
    run.model, run.tokenizer = model.eval(), tokenizer
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    files = sum(f.stat().st_size for p in paths.values() for f in ([p] if p.is_file() else p.rglob("*"))
                if f.is_file())  # fmt: skip
    return {"seconds": seconds, "page_cache_dropped": cold, "filesystem": filesystem_of(run.args.workdir),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": weights, "file_bytes": files, "memory": device_memory(run),
            "dtype": str(run.args.torch_dtype), "sam2_dtype": str(next(model.sam.parameters()).dtype),
            "llm_attention": getattr(model.language_model.config, "_attn_implementation", None),
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def section_exact(run: Run) -> dict:
    from model.reference_loop import reference_style_segment

    run.need_model()
    frames, expressions = run.video(), run.expressions()
    segment(run, SyntheticStream(4, run.args.height, run.args.width), expressions[:1])  # warm-up, not timed
    repeat = run.args.repeat
    exact_seconds, (masks, _) = timed(run, lambda: segment(run, frames, expressions), repeat)
    _, logits = segment(run, frames, expressions, trace=True)
    reference_seconds, reference = timed(
        run, lambda: reference_style_segment(run.model, run.tokenizer, frames, expressions, device=run.device), repeat
    )
    reference_masks, max_diff = {}, 0.0
    for e, out in enumerate(reference):
        for t in range(len(frames)):
            reference_masks[(e, t)] = out["masks"][t]
            if out["logits"][t] is not None and (e, t) in logits:
                max_diff = max(max_diff, float((out["logits"][t] - logits[(e, t)]).abs().max()))
    run.exact = {"masks": masks, "seconds": exact_seconds}
    work = len(frames) * len(expressions)
    return {"frames": len(frames), "expressions": len(expressions), "frame_size": [run.args.height, run.args.width],
            "exact_seconds": exact_seconds, "reference_seconds": reference_seconds,
            "exact_fps_per_expression": work / exact_seconds, "reference_fps_per_expression": work / reference_seconds,
            "speedup": reference_seconds / exact_seconds, "max_abs_logit_diff": max_diff,
            **{f"masks_{k}": v for k, v in mask_agreement(masks, reference_masks).items()}}  # fmt: skip


def section_modes(run: Run) -> dict:
    run.need_model()
    if not run.exact:
        raise RuntimeError("needs the exact section's masks")
    frames, expressions = run.video(), run.expressions()
    work = len(frames) * len(expressions)
    rows = {"exact": {"seconds": run.exact["seconds"], "fps_per_expression": work / run.exact["seconds"],
                      "iou_vs_exact": 1.0}}  # fmt: skip
    for name, options in (("clip", {"schedule": "clip"}), ("llm_every=2", {"llm_every": 2}),
                          ("llm_every=4", {"llm_every": 4})):  # fmt: skip
        seconds, (masks, _) = timed(run, lambda o=options: segment(run, frames, expressions, **o), run.args.repeat)
        rows[name] = {"seconds": seconds, "fps_per_expression": work / seconds,
                      "iou_vs_exact": mean_iou(masks, run.exact["masks"])}  # fmt: skip
    return rows


def section_syncs(run: Run) -> dict:
    """Host-device synchronisations in exact mode's per-frame loop, counted by CUDA's sync debug mode."""
    run.need_model()
    if not run.cuda:
        return {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    import torch

    frames, expressions = run.video(), run.expressions()
    segment(run, frames, expressions)  # caches and lazy inits out of the way
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            segment(run, frames, expressions)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    per = len(frames) * len(expressions)
    return {"syncs": len(syncs), "per_frame_and_expression": len(syncs) / per, "by_line": dict(where.most_common(15))}


def section_precision(run: Run) -> dict:
    """bf16 against float32 compute on the same weights (those loaded in bf16, widened): mask IoU."""
    import torch

    run.need_model()
    if not run.exact:
        raise RuntimeError("needs the exact section's masks")
    frames, expressions = run.video(), run.expressions()
    served = run.args.torch_dtype
    run.model.to_serving(run.device, torch.float32)
    try:
        seconds, (masks, _) = timed(run, lambda: segment(run, frames, expressions))
    finally:
        run.model.to_serving(run.device, served)  # back, exactly: every weight was a bf16 value
    work = len(frames) * len(expressions)
    agreement = mask_agreement(run.exact["masks"], masks)
    return {"float32_seconds": seconds, "float32_fps_per_expression": work / seconds,
            **{f"{served_name(served)}_vs_float32_{k}": v for k, v in agreement.items()}}  # fmt: skip


def served_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def section_memory(run: Run) -> dict:
    """Peak device memory of exact-path streaming (``--memory-llm-every``) over a short and a long synthetic
    stream; the long one stops early if its share of the time runs out (``--long-seconds``, and what the
    fine-tuning step needs after it), and says how far it got."""
    from model.inference import SegmentOptions, VideoSegmenter

    run.need_model()
    args = run.args
    segmenter = VideoSegmenter(run.model, run.tokenizer, device=run.device)
    options = SegmentOptions(llm_every=args.memory_llm_every)
    out = {"llm_every": args.memory_llm_every, "frame_size": [args.memory_height, args.memory_width]}
    reserve = reserved_after("memory", args.sections)  # compile is not: it runs only if time is left
    for name, length in (("short", args.short_frames), ("long", args.long_frames)):
        stream = SyntheticStream(length, args.memory_height, args.memory_width)
        reset_peak(run)
        before = device_memory(run)
        cap = max(1.0, min(args.long_seconds, run.left() - reserve)) if name == "long" else float("inf")
        started = time.perf_counter()
        samples, done, present = [], 0, 0
        for _, _, result in segmenter.segment_stream(stream, ["the red square"], options):
            done += 1
            present += int(result.present)
            if done in SAMPLE_POINTS or done == length:
                samples.append({"frames": done, **device_memory(run)})
            if time.perf_counter() - started > cap:
                break
        run.sync()
        seconds = time.perf_counter() - started
        out[name] = {"frames_asked": length, "frames_done": done, "seconds": seconds, "fps": done / seconds,
                     "present": present, "before": before, "after": device_memory(run), "samples": samples}  # fmt: skip
        if run.cuda:
            out[name]["peak_above_start"] = out[name]["after"]["peak"] - before["allocated"]
    if run.cuda and out["short"]["frames_done"]:
        short, long = out["short"], out["long"]
        out["peak_ratio_long_vs_short"] = long["after"]["peak"] / short["after"]["peak"]
        out["peak_above_start_ratio"] = long["peak_above_start"] / max(1, short["peak_above_start"])
    return out


SAMPLE_POINTS = {10, 100, 1000, 2000, 5000, 10000, 20000}


def section_compile(run: Run) -> dict:
    from model.compilation import SAM2_PARTS, compile_sam2, uncompile_sam2

    run.need_model()
    if not run.exact:
        raise RuntimeError("needs the exact section's masks and timing")
    frames, expressions = run.video(), run.expressions()
    parts = [p.strip() for p in run.args.compile_parts.split(",") if p.strip()] or list(SAM2_PARTS)
    compile_sam2(run.model, parts, backend=run.args.compile_backend, mode=run.args.compile_mode)
    try:
        first, _ = timed(run, lambda: segment(run, frames, expressions))  # compiles (and recompiles per shape)
        seconds, (masks, _) = timed(run, lambda: segment(run, frames, expressions), run.args.repeat)
    finally:
        uncompile_sam2(run.model, parts)
    work = len(frames) * len(expressions)
    eager = run.exact["seconds"]
    return {"parts": parts, "backend": run.args.compile_backend, "mode": run.args.compile_mode,
            "first_run_seconds": first, "compiled_seconds": seconds, "eager_seconds": eager,
            "compiled_fps_per_expression": work / seconds, "eager_fps_per_expression": work / eager,
            "speedup": eager / seconds,
            **{f"masks_{k}": v for k, v in mask_agreement(masks, run.exact["masks"]).items()}}  # fmt: skip


def section_finetune(run: Run) -> dict:
    """One step of the fine-tuning recipe (as ``bench/rehearse_7b.py``'s, on the device): LoRA r=8 on q/v, the
    embeddings, LM head, projectors and mask decoder in full, bf16 base, float32 master weights and AdamW states,
    gradient checkpointing, 4 context + 4 query frames of one expression whose mask is the square."""
    from rehearse_7b import finetune_recipe

    from model.trainer import Trainer, TrainingExpression, TrainingVideo

    run.need_model()
    stream = SyntheticStream(8, run.args.height, run.args.width)
    pixels = np.stack([stream.frame(i) for i in range(len(stream))])
    masks = np.zeros(pixels.shape[:3], dtype=bool)
    for i in range(len(stream)):
        y0, y1, x0, x1 = stream.box(i)
        masks[i, y0:y1, x0:x1] = True
    video = TrainingVideo("synthetic", pixels, [TrainingExpression("the red square", "0", (1,), masks)])
    config = finetune_recipe(steps=2)  # two steps: the second is timed, the first pays for lazy initialisation
    model = run.model
    run.model = None  # the LoRA-wrapped model is not the served one: nothing after this section uses it
    reset_peak(run)
    trainer = Trainer(model, run.tokenizer, config, device=run.device)
    before = device_memory(run)
    first = trainer.train_step([video])
    run.sync()
    after_first = device_memory(run)
    reset_peak(run)
    second = trainer.train_step([video])
    run.sync()
    trained = [p for p in model.parameters() if p.requires_grad]
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if hasattr(t, "numel")]
    return {"first_step_seconds": first.seconds, "step_seconds": second.seconds, "loss": second.loss,
            "trained_parameters": sum(p.numel() for p in trained), "trained_bytes": nbytes(trained),
            "optimizer_bytes": nbytes(states), "memory_before_step": before, "memory_first_step": after_first,
            "memory_second_step": device_memory(run)}  # fmt: skip


# Seconds each section needs at glus-7b shapes on an H200 (estimates until a device run measures them), and the
# sections whose figures the issue must show: a section runs only if those after it still fit.
NEEDS = {"write": 90, "load": 45, "exact": 45, "modes": 30, "syncs": 15, "precision": 40, "memory": 30,
         "compile": 150, "finetune": 60}  # fmt: skip
ESSENTIAL = ("load", "exact", "memory", "finetune")


def later_essentials(name: str, wanted: list[str]) -> list[str]:
    return [s for s in SECTIONS[SECTIONS.index(name) + 1 :] if s in ESSENTIAL and s in wanted]


def reserved_after(name: str, wanted: list[str]) -> int:
    return sum(NEEDS[s] for s in later_essentials(name, wanted))

HANDLERS = {"write": section_write, "load": section_load, "exact": section_exact, "modes": section_modes,
            "syncs": section_syncs, "precision": section_precision, "memory": section_memory,
            "compile": section_compile, "finetune": section_finetune}  # fmt: skip


# --- the run ---
def environment(run: Run) -> dict:
    import torch
    import transformers
    from rehearse_7b import machine

    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": machine(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": run.device, "config": run.args.config, "sam2_config": run.args.sam2_config,
            "sam2_size": run.args.sam2_size,
            "dtype": served_name(run.args.torch_dtype), "budget_s": run.args.budget_s}  # fmt: skip
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        info.update(gpu=props.name, gpu_memory=props.total_memory, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)  # fmt: skip
    for name in ("peft", "sam2", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            info[name] = None
    return info


def run_sections(run: Run, report: Path) -> dict:
    results = {"environment": environment(run), "sections": {}}
    for name in SECTIONS:
        if name not in run.args.sections:
            continue
        need = 0 if name == "write" and weights_written(run.args) else NEEDS[name]
        reserve = reserved_after(name, run.args.sections)
        if run.left() < need + reserve:
            also = f" + {reserve} s kept for {', '.join(later_essentials(name, run.args.sections))}" if reserve else ""
            why = f"{run.left():.0f} s of the budget left, needs about {need} s{also}"
            results["sections"][name] = {"skipped": why}
            logger.warning("%s skipped: %s", name, results["sections"][name]["skipped"])
            continue
        logger.info("--- %s (%.0f s of the budget left)", name, run.left())
        started = time.perf_counter()
        try:
            outcome = HANDLERS[name](run)
        except Exception as error:  # one section's failure must not lose the others' figures
            logger.exception("%s failed", name)
            outcome = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        outcome["section_seconds"] = time.perf_counter() - started
        results["sections"][name] = outcome
        logger.info("%s: %s", name, json.dumps(_brief(outcome)))
        report.write_text(json.dumps(results, indent=1, default=str) + "\n")
    results["total_seconds"] = time.perf_counter() - run.started
    report.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def _brief(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if k not in ("traceback", "samples")}


def table(results: dict) -> str:
    """The figures as a Markdown table (what goes into docs/performance.md)."""
    env, sections = results["environment"], results["sections"]
    gb = 1e9
    where = env.get("gpu") or env["host"]
    lines = [f"## GPU rehearsal: {env['config']} ({env['dtype']}) on {where}, {env['date']}",
             f"torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}", "",
             "| measurement | figure |", "|---|---|"]  # fmt: skip

    def row(name: str, text: str) -> None:
        lines.append(f"| {name} | {text} |")

    for name in SECTIONS:
        s = sections.get(name)
        if s is None:
            continue
        if "error" in s or "skipped" in s:
            row(name, ("failed: " + s["error"] if "error" in s else "skipped: " + s["skipped"]).replace("|", "/"))
            continue
        if name == "write":
            row("write the released layouts", "reused " + s["reused"] if "reused" in s else
                f"{s['total_bytes'] / gb:.2f} GB in {s['seconds']:.1f} s ({s['gb_per_s']:.2f} GB/s)")  # fmt: skip
        elif name == "load":
            row("load (`load_checkpoint`, from local disk)",
                f"{s['seconds']:.1f} s for {s['parameters'] / 1e6:,.0f} M parameters "
                f"({'page cache dropped' if s['page_cache_dropped'] else 'page cache warm'}; {s['filesystem']}); "
                f"weights on the device "
                f"{s['weights_bytes'] / gb:.2f} GB; SAM-2 {s['sam2_dtype']}; attention {s['llm_attention']}")
        elif name == "exact":
            row(f"exact vs reference-style loop ({s['frames']} frames, {s['expressions']} expressions)",
                f"{s['exact_fps_per_expression']:.2f} vs {s['reference_fps_per_expression']:.2f} frames/s per "
                f"expression = **{s['speedup']:.2f}x**; masks identical: {s['masks_identical']} "
                f"({s['masks_differing_pixels']} of {s['masks_pixels']} pixels differ); max abs mask-logit "
                f"difference {s['max_abs_logit_diff']:.2e}")
        elif name == "modes":
            row("throughput modes (frames/s per expression; IoU vs exact)",
                "; ".join(f"{k} {v['fps_per_expression']:.2f} ({v['iou_vs_exact']:.3f})" for k, v in s.items()
                          if isinstance(v, dict)))  # fmt: skip
        elif name == "syncs":
            row("host-device syncs in exact mode", s.get("skipped") or
                f"{s['syncs']} ({s['per_frame_and_expression']:.1f} per frame and expression); top: "
                + ", ".join(f"{k} x{v}" for k, v in list(s["by_line"].items())[:5]))  # fmt: skip
        elif name == "precision":
            key = next(k for k in s if k.endswith("_vs_float32_mean_iou"))
            row("bf16 vs float32 compute (same weights)", f"mask IoU {s[key]:.4f}; float32 "
                f"{s['float32_fps_per_expression']:.2f} frames/s per expression")  # fmt: skip
        elif name == "memory":
            text = "; ".join(
                f"{s[k]['frames_done']}/{s[k]['frames_asked']} frames in {s[k]['seconds']:.0f} s"
                + (f", peak {s[k]['after']['peak'] / gb:.2f} GB ({s[k]['peak_above_start'] / gb:.3f} GB above "
                   f"the start)" if "peak" in s[k]["after"] else f", RSS after {s[k]['after']['rss'] / gb:.2f} GB")
                for k in ("short", "long"))  # fmt: skip
            if "peak_ratio_long_vs_short" in s:
                text += (f"; long/short peak **{s['peak_ratio_long_vs_short']:.3f}x** "
                         f"(above the start: {s['peak_above_start_ratio']:.3f}x)")  # fmt: skip
            row(f"streaming memory (llm_every={s['llm_every']}, {s['frame_size'][0]}x{s['frame_size'][1]})", text)
        elif name == "compile":
            row(f"torch.compile of SAM-2 ({s['backend']}, {', '.join(s['parts'])})",
                f"first run {s['first_run_seconds']:.1f} s (compiling); then {s['compiled_fps_per_expression']:.2f} "
                f"vs {s['eager_fps_per_expression']:.2f} frames/s per expression eager = {s['speedup']:.2f}x; "
                f"masks identical: {s['masks_identical']} (IoU {s['masks_mean_iou']:.4f})")
        elif name == "finetune":
            peak = s["memory_second_step"].get("peak")
            row("one LoRA fine-tuning step", f"{s['step_seconds']:.2f} s (first step {s['first_step_seconds']:.2f} s)"
                + (f"; peak device memory {peak / gb:.2f} GB" if peak else "")
                + f"; {s['trained_parameters'] / 1e6:.0f} M trained parameters; loss {s['loss']:.3f}")  # fmt: skip
    lines.append(f"\nwhole run {results.get('total_seconds', 0):.0f} s of a {env['budget_s']:.0f} s budget")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the product) or cpu (the dry run)")
    parser.add_argument("--config", choices=("glus-7b", "glus-tiny"), default=None,
                        help="default: glus-7b on cuda, glus-tiny on cpu")  # fmt: skip
    parser.add_argument("--sam2-config", default=None, help="default: sam2-hiera-l (glus-7b), sam2-hiera-t (tiny)")
    parser.add_argument("--sam2-size", choices=("released", "tiny"), default=None,
                        help="tiny: glus-tiny's shrunken Hiera-T (128 px; the CPU dry run's default), through the same "
                             "writer and loader; released: SAM-2 as released (1024 px; always for glus-7b)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glus-gpu-rehearsal"), help="where weights go")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "tmp/gpu-rehearsal"),
                        help="gpu_rehearsal.json and .md go here (default $OUT, else tmp/gpu-rehearsal)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the sections; one that would not fit is skipped (default 400 on cuda: with "
                             "the install and imports the call stays under 8 minutes; no limit on cpu)")  # fmt: skip
    parser.add_argument("--shard-gb", type=float, default=10.0, help="released GLUS shard size (the merge script's)")
    parser.add_argument("--frames", type=int, default=None, help="frames of the exact/reference video (24; cpu 4)")
    parser.add_argument("--expressions", type=int, default=None, help="expressions sharing it (3; cpu 2)")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per mode, best kept (2; cpu 1)")
    parser.add_argument("--short-frames", type=int, default=None, help="memory: the short stream (100; cpu 6)")
    parser.add_argument("--long-frames", type=int, default=None, help="memory: the long stream (10000; cpu 14)")
    parser.add_argument("--long-seconds", type=float, default=150.0, help="memory: the most the long stream may take")
    parser.add_argument("--memory-llm-every", type=int, default=None,
                        help="memory streams run the LLM on every k-th frame so that 10,000 frames fit (8; cpu 2)")
    parser.add_argument("--memory-height", type=int, default=240)
    parser.add_argument("--memory-width", type=int, default=320)
    parser.add_argument("--compile-parts", default="", help="SAM-2 parts to compile (default: all of them)")
    parser.add_argument("--compile-backend", default=None, help="inductor (cuda) | eager (cpu: no C++ build)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    args = parser.parse_args(argv)
    cpu = not args.device.startswith("cuda")

    def default(name: str, gpu_value, cpu_value) -> None:
        if getattr(args, name) is None:
            setattr(args, name, cpu_value if cpu else gpu_value)

    default("config", "glus-7b", "glus-tiny")
    default("frames", 24, 4)
    default("expressions", 3, 2)
    default("repeat", 2, 1)
    default("short_frames", 100, 6)
    default("long_frames", 10000, 14)
    default("memory_llm_every", 8, 2)
    default("compile_backend", "inductor", "eager")
    default("budget_s", 400.0, float("inf"))
    args.sam2_config = args.sam2_config or ("sam2-hiera-l" if args.config == "glus-7b" else "sam2-hiera-t")
    if args.sam2_size is None:
        args.sam2_size = "tiny" if args.config == "glus-tiny" else "released"
    if args.sam2_size == "tiny" and (args.config != "glus-tiny" or args.sam2_config != "sam2-hiera-t"):
        parser.error("--sam2-size tiny shrinks glus-tiny's sam2-hiera-t only")
    from model.config import get_config

    args.sam2_overrides = get_config("glus-tiny").sam2_overrides if args.sam2_size == "tiny" else None
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if not 1 <= args.expressions <= len(EXPRESSIONS):
        parser.error(f"--expressions must be 1..{len(EXPRESSIONS)}")
    import torch

    args.torch_dtype = getattr(torch, args.dtype)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        logger.error("--device %s but torch %s sees no CUDA device", args.device, torch.__version__)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    results = run_sections(run, args.out / "gpu_rehearsal.json")
    text = table(results)
    (args.out / "gpu_rehearsal.md").write_text(text + "\n")
    print(text, flush=True)
    failed = [n for n, s in results["sections"].items() if "error" in s]
    if failed:
        logger.error("sections failed: %s (tracebacks in %s)", ", ".join(failed), args.out / "gpu_rehearsal.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
