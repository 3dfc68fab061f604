"""Sa2VA / Sa2VA-i: parity with the reference fixtures through the real loader, the released layout, refusals of
what cannot be served, expressions sharing work, and bounded memory."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from sa2va_fixture import FIXTURE_MODES, fixture_config, fixture_dir, released_folder, run_and_compare

from model.loading import CheckpointError
from model.sa2va.checkpoint import load_sa2va, read_config, save_released_sa2va
from model.sa2va.config import TINY_SAM2_OVERRIDES, Sa2VAConfig, UnsupportedSa2VA, sa2va_tiny_config
from model.sa2va.factory import random_sa2va, rig_answer
from model.sa2va.inference import Sa2VAOptions, Sa2VASegmenter, key_frame_indices
from model.sa2va.sam2_video import FrameState, TrackState


@pytest.mark.parametrize("name", list(FIXTURE_MODES))
def test_parity_with_the_reference_fixture(name, tmp_path):
    """Every recorded quantity within the fixture's tolerance; token ids and binary masks identical."""
    rows, extra = run_and_compare(name, released_folder(name, tmp_path / name))
    report = extra["report"]
    assert report.ok and report.loaded > 0 and not report.unexpected  # strict, every tensor of the fixture placed
    bad = [f"{r.quantity}: {r.max_abs_diff:.3g} > {r.tolerance:g}" for r in rows if not r.ok]
    assert not bad, bad
    names = {r.quantity for r in rows}
    assert {"final.masks (pixels differing)", "llm.input_ids", "seg.embedding", "final.mask_logits"} <= names
    assert len([n for n in names if n.startswith("sam.call")]) >= 3 * len(
        json.loads((fixture_dir(name) / "meta.json").read_text())["sam_calls"]
    )


def test_tiny_sam2_overrides_are_the_fixtures_sizes():
    sizes = json.loads((fixture_dir("sa2va-reference-tiny-a") / "meta.json").read_text())["tiny_config"]["sam2"]
    overrides = dict(o.split("=", 1) for o in TINY_SAM2_OVERRIDES)
    trunk, neck, attention, encoder = sizes["trunk"], sizes["neck"], sizes["memory_attention"], sizes["memory_encoder"]

    def listed(values):
        return "[" + ",".join(str(v) for v in values) + "]"

    assert overrides["model.image_encoder.trunk.embed_dim"] == str(trunk["embed_dim"])
    assert overrides["model.image_encoder.trunk.stages"] == listed(trunk["stages"])
    assert overrides["model.image_encoder.trunk.global_att_blocks"] == listed(trunk["global_att_blocks"])
    assert overrides["model.image_encoder.neck.backbone_channel_list"] == listed(neck["backbone_channel_list"])
    assert overrides["model.image_encoder.neck.d_model"] == str(neck["d_model"])
    assert overrides["model.memory_attention.num_layers"] == str(attention["num_layers"])
    assert overrides["model.memory_attention.layer.dim_feedforward"] == str(attention["dim_feedforward"])
    assert overrides["model.memory_attention.layer.cross_attention.kv_in_dim"] == str(attention["kv_in_dim"])
    assert overrides["model.memory_encoder.out_dim"] == str(encoder["out_dim"])
    assert overrides["model.memory_encoder.in_dim"] == str(encoder["in_dim"])
    assert overrides["model.memory_encoder.mask_downsampler.embed_dim"] == str(encoder["mask_downsampler_embed_dim"])


def _tokenizer():
    from model.sa2va.checkpoint import load_tokenizer

    return load_tokenizer(fixture_dir("sa2va-reference-tiny-a") / "tokenizer")


def _answering_model(two_decoders: bool = False, seed: int = 0):
    tokenizer = _tokenizer()
    model = random_sa2va(sa2va_tiny_config(len(tokenizer), two_decoders), seed)
    return rig_answer(model, tokenizer.convert_tokens_to_ids("[SEG]"), tokenizer.eos_token_id), tokenizer


