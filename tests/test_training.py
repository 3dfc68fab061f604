"""Losses (against their formulas, the contrastive rules with the reference quirks fixed) and the trainer."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.factory import random_model
from model.losses import (
    ObjectContrastiveLoss,
    SegTokenKey,
    TargetLocationLoss,
    mask_bce,
    mask_boxes,
    mask_dice,
    pointer_cell_ce,
    seg_token_ce,
)
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


def test_mask_boxes_and_the_target_location_loss():
    """Boxes are (centre x, centre y, width, height) fractions of the frame, empty masks are left out of the
    loss, and the probe learns a location that the states carry."""
    masks = torch.zeros(2, 3, 8, 16, dtype=torch.bool)
    masks[0, 0, 2:4, 4:8] = True  # rows 2-3, columns 4-7
    masks[1, 2, :, :] = True
    boxes, present = mask_boxes(masks)
    assert present.tolist() == [[True, False, False], [False, False, True]]
    assert torch.allclose(boxes[0, 0], torch.tensor([5.5 / 16, 2.5 / 8, 4 / 16, 2 / 8]))
    assert torch.allclose(boxes[1, 2], torch.tensor([7.5 / 16, 3.5 / 8, 1.0, 1.0]))
    assert torch.equal(boxes[0, 1], torch.zeros(4))

    torch.manual_seed(0)
    loss = TargetLocationLoss(8)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    targets = torch.zeros(16, 2, 16, 16, dtype=torch.bool)
    corner = torch.randint(0, 12, (16, 2, 2))
    for r in range(16):
        for q in range(2):
            y, x = corner[r, q].tolist()
            targets[r, q, y : y + 4, x : x + 4] = True
    states = torch.cat([corner.float(), torch.randn(16, 2, 6)], -1)  # the location is in the states
    first = loss(states, targets).item()
    for _ in range(200):
        optimizer.zero_grad()
        value = loss(states, targets)
        value.backward()
        optimizer.step()
    assert value.item() < 0.2 * first
    assert loss(states, torch.zeros_like(targets)).item() == 0.0  # nothing visible, nothing to regress


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
            "--batch-size", "2", "--warmup", "1", "--from-scratch-aids", "--sam-image-size", "64",
            "--visual-token-aids", "--location-weight", "1.0", "--point-map", "--pointer-weight", "1.0",
            "--motion-channels", "--motion-weight", "1.0"]
    assert glus_main(args) == 0
    model, _, report = from_pretrained(out)
    assert report.ok and model.config.seg_hidden_norm == "batchnorm" and model.sam_image_size == 64
    assert (model.config.vision_token_pool_layout, model.config.projector_output_norm,
            model.config.vision_position_embedding) == ("grid", "layernorm", "sincos2d")  # fmt: skip
    assert not any(k.startswith("location") or ".probe." in k for k in model.state_dict())  # not saved
    assert model.config.seg_point_prompt == "pointer_map" and "point_map.embedding" in model.state_dict()
    assert any(k.startswith("seg_pointer.") for k in model.state_dict())
    assert model.config.vision_motion_channels == "frame_difference" and model.config.vision["num_channels"] == 9
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line["location"] > 0 and line["pointer"] > 0 for line in lines)
    assert any(line["motion"] > 0 for line in lines)  # the mevis videos' single-object expressions move
    shaping = (["--point-prompt"], ["--point-map"], ["--motion-channels"], ["--sam-image-size", "64"],
               ["--llm-layers", "3"])  # fmt: skip
    for flag in shaping:  # model-shaping flags
        with pytest.raises(SystemExit, match=flag[0]):
            glus_main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "again"), "--init", str(out),
                       "--steps", "1", *flag])  # fmt: skip


def _train_synthetic(out, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from model.cli import main as glus_main

    args = ["train", "--synthetic", "--out", str(out), "--steps", "3", "--batch-size", "2", "--warmup", "1",
            "--from-scratch-aids", "--curriculum-steps", "1", "--sam-image-size", "64", "--threads", "2",
            "--seed", str(seed), "--save-dtype", "float16", "--visual-token-aids", "--point-map",
            "--pointer-weight", "1", "--llm-layers", "3", "--motion-channels", "--motion-weight", "1",
            "--seg-prompt-dropout", "0.5", "--contrastive-weight", "0.25"]  # fmt: skip
    assert glus_main(args) == 0
    return load_file(str(out / "model.safetensors"))


def test_synthetic_training_is_reproducible_by_seed(tmp_path):
    """The bundled model's command, shortened: the same seed gives the same weights, another seed does not."""
    first = _train_synthetic(tmp_path / "a", seed=0)
    again = _train_synthetic(tmp_path / "b", seed=0)
    other = _train_synthetic(tmp_path / "c", seed=1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    code = json.loads((tmp_path / "a" / "train_config.json").read_text())["code"]  # which code made them
    assert code["torch"] == torch.__version__ and code["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert code["commit"] is None or (len(code["commit"]) == 40 and isinstance(code["uncommitted_changes"], bool))


def test_code_provenance_names_the_commit_of_its_own_checkout_only(tmp_path, monkeypatch):
    import subprocess

    import model.train_cli as train_cli

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("a")
    git("add", "tracked.txt")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(train_cli, "__file__", str(tmp_path / "model" / "train_cli.py"))  # a checkout's own code
    assert train_cli.code_provenance()["commit"] == head
    assert train_cli.code_provenance()["uncommitted_changes"] is False
    (tmp_path / "tracked.txt").write_text("b")
    assert train_cli.code_provenance()["uncommitted_changes"] is True
    (tmp_path / "venv" / "model").mkdir(parents=True)  # a package installed inside some other repository
    monkeypatch.setattr(train_cli, "__file__", str(tmp_path / "venv" / "model" / "train_cli.py"))
    assert train_cli.code_provenance()["commit"] is None


def test_pointer_loss_is_the_cross_entropy_against_the_target_share_of_each_cell():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 4:8] = True  # all of cell (0, 1) of a 2x2 grid
    masks[1, 2:6, 0:2] = True  # half in cell (0, 0), half in cell (1, 0)
    logits = torch.randn(3, 4, requires_grad=True)
    log_p = logits.detach().log_softmax(-1)
    expected = (-log_p[0, 1] - 0.5 * (log_p[1, 0] + log_p[1, 2])) / 2  # row 2 is empty: left out
    assert torch.allclose(pointer_cell_ce(logits, masks), expected)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(100):
        optimizer.zero_grad()
        pointer_cell_ce(logits, masks).backward()
        optimizer.step()
    shares = logits.detach().softmax(-1)
    assert shares[0, 1] > 0.95 and abs(shares[1, 0] - 0.5) < 0.05 and abs(shares[1, 2] - 0.5) < 0.05
    assert pointer_cell_ce(logits, torch.zeros_like(masks)).item() == 0.0
    model, tok = random_model("glus-tiny", seed=0)
    with pytest.raises(ValueError, match="seg_point_prompt"):  # no pointer to train
        Trainer(model, tok, TrainConfig(pointer_weight=1.0))


def test_motion_aid_regresses_each_covered_cells_velocity_of_its_single_object():
    """mask_velocities: centroid shift from the frame before to the frame after (one-sided at the ends, unknown
    where the mask is empty); CellMotionLoss: only cells the target covers enough, only known velocities, and a
    probe that learns them."""
    from model.losses import CellMotionLoss, mask_velocities

    masks = torch.zeros(5, 16, 16, dtype=torch.bool)
    for t in range(4):  # a 4x4 square moving 2 px right per frame; gone in frame 4
        masks[t, 4:8, 2 + 2 * t : 6 + 2 * t] = True
    velocities, known = mask_velocities(masks, [0, 1, 2, 3, 4], scale=16.0)
    assert known.tolist() == [True, True, True, False, False]  # frame 3 needs frame 4; frame 4 is empty
    assert torch.allclose(velocities[:3], torch.tensor([[2.0, 0.0]] * 3))  # 2 px per frame, 16 px frame: 2.0
    assert not velocities[3:].any()

    torch.manual_seed(0)
    loss = CellMotionLoss(8, min_share=0.5)
    states = torch.randn(3, 4, 8)  # 3 (expression, frame) rows, 2x2 cells
    targets = torch.zeros(3, 8, 8, dtype=torch.bool)
    targets[0, 0:4, 0:4] = True  # cell 0 of row 0
    targets[1, 4:8, 2:6] = True  # half of cells 2 and 3 of row 1
    targets[2, 0:8, 0:8] = True  # every cell, but its velocity is unknown
    velocity = torch.tensor([[1.0, -1.0], [0.5, 0.0], [3.0, 3.0]])
    known = torch.tensor([True, True, False])
    with torch.no_grad():
        predicted = loss.probe(states)
    cells = [predicted[0, 0], predicted[1, 2], predicted[1, 3]]
    wanted = [velocity[0], velocity[1], velocity[1]]
    expected = torch.stack([F.smooth_l1_loss(a, b, beta=0.1, reduction="sum") for a, b in zip(cells, wanted)]).mean()
    assert torch.allclose(loss(states, targets, velocity, known), expected)
    assert loss(states, targets, velocity, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss(states, targets, velocity, known).backward()
        optimizer.step()
    assert loss(states, targets, velocity, known).item() < 0.01


def test_seg_prompt_dropout_leaves_the_seg_token_out_of_sams_prompt_in_training_only():
    """With dropout 1 the masks of a training pass do not depend on the [SEG] token (only on the point); an
    evaluation pass still uses it; a model without a pointer refuses the setting (it would get no prompt)."""
    from model.config import get_config

    config = get_config("glus-tiny")
    config.vision_token_pool_layout, config.seg_point_prompt = "grid", "pointer"
    model, tok = random_model(config, seed=0)
    videos = _toy_videos(0, n=2)

    def masks(dropout: float, grad: bool) -> torch.Tensor:
        trainer = Trainer(model, tok, TrainConfig(batch_size=2, seg_prompt_dropout=dropout))
        with torch.set_grad_enabled(grad):
            return trainer.forward(videos, random.Random(0)).mask_logits.detach()

    model.eval()  # deterministic layers; the dropout follows grad mode, as in a training step
    dropped, kept = masks(1.0, True), masks(1.0, False)
    with torch.no_grad():
        model.seg_projector.layers[-1].bias.add_(5.0)  # a different [SEG] token
    assert torch.equal(masks(1.0, True), dropped)
    assert not torch.equal(masks(1.0, False), kept) and not torch.equal(masks(0.0, True), dropped)
    plain, tok = random_model("glus-tiny", seed=0)
    with pytest.raises(ValueError, match="seg_point_prompt"):
        Trainer(plain, tok, TrainConfig(seg_prompt_dropout=0.5))
    with pytest.raises(ValueError, match="probability"):
        Trainer(model, tok, TrainConfig(seg_prompt_dropout=1.5))


def test_contrastive_from_scratch_aids_hard_negatives_and_any_frame_positives():
    e = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    keys = [
        _key("v1", "0", [1], 0),  # anchor
        _key("v1", "0", [1], 1),  # same expression, other frame: a positive only with positives_any_frame
        _key("v1", "2", [2], 0),  # same video, other object, same frame: the hard negative
        *(_key(f"w{i}", "0", [i], 0) for i in range(3)),  # other videos
    ]
    plain = ObjectContrastiveLoss(num_negatives=1, seed=0)
    _, anchors = plain(e, keys)
    assert anchors == 0  # no other expression of object 1 at frame 0
    aided = ObjectContrastiveLoss(num_negatives=1, seed=0, same_video_negatives=True, positives_any_frame=True)
    loss, anchors = aided(e[:1], keys[:1])
    assert anchors == 0
    aided.bank.clear()
    loss, anchors = aided(e, keys)
    assert anchors == 2  # rows 0 and 1 are each other's positive
    # with room for one negative, the anchor's own video's other object is always the one kept
    expected = -torch.log_softmax(torch.stack([e[1] @ e[0], e[2] @ e[0]]) / 0.07, 0)[0]
    # anchor 1 is at frame 1, where its video has no other object: its one negative is drawn from the rest
    assert torch.isfinite(loss) and loss.item() > expected.item() / 2


def test_inference_templates_put_the_same_answer_before_every_seg(tmp_path):
    from model.factory import tiny_tokenizer

    tok = tiny_tokenizer()
    model = random_model_for_tests()
    trainer = Trainer(model, tok, TrainConfig(prompt_templates="inference", expressions_per_video=2))
    out = trainer.forward(_toy_videos(0, 2))
    assert out.seg_states.shape[:2] == (4, 4) and out.mask_logits.shape[:2] == (4, 4)
    assert torch.isfinite(out.bce) and torch.isfinite(out.dice)


def random_model_for_tests():
    from model.config import get_config, with_sam_image_size
    from model.factory import random_model

    config = with_sam_image_size(get_config("glus-tiny"), 64)
    config.seg_hidden_norm = "batchnorm"
    config.seg_output_norm = "layernorm"
    model, _ = random_model(config, seed=0)
    return model


def test_seg_output_norm_scales_the_prompt_token_and_is_off_for_glus_7b():
    from model.config import get_config
    from model.modeling.seg_projector import SegProjector

    assert get_config("glus-7b").seg_output_norm is None
    projector = SegProjector(32, 16, "batchnorm", "layernorm").eval()
    out = projector(torch.randn(5, 32) * 0.01)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(5), atol=1e-2)
    with pytest.raises(ValueError):
        type(get_config("glus-tiny"))(seg_output_norm="groupnorm")


def test_curriculum_source_starts_with_appearance_only_scenes():
    from model.synthetic.world import generate_video
    from model.train_cli import SyntheticTrainingSource

    source = SyntheticTrainingSource(seed=5, curriculum_steps=1)
    assert source.curriculum_config.p_lookalike == 0 and source.curriculum_config.p_relation == 0
    batches = source.batches(2, seed=5)
    first, second = next(batches), next(batches)
    base = 1_000_000_000 + 5 * 10_000_000
    assert np.array_equal(first[0].frames, generate_video(base, source.curriculum_config).frames)
    assert np.array_equal(second[0].frames, generate_video(base + 2, source.config).frames)
    scenarios = {generate_video(base + i, source.curriculum_config).scenario for i in range(12)}
    assert scenarios <= {"appearance"}
