"""``glus``: run GLUS on videos from the command line (no Label Studio involved).

glus segment VIDEO --expression "the red square" [--expression ...] [--checkpoint DIR] --out DIR
glus init --out DIR [--config glus-tiny] [--seed 0]        # a random-weight checkpoint (tests, demos)
glus info [--checkpoint DIR]                                  # what a checkpoint holds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

logger = logging.getLogger("glus")

CHECKPOINT_ENV = "GLUS_CHECKPOINT"


def bundled_checkpoint() -> Path:
    """The demo model shipped with the package (trained on the synthetic benchmark)."""
    from importlib import resources

    return Path(str(resources.files("model").joinpath("assets/glus-tiny-demo")))


def resolve_checkpoint(checkpoint: str | None) -> Path:
    """``--checkpoint``, else ``$GLUS_CHECKPOINT``, else the bundled demo model."""
    chosen = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if chosen:
        return Path(chosen)
    bundled = bundled_checkpoint()
    if (bundled / "config.json").is_file():
        return bundled
    raise SystemExit(
        "no checkpoint given and no bundled model found: pass --checkpoint DIR "
        f"(or set {CHECKPOINT_ENV}); `glus init --out DIR` writes a random-weight one"
    )


def load_model_from_args(args: argparse.Namespace, device: str, dtype: torch.dtype):
    """The model of ``--checkpoint`` (and, for a released folder, ``--clip-dir``, ``--sam2-checkpoint``,
    ``--sam2-config``)."""
    from model.checkpoint import load_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    return load_checkpoint(checkpoint, args.clip_dir, args.sam2_checkpoint, device, dtype, args.sam2_config,
                           args.delta)  # fmt: skip


def _key_frame_selector(spec: str):
    from model.keyframes import ConfidenceKeyFrames, FirstFrame, JsonKeyFrames

    if spec == "first":
        return FirstFrame()
    if spec == "confidence":
        return ConfidenceKeyFrames()
    return JsonKeyFrames(spec)


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference options of each model family (:mod:`model.families`); a family ignores the other's."""
    parser.add_argument("--schedule", choices=("sliding", "clip"), default="sliding", help="GLUS: query schedule")
    parser.add_argument(
        "--key-frames", default="first",
        help="GLUS: 'first' (no key frame), 'confidence' (the model's own), or a KFS JSON file",
    )  # fmt: skip
    parser.add_argument(
        "--sa2va-mode", choices=("sa2va", "sa2va-i"), default=None,
        help="Sa2VA folders: 'sa2va' (the first key frames to the MLLM, its decoder tracks) or 'sa2va-i' (key frames "
        "spread over the video, SAM-2.0's decoder tracks; needs a Sa2VA-i folder). Default: sa2va-i for a Sa2VA-i "
        "folder, else sa2va",
    )  # fmt: skip
    parser.add_argument("--sa2va-key-frames", type=int, default=5, help="Sa2VA folders: frames the MLLM sees (5)")


def video_model_from_args(args: argparse.Namespace, device: str, dtype: torch.dtype):
    """The model of ``--checkpoint``, whatever its family, with the family's options from ``args``."""
    from model.families import FamilyOptions, GlusVideoModel, family_of, load_video_model
    from model.inference import SegmentOptions, VideoSegmenter

    checkpoint = resolve_checkpoint(args.checkpoint)
    if family_of(checkpoint) == "sa2va":
        options = FamilyOptions(sa2va_mode=args.sa2va_mode, sa2va_key_frames=args.sa2va_key_frames)
        model = load_video_model(checkpoint, device, dtype, options, deltas=args.delta)
    else:
        glus, tokenizer = load_model_from_args(args, device, dtype)
        segment_options = SegmentOptions(
            schedule=args.schedule,
            mem_stride=getattr(args, "mem_stride", None),
            llm_every=getattr(args, "llm_every", 1),
            key_frames=_key_frame_selector(args.key_frames),
        )
        model = GlusVideoModel(VideoSegmenter(glus, tokenizer, device=device), segment_options)
    logger.info("serving %s: %s", checkpoint, model.description)
    return model