def test_released_layout_round_trip_with_shards(tmp_path):
    """Written as the converter writes it (sharded, with an index, g_weight layer scales), loaded back strictly."""
    model, tokenizer = _answering_model(two_decoders=True)
    files = save_released_sa2va(model, tokenizer, tmp_path / "sa2va-i", max_shard_bytes=1_000_000)
    assert len(files) > 1 and (tmp_path / "sa2va-i" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "sa2va-i" / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.endswith("fuser.layers.0.g_weight") for k in index) and not any(k.endswith(".gamma") for k in index)
    assert any(k.startswith("grounding_encoder.sam2_model.sam_mask_decoder_modified.") for k in index)
    loaded, loaded_tokenizer, report = load_sa2va(tmp_path / "sa2va-i", dtype=torch.bfloat16)
    assert report.ok and loaded.config.two_decoders
    assert next(loaded.language_model.parameters()).dtype == torch.bfloat16
    assert next(loaded.sam.parameters()).dtype == torch.float32  # SAM-2 stays float32
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value.float(), original[key].to(value.dtype).float()), key
    assert len(loaded_tokenizer) == len(tokenizer)


def test_a_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = released_folder("sa2va-reference-tiny-a", tmp_path / "broken")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("mlp1.1.weight")
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 \(mlp1\.1\.weight\)"):
        load_sa2va(folder)


def _config_json(**changes) -> dict:
    from model.sa2va.checkpoint import released_config_dict

    return {**released_config_dict(sa2va_tiny_config()), **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 64}},
         "InternLM2ForCausalLM.*InternLM2 \\(Sa2VA-8B, -26B\\) is not implemented"),
        ({"vision_config": None, "llm_config": None, "text_config": {"hidden_size": 64},
          "architectures": ["Sa2VAChatModelQwen"]}, "Qwen2.5-VL / Qwen3-VL variant"),
        ({"model_type": "llava"}, "not a Sa2VA config: model_type is 'llava'"),
        ({"template": "internlm2_chat"}, "unknown chat template 'internlm2_chat'"),
        ({"ps_version": "v1"}, "pixel shuffle version 'v1'"),
    ],
)  # fmt: skip
def test_unsupported_checkpoints_are_refused_naming_what_is_missing(changes, message):
    data = {k: v for k, v in _config_json(**changes).items() if v is not None}
    with pytest.raises(UnsupportedSa2VA, match=message):
        Sa2VAConfig.from_released(data)


def test_sa2va_i_mode_needs_a_sa2va_i_checkpoint_and_an_image_is_refused():
    model, tokenizer = _answering_model(two_decoders=False)
    segmenter = Sa2VASegmenter(model, tokenizer)
    frames = np.zeros((4, 32, 48, 3), np.uint8)
    with pytest.raises(UnsupportedSa2VA, match="needs a Sa2VA-i checkpoint"):
        segmenter.segment(frames, ["the cat"], Sa2VAOptions(mode="sa2va-i"))
    with pytest.raises(UnsupportedSa2VA, match="image-only"):
        segmenter.segment(frames[:1], ["the cat"])
    with pytest.raises(ValueError, match="empty"):
        segmenter.segment(frames, ["  "])


def test_a_tokenizer_without_the_special_tokens_is_refused(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = _tokenizer()
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    config["added_tokens"] = [t for t in config["added_tokens"] if t["content"] not in ("[SEG]", "<IMG_CONTEXT>")]
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    broken = AutoTokenizer.from_pretrained(tmp_path)
    model, _ = _answering_model()
    with pytest.raises(UnsupportedSa2VA, match=re.escape("special tokens ['[SEG]', '<IMG_CONTEXT>']")):
        Sa2VASegmenter(model, broken)


@pytest.mark.parametrize("mode", ["sa2va", "sa2va-i"])
def test_expressions_share_the_video_and_get_the_masks_they_get_alone(mode, monkeypatch):
    """Two expressions batched through SAM-2 (one image encoding per frame, one decoder call) give each the masks
    it gets alone. A random LLM barely tells two prompts apart, so the second object's [SEG] prompt is made
    different (x -4) to see that the batch rows stay with their objects."""
    model, tokenizer = _answering_model(two_decoders=True, seed=3)
    segmenter = Sa2VASegmenter(model, tokenizer)
    answers = segmenter._answers

    def distinct(*args, **kwargs):
        objects = answers(*args, **kwargs)
        for found in objects:
            if "blue" in found.expression.text:
                found.seg_embedding = -4 * found.seg_embedding
        return objects

    monkeypatch.setattr(segmenter, "_answers", distinct)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (7, 40, 56, 3), dtype=np.uint8)
    options = Sa2VAOptions(mode=mode, key_frames=3)
    texts = ["the red circle", "the blue square"]
    together = segmenter.segment(frames, texts, options)
    assert (together[0].masks != together[1].masks).any()  # two different objects
    for index, text in enumerate(texts):
        alone = segmenter.segment(frames, [text], options)[0]
        assert all(f.seg_token_produced for f in alone.frames)
        np.testing.assert_array_equal(together[index].masks, alone.masks)
        assert [f.score for f in together[index].frames] == pytest.approx([f.score for f in alone.frames], abs=1e-5)


