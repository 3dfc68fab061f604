"""Fine-tuned versions stored as deltas (model/delta.py): base + delta loads to the model training produced,
chains apply in order, foreign deltas are refused, and at glus-7b shapes a delta is a small fraction of the base."""

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, build_empty, load_checkpoint, save_pretrained
from model.config import get_config, glus_7b_config, with_sam_image_size
from model.delta import DELTA_WEIGHTS, apply_delta, fully_trained_keys, read_delta_spec
from model.factory import random_model
from model.inference import VideoSegmenter
from model.lora import merge_lora
from model.train_cli import save_trained
from model.trainer import trainable_parameters
from model.weights import WeightSource


def _fine_tune_by_hand(model, seed):
    """What a LoRA run changes, made non-trivial: adapters, the parts trained in full, batch-norm statistics."""
    trainable_parameters(model, "lora")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * (0.05 if "lora_" in name else 0.01))
    return model.eval()


@pytest.fixture()
def base(tmp_path):
    config = with_sam_image_size(get_config("glus-tiny"), 64)
    config.seg_hidden_norm = "batchnorm"  # its running statistics are buffers of a part trained in full
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    return save_pretrained(model, tok, tmp_path / "base"), model, tok


def _masks(model, tok, video):
    return np.stack([r.masks for r in VideoSegmenter(model, tok).segment(video[:4], ["the red square", "it"])])


def test_base_plus_delta_equals_the_merged_fine_tuned_model(base, moving_square_video, tmp_path):
    path, model, tok = base
    _fine_tune_by_hand(model, seed=1)
    model.seg_projector.norm.running_mean.add_(0.5)
    out = save_trained(model, tok, tmp_path / "v1", parent_version="glus-tiny-base0000")
    spec = read_delta_spec(out)
    assert spec["parent"] == "glus-tiny-base0000" and spec["lora"]["rank"] == 8
    assert "seg_projector.norm.running_mean" in spec["full"] and "sam.sam_mask_decoder.iou_token.weight" in spec["full"]
    assert not any(k.startswith("language_model.") and "q_proj" in k for k in spec["full"])  # LoRA factors only
    merged = merge_lora(model)
    loaded, tok2 = load_checkpoint(path, deltas=[out])
    for key, value in merged.state_dict().items():
        assert torch.allclose(value, loaded.state_dict()[key], atol=1e-6), key
    assert np.array_equal(_masks(merged, tok, moving_square_video), _masks(loaded, tok2, moving_square_video))
    stored = (out / DELTA_WEIGHTS).stat().st_size
    assert stored < 0.6 * sum(f.stat().st_size for f in path.iterdir())  # (tiny: the mask decoder is most of it)


def test_a_chain_applies_oldest_first_and_foreign_deltas_are_refused(base, tmp_path):
    path, model, tok = base
    first = save_trained(_fine_tune_by_hand(model, seed=1), tok, tmp_path / "v1", parent_version="base")
    merge_lora(model)
    second = save_trained(_fine_tune_by_hand(model, seed=2), tok, tmp_path / "v2", parent_version="v1")
    merge_lora(model)
    loaded, _ = load_checkpoint(path, deltas=[first, second])
    for key, value in model.state_dict().items():
        assert torch.allclose(value, loaded.state_dict()[key], atol=1e-5), key
    with pytest.raises(CheckpointError, match="stored as a delta"):
        load_checkpoint(second)
    other, _ = random_model("glus-tiny", seed=3)  # 128 px SAM-2, other vocabulary: the delta does not fit
    with pytest.raises(CheckpointError, match="shape mismatch|fit nowhere"):
        apply_delta(other, second)


def test_a_glus_7b_delta_is_a_small_fraction_of_the_base():
    """At glus-7b shapes (built empty): LoRA q/v rank 8 + embeddings, LM head, projectors, mask decoder."""
    model = build_empty(glus_7b_config())
    base_bf16 = sum(p.numel() for p in model.parameters()) * 2
    trainable_parameters(model, "lora")
    full = set(fully_trained_keys(model))
    state = model.state_dict(keep_vars=True)
    full_numel = sum(state[k].numel() for k in full)
    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"} <= full
    assert 2.5e8 < full_numel < 3.5e8 and lora_numel == 32 * 2 * 2 * 8 * 4096
    assert (full_numel * 2 + lora_numel * 4) / base_bf16 < 0.05  # stored in bf16, LoRA factors in float32
    assert (full_numel * 4 + lora_numel * 4) / base_bf16 < 0.10  # even stored in float32


def test_delta_files_are_read_lazily(base, tmp_path):
    path, model, tok = base
    out = save_trained(_fine_tune_by_hand(model, seed=1), tok, tmp_path / "v1", parent_version="x",
                       dtype=torch.bfloat16)  # fmt: skip
    source = WeightSource(out / DELTA_WEIGHTS)
    kinds = {source.info(k).dtype for k in source.keys()}
    assert kinds == {torch.bfloat16, torch.float32, torch.int64}  # full parts bf16, LoRA float32, BN counter


def test_glus_train_bf16_recipe_writes_a_delta_that_loads(base, tmp_path):
    """`glus train` as a fine-tuning job runs it for a bf16-served model: bf16 base, float32 trained parts,
    gradient checkpointing, the result a bf16 delta of the served version, loadable on its base."""
    from model.cli import main

    path, _, _ = base
    out = tmp_path / "run"
    code = main(["train", "--synthetic", "--init", str(path), "--train-parts", "lora", "--steps", "1",
                 "--batch-size", "1", "--warmup", "1", "--precision", "bf16", "--gradient-checkpointing",
                 "--save-dtype", "bfloat16", "--parent-version", "glus-tiny-base0000", "--out", str(out),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert read_delta_spec(out)["parent"] == "glus-tiny-base0000"
    source = WeightSource(out / DELTA_WEIGHTS)
    assert source.info("language_model.model.embed_tokens.weight").dtype == torch.bfloat16
    loaded, _ = load_checkpoint(path, deltas=[out])
    original, _ = load_checkpoint(path)
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert any("q_proj" in k for k in changed) and any(k.startswith("sam.sam_mask_decoder.") for k in changed)


def test_the_glus_cli_loads_a_version_by_hand_and_explains_a_bare_delta(base, tmp_path, capsys, caplog):
    from model.cli import main

    path, model, tok = base
    out = save_trained(_fine_tune_by_hand(model, seed=1), tok, tmp_path / "v1", parent_version="glus-tiny-base0000")
    assert main(["info", "--checkpoint", str(path), "--delta", str(out)]) == 0
    assert '"parameters"' in capsys.readouterr().out
    assert main(["info", "--checkpoint", str(out)]) == 2  # a delta alone: the error names its parent
    assert "stored as a delta of glus-tiny-base0000" in caplog.text and "--delta DIR" in caplog.text