def cmd_segment(args: argparse.Namespace) -> int:
    from model.inference import Expression
    from model.outputs import write_mask_png, write_overlay_video
    from model.video_io import VideoFile, open_frames

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    source = open_frames(args.video, max_frames=args.max_frames)
    video_id = args.video_id or Path(args.video).stem
    names = list(source.frame_names)
    expressions = [Expression(text, str(i)) for i, text in enumerate(args.expression)]
    video_model = video_model_from_args(args, args.device, dtype).for_video(video_id)
    out_dirs = [Path(args.out) / video_id / e.exp_id for e in expressions]
    summary = {e.exp_id: {"expression": e.text, "frames": 0, "present": 0, "key_frame": 0} for e in expressions}
    started = time.perf_counter()
    with tqdm(total=len(source) * len(expressions), unit="frame", desc=video_id, disable=args.quiet) as bar:
        for expr_index, key_frame, result in video_model.segment_stream(source, expressions):
            write_mask_png(out_dirs[expr_index] / f"{names[result.frame_index]}.png", result.mask)
            entry = summary[expressions[expr_index].exp_id]
            entry["frames"] += 1
            entry["present"] += int(result.present)
            entry["key_frame"] = key_frame
            bar.update(1)
    elapsed = time.perf_counter() - started
    (Path(args.out) / video_id / "expressions.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_overlay:
        fps = source.fps if isinstance(source, VideoFile) and source.fps > 0 else 10.0
        path = write_overlay_video(Path(args.out) / video_id / "overlay.mp4", source, out_dirs, names, fps)
        logger.info("overlay written to %s", path)
    for exp_id, entry in summary.items():
        logger.info(
            "expression %s (%r): object found in %d/%d frames",
            exp_id,
            entry["expression"],
            entry["present"],
            entry["frames"],
        )
    logger.info("%d frames x %d expressions in %.1f s", len(source), len(expressions), elapsed)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from model.checkpoint import save_pretrained
    from model.factory import random_model

    model, tokenizer = random_model(args.config, seed=args.seed, seg_logit_bias=args.seg_logit_bias or None)
    save_pretrained(model, tokenizer, args.out)
    logger.info("random-weight %s checkpoint (seed %d) written to %s", args.config, args.seed, args.out)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from model.families import checkpoint_variant, family_of
    from model.modeling.glus import count_parameters

    checkpoint = resolve_checkpoint(args.checkpoint)
    if family_of(checkpoint) == "sa2va":
        from model.sa2va.checkpoint import load_sa2va

        sa2va, tokenizer, _ = load_sa2va(checkpoint)
        info = {
            "checkpoint": str(checkpoint),
            "family": "sa2va",
            "variant": checkpoint_variant(checkpoint),
            "parameters": count_parameters(sa2va),
            "vocabulary": len(tokenizer),
            "llm": sa2va.config.llm["architectures"][0],
            "template": sa2va.config.template,
            "sam_image_size": int(sa2va.sam.image_size),
            "visual_tokens_per_frame": sa2va.config.tokens_per_frame,
        }
        print(json.dumps(info, indent=2))
        return 0
    model, tokenizer = load_model_from_args(args, "cpu", torch.float32)
    info = {
        "checkpoint": str(checkpoint),
        "family": "glus",
        "config": model.config.name,
        "parameters": count_parameters(model),
        "vocabulary": len(tokenizer),
        "sam_image_size": model.sam_image_size,
        "visual_tokens_per_image": model.visual_tokens_per_image,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from model.synthetic.cli import main as synthetic_main

    return synthetic_main(args.args)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", help=f"model directory (default: ${CHECKPOINT_ENV}, else the bundled demo model)"
    )
    parser.add_argument(
        "--delta", action="append", default=[], metavar="DIR",
        help="a fine-tuned version stored as a delta (the registry's versions/<name>), applied to --checkpoint; "
        "repeat for a chain, oldest first (`glus-backend versions` names each version's parent)",
    )  # fmt: skip
    from model.config import DEFAULT_SAM2, SAM2_CONFIGS

    parser.add_argument(
        "--clip-dir",
        default=os.environ.get("GLUS_CLIP_DIR") or None,
        help="local CLIP ViT-L/14 folder, hub or save_pretrained layout (released GLUS checkpoints only; "
        "default $GLUS_CLIP_DIR)",
    )
    parser.add_argument(
        "--sam2-checkpoint",
        default=os.environ.get("GLUS_SAM2_CHECKPOINT") or None,
        help="optional official SAM-2 .pt (released GLUS checkpoints only; default $GLUS_SAM2_CHECKPOINT)",
    )
    parser.add_argument(
        "--sam2-config",
        default=os.environ.get("GLUS_SAM2_CONFIG") or None,
        choices=sorted(SAM2_CONFIGS),
        metavar="NAME",
        help=f"the SAM-2 a released GLUS folder was trained with: {', '.join(SAM2_CONFIGS)} "
        f"(default $GLUS_SAM2_CONFIG, else {DEFAULT_SAM2}, as GLUS)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glus", description="GLUS referring video object segmentation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment the objects named by expressions in a video")
    seg.add_argument("video", help="video file or folder of frames")
    seg.add_argument("--expression", "-e", action="append", required=True, help="referring expression (repeatable)")
    seg.add_argument("--out", required=True, help="output root: OUT/<video>/<exp_id>/<frame>.png + overlay.mp4")
    _add_model_arguments(seg)
    add_family_arguments(seg)
    seg.add_argument("--mem-stride", type=int, default=None, help="memory stride (default: the model's, 3)")
    seg.add_argument(
        "--llm-every",
        type=int,
        default=1,
        help="throughput mode (sliding): run the LLM on every k-th frame only, SAM-2 memory in between",
    )
    seg.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    seg.add_argument("--video-id", default=None, help="name of the output folder (default: the file stem)")
    seg.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    seg.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    seg.add_argument("--no-overlay", action="store_true", help="skip the overlay MP4")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    init = sub.add_parser("init", help="write a random-weight checkpoint of a named size")
    init.add_argument("--out", required=True)
    init.add_argument("--config", default="glus-tiny", choices=("glus-tiny", "glus-7b"))
    init.add_argument("--seed", type=int, default=0)
    init.add_argument(
        "--seg-logit-bias",
        type=float,
        default=20.0,
        help="make the random LLM predict [SEG] so masks are produced (0 to disable)",
    )
    init.set_defaults(func=cmd_init)

    from model.evaluation.cli import add_eval_arguments, run_eval

    evaluate = sub.add_parser("eval", help="J, F and J&F of predictions against a data set's ground truth")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)

    from model.benchmark import add_benchmark_arguments, run_benchmark

    bench = sub.add_parser("benchmark", help="J&F per category on a synthetic-benchmark split, with baselines")
    add_benchmark_arguments(bench)
    _add_model_arguments(bench)
    bench.set_defaults(func=run_benchmark)

    synthetic = sub.add_parser("synthetic", help="generate the synthetic benchmark / score its baselines",
                               add_help=False)
    synthetic.add_argument("args", nargs=argparse.REMAINDER)
    synthetic.set_defaults(func=cmd_synthetic)

    from model.train_cli import add_train_arguments, run_train

    train = sub.add_parser("train", help="train or fine-tune on a MeViS-layout split")
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    from model.predict_dataset import add_predict_dataset_arguments, run_predict_dataset

    pred = sub.add_parser("predict-dataset", help="run the model over a data set split (server layout, resumable)")
    add_predict_dataset_arguments(pred)
    _add_model_arguments(pred)
    pred.set_defaults(func=run_predict_dataset)

    info = sub.add_parser("info", help="describe a checkpoint")
    _add_model_arguments(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
