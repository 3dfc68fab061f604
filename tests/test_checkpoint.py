"""Checkpoints: this project's save/load round trip, and every real layout of the released GLUS / CLIP / SAM-2
files, written by the same writers the real-scale rehearsal uses (model/released_layout.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.checkpoint import (
    CheckpointError,
    build_empty,
    from_pretrained,
    load_checkpoint,
    load_clip_vision,
    load_released_glus,
    load_released_state_dict,
    load_sam2_checkpoint,
    map_released_key,
    read_state_dict,
    save_pretrained,
)
from model.config import glus_7b_config, glus_tiny_config
from model.factory import random_model
from model.inference import VideoSegmenter
from model.released_layout import (
    clip_text_tensors,
    released_glus_key,
    released_llava_config,
    write_clip_folder,
    write_released_glus,
    write_sam2_pt,
)
from model.weights import WeightSource, release_pages

TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=16, projection_dim=32)  # fmt: skip


def _items(model, prefix):
    return [(k, v) for k, v in model.state_dict().items() if k.startswith(prefix)]


def write_release(model, tok, root, fmt="bin", dtype=None, gamma="gamma", clip_layout="hub", shard_bytes=200_000):
    """``root/glus`` (released GLUS folder, several shards), ``root/clip`` (CLIP folder), ``root/sam2.pt``."""
    config = released_llava_config(model.config.llm, model.config.vision_hidden_size, model.sam.hidden_dim,
                                   dtype or torch.float32)  # fmt: skip
    write_released_glus(root / "glus", model.state_dict().items(), config, tok, fmt, dtype, shard_bytes, gamma)
    text = list(clip_text_tensors(TINY_TEXT, model.config.vision_hidden_size, seed=3))
    write_clip_folder(root / "clip", _items(model, "vision_tower."), model.config.vision, clip_layout, text,
                      TINY_TEXT, dtype)  # fmt: skip
    write_sam2_pt(root / "sam2.pt", _items(model, "sam."), dtype)
    return root / "glus", root / "clip", root / "sam2.pt"


def _masks(model, tok, video):
    return VideoSegmenter(model, tok).segment(video, ["the red square"])[0]


def test_save_load_round_trip_gives_identical_outputs(tiny, moving_square_video, tmp_path):
    model, tok = tiny
    save_pretrained(model, tok, tmp_path / "ckpt")
    again, tok2, report = from_pretrained(tmp_path / "ckpt")
    assert report.ok and report.loaded == len(model.state_dict())
    assert not any(p.is_meta for p in again.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    a, b = _masks(model, tok, moving_square_video[:5]), _masks(again, tok2, moving_square_video[:5])
    assert np.array_equal(a.masks, b.masks) and [f.score for f in a.frames] == [f.score for f in b.frames]


@pytest.mark.parametrize(
    "fmt,dtype,gamma,clip_layout",
    [
        ("bin", torch.float32, "gamma", "hub"),
        ("safetensors", torch.bfloat16, "weight", "transformers5"),
        ("bin", torch.float16, "weight", "transformers4"),
        ("safetensors", torch.float32, "gamma", "hub"),
    ],
)
def test_released_layouts_load_to_the_same_masks_as_the_project_format(
    tiny, moving_square_video, tmp_path, fmt, dtype, gamma, clip_layout
):
    """Sharded .bin / .safetensors with an index, fp32 / fp16 / bf16, both gamma spellings, the three CLIP
    layouts, and the SAM-2 .pt: the same weights as this project's format saved in that dtype."""
    model, tok = tiny
    glus_dir, clip_dir, sam2_pt = write_release(model, tok, tmp_path, fmt, dtype, gamma, clip_layout)
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    assert (glus_dir / index).is_file() and len(WeightSource(glus_dir).files) > 2
    own, own_tok, _ = from_pretrained(save_pretrained(model, tok, tmp_path / "own", dtype=dtype))
    loaded, tok2, reports = load_released_glus(
        glus_dir, clip_dir, sam2_pt, sam2_config="sam2-hiera-t", sam2_overrides=model.config.sam2_overrides
    )
    sam_report, clip_report, glus_report = reports
    assert all(r.ok for r in reports), [str(r) for r in reports]
    assert glus_report.loaded + clip_report.loaded == len(own.state_dict())
    assert sam_report.loaded == 0 and len(sam_report.superseded) == len(_items(model, "sam."))  # read once
    if clip_layout == "hub":  # the whole CLIPModel: text tower ignored, both position_ids buffers dropped
        assert clip_report.ignored and len(clip_report.dropped) == 2
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for key, value in own.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    a = _masks(own, own_tok, moving_square_video[:4])
    b = _masks(loaded, tok2, moving_square_video[:4])
    assert np.array_equal(a.masks, b.masks)


