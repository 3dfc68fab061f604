"""Checkpoints: this project's save/load round trip, and the released GLUS / SAM-2 / CLIP layouts."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_clip_vision,
    load_released_glus,
    load_released_state_dict,
    load_sam2_checkpoint,
    map_released_key,
    read_state_dict,
    save_pretrained,
)
from model.factory import random_model
from model.inference import VideoSegmenter


def _to_released_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a project state dict under the key names of a released GLUS checkpoint (CLIP left out)."""
    out = {}
    for key, value in state.items():
        if key.startswith("language_model.model."):
            out["model." + key[len("language_model.model.") :]] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("multi_modal_projector.linear_1."):
            out["model.mm_projector." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("seg_projector.layers."):
            out["model.text_hidden_fcs.0." + key[len("seg_projector.layers.") :]] = value
        elif key.startswith("sam."):
            out["model.visual_model." + key[len("sam.") :]] = value
    return out


def _write_released_folder(model, tok, path, gamma_spelling="gamma"):
    state = _to_released_names(model.state_dict())
    if gamma_spelling == "weight":
        for i in (0, 1):
            state[f"model.visual_model.memory_encoder.fuser.layers.{i}.weight"] = state.pop(
                f"model.visual_model.memory_encoder.fuser.layers.{i}.gamma"
            )
    keys = sorted(state)
    half = len(keys) // 2
    path.mkdir(parents=True)
    for n, part in enumerate((keys[:half], keys[half:]), start=1):
        torch.save({k: state[k].clone() for k in part}, path / f"pytorch_model-0000{n}-of-00002.bin")
    llm = model.config.llm
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llava",
                "architectures": ["GLUSForCausalLM"],
                **llm,
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "patch",
                "mm_hidden_size": 128,
                "out_dim": 64,
            }
        )
    )
    tok.save_pretrained(path)


def _masks(model, tok, video):
    return VideoSegmenter(model, tok).segment(video, ["the red square"])[0]


def test_save_load_round_trip_gives_identical_outputs(tiny, moving_square_video, tmp_path):
    model, tok = tiny
    save_pretrained(model, tok, tmp_path / "ckpt")
    again, tok2, report = from_pretrained(tmp_path / "ckpt")
    assert report.ok and report.loaded == len(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    a, b = _masks(model, tok, moving_square_video[:5]), _masks(again, tok2, moving_square_video[:5])
    assert np.array_equal(a.masks, b.masks) and [f.score for f in a.frames] == [f.score for f in b.frames]


@pytest.mark.parametrize("gamma_spelling", ["gamma", "weight"])
def test_released_key_names_load_with_nothing_missing_or_unexpected(tiny, tmp_path, gamma_spelling):
    model, tok = tiny
    _write_released_folder(model, tok, tmp_path / "glus", gamma_spelling)
    fresh, _ = random_model("glus-tiny", seed=5)
    report = load_released_state_dict(fresh, read_state_dict(tmp_path / "glus"))
    assert report.ok, str(report)
    assert report.loaded == len(_to_released_names(model.state_dict()))
    for k, v in model.state_dict().items():
        if not k.startswith("vision_tower."):
            assert torch.equal(v, fresh.state_dict()[k]), k


def test_released_folder_plus_clip_and_sam2_reproduces_the_model(tiny, moving_square_video, tmp_path):
    model, tok = tiny
    _write_released_folder(model, tok, tmp_path / "glus")
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    vision = {
        ("vision_model." + k[len("vision_tower.") :]).replace("vision_model.vision_model.", "vision_model."): v
        for k, v in model.state_dict().items()
        if k.startswith("vision_tower.")
    }
    save_file(
        {**vision, "text_model.embeddings.token_embedding.weight": torch.zeros(2, 2)},
        str(clip_dir / "model.safetensors"),
    )
    (clip_dir / "config.json").write_text(json.dumps({"vision_config": model.config.vision}))
    torch.save(
        {"model": {k[len("sam.") :]: v for k, v in model.state_dict().items() if k.startswith("sam.")}},
        tmp_path / "sam2.pt",
    )
    loaded, tok2, reports = load_released_glus(
        tmp_path / "glus",
        clip_dir,
        tmp_path / "sam2.pt",
        sam2_config=model.config.sam2_config,
        sam2_overrides=model.config.sam2_overrides,
    )
    assert all(r.ok for r in reports), [str(r) for r in reports]
    a, b = _masks(model, tok, moving_square_video[:4]), _masks(loaded, tok2, moving_square_video[:4])
    assert np.array_equal(a.masks, b.masks)


def test_load_errors_name_the_keys(tiny, tmp_path):
    model, tok = tiny
    state = _to_released_names(model.state_dict())
    state["model.some_new_head.weight"] = torch.zeros(1)
    del state["model.norm.weight"]
    fresh, _ = random_model("glus-tiny", seed=5)
    with pytest.raises(CheckpointError) as err:
        load_released_state_dict(fresh, state)
    assert "model.some_new_head.weight" in str(err.value) and "language_model.model.norm.weight" in str(err.value)
    bad = dict(_to_released_names(model.state_dict()))
    bad["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatch for language_model.model.norm.weight"):
        load_released_state_dict(fresh, bad)
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_key_map_examples():
    assert (
        map_released_key("model.layers.3.self_attn.q_proj.weight")
        == "language_model.model.layers.3.self_attn.q_proj.weight"
    )
    assert map_released_key("model.mm_projector.bias") == "multi_modal_projector.linear_1.bias"
    assert map_released_key("model.text_hidden_fcs.0.2.weight") == "seg_projector.layers.2.weight"
    assert (
        map_released_key("model.visual_model.memory_encoder.fuser.layers.1.weight")
        == "sam.memory_encoder.fuser.layers.1.gamma"
    )
    assert (
        map_released_key("model.visual_model.sam_mask_decoder.iou_token.weight")
        == "sam.sam_mask_decoder.iou_token.weight"
    )
    assert map_released_key("model.downsample_layer.weight") is None


def test_sam2_pt_and_clip_loaders_report(tiny, tmp_path):
    model, _ = tiny
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_sam2_checkpoint(model, tmp_path / "bad.pt")
    (tmp_path / "clip").mkdir()
    save_file({"vision_model.post_layernorm.weight": torch.ones(128)}, str(tmp_path / "clip" / "model.safetensors"))
    fresh, _ = random_model("glus-tiny", seed=5)
    report = load_clip_vision(fresh, tmp_path / "clip", strict=False)
    assert report.loaded == 1 and len(report.missing) > 10 and not report.ok
