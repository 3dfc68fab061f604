"""GLUS's training losses: CE on ``[SEG]`` only, BCE and Dice on masks, and the object contrastive loss.

``loss = 1.0 * CE_[SEG] + 2.0 * BCE + 0.5 * Dice (+ 0.1 * contrastive)`` (glus-reference.md section 3).

Fixed reference quirks in the contrastive loss (the reference behaviour is not kept behind a switch: it is
a training-time bug with no released numbers depending on it):

* same-object expressions at other frames are not negatives (the reference counts them);
* negatives are drawn without replacement (the reference draws 128 with replacement);
* a batch with exactly one valid anchor still contributes (the reference drops it);
* the bank works for any data set, not only MeViS paths hard-coded at construction.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def seg_token_ce(logits_at_seg_states: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    """CE of the states that predict ``[SEG]`` (the only supervised answer positions in GLUS)."""
    target = torch.full((logits_at_seg_states.shape[0],), seg_token_id, device=logits_at_seg_states.device)
    return F.cross_entropy(logits_at_seg_states.float(), target)


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over pixels per mask, then mean over masks. ``logits``/``targets``: ``(N, H, W)``."""
    per_mask = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(1)
    return per_mask.mean(1).mean()


def mask_dice(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """The reference's Dice: ``1 - (2 sum(p g)/s + eps) / (sum(p)/s + sum(g)/s + eps)`` per mask, mean over masks."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = targets.float().flatten(1)
    numerator = 2 * (p / scale * g).sum(-1)
    denominator = (p / scale).sum(-1) + (g / scale).sum(-1)
    return (1 - (numerator + eps) / (denominator + eps)).mean()


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., H, W)`` bool masks -> ``(..., 4)`` (centre x, centre y, width, height) as fractions of the frame,
    and ``(...)`` whether each mask is non-empty (an empty mask's box is 0)."""
    h, w = masks.shape[-2:]
    m = masks.float()
    ys = torch.arange(h, device=masks.device, dtype=m.dtype).view(h, 1)
    xs = torch.arange(w, device=masks.device, dtype=m.dtype).view(1, w)
    area = m.sum((-1, -2))
    present = area > 0
    cx = (m * xs).sum((-1, -2)) / area.clamp(min=1) / w
    cy = (m * ys).sum((-1, -2)) / area.clamp(min=1) / h
    rows, cols = masks.any(-1), masks.any(-2)
    ys, xs = ys.view(h), xs.view(w)
    height = (torch.where(rows, ys, -1.0).amax(-1) - torch.where(rows, ys, float(h)).amin(-1) + 1).clamp(min=0) / h
    width = (torch.where(cols, xs, -1.0).amax(-1) - torch.where(cols, xs, float(w)).amin(-1) + 1).clamp(min=0) / w
    return torch.stack([cx, cy, width, height], -1) * present.unsqueeze(-1), present


class TargetLocationLoss(nn.Module):
    """Training aid for a language model trained from scratch (off in GLUS): a BatchNorm + linear probe on the
    states that predict ``[SEG]`` regresses the target's box at that frame (smooth L1, frames where the target
    is visible). It asks the LLM to say *where* the referred object is, which relations and motion among
    look-alikes need and which the mask loss, reaching the LLM only through SAM-2's decoder, does not teach a
    from-scratch model. The probe is not part of the saved model."""

    def __init__(self, hidden: int, beta: float = 0.05) -> None:
        super().__init__()
        self.probe = nn.Sequential(nn.BatchNorm1d(hidden), nn.Linear(hidden, 4))
        self.beta = beta

    def forward(self, seg_states: torch.Tensor, target_masks: torch.Tensor) -> torch.Tensor:
        """``(R, Q, C)`` states and ``(R, Q, H, W)`` target masks -> the mean box error over visible targets."""
        boxes, present = mask_boxes(target_masks)
        predicted = self.probe(seg_states.flatten(0, 1).float()).view(*boxes.shape)
        error = F.smooth_l1_loss(predicted, boxes, reduction="none", beta=self.beta).sum(-1)
        return (error * present).sum() / present.sum().clamp(min=1)


class CellMotionLoss(nn.Module):
    """Training aid for visual tokens that must say how their object moves (off in GLUS): a LayerNorm + linear
    probe on the LLM's last-layer states of a query frame's visual tokens regresses, in each cell the referred
    object covers at least ``min_share`` of, that object's velocity at that frame (smooth L1). Without it the
    tokens of a from-scratch model do not carry motion even when CLIP sees the frame differences (a linear
    probe's R^2 stays ~0, see the model card): the mask and pointer losses only reward velocity once the query
    already asks for it. The probe is not part of the saved model."""

    def __init__(self, hidden: int, min_share: float = 0.3, beta: float = 0.1) -> None:
        super().__init__()
        self.probe = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2))
        self.min_share, self.beta = min_share, beta

    def forward(
        self, frame_states: torch.Tensor, target_masks: torch.Tensor, velocities: torch.Tensor, known: torch.Tensor
    ) -> torch.Tensor:
        """``(K, T, C)`` token states (``T`` cells on a square grid, raster order), ``(K, H, W)`` target masks,
        ``(K, 2)`` target velocities and ``(K,)`` whether each is known -> the mean error over covered cells."""
        grid = math.isqrt(frame_states.shape[1])
        coverage = F.adaptive_avg_pool2d(target_masks.float().unsqueeze(1), grid).flatten(1)  # (K, T)
        cells = (coverage >= self.min_share) & known.unsqueeze(1)
        if not bool(cells.any()):
            return frame_states.sum() * 0.0
        predicted = self.probe(frame_states[cells].float())
        expected = velocities.unsqueeze(1).expand(-1, cells.shape[1], -1)[cells].float()
        return F.smooth_l1_loss(predicted, expected, beta=self.beta, reduction="none").sum(-1).mean()