def test_loading_places_each_tensor_once_in_the_serving_dtype(tiny, tmp_path):
    model, tok = tiny
    glus_dir, clip_dir, _ = write_release(model, tok, tmp_path, "safetensors", torch.float32)
    loaded, _, reports = load_released_glus(
        glus_dir, clip_dir, dtype=torch.bfloat16, sam2_config="sam2-hiera-t",
        sam2_overrides=model.config.sam2_overrides,
    )  # fmt: skip
    for key, param in loaded.named_parameters():  # SAM-2 float32, run under autocast (GlusModel.to_serving)
        assert param.dtype == (torch.float32 if key.startswith("sam.") else torch.bfloat16), key
    stored = WeightSource(glus_dir).nbytes() + WeightSource(clip_dir).nbytes()
    read = sum(r.bytes_read for r in reports)
    ignored = sum(WeightSource(clip_dir).nbytes(r.ignored + r.dropped) for r in reports[:1])
    assert read == stored - ignored  # every needed byte read once; the text tower never read
    for key, value in loaded.state_dict().items():
        assert torch.equal(model.state_dict()[key].to(value.dtype), value), key


def test_glus_7b_is_built_without_weights():
    model = build_empty(glus_7b_config())
    assert sum(p.numel() for p in model.parameters()) > 7.2e9
    assert all(p.is_meta for p in model.parameters())
    # buffers computed at construction stay real (rotary frequencies, CLIP position ids, SAM-2's PE matrix)
    assert all(not b.is_meta for b in model.buffers())
    assert model.language_model.model.rotary_emb.inv_freq.abs().sum() > 0


def test_released_folder_needs_its_sam2_option(tiny, tmp_path):
    """The SAM-2 architecture is the user's to say: the tiny model's SAM-2 under the default Hiera-L fails by
    shape, naming the tensor; an unknown name is refused with the known ones."""
    model, tok = tiny
    glus_dir, clip_dir, _ = write_release(model, tok, tmp_path)
    with pytest.raises(CheckpointError, match="shape mismatch for sam"):
        load_released_glus(glus_dir, clip_dir)
    with pytest.raises(CheckpointError, match="unknown SAM-2 architecture 'hiera-xl'.*sam2-hiera-l"):
        load_released_glus(glus_dir, clip_dir, sam2_config="hiera-xl")
    with pytest.raises(CheckpointError, match="give a local CLIP"):
        load_checkpoint(glus_dir)


