"""Training GLUS with the memory bank in the loop (glus-reference.md sections 2.4, 3, 6).

One training sample is a clip of a video: 4 context frames (one random frame in each quarter), 4 consecutive
query frames, and up to 3 of the video's expressions. Each expression is a teacher-forced conversation with
one ``[SEG]`` per query frame; the states that predict ``[SEG]`` are projected and prompt SAM-2 frame by
frame, query frame ``j`` reading the memories of the *predicted* masks of frames ``0..j-1`` (stride 1,
memories detached). Loss: CE on ``[SEG]`` + BCE + Dice on the masks at full resolution + object contrastive.

Which parameters train is :attr:`TrainConfig.train_parts`:

* ``"all"`` - everything (a model trained from scratch: its SAM-2 image encoder must learn too);
* ``"glus"`` - the LLM in full, the projectors, the seg projector and SAM-2's mask decoder; the image encoder
  and memory modules stay frozen and run without gradients;
* ``"lora"`` - what GLUS trains (:mod:`model.lora`): LoRA adapters on the LLM's q/v projections, the token
  embeddings and LM head, the projectors, the seg projector and SAM-2's mask decoder.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import DistributedContext
from .losses import (
    CellMotionLoss,
    ObjectContrastiveLoss,
    SegTokenKey,
    TargetLocationLoss,
    mask_bce,
    mask_dice,
    mask_velocities,
    pointer_cell_ce,
    seg_token_ce,
)
from .modeling.glus import GlusModel, image_token_positions, seg_state_positions
from .modeling.memory_bank import MemoryBank
from .preprocessing import clip_video_pixel_values, sam_pixel_values
from .prompting import inference_prompt, training_prompt
from .tokenizer import GlusTokenizer

logger = logging.getLogger(__name__)

Probe = TypeVar("Probe", bound=torch.nn.Module)


@dataclass
class TrainingExpression:
    text: str
    exp_id: str
    objects: tuple[int, ...]
    masks: np.ndarray  # (T, H, W) bool: the union of the referred objects' masks (logical OR)


@dataclass
class TrainingVideo:
    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    expressions: list[TrainingExpression]


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine (to 10 %) | linear (to 0, as the reference)
    grad_clip: float = 1.0
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    contrastive_weight: float = 0.1
    contrastive_tau: float = 0.07
    bank_size: int = 512
    num_negatives: int = 128
    same_video_negatives: bool = False  # always use the anchor video's other objects as negatives (tiny aid)
    positives_any_frame: bool = False  # the same objects at other query frames are positives too (tiny aid)
    location_weight: float = 0.0  # > 0: the [SEG] states also regress the target's box (tiny aid, losses.py)
    # > 0: the query frames' visual-token states also regress the velocity of the single object they show (tiny aid)
    motion_weight: float = 0.0
    # > 0 (models with seg_point_prompt, tiny aid): the probability that an expression's [SEG] token is left out of
    # SAM-2's prompt in a training clip, so the mask decoder must follow the point (otherwise it learns to ignore it)
    seg_prompt_dropout: float = 0.0
    pointer_weight: float = 0.0  # > 0 (models with seg_point_prompt): the pointer is told the target's cells
    query_frames: int = 4
    expressions_per_video: int = 3
    mem_stride: int = 1
    use_memory_bank: bool = True
    train_parts: str = "all"  # all | glus | lora
    # fp32 | bf16: the frozen base in bf16 (SAM-2 float32, GlusModel.to_serving), the parts that train kept in
    # float32 (master weights, AdamW states), the forward pass under bf16 autocast; glus / lora parts only
    precision: str = "fp32"
    gradient_checkpointing: bool = False  # recompute the LLM's layers in the backward pass instead of storing them
    prompt_templates: str = "random"  # random (GLUS: a random question/answer template per round) | inference
    seed: int = 0
    log_every: int = 25
    extra: dict = field(default_factory=dict)


@dataclass
class BatchOutputs:
    """What one teacher-forced pass produced: per row (a video's expression) and query frame."""

    rows: list[tuple[str, TrainingExpression]]
    seg_states: torch.Tensor  # (R, Q, C_llm) states that predict [SEG]
    embeddings: torch.Tensor  # (R, Q, C_sam) projected prompt tokens
    mask_logits: torch.Tensor  # (R, Q, H, W)
    targets: torch.Tensor  # (R, Q, H, W) bool
    keys: list[SegTokenKey]
    ce: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor
    pointer_logits: torch.Tensor | None = None  # (R, Q, T) with seg_point_prompt
    frame_states: torch.Tensor | None = None  # (R, Q, T, C_llm) query frames' visual-token states (pointer / motion)
    velocities: torch.Tensor | None = None  # (R, Q, 2) single-object targets' velocities (motion_weight > 0)
    velocity_known: torch.Tensor | None = None  # (R, Q) bool


@dataclass
class TrainStepStats:
    step: int
    loss: float
    ce: float
    bce: float
    dice: float
    contrastive: float
    contrastive_anchors: int
    lr: float
    seconds: float
    location: float = 0.0
    pointer: float = 0.0
    motion: float = 0.0


def sample_clip(
    video: TrainingVideo, rng: random.Random, num_query: int, num_context: int, max_expr: int
) -> tuple[list[int], list[int], list[TrainingExpression]]:
    """Context frames (one random frame per equal segment), consecutive query frames, expressions."""
    n = video.frames.shape[0]
    if n < num_query:
        raise ValueError(f"video {video.video_id} has {n} frames, fewer than the {num_query} query frames")
    bounds = np.linspace(0, n, num_context + 1)
    context = [rng.randrange(int(bounds[j]), max(int(bounds[j + 1]), int(bounds[j]) + 1)) for j in range(num_context)]
    start = rng.randrange(0, n - num_query + 1)
    exprs = rng.sample(video.expressions, min(max_expr, len(video.expressions)))
    return context, list(range(start, start + num_query)), exprs


def trainable_parameters(model: GlusModel, parts: str) -> list[torch.nn.Parameter]:
    """The parameters that train, every other one frozen (see :attr:`TrainConfig.train_parts`)."""
    if parts == "all":
        return [p for p in model.parameters()]
    if parts not in ("glus", "lora"):
        raise ValueError(f"unknown train_parts {parts!r}; expected all, glus or lora")
    for p in model.parameters():
        p.requires_grad_(False)
    modules = [model.multi_modal_projector, model.seg_projector, model.sam.sam_mask_decoder]
    modules += [m for m in (model.seg_pointer, model.point_map) if m is not None]
    if parts == "glus":
        modules.append(model.language_model)
        params = [p for m in modules for p in m.parameters()]
    else:
        from .lora import add_lora, has_lora, lora_parameters

        lora = lora_parameters(model) if has_lora(model) else add_lora(model)
        modules += [model.language_model.get_input_embeddings(), model.language_model.get_output_embeddings()]
        params = [*lora, *(p for m in modules for p in m.parameters())]
    for p in params:
        p.requires_grad_(True)
    return params


class Trainer:
    """Optimises one model on batches of :class:`TrainingVideo` clips."""

    def __init__(
        self,
        model: GlusModel,
        tokenizer: GlusTokenizer,
        config: TrainConfig,
        device: str = "cpu",
        distributed: DistributedContext | None = None,
    ) -> None:
        self.distributed = distributed or DistributedContext()
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device)
        self.seg_id = tokenizer.token_to_id(model.config.seg_token)
        self.rng = random.Random(config.seed)
        torch.manual_seed(config.seed)
        if config.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {config.precision!r}; expected fp32 or bf16")
        if config.precision == "bf16" and config.train_parts == "all":
            raise ValueError("bf16 training keeps a frozen base in bf16: use train_parts 'glus' or 'lora'")
        if config.precision == "bf16":
            model.to_serving(device, torch.bfloat16)
        self.params = trainable_parameters(model, config.train_parts)
        if config.precision == "bf16":  # master weights: what trains is float32 (a bf16 update of 1e-4 rounds to 0)
            for module in model.modules():  # with its modules' buffers (a trained batch norm's statistics)
                if not any(p.requires_grad for p in module.parameters(recurse=False)):
                    continue
                for param in module.parameters(recurse=False):
                    param.data = param.data.float()
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer.is_floating_point():
                        setattr(module, name, buffer.float())
        if config.gradient_checkpointing:  # transformers >= 5.2x names it activation checkpointing
            llm = model.language_model
            enable = getattr(llm, "activation_checkpointing_enable", None) or llm.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        self.distributed.broadcast_parameters(self.model)  # LoRA's random init included
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
            foreach=False if config.precision == "bf16" else None,  # no temporary copy of every state at once
        )  # fmt: skip
        self.contrastive = ObjectContrastiveLoss(
            config.bank_size,
            config.num_negatives,
            config.contrastive_tau,
            seed=config.seed,
            same_video_negatives=config.same_video_negatives,
            positives_any_frame=config.positives_any_frame,
        )
        if config.pointer_weight > 0 and model.seg_pointer is None:
            raise ValueError("pointer_weight needs a model with seg_point_prompt (glus train --point-prompt)")
        if not 0.0 <= config.seg_prompt_dropout <= 1.0:
            raise ValueError(f"seg_prompt_dropout is a probability, got {config.seg_prompt_dropout}")
        if config.seg_prompt_dropout > 0 and model.seg_pointer is None:
            raise ValueError("seg_prompt_dropout needs a model with seg_point_prompt (glus train --point-prompt)")
        hidden = model.config.llm_hidden_size
        self.location = self._training_probe(TargetLocationLoss(hidden)) if config.location_weight > 0 else None
        self.motion = self._training_probe(CellMotionLoss(hidden)) if config.motion_weight > 0 else None
        self.step_index = 0

    def _training_probe(self, probe: Probe) -> Probe:
        """A loss with parameters of its own (a training aid): optimised with the model, never saved."""
        probe = probe.to(self.device)
        params = list(probe.parameters())
        self.distributed.broadcast_parameters(probe)
        self.optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        self.params = self.params + params
        return probe

    def lr_at(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return cfg.lr * max(0.0, 1 - progress)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def forward(self, videos: list[TrainingVideo], rng: random.Random | None = None) -> BatchOutputs:
        """Teacher-forced pass over one batch: sampled clips, the LLM, SAM-2 frame by frame, and the losses.

        Gradients flow as in training; call it under ``torch.no_grad()`` and ``model.eval()`` to evaluate.
        """
        bf16 = self.config.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self._forward(videos, rng)

    def _forward(self, videos: list[TrainingVideo], rng: random.Random | None = None) -> BatchOutputs:
        rng = rng or self.rng
        cfg, model, mcfg = self.config, self.model, self.model.config
        rows: list[tuple[int, TrainingExpression]] = []
        clips = []
        for v_index, video in enumerate(videos):
            context, query, exprs = sample_clip(
                video, rng, cfg.query_frames, mcfg.context_frames, cfg.expressions_per_video
            )
            clips.append((context, query))
            rows.extend((v_index, e) for e in exprs)
        # --- multimodal LLM: one teacher-forced conversation per (video, expression) ---
        pixels = torch.cat(
            [
                clip_video_pixel_values(mcfg, videos[v].frames.__getitem__, c + q, len(videos[v].frames))
                for v, (c, q) in enumerate(clips)
            ]
        ).to(self.device)
        tokens = model.encode_images(pixels).view(
            len(videos), mcfg.context_frames + cfg.query_frames, model.visual_tokens_per_image, -1
        )
        sequences, positions, prompt_ids = [], [], []
        for v, expr in rows:
            if cfg.prompt_templates == "inference":
                text = inference_prompt(expr.text, mcfg.context_frames, cfg.query_frames, open_last=False)
            else:
                text = training_prompt(expr.text, mcfg.context_frames, cfg.query_frames, rng)
            ids = torch.tensor(self.tokenizer.encode_prompt(text), device=self.device)
            sequences.append(model.embed_prompt(ids, tokens[v]))
            positions.append(seg_state_positions(ids, self.seg_id, model.visual_tokens_per_image))
            prompt_ids.append(ids)
        length = max(s.shape[0] for s in sequences)
        batch = torch.zeros(len(sequences), length, sequences[0].shape[1], device=self.device, dtype=sequences[0].dtype)
        attention = torch.zeros(len(sequences), length, dtype=torch.long, device=self.device)
        for i, s in enumerate(sequences):
            batch[i, : s.shape[0]] = s
            attention[i, : s.shape[0]] = 1
        hidden = model.language_hidden_states(batch, attention)
        seg_states = torch.stack([hidden[i, p] for i, p in enumerate(positions)])  # (R, Q, C)
        ce = seg_token_ce(model.token_logits(seg_states.flatten(0, 1)), self.seg_id)
        embeddings = model.project_seg(seg_states.flatten(0, 1)).view(len(rows), cfg.query_frames, -1)
        prompts, pointer_logits, frame_states = embeddings, None, None
        if model.seg_pointer is not None or self.motion is not None:
            frame_positions = [  # each row's query images: the last images of its prompt
                image_token_positions(ids, model.visual_tokens_per_image)[-cfg.query_frames :] for ids in prompt_ids
            ]
            frame_states = torch.stack([hidden[i, p] for i, p in enumerate(frame_positions)])  # (R, Q, T, C)
        velocities = velocity_known = None
        if self.motion is not None:  # single-object targets only: a union of objects has no one velocity
            tracks = [mask_velocities(torch.from_numpy(e.masks), clips[v][1]) for v, e in rows]
            velocities = torch.stack([t[0] for t in tracks]).to(self.device)
            single = torch.tensor([len(e.objects) == 1 for _, e in rows]).unsqueeze(1)
            velocity_known = (torch.stack([t[1] for t in tracks]) & single).to(self.device)
        if model.seg_pointer is not None:  # tiny aid: a soft point prompt (and cell map) where the [SEG] state points
            prompts, pointer_logits = model.compose_prompts(
                embeddings.flatten(0, 1), seg_states.flatten(0, 1), frame_states.flatten(0, 1)
            )
            prompts = prompts.view(len(rows), cfg.query_frames, *prompts.shape[1:])  # (R, Q, 2 or 3, C_sam)
            pointer_logits = pointer_logits.view(len(rows), cfg.query_frames, -1)
            if cfg.seg_prompt_dropout > 0 and torch.is_grad_enabled():
                keep = [float(rng.random() >= cfg.seg_prompt_dropout) for _ in rows]
                keep_seg = torch.tensor(keep, device=self.device, dtype=prompts.dtype).view(-1, 1, 1, 1)
                prompts = torch.cat([prompts[:, :, :1] * keep_seg, prompts[:, :, 1:]], 2)
        # --- SAM-2 frame by frame with the memory bank in the loop ---
        row_video = [v for v, _ in rows]
        bank = MemoryBank(mcfg.num_maskmem, cfg.mem_stride)
        bce = dice = torch.zeros((), device=self.device)
        frozen = cfg.train_parts != "all"
        all_logits, all_targets = [], []
        for j in range(cfg.query_frames):
            frames = [videos[v].frames[clips[v][1][j]] for v in range(len(videos))]
            sam_in = sam_pixel_values(frames, model.sam_image_size, mcfg.sam_mean, mcfg.sam_std).to(self.device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                feats = model.encode_frame(sam_in).select(row_video)
                memories = bank.read(j) if cfg.use_memory_bank else []
                conditioned = model.condition_on_memory(feats, memories)
            decoded = model.decode_masks(conditioned, feats, prompts[:, j])
            targets = torch.stack([torch.from_numpy(e.masks[clips[v][1][j]]) for v, e in rows]).to(self.device)
            logits = F.interpolate(
                decoded.lowres_logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
            bce = bce + mask_bce(logits, targets) / cfg.query_frames
            dice = dice + mask_dice(logits, targets) / cfg.query_frames
            all_logits.append(logits)
            all_targets.append(targets)
            if cfg.use_memory_bank and j + 1 < cfg.query_frames:
                with torch.no_grad():
                    bank.write(j, model.encode_memory(conditioned.detach(), feats, decoded.lowres_logits.detach()))
        keys = [
            SegTokenKey(videos[v].video_id, e.exp_id, tuple(sorted(e.objects)), clips[v][1][j])
            for v, e in rows
            for j in range(cfg.query_frames)
        ]
        return BatchOutputs(
            rows=[(videos[v].video_id, e) for v, e in rows],
            seg_states=seg_states,
            embeddings=embeddings,
            mask_logits=torch.stack(all_logits, 1),
            targets=torch.stack(all_targets, 1),
            keys=keys,
            ce=ce,
            bce=bce,
            dice=dice,
            pointer_logits=pointer_logits,
            frame_states=frame_states,
            velocities=velocities,
            velocity_known=velocity_known,
        )

    def train_step(self, videos: list[TrainingVideo]) -> TrainStepStats:
        started = time.perf_counter()
        cfg, model = self.config, self.model
        model.train()
        if cfg.train_parts != "all":  # frozen SAM-2 parts keep eval behaviour (no dropout in memory attention)
            model.sam.image_encoder.eval()
            model.sam.memory_attention.eval()
            model.sam.memory_encoder.eval()
        out = self.forward(videos)
        ce, bce, dice, embeddings = out.ce, out.bce, out.dice, out.embeddings
        contrastive, anchors = (
            self.contrastive(embeddings.flatten(0, 1), out.keys)
            if cfg.contrastive_weight > 0
            else (torch.zeros((), device=self.device), 0)
        )
        location = (
            self.location.train()(out.seg_states, out.targets)
            if self.location is not None
            else torch.zeros((), device=self.device)
        )
        loss = cfg.ce_weight * ce + cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.contrastive_weight * contrastive
        pointer = (
            pointer_cell_ce(out.pointer_logits.flatten(0, 1), out.targets.flatten(0, 1))
            if cfg.pointer_weight > 0 and out.pointer_logits is not None
            else torch.zeros((), device=self.device)
        )
        motion = (
            self.motion.train()(
                out.frame_states.flatten(0, 1),
                out.targets.flatten(0, 1),
                out.velocities.flatten(0, 1),
                out.velocity_known.flatten(0, 1),
            )
            if self.motion is not None
            else torch.zeros((), device=self.device)
        )
        loss = loss + cfg.location_weight * location + cfg.pointer_weight * pointer + cfg.motion_weight * motion
        lr = self.lr_at(self.step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.distributed.average_gradients(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.step_index += 1
        loss, ce, bce, dice, contrastive, location, pointer, motion = (
            t.detach() for t in (loss, ce, bce, dice, contrastive, location, pointer, motion)
        )
        return TrainStepStats(
            self.step_index,
            loss.item(),
            ce.item(),
            bce.item(),
            dice.item(),
            contrastive.item(),
            anchors,
            lr,
            time.perf_counter() - started,
            location.item(),
            pointer.item(),
            motion.item(),
        )

    def fit(
        self, batches: Iterator[list[TrainingVideo]], on_step: Callable[[TrainStepStats], None] | None = None
    ) -> list[TrainStepStats]:
        history = []
        while self.step_index < self.config.steps:
            stats = self.train_step(next(batches))
            history.append(stats)
            if on_step is not None:
                on_step(stats)
            if stats.step % self.config.log_every == 0 or stats.step == self.config.steps:
                logger.info(
                    "step %d loss %.4f (ce %.4f bce %.4f dice %.4f con %.4f/%d) lr %.2e %.2fs "
                    "loc %.4f ptr %.4f mot %.4f",
                    *asdict(stats).values(),
                )
        self.model.eval()
        return history
