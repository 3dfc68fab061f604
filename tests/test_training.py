"""Losses (against their formulas, the contrastive rules with the reference quirks fixed) and the trainer."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.factory import random_model
from model.losses import ObjectContrastiveLoss, SegTokenKey, mask_bce, mask_dice, seg_token_ce
from model.trainer import TrainConfig, Trainer, TrainingExpression, TrainingVideo, sample_clip


def test_mask_losses_follow_the_reference_formulas():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 8)
    targets = (torch.rand(3, 8, 8) > 0.5).float()
    manual_bce = torch.stack([F.binary_cross_entropy_with_logits(x, t) for x, t in zip(logits, targets)]).mean()
    assert torch.allclose(mask_bce(logits, targets), manual_bce)
    p = torch.sigmoid(logits).flatten(1)
    g = targets.flatten(1)
    manual_dice = (1 - (2 * (p / 1000 * g).sum(-1) + 1e-6) / ((p / 1000).sum(-1) + (g / 1000).sum(-1) + 1e-6)).mean()
    assert torch.allclose(mask_dice(logits, targets), manual_dice)
    assert mask_dice(torch.full((1, 4, 4), 20.0), torch.ones(1, 4, 4)) < 1e-3
    logits_v = torch.randn(5, 11)
    assert torch.allclose(seg_token_ce(logits_v, 7), F.cross_entropy(logits_v, torch.full((5,), 7)))


def _key(video, expr, objects, frame):
    return SegTokenKey(video, expr, tuple(objects), frame)


def test_contrastive_positives_negatives_and_single_anchor():
    loss_fn = ObjectContrastiveLoss(bank_size=64, num_negatives=128, tau=0.07, seed=0)
    e = F.normalize(torch.randn(5, 16), dim=-1)
    keys = [
        _key("v1", "0", [1], 0),  # anchor
        _key("v1", "1", [1], 0),  # positive: other expression, same object, same frame
        _key("v1", "0", [1], 1),  # same object, other frame: neither positive nor negative (fixed quirk)
        _key("v1", "2", [2], 0),  # other object: negative
        _key("v2", "0", [1], 0),  # other video: negative
    ]
    loss, anchors = loss_fn(e, keys)
    assert anchors == 2  # the two expressions of object 1 at frame 0 are each other's positive
    q, pos, negs = e[0], e[1], e[[3, 4]]
    expected_anchor0 = -torch.log_softmax(torch.stack([pos @ q, *(negs @ q)]) / 0.07, 0)[0]
    q1 = e[1]
    expected_anchor1 = -torch.log_softmax(torch.stack([e[0] @ q1, *(negs @ q1)]) / 0.07, 0)[0]
    assert torch.allclose(loss, (expected_anchor0 + expected_anchor1) / 2, atol=1e-5)
    # a single valid anchor still counts (the reference drops it)
    single = ObjectContrastiveLoss(seed=0)
    loss1, n1 = single(e[:2], keys[:1] + [_key("v9", "0", [3], 0)])
    assert n1 == 0 and loss1.item() == 0.0
    single.bank.clear()
    loss2, n2 = single(e[[0, 1, 3]], [keys[0], keys[1], keys[3]])
    assert n2 == 2 and loss2.item() > 0


def test_contrastive_samples_negatives_without_replacement():
    loss_fn = ObjectContrastiveLoss(num_negatives=3, seed=1)
    e = torch.randn(7, 8, requires_grad=True)
    keys = [_key("v", "0", [0], 0), _key("v", "1", [0], 0)] + [_key(f"w{i}", "0", [i], 0) for i in range(5)]
    loss, anchors = loss_fn(e, keys)
    loss.backward()
    assert anchors == 2 and e.grad[:2].abs().sum() > 0


def _toy_videos(seed: int, n: int = 4) -> list[TrainingVideo]:
    """A red and a blue square moving in opposite directions: two expressions of the red one (so the contrastive
    loss has positives), one of the blue one, one of both."""
    rng = np.random.default_rng(seed)
    videos = []
    for k in range(n):
        frames = np.full((6, 48, 48, 3), 80, np.uint8) + rng.integers(0, 20, (6, 48, 48, 3), dtype=np.uint8)
        red, blue = np.zeros((6, 48, 48), bool), np.zeros((6, 48, 48), bool)
        for t in range(6):
            x = 4 + 5 * t
            frames[t, 8:20, x : x + 12] = (220, 30, 30)
            red[t, 8:20, x : x + 12] = True
            frames[t, 28:40, 40 - x : 52 - x] = (30, 30, 220)
            blue[t, 28:40, 40 - x : 52 - x] = True
        videos.append(
            TrainingVideo(
                f"toy{seed}_{k}",
                frames,
                [
                    TrainingExpression("the red square", "0", (0,), red),
                    TrainingExpression("the blue square", "1", (1,), blue),
                    TrainingExpression("the squares", "2", (0, 1), red | blue),
                    TrainingExpression("the square moving right", "3", (0,), red),
                ],
            )
        )
    return videos


def test_sample_clip_rules():
    video = _toy_videos(0, 1)[0]
    rng = random.Random(0)
    for _ in range(20):
        context, query, exprs = sample_clip(video, rng, 4, 4, 2)
        assert len(context) == 4 and all(0 <= c < 6 for c in context)
        assert query == list(range(query[0], query[0] + 4)) and query[-1] < 6
        assert len(exprs) == 2 and len({e.exp_id for e in exprs}) == 2


@pytest.mark.parametrize("parts", ["all", "glus"])
def test_trainer_reduces_the_loss_and_trains_the_right_parts(parts):
    torch.set_num_threads(2)
    model, tok = random_model("glus-tiny", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=24, batch_size=4, lr=2e-3, warmup_steps=2, train_parts=parts, log_every=100)
    trainer = Trainer(model, tok, config)
    batches = (_toy_videos(s) for s in range(10**6))
    history = trainer.fit(batches)
    assert len(history) == 24 and all(np.isfinite(h.loss) for h in history)
    first = np.mean([h.bce + h.dice for h in history[:4]])
    last = np.mean([h.bce + h.dice for h in history[-4:]])
    assert last < first, (first, last)
    assert any(h.contrastive_anchors > 0 for h in history)
    after = model.state_dict()
    decoder = [k for k in after if k.startswith("sam.sam_mask_decoder.") and after[k].dtype.is_floating_point]
    encoder = [k for k in after if k.startswith("sam.image_encoder.") and after[k].dtype.is_floating_point]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    changed_encoder = any(not torch.equal(before[k], after[k]) for k in encoder)
    assert changed_encoder == (parts == "all")


def test_glus_train_command_on_a_mevis_split(tmp_path):
    from test_datasets import make_mevis

    from model.checkpoint import from_pretrained
    from model.cli import main as glus_main

    make_mevis(tmp_path / "data", "train", frames=5)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "data"), "--split", "train", "--out", str(out), "--steps", "3",
            "--batch-size", "2", "--warmup", "1", "--from-scratch-aids", "--sam-image-size", "64"]
    assert glus_main(args) == 0
    model, _, report = from_pretrained(out)
    assert report.ok and model.config.seg_hidden_norm == "batchnorm" and model.sam_image_size == 64
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 3