def test_key_frames_of_each_mode():
    assert key_frame_indices(9, "sa2va", 5) == [0, 1, 2, 3, 4]
    assert key_frame_indices(3, "sa2va", 5) == [0, 1, 2]
    assert key_frame_indices(9, "sa2va-i", 5) == [0, 2, 4, 6, 8]
    assert key_frame_indices(100, "sa2va-i", 5) == [0, 24, 49, 74, 99]
    assert key_frame_indices(3, "sa2va-i", 5) == [0, 0, 1, 1, 2]  # duplicates, as the reference (used once)


def test_the_tracking_state_does_not_grow_with_the_video():
    state = TrackState(num_maskmem=7, max_obj_ptrs=16, num_frames=10_000, tpos_enc=torch.zeros(7, 1, 1, 4))
    for frame in range(500):
        state.add_tracked(frame, FrameState(None, torch.zeros(1, 8)))
    assert len(state.tracked) <= 17
    assert min(state.tracked) >= 499 - 16


def test_read_config_detects_the_second_decoder(tmp_path):
    folder = released_folder("sa2va-i-reference-tiny-a", tmp_path / "i")
    assert read_config(folder).two_decoders
    assert not read_config(released_folder("sa2va-reference-tiny-a", tmp_path / "a")).two_decoders
    assert fixture_config("sa2va-reference-tiny-a").llm["vocab_size"] == 401


def test_glus_segment_and_info_serve_a_sa2va_folder(tmp_path, capsys):
    """The CLI reads the family from the folder: masks and a summary per expression, in both modes."""
    import cv2
    from sa2va_fixture import answering_folder

    from model.cli import main

    folder = answering_folder(tmp_path / "sa2va-i-tiny")
    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for t in range(6):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(frames / f"{t:05d}.png"), image)
    for mode in ("sa2va-i", "sa2va"):
        out = tmp_path / f"out-{mode}"
        code = main(["segment", str(frames), "-e", "the red circle", "-e", "the blue square", "--out", str(out),
                     "--checkpoint", str(folder), "--sa2va-mode", mode, "--sa2va-key-frames", "3", "--device", "cpu",
                     "--no-overlay", "--quiet"])  # fmt: skip
        assert code == 0
        summary = json.loads((out / "clip" / "expressions.json").read_text())
        assert [e["frames"] for e in summary.values()] == [6, 6]
        assert sum(e["present"] for e in summary.values()) > 0, summary
        assert len(list((out / "clip" / "0").glob("*.png"))) == 6
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "sa2va" and info["variant"] == "sa2va-i" and info["llm"] == "Qwen2ForCausalLM"


def test_the_family_is_read_from_the_folder_without_torch(tmp_path):
    import subprocess
    import sys

    folder = released_folder("sa2va-i-reference-tiny-a", tmp_path / "i")
    code = (
        "import sys; from model.families import checkpoint_variant, family_of; "
        f"print(family_of({str(folder)!r}), checkpoint_variant({str(folder)!r}), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["sa2va", "sa2va-i", "False"]


def test_what_only_glus_does_is_refused_for_a_sa2va_model(tmp_path):
    from glus_backend.registry import ModelVersion
    from glus_backend.worker import LoadedModel, PermanentJobError
    from model.families import UnsupportedByFamily, load_video_model

    folder = released_folder("sa2va-i-reference-tiny-a", tmp_path / "i")
    model = load_video_model(folder)
    assert model.family == "sa2va" and model.options.mode == "sa2va-i"  # the folder's own mode by default
    loaded = LoadedModel(ModelVersion("sa2va-i-1234abcd", folder, "checkpoint"), model)
    with pytest.raises(PermanentJobError, match="sa2va-i-1234abcd is a sa2va model .* GLUS only"):
        loaded.segmenter  # noqa: B018 - re-propagation and clicks ask for GLUS's segmenter
    with pytest.raises(UnsupportedByFamily, match="deltas"):
        load_video_model(folder, deltas=[tmp_path / "a-delta"])
