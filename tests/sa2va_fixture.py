"""The Sa2VA parity fixtures (../shared/fixtures/sa2va*-reference-tiny-a) as released folders, and the comparison of
every recorded quantity with this project's run (shared by the parity tests and bench/parity_sa2va.py).

Each fixture is the reference's own ``predict_forward`` on a tiny random configuration, every intermediate kept;
its weights are under the released key names. :func:`released_folder` lays them out as a released checkpoint
(``config.json`` + ``model.safetensors`` + tokenizer files) so that parity goes through the real loader.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from model.sa2va.checkpoint import released_config_dict
from model.sa2va.config import TINY_SAM2_OVERRIDES, Sa2VAConfig

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE_MODES = {"sa2va-reference-tiny-a": "sa2va", "sa2va-i-reference-tiny-a": "sa2va-i"}
EXPRESSION = "the red circle"  # the fixtures' text: "<image>\nPlease segment the red circle."


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "weights.safetensors").is_file():
        raise FileNotFoundError(f"parity fixture missing at {path} (shared/ must sit beside the checkout)")
    return path


def fixture_config(name: str) -> Sa2VAConfig:
    """The fixture's configuration (its recorded ``tiny_config``) as a :class:`Sa2VAConfig`."""
    meta = json.loads((fixture_dir(name) / "meta.json").read_text())
    tiny = meta["tiny_config"]
    llm = dict(tiny["llm_config"], vocab_size=meta["tokenizer_vocab"])
    llm.pop("torch_dtype", None)
    return Sa2VAConfig(name=name, vision=dict(tiny["vision_config"]), llm=llm, template=tiny["chat"]["template"],
                       sam2_overrides=list(TINY_SAM2_OVERRIDES))  # fmt: skip


def released_folder(name: str, dest: Path) -> Path:
    """Lay fixture ``name`` out as a released Sa2VA folder under ``dest`` (the weights file is linked)."""
    source = fixture_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(released_config_dict(fixture_config(name)), indent=2) + "\n")
    weights = dest / "model.safetensors"
    if not weights.exists():
        weights.symlink_to(source / "weights.safetensors")
    for file in (source / "tokenizer").iterdir():
        shutil.copy(file, dest / file.name)
    return dest


@dataclass
class Comparison:
    quantity: str
    max_abs_diff: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().float().cpu(), theirs.float()
    if ours.shape != theirs.shape:
        raise AssertionError(f"shape {tuple(ours.shape)} against the fixture's {tuple(theirs.shape)}")
    return float((ours - theirs).abs().max()) if ours.numel() else 0.0


def _bf16_ulps(ours: torch.Tensor, theirs: torch.Tensor, floor: float = 1e-6) -> float:
    """The largest difference in units of the fixture value's bfloat16 spacing (its last place), the spacing taken
    as at least ``floor``: near zero, float32 noise (~1e-7) is many bfloat16 places of a tiny value."""
    theirs = theirs.float()
    spacing = torch.pow(2.0, torch.floor(torch.log2(theirs.abs().clamp_min(1e-30))) - 7).clamp_min(floor)
    return float(((ours.detach().float().cpu() - theirs).abs() / spacing).max())