def test_load_errors_name_the_keys(tiny, tmp_path):
    model, tok = tiny
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vision_tower.")}
    released = {released_glus_key(k): v for k, v in state.items()}
    released["model.some_new_head.weight"] = torch.zeros(1)
    del released["model.norm.weight"]
    fresh, _ = random_model("glus-tiny", seed=5)
    with pytest.raises(CheckpointError) as err:
        load_released_state_dict(fresh, released)
    assert "model.some_new_head.weight" in str(err.value) and "language_model.model.norm.weight" in str(err.value)
    released["model.norm.weight"] = torch.zeros(3)
    del released["model.some_new_head.weight"]
    with pytest.raises(CheckpointError, match="shape mismatch for language_model.model.norm.weight"):
        load_released_state_dict(fresh, released)
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_broken_folders_are_named(tiny, tmp_path):
    model, tok = tiny
    glus_dir, clip_dir, _ = write_release(model, tok, tmp_path, "safetensors")
    index = json.loads((glus_dir / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (glus_dir / shard).unlink()
    with pytest.raises(CheckpointError, match=f"names shards that are not in .*{shard}"):
        load_released_glus(glus_dir, clip_dir, sam2_config="sam2-hiera-t", sam2_overrides=model.config.sam2_overrides)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors or pytorch_model"):
        load_clip_vision(model, tmp_path / "empty")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*junk.bin"):
        load_sam2_checkpoint(model, tmp_path / "junk.bin")


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
    write_sam2_pt(tmp_path / "bad.pt", [("image_encoder.trunk.pos_embed", torch.zeros(1))])
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_sam2_checkpoint(model, tmp_path / "bad.pt")
    # an official SAM-2.1 file holds tensors a v1 network lacks: named, not silently skipped
    sam21 = _items(model, "sam.") + [("sam.no_obj_embed_spatial", torch.zeros(1, 64))]
    write_sam2_pt(tmp_path / "sam21.pt", sam21)
    with pytest.raises(CheckpointError, match="unexpected 1 \\(no_obj_embed_spatial\\)"):
        load_sam2_checkpoint(model, tmp_path / "sam21.pt")
    write_clip_folder(tmp_path / "clip", [("post_layernorm.weight", torch.ones(128))], model.config.vision,
                      "transformers5")  # fmt: skip
    fresh, _ = random_model("glus-tiny", seed=5)
    report = load_clip_vision(fresh, tmp_path / "clip", strict=False)
    assert report.loaded == 1 and len(report.missing) > 10 and not report.ok
    assert torch.equal(fresh.state_dict()["vision_tower.post_layernorm.weight"], torch.ones(128))


def test_released_pages_read_back_the_same(tmp_path):
    """Dropping a mapped tensor's pages after copying it loses nothing: reading it again reads the file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {"a": torch.randn(300, 1000), "b": torch.randn(7)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save(tensors, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.bin"):
        source = WeightSource(tmp_path / name)
        for key, tensor, mapped in source.read(["a", "b"]):
            assert mapped
            copy = tensor.clone()
            release_pages(tensor)
            assert torch.equal(tensor, copy) and torch.equal(copy, tensors[key])


def test_glus_segment_cli_on_released_layouts(tmp_path):
    """`glus segment` on a released folder + a hub CLIP folder with no Python, SAM-2 chosen by option (Hiera-T at
    its real 1024 px), gives the masks of the same weights in this project's format."""
    from PIL import Image

    config = glus_tiny_config()
    config.sam2_config, config.sam2_overrides = "configs/sam2/sam2_hiera_t.yaml", []
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    glus_dir, clip_dir, _ = write_release(model, tok, tmp_path, "safetensors", torch.bfloat16)
    own = save_pretrained(model, tok, tmp_path / "own", dtype=torch.bfloat16)
    video = tmp_path / "frames"
    video.mkdir()
    rng = np.random.default_rng(0)
    for t in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(video / f"{t:05d}.jpg")
    outputs = {}
    for name, extra in (
        ("released", ["--checkpoint", str(glus_dir), "--clip-dir", str(clip_dir), "--sam2-config", "sam2-hiera-t"]),
        ("own", ["--checkpoint", str(own)]),
    ):
        out = tmp_path / f"out-{name}"
        done = subprocess.run(
            [sys.executable, "-m", "model.cli", "segment", str(video), "-e", "the object", "--out", str(out),
             "--no-overlay", "--quiet", "--device", "cpu", *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = [np.array(Image.open(out / "frames" / "0" / f"{t:05d}.png")) for t in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs["released"], outputs["own"]))


def test_bf16_serving_on_cpu_follows_the_float32_masks():
    """bf16 serving (the glus-7b default on GPU, and the rehearsal's on CPU): SAM-2 keeps float32 weights and
    runs under autocast, everything else is bf16; the bundled demo model's masks stay those of float32."""
    from model.cli import bundled_checkpoint
    from model.synthetic.world import generate_video

    video = generate_video(4242)
    expressions = [e.text for e in video.expressions[:2]]
    masks = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok, _ = from_pretrained(bundled_checkpoint(), dtype=dtype)
        dtypes = {name.split(".")[0]: p.dtype for name, p in model.named_parameters()}
        assert dtypes["sam"] == torch.float32 and dtypes["language_model"] == dtype
        masks[dtype] = np.stack([r.masks for r in VideoSegmenter(model, tok).segment(video.frames, expressions)])
    full, half = masks[torch.float32], masks[torch.bfloat16]
    iou = (full & half).sum() / max((full | half).sum(), 1)
    assert full.any() and iou > 0.9, iou


def test_a_sam21_folder_loads_with_its_option_and_segments(tmp_path, moving_square_video):
    """A released folder trained on SAM-2.1 (Hiera-T, real 1024 px) with an official SAM-2.1 .pt beside it."""
    config = glus_tiny_config()
    config.sam2_config, config.sam2_overrides = "configs/sam2.1/sam2.1_hiera_t.yaml", []
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    assert "sam.no_obj_embed_spatial" in model.state_dict()  # a SAM-2.1 tensor that v1 lacks
    glus_dir, clip_dir, sam2_pt = write_release(model, tok, tmp_path, "safetensors", clip_layout="transformers4")
    loaded, tok2, reports = load_released_glus(glus_dir, clip_dir, sam2_pt, sam2_config="sam2.1-hiera-t")
    assert all(r.ok for r in reports), [str(r) for r in reports]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    result = _masks(loaded, tok2, moving_square_video[:2])
    assert result.masks.shape == (2, 96, 128)


def test_worker_settings_name_the_sam2_architecture(monkeypatch):
    from glus_backend.settings import Settings

    monkeypatch.setenv("GLUS_SAM2_CONFIG", "sam2-hiera-b+")
    monkeypatch.setenv("GLUS_MODEL_STORE", "s3://bucket/glus")
    settings = Settings.from_env()
    assert settings.sam2_config == "sam2-hiera-b+" and settings.model_store == "s3://bucket/glus"
