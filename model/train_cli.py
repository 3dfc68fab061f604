"""``glus train``: train or fine-tune on a MeViS-layout split (the synthetic benchmark, corrections, MeViS).

    glus train --data ROOT --split train --out runs/tiny --steps 3000 [--init CKPT | --config glus-tiny]

Writes ``OUT/`` as a checkpoint (``config.json``, ``model.safetensors``, tokenizer), plus ``train_config.json``
(with the code that ran: torch, transformers and numpy versions, the CPU and its kernel set, git commit,
uncommitted changes) and ``train_log.jsonl`` (one line per step). Seeded: the same command gives the same
weights with the same thread count on the same kind of CPU (AVX2 and AVX-512 kernels sum in different orders).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)


class MevisTrainingSource:
    """Random training videos from a MeViS-layout split, decoded on demand with a small cache."""

    def __init__(
        self, root: str | Path, split: str, dataset: str = "mevis", cache_size: int = 512, min_frames: int = 4
    ) -> None:
        from .datasets import open_dataset

        self.dataset = open_dataset(dataset, root, split)
        self.video_ids = [
            v.video_id for v in self.dataset.videos.values() if len(v.frame_names) >= min_frames and v.expressions
        ]
        if not self.video_ids:
            raise ValueError(f"no video with >= {min_frames} frames and an expression in {root}/{split}")
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size

    def video(self, video_id: str):
        import cv2
        import numpy as np

        from .trainer import TrainingExpression, TrainingVideo

        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        entry = self.dataset.video(video_id)
        frames = np.stack(
            [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in self.dataset.frame_paths(video_id)]
        )
        expressions = [
            TrainingExpression(e.text, e.exp_id, tuple(e.obj_ids), self.dataset.gt_masks(video_id, e.exp_id))
            for e in entry.expressions
        ]
        video = TrainingVideo(video_id, frames, expressions)
        self._cache[video_id] = video
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return video

    def batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[list]:
        """Endless random batches; each data-parallel process (``rank``) draws its own."""
        rng = random.Random(seed + 1_000_003 * rank)
        while True:
            yield [self.video(rng.choice(self.video_ids)) for _ in range(batch_size)]


class SyntheticTrainingSource:
    """Fresh synthetic videos generated in memory (never the fixed validation/test seeds)."""

    def __init__(self, seed: int = 0, curriculum_steps: int = 0) -> None:
        from dataclasses import replace

        from .synthetic.world import WorldConfig

        self.config = WorldConfig()
        # the first `curriculum_steps` batches come from appearance-only scenes (no look-alikes, no relations):
        # there "every object" is a poor answer, so the mask decoder learns to read its prompt token early
        self.curriculum_config = replace(self.config, p_lookalike=0.0, p_relation=0.0)
        self.curriculum_steps = curriculum_steps
        self.seed = seed

    def batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[list]:
        """Endless batches of new videos; data-parallel processes take interleaved video indices."""
        from .synthetic.world import generate_video
        from .trainer import TrainingExpression, TrainingVideo

        index = rank * batch_size
        step = 0
        while True:
            batch = []
            world = self.curriculum_config if step < self.curriculum_steps else self.config
            step += 1
            for _ in range(batch_size):
                video_seed = 1_000_000_000 + self.seed * 10_000_000 + index
                index += 1
                video = generate_video(video_seed, world)
                expressions = [
                    TrainingExpression(e.text, str(i), tuple(e.object_ids), video.masks[list(e.object_ids)].any(0))
                    for i, e in enumerate(video.expressions)
                ]
                batch.append(TrainingVideo(f"synthetic{video_seed}", video.frames, expressions))
            index += (world_size - 1) * batch_size  # the other processes' videos
            yield batch


def _cpu_model() -> str | None:
    """The CPU's model name (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def code_provenance() -> dict:
    """Which code trained a checkpoint: the versions of the packages that set the numbers, the CPU kernels they
    dispatched to (AVX2 and AVX-512 kernels sum in different orders, so the same command gives other weights on
    another CPU) and, in a git checkout, the commit and whether the working tree differed from it (weights
    trained from uncommitted code cannot be reproduced from the repository)."""
    import numpy
    import torch
    import transformers

    provenance: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "numpy": numpy.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "cpu": _cpu_model(), "commit": None, "uncommitted_changes": None}  # fmt: skip
    provenance.update({name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR") if name in os.environ})
    checkout = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr)
        return done.stdout.strip()

    try:
        top, commit = git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != checkout:  # installed inside some other repository: its commit is not ours
            return provenance
        provenance["uncommitted_changes"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an installed package) or no git
        return provenance
    provenance["commit"] = commit
    return provenance


def save_trained(model, tokenizer, out: Path, dtype=None, parent_version: str | None = None) -> Path:
    """Save a trained model. With ``parent_version`` (a registry's fine-tuning run) as a delta of that version:
    the LoRA factors and the parts trained in full (:mod:`model.delta`). Otherwise as a plain checkpoint: LoRA
    adapters are written to ``lora_adapter.safetensors`` and merged first."""
    from safetensors.torch import save_file

    from .checkpoint import save_pretrained
    from .delta import save_delta
    from .lora import has_lora, lora_settings_of, lora_state_dict, merge_lora

    if parent_version is not None:
        return save_delta(model, tokenizer, out, parent_version, lora_settings_of(model), dtype)
    if has_lora(model):
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in lora_state_dict(model).items()}, str(out / "lora_adapter.safetensors"))
        merge_lora(model)
    return save_pretrained(model, tokenizer, out, dtype=dtype)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="data set root (holding the split folders)")
    parser.add_argument("--synthetic", action="store_true", help="train on fresh synthetic videos made in memory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--dataset", default="mevis", choices=("mevis", "refytvos", "davis17"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning)")
    parser.add_argument(
        "--init-delta", action="append", default=[], help="apply this delta version to --init first (repeatable, "
        "oldest first: the chain of the version fine-tuned from)"
    )  # fmt: skip
    parser.add_argument(
        "--parent-version", default=None, help="save the result as a delta of this version (LoRA + the parts "
        "trained in full) instead of a merged checkpoint"
    )  # fmt: skip
    parser.add_argument("--clip-dir", default=None, help="CLIP folder, when --init is a released GLUS folder")
    parser.add_argument("--sam2-checkpoint", default=None, help="SAM-2 .pt, when --init is a released GLUS folder")
    parser.add_argument("--sam2-config", default=None, help="SAM-2 architecture, when --init is a released folder")
    parser.add_argument("--config", default="glus-tiny", help="named size for training from scratch")
    parser.add_argument(
        "--from-scratch-aids",
        action="store_true",
        help="tiny-model switches for training from scratch (see the model card): BatchNorm on the [SEG] state, "
        "LayerNorm on the prompt token, MLP projector, fixed prompt templates, same-video hard negatives and "
        "any-frame positives in the contrastive loss",
    )
    parser.add_argument(
        "--visual-token-aids",
        action="store_true",
        help="tiny-model switches for the visual tokens, from scratch (see the model card): square pooling cells, "
        "LayerNorm on the projected tokens, a fixed 2-D position embedding",
    )
    parser.add_argument(
        "--point-prompt",
        action="store_true",
        help="tiny-model switch, from scratch (see the model card): the [SEG] state also points at one of its "
        "frame's visual tokens, whose cell prompts SAM-2 as a soft point (square pooling cells)",
    )
    parser.add_argument(
        "--point-map",
        action="store_true",
        help="tiny-model switch, from scratch (implies --point-prompt; see the model card): the pointer's cell "
        "probabilities also enter SAM-2 as a dense prompt, which its mask decoder cannot ignore as it does the point",
    )
    parser.add_argument(
        "--motion-channels",
        action="store_true",
        help="tiny-model switch, from scratch (see the model card): CLIP also sees each frame's differences to the "
        "previous and the next frame, so the visual tokens can say how their object moves",
    )
    parser.add_argument(
        "--llm-layers", type=int, default=None, help="language-model layers of a model built from scratch"
    )
    parser.add_argument(
        "--curriculum-steps", type=int, default=0, help="synthetic: appearance-only scenes for the first N steps"
    )
    parser.add_argument(
        "--prompt-templates",
        choices=("random", "inference"),
        default=None,
        help="random (GLUS) or the inference template only (default: inference with --from-scratch-aids)",
    )
    parser.add_argument(
        "--contrastive-aids",
        action="store_true",
        help="same-video hard negatives and any-frame positives in the contrastive loss (on with --from-scratch-aids)",
    )
    parser.add_argument("--sam-image-size", type=int, default=None, help="SAM-2 input size (from scratch only)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--contrastive-weight", type=float, default=0.1)
    parser.add_argument(
        "--location-weight",
        type=float,
        default=0.0,
        help="tiny-model aid: weight of a loss that makes the [SEG] states regress the target's box (0 = off, GLUS)",
    )
    parser.add_argument(
        "--seg-prompt-dropout",
        type=float,
        default=0.0,
        help="tiny-model aid (models with --point-prompt): probability of leaving an expression's [SEG] token out of "
        "SAM-2's prompt in a training clip, so that the mask decoder learns to follow the point (0 = off)",
    )
    parser.add_argument(
        "--motion-weight",
        type=float,
        default=0.0,
        help="tiny-model aid: weight of a loss that makes the query frames' visual-token states regress the velocity "
        "of the object they show (0 = off, GLUS; best with --motion-channels)",
    )
    parser.add_argument(
        "--pointer-weight",
        type=float,
        default=0.0,
        help="with a point prompt: weight of a loss that tells the pointer which token cells the target covers",
    )
    parser.add_argument("--no-memory", action="store_true", help="train without the memory bank (ablation)")
    parser.add_argument(
        "--train-parts",
        choices=("all", "glus", "lora"),
        default="all",
        help="all (from scratch); glus (LLM in full + projectors + mask decoder); lora (GLUS's fine-tuning: LoRA "
        "on the LLM's q/v, embeddings, LM head, projectors, mask decoder; saved merged)",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: the frozen base in bf16 (SAM-2 float32), what trains in float32, bf16 autocast (glus-7b; "
        "--train-parts glus or lora)",
    )  # fmt: skip
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the LLM's layers in the backward pass"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    parser.add_argument("--save-every", type=int, default=0, help="also save OUT/step_<n> every n steps")
    parser.add_argument(
        "--save-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the final checkpoint's floating-point tensors (float16 halves it; loading casts back)",
    )


def run_train(args: argparse.Namespace) -> int:
    import torch

    from .distributed import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    distributed, device = init_distributed(device)  # under torchrun: one process per GPU
    if not distributed.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _train(args, device, distributed)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, device: str, distributed) -> int:
    import torch

    from .checkpoint import load_checkpoint, save_pretrained
    from .config import MOTION_CHANNELS, get_config, with_sam_image_size
    from .factory import random_model
    from .trainer import TrainConfig, Trainer

    if args.init:
        from .families import family_of

        if family_of(args.init) != "glus":
            raise SystemExit(
                f"{args.init} is a {family_of(args.init)} checkpoint: fine-tuning is implemented for GLUS only"
            )
        scratch_only = {
            "--visual-token-aids": args.visual_token_aids,
            "--point-prompt": args.point_prompt,
            "--point-map": args.point_map,
            "--motion-channels": args.motion_channels,
            "--sam-image-size": args.sam_image_size,
            "--llm-layers": args.llm_layers,
        }
        given = [flag for flag, value in scratch_only.items() if value]
        if given:
            raise SystemExit(
                f"{', '.join(given)} shape a model built from scratch; with --init the checkpoint's own "
                "configuration is used, so leave them out (--from-scratch-aids keeps only its training aids there)"
            )
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32  # a 7B base never exists in fp32
        model, tokenizer = load_checkpoint(args.init, args.clip_dir, args.sam2_checkpoint, "cpu", dtype,
                                           args.sam2_config, args.init_delta)  # fmt: skip
    else:
        config = get_config(args.config)
        if args.sam_image_size:
            config = with_sam_image_size(config, args.sam_image_size)
        if args.from_scratch_aids:
            config.seg_hidden_norm = "batchnorm"
            config.seg_output_norm = "layernorm"
            config.open_prompt_trailing_space = False
            config.projector_type = "mlp2x_gelu"
            config.sam_multimask_fallback = False
        if args.visual_token_aids:
            config.vision_token_pool_layout = "grid"
            config.projector_output_norm = "layernorm"
            config.vision_position_embedding = "sincos2d"
        if args.llm_layers:
            config.llm["num_hidden_layers"] = args.llm_layers
        if args.point_prompt or args.point_map:
            config.vision_token_pool_layout = "grid"
            config.seg_point_prompt = "pointer_map" if args.point_map else "pointer"
        if args.motion_channels:
            config.vision_motion_channels = "frame_difference"
            config.vision["num_channels"] = 3 + MOTION_CHANNELS["frame_difference"]
        model, tokenizer = random_model(config, seed=args.seed)
    if args.synthetic:
        source = SyntheticTrainingSource(args.seed, args.curriculum_steps)
    elif args.data is not None:
        source = MevisTrainingSource(args.data, args.split, args.dataset)
    else:
        raise SystemExit("give --data ROOT (a MeViS-layout data set) or --synthetic")
    train_config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        contrastive_weight=args.contrastive_weight,
        use_memory_bank=not args.no_memory,
        train_parts=args.train_parts,
        seed=args.seed,
        prompt_templates=args.prompt_templates or ("inference" if args.from_scratch_aids else "random"),
        same_video_negatives=args.from_scratch_aids or args.contrastive_aids,
        positives_any_frame=args.from_scratch_aids or args.contrastive_aids,
        location_weight=args.location_weight,
        motion_weight=args.motion_weight,
        seg_prompt_dropout=args.seg_prompt_dropout,
        pointer_weight=args.pointer_weight,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    main = distributed.is_main
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_config.json").write_text(
        json.dumps(
            {
                "train": asdict(train_config),
                "data": str(args.data),
                "split": args.split,
                "init": args.init,
                "curriculum_steps": args.curriculum_steps,
                "config": model.config.to_dict(),
                "device": device,
                "threads": torch.get_num_threads(),
                "processes": distributed.world_size,
                "code": code_provenance(),
            },
            indent=2,
            default=str,
        )
    )
    trainer = Trainer(model, tokenizer, train_config, device=device, distributed=distributed)
    log = (args.out / "train_log.jsonl").open("w") if main else None
    started = time.perf_counter()
    with tqdm(total=args.steps, unit="step", desc="train", disable=not main) as bar:

        def on_step(stats) -> None:
            if not main:
                return
            log.write(json.dumps(asdict(stats)) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", bce=f"{stats.bce:.3f}", dice=f"{stats.dice:.3f}")
            if args.save_every and stats.step % args.save_every == 0 and stats.step < args.steps:
                if args.train_parts == "lora":
                    logger.info("--save-every is ignored with LoRA (the final checkpoint is saved merged)")
                else:
                    save_pretrained(trainer.model.eval(), tokenizer, args.out / f"step_{stats.step}")
                    trainer.model.train()

        trainer.fit(source.batches(args.batch_size, args.seed, distributed.rank, distributed.world_size), on_step)
    if not main:
        return 0
    log.close()
    save_trained(trainer.model.eval(), tokenizer, args.out, getattr(torch, args.save_dtype), args.parent_version)
    logger.info(
        "trained %d steps in %.1f min; checkpoint in %s", args.steps, (time.perf_counter() - started) / 60, args.out
    )
    return 0