def run_and_compare(name: str, folder: Path) -> tuple[list[Comparison], dict]:
    """Load the released ``folder`` of fixture ``name`` through the real loader, run the fixture's video through
    :class:`~model.sa2va.inference.Sa2VASegmenter`, and compare every recorded quantity."""
    from model.sa2va.checkpoint import load_sa2va
    from model.sa2va.inference import Sa2VAOptions, Sa2VASegmenter

    meta = json.loads((fixture_dir(name) / "meta.json").read_text())
    ref = load_file(str(fixture_dir(name) / "reference_outputs.safetensors"))
    model, tokenizer, report = load_sa2va(folder)
    seen: dict[str, list[torch.Tensor]] = {}
    segmenter = Sa2VASegmenter(model, tokenizer)
    frames = ref["frames_rgb"].numpy()
    options = Sa2VAOptions(mode=FIXTURE_MODES[name], forced_answer=meta["forced_token_ids"])
    result = segmenter.segment(frames, [EXPRESSION], options, trace=lambda k, v: seen.setdefault(k, []).append(v))[0]
    one = {k: v[0] for k, v in seen.items()}
    num_frames, crop = len(frames), (slice(None), slice(0, 64), slice(0, 64))
    out: list[Comparison] = []

    def add(quantity: str, ours: torch.Tensor, tolerance: float, theirs: torch.Tensor | None = None, note=""):
        out.append(Comparison(quantity, _diff(ours, ref[quantity] if theirs is None else theirs), tolerance, note))

    same_ids = torch.equal(one["input_ids"].cpu().long(), ref["llm.input_ids"].long())
    out.append(Comparison("llm.input_ids", 0.0 if same_ids else float("inf"), 0.0, "exact"))
    add("mllm.pixel_values_crop", one["mllm_pixels"][:, :, :64, :64], 1e-5)
    add("mllm.pixel_values_channel_mean", one["mllm_pixels"].double().mean((2, 3)), 1e-5)
    add("vit.last_hidden_state", one["vit"], 1e-5)
    add("mllm.vit_embeds", one["vit_embeds"], 1e-5)
    add("llm.inputs_embeds", one["inputs_embeds"], 1e-5)
    add("llm.final_hidden", torch.cat([one["prompt_states"], one["answer_states"]]), 1e-4)
    add("llm.step_logits_raw", one["step_logits"], 1e-4)
    add("seg.hidden", one["seg_hidden"], 1e-4)
    add("seg.embedding", one["seg_embedding"], 1e-5)
    sam_pixels = torch.cat([one[f"sam_pixels:{t}"] for t in range(num_frames)])
    add("sam.state0.images_crop", sam_pixels[:, :, :64, :64], 1e-5)
    add("sam.state0.images_channel_mean", sam_pixels.double().mean((2, 3)), 1e-5)
    for level, channels in ((0, "vision_feat0_crop"), (1, "vision_feat1_crop"), (2, "vision_feat2_crop")):
        ours = torch.stack([one[f"feat{level}:{t}"][0, :, :16, :16] for t in range(num_frames)])
        theirs = torch.stack([ref[f"sam.state0.frame{t}.{channels}"] for t in range(num_frames)])
        add(f"sam.state0.frame*.{channels}", ours, 1e-4, theirs)
    for index, call in enumerate(meta["sam_calls"]):
        _add_call(out, ref, one, index, call, FIXTURE_MODES[name])
    memory = torch.cat([one[f"memory:{t}"] for t in range(num_frames)])
    theirs = ref["sam.state0.maskmem_features"]
    note = f"bfloat16 as the reference stores it; max abs diff {_diff(memory, theirs):.3g}"
    # two places: the reference rounded its float32 memory to bf16 on its CPU and so do we; where the float32 values
    # differ by float32 noise, the two roundings can land on either side (1 place on a CPU with avx512_bf16, 1.43 on
    # one without, the binary masks identical on both)
    out.append(Comparison("sam.state0.maskmem_features (bf16 places, 1e-6 floor)", _bf16_ulps(memory, theirs), 2.0,
                          note))  # fmt: skip
    add("sam.state0.maskmem_pos_enc", one["memory_pos:0"][0], 1e-5)
    add("sam.state0.obj_ptr", torch.cat([one[f"obj_ptr:{t}"] for t in range(num_frames)]), 1e-4)
    add("sam.state0.pred_masks_lowres", torch.cat([one[f"lowres:{t}"][:, 0] for t in range(num_frames)]), 1e-4)
    video = torch.cat([one[f"video_logits:{t}"][:, 0] for t in range(num_frames)])
    add("sam.state0.video_res_masks_crop", video[crop], 1e-4)
    logits = torch.cat([one[f"logits:{t}"] for t in range(num_frames)])
    add("final.mask_logits", logits, 1e-4)
    if FIXTURE_MODES[name] == "sa2va-i":
        keys = meta["sample_idx"]
        key_logits = torch.cat([one[f"key_logits:{t}"][:, 0] for t in keys])
        add("keyframes.mask_logits", key_logits, 1e-4)
        add("keyframes.sam_input_crop", torch.cat([one[f"sam_pixels:{t}"][:, :, :64, :64] for t in keys]), 1e-5)
        for level in (0, 1):
            ours = torch.cat([one[f"key_feat{level}:{t}"][:, :, :16, :16] for t in keys])
            add(f"keyframes.vision_feat{level}_crop", ours, 1e-4)
        add("keyframes.vision_feat2_crop", torch.cat([one[f"feat2:{t}"][:, :, :16, :16] for t in keys]), 1e-4)
        differing = float(((key_logits > 0).to(torch.uint8) != ref["keyframes.binary_masks"].to(torch.uint8)).sum())
        out.append(Comparison("keyframes.binary_masks (pixels differing)", differing, 0.0, "exact"))
    masks = torch.from_numpy(np.stack([f.mask for f in result.frames])).to(torch.uint8)
    out.append(Comparison("final.masks (pixels differing)", float((masks != ref["final.masks"]).sum()), 0.0,
                          "exact"))  # fmt: skip
    return out, {"report": report, "result": result, "trace": one}


