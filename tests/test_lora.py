"""LoRA fine-tuning (GLUS's trainable set) and merging into a plain checkpoint."""

import random

import pytest
import torch

from model.checkpoint import from_pretrained
from model.config import get_config, with_sam_image_size
from model.factory import random_model
from model.lora import LoraSettings, add_lora, has_lora, lora_state_dict
from model.train_cli import save_trained
from model.trainer import TrainConfig, Trainer, trainable_parameters
from tests.test_training import _toy_videos


@pytest.fixture()
def small():
    config = with_sam_image_size(get_config("glus-tiny"), 64)
    return random_model(config, seed=0, seg_logit_bias=20.0)


def _hidden(model, ids):
    embeds = model.language_model.get_input_embeddings()(ids).unsqueeze(0)
    return model.language_hidden_states(embeds)[0]


def test_lora_trains_glus_parts_only(small):
    model, _ = small
    params = trainable_parameters(model, "lora")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    assert not any("k_proj.lora" in n for n in names)  # q/v only, as GLUS
    assert any(n.startswith("sam.sam_mask_decoder.") for n in names)
    assert any(n.startswith("seg_projector.") for n in names) and any("embed_tokens" in n for n in names)
    assert not any(n.startswith(("sam.image_encoder.", "vision_tower.", "sam.memory_")) for n in names)
    # the base q/v weights themselves stay frozen (only their adapters train)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in names)
    with pytest.raises(ValueError):
        add_lora(model)


def test_merged_model_equals_the_adapted_one_and_loads_as_a_plain_checkpoint(small, tmp_path):
    model, tok = small
    add_lora(model, LoraSettings(rank=4))
    with torch.no_grad():  # make the adapters non-zero (lora_B starts at 0)
        for name, p in model.language_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
    model.eval()
    ids = torch.arange(3, 40)
    adapted = _hidden(model, ids)
    adapter = lora_state_dict(model)
    assert adapter and all("lora_" in k for k in adapter)
    out = save_trained(model, tok, tmp_path / "ckpt")
    assert not has_lora(model)
    assert torch.allclose(_hidden(model, ids), adapted, atol=1e-5)
    assert (out / "lora_adapter.safetensors").is_file()
    loaded, _, _ = from_pretrained(out)
    assert torch.allclose(_hidden(loaded.eval(), ids), adapted, atol=1e-5)


def test_a_lora_step_changes_adapters_not_base_weights(small):
    model, tok = small
    trainer = Trainer(model, tok, TrainConfig(train_parts="lora", lr=1e-3, warmup_steps=1, steps=2,
                                              expressions_per_video=2, query_frames=2))
    base = {n: p.detach().clone() for n, p in model.language_model.named_parameters() if "base_layer" in n}
    lora_b = {n: p.detach().clone() for n, p in model.language_model.named_parameters() if "lora_B" in n}
    trainer.rng = random.Random(0)
    trainer.train_step(_toy_videos(0, 2))
    assert all(torch.equal(p, base[n]) for n, p in model.language_model.named_parameters() if n in base)
    assert any(not torch.equal(p, lora_b[n]) for n, p in model.language_model.named_parameters() if n in lora_b)


def test_bf16_lora_step_keeps_the_base_in_bf16_and_what_trains_in_float32(small):
    """The recipe for glus-7b: frozen base bf16 (SAM-2 float32), trained parts float32 master weights, bf16
    autocast, gradient checkpointing; one step changes the adapters and the parts trained in full only."""
    model, tok = small
    config = TrainConfig(train_parts="lora", precision="bf16", gradient_checkpointing=True, lr=1e-3,
                         warmup_steps=1, steps=1, expressions_per_video=2, query_frames=2)  # fmt: skip
    trainer = Trainer(model, tok, config)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        expected = torch.float32 if name in trained or name.startswith("sam.") else torch.bfloat16
        assert param.dtype == expected, name
    assert model.language_model.model.gradient_checkpointing
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.rng = random.Random(0)
    stats = trainer.train_step(_toy_videos(0, 2))
    assert torch.isfinite(torch.tensor(stats.loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trained
    assert any("lora_B" in n for n in changed) and any(n.startswith("sam.sam_mask_decoder.") for n in changed)
    with pytest.raises(ValueError, match="bf16 training keeps a frozen base"):
        Trainer(model, tok, TrainConfig(train_parts="all", precision="bf16"))