def mask_velocities(masks: torch.Tensor, frames: list[int], scale: float = 16.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The centroid velocity of a ``(N, H, W)`` mask track at each of ``frames``: the centroid shift from the frame
    before to the frame after (one-sided at the track's ends), per frame, in units of ``1 / scale`` of the frame
    size; and whether it is known (the mask is non-empty at the frames it is measured on)."""
    boxes, present = mask_boxes(masks)
    centres = boxes[:, :2] * scale
    out, known = [], []
    for t in frames:
        before, after = max(t - 1, 0), min(t + 1, len(masks) - 1)
        ok = after > before and bool(present[before]) and bool(present[after]) and bool(present[t])
        out.append((centres[after] - centres[before]) / max(after - before, 1) if ok else centres.new_zeros(2))
        known.append(ok)
    return torch.stack(out), torch.tensor(known, device=masks.device)


def pointer_cell_ce(logits: torch.Tensor, target_masks: torch.Tensor) -> torch.Tensor:
    """Training aid for ``seg_point_prompt="pointer"`` (off in GLUS): cross-entropy of the ``(K, T)`` pointer
    logits against the share of the target's ``(K, H, W)`` mask in each of the ``T`` token cells (a square grid
    in raster order), over the rows whose target is visible. It tells the pointer which cell the expression
    refers to, where the mask loss only says so through SAM-2's decoder."""
    grid = math.isqrt(logits.shape[-1])
    coverage = F.adaptive_avg_pool2d(target_masks.float().unsqueeze(1), grid).flatten(1)  # (K, T)
    mass = coverage.sum(-1)
    present = mass > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    share = coverage[present] / mass[present].unsqueeze(-1)
    return -(share * logits[present].float().log_softmax(-1)).sum(-1).mean()


@dataclass(frozen=True)
class SegTokenKey:
    """What a ``[SEG]`` embedding stands for: which objects of which video, at which frame, from which expression."""

    video: str
    expression: str
    objects: tuple[int, ...]  # sorted object ids the expression refers to
    frame: int


class ObjectContrastiveLoss:
    """InfoNCE over a FIFO bank of detached ``[SEG]`` embeddings (cosine similarity, temperature ``tau``).

    Positive: another expression of the same video referring to the same objects, at the same frame.
    Negatives: embeddings of other objects (any video), up to ``num_negatives`` drawn without replacement.
    The current batch is pushed into the bank first, so positives often come from the same batch.

    ``same_video_negatives=True`` always keeps the other objects of the anchor's own video at the anchor's frame
    (the hard negatives: the objects the expression must be told apart from) and fills the rest at random. GLUS
    samples all negatives at random; with a language model trained from scratch, whose ``[SEG]`` state is at
    first dominated by the image, random negatives from other videos are separated by the image alone.
    ``positives_any_frame=True`` also counts the same objects at the other query frames (the same expression
    included) as positives, so every anchor has one and the state is pulled towards what the expression names
    rather than what the frame shows.
    """

    def __init__(
        self,
        bank_size: int = 512,
        num_negatives: int = 128,
        tau: float = 0.07,
        min_negatives: int = 1,
        seed: int = 0,
        same_video_negatives: bool = False,
        positives_any_frame: bool = False,
    ) -> None:
        self.bank: deque[tuple[SegTokenKey, torch.Tensor]] = deque(maxlen=bank_size)
        self.num_negatives = num_negatives
        self.min_negatives = min_negatives
        self.tau = tau
        self.same_video_negatives = same_video_negatives
        self.positives_any_frame = positives_any_frame
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, embeddings: torch.Tensor, keys: list[SegTokenKey]) -> tuple[torch.Tensor, int]:
        """Mean loss over the anchors that have a positive and enough negatives, and their number."""
        if embeddings.shape[0] != len(keys):
            raise ValueError("one key per embedding is needed")
        for key, emb in zip(keys, embeddings.detach()):
            self.bank.append((key, emb.float().cpu()))
        bank_keys = [k for k, _ in self.bank]
        bank_emb = F.normalize(torch.stack([e for _, e in self.bank]), dim=-1).to(embeddings.device)
        losses = []
        for anchor, key in zip(embeddings, keys):
            positives = [
                i
                for i, k in enumerate(bank_keys)
                if k.video == key.video
                and k.objects == key.objects
                and (
                    (k.frame == key.frame and k.expression != key.expression)
                    or (self.positives_any_frame and k.frame != key.frame)
                )
            ]
            negatives = [i for i, k in enumerate(bank_keys) if not (k.video == key.video and k.objects == key.objects)]
            if not positives or len(negatives) < self.min_negatives:
                continue
            pos = positives[int(torch.randint(len(positives), (1,), generator=self.generator))]
            hard: list[int] = []
            if self.same_video_negatives:
                hard = [i for i in negatives if bank_keys[i].video == key.video and bank_keys[i].frame == key.frame]
                hard_set = set(hard)
                negatives = [i for i in negatives if i not in hard_set]
            room = max(0, self.num_negatives - len(hard))
            if len(negatives) > room:
                picks = torch.randperm(len(negatives), generator=self.generator)[:room]
                negatives = [negatives[int(i)] for i in picks]
            negatives = hard + negatives
            q = F.normalize(anchor.float(), dim=-1)
            candidates = bank_emb[[pos, *negatives]]
            logits = (candidates @ q) / self.tau
            losses.append(F.cross_entropy(logits.unsqueeze(0), torch.zeros(1, dtype=torch.long, device=logits.device)))
        if not losses:
            return embeddings.sum() * 0.0, 0
        return torch.stack(losses).mean(), len(losses)