def _add_call(out: list[Comparison], ref: dict, one: dict, index: int, call: dict, mode: str) -> None:
    """One recorded SAM-2 head call, matched to ours by its frame and kind."""
    prefix = f"sam.call{index}"
    ctx = call.get("ctx") or {}
    frame = ctx.get("frame_idx")
    if call.get("batch", 1) > 1:  # sa2va-i's batched key-frame call: one row per key frame
        frames = _key_frames_of(one)
        ours = {k: torch.cat([one[f"key:{t}:{k}"] for t in frames]) for k in ("multimasks", "ious", "obj_ptr",
                                                                              "object_score")}  # fmt: skip
    else:
        kind = "prompt" if call.get("mask_inputs") else ("key" if call.get("language_embd") else "track")
        ours = {k: one.get(f"{kind}:{frame}:{k}") for k in ("multimasks", "ious", "obj_ptr", "object_score",
                                                            "image_embed")}  # fmt: skip
    for field_name, key in (("ious", "ious"), ("obj_ptr", "obj_ptr"), ("object_score", "object_score_logits")):
        out.append(Comparison(f"{prefix}.{key}", _diff(ours[field_name], ref[f"{prefix}.{key}"]), 1e-4))
    if f"{prefix}.low_res_multimasks" in ref:
        theirs = ref[f"{prefix}.low_res_multimasks"]
        out.append(Comparison(f"{prefix}.low_res_multimasks", _diff(ours["multimasks"], theirs), 1e-4))
    if f"{prefix}.pix_feat_with_mem_crop" in ref and ours.get("image_embed") is not None:
        theirs = ref[f"{prefix}.pix_feat_with_mem_crop"]
        out.append(Comparison(f"{prefix}.pix_feat_with_mem_crop", _diff(ours["image_embed"][0, :, :16, :16], theirs),
                              1e-4))  # fmt: skip


def _key_frames_of(one: dict) -> list[int]:
    return sorted(int(k.split(":")[1]) for k in one if k.startswith("key:") and k.endswith(":ious"))


def answering_folder(dest: Path, fixture: str = "sa2va-i-reference-tiny-a") -> Path:
    """A released folder of the fixture's network (masks of a few percent of the frame, as recorded) whose LLM is
    rigged to answer ``[SEG]`` (:func:`model.sa2va.factory.rig_answer`): the whole path runs on any video."""
    import tempfile

    from model.sa2va.checkpoint import load_sa2va, save_released_sa2va
    from model.sa2va.factory import rig_answer

    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer, _ = load_sa2va(released_folder(fixture, Path(scratch) / "fixture"))
        rig_answer(model, tokenizer.convert_tokens_to_ids("[SEG]"), tokenizer.eos_token_id)
        save_released_sa2va(model, tokenizer, dest)
    return dest
