"""Loading and saving GLUS weights from local directories. Nothing is ever downloaded.

Three sources are understood:

* **this project's format** (``save_pretrained``): ``config.json`` (a :class:`GlusConfig`), ``model.safetensors``
  under this project's parameter names, and the tokenizer files;
* **a released GLUS checkpoint** (``Swindl/GLUS-S``, ``GLUS-A``; a Hugging Face folder with a flat
  ``"model_type": "llava"`` ``config.json``, ``.bin`` or ``.safetensors`` shards, ``tokenizer.model``,
  ``added_tokens.json``), mapped with :func:`map_released_key` (glus-reference.md section 8). CLIP is not
  stored in it: pass the local ``openai/clip-vit-large-patch14`` folder. The SAM-2 ``.pt`` is optional (the
  GLUS checkpoint holds SAM-2 too, ``gamma`` layer-scales included, under either spelling);
* **a SAM-2 ``.pt``** (``{"model": state_dict}``) for the ``sam`` part alone.

Every load returns a :class:`LoadReport` naming missing and unexpected keys; ``strict`` loads raise
:class:`CheckpointError` with that report.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_NAME, GlusConfig, glus_7b_config
from .modeling.glus import GlusModel
from .tokenizer import GlusTokenizer

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the offending keys or files."""


@dataclass
class LoadReport:
    """What a load did: keys loaded, keys the model still lacks, keys the checkpoint had that fit nowhere."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # known-harmless keys skipped on purpose (e.g. inv_freq)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return f"{len(keys)} ({head}{', ...' if len(keys) > 8 else ''})"

        return (
            f"{self.source}: loaded {self.loaded} tensors; missing {show(self.missing)}; "
            f"unexpected {show(self.unexpected)}; dropped {len(self.dropped)}"
        )


# --- released GLUS key names -> this project's names (glus-reference.md section 8.3) ---
_RELEASED_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^model\.embed_tokens\.(.+)$"), r"language_model.model.embed_tokens.\1"),
    (re.compile(r"^model\.layers\.(.+)$"), r"language_model.model.layers.\1"),
    (re.compile(r"^model\.norm\.(.+)$"), r"language_model.model.norm.\1"),
    (re.compile(r"^lm_head\.(.+)$"), r"language_model.lm_head.\1"),
    (re.compile(r"^model\.mm_projector\.(weight|bias)$"), r"multi_modal_projector.linear_1.\1"),
    (re.compile(r"^model\.text_hidden_fcs\.0\.(0|2)\.(weight|bias)$"), r"seg_projector.layers.\1.\2"),
    # transformers 4.31 renamed `gamma` to `weight` on load; a checkpoint may hold either spelling.
    (
        re.compile(r"^model\.visual_model\.memory_encoder\.fuser\.layers\.(\d+)\.(?:gamma|weight)$"),
        r"sam.memory_encoder.fuser.layers.\1.gamma",
    ),
    (re.compile(r"^model\.visual_model\.(.+)$"), r"sam.\1"),
    (re.compile(r"^model\.vision_tower\.vision_tower\.(.+)$"), r"vision_tower.\1"),
]
_DROPPED_KEY = re.compile(r"(rotary_emb\.inv_freq|\.num_batches_tracked)$")


def map_released_key(key: str) -> str | None:
    """This project's name for a released GLUS checkpoint key, or None if the key has no place here."""
    for pattern, replacement in _RELEASED_KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _adapt_clip_key(key: str, vision_keys: set[str]) -> str:
    """CLIPVisionModel keys are ``vision_model.*`` in some transformers versions and bare in others."""
    if key.startswith("vision_tower.") and key not in vision_keys:
        rest = key[len("vision_tower.") :]
        alt = rest[len("vision_model.") :] if rest.startswith("vision_model.") else "vision_model." + rest
        if "vision_tower." + alt in vision_keys:
            return "vision_tower." + alt
    return key


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.bin`` / ``.pt`` file, or of every shard in a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        files = [f for f in files if not f.name.startswith("training_args")]
        if not files:
            raise CheckpointError(f"no .safetensors or pytorch_model*.bin weights in {path}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(read_state_dict(f))
        return state
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # SAM-2 .pt layout
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return obj


def _load_mapped(
    module: nn.Module, mapped: dict[str, torch.Tensor], source: str, expected_prefixes: tuple[str, ...] | None
) -> LoadReport:
    """Copy ``mapped`` (already under this module's names) in; report missing within ``expected_prefixes``."""
    own = module.state_dict()
    report = LoadReport(source)
    usable = {}
    for key, tensor in mapped.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, model {tuple(own[key].shape)}"
            )
        else:
            usable[key] = tensor
    module.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.missing = sorted(
        k
        for k in own
        if k not in usable
        and (expected_prefixes is None or k.startswith(expected_prefixes))
        and not _DROPPED_KEY.search(k)
    )
    return report


def load_released_state_dict(
    model: GlusModel,
    state: dict[str, torch.Tensor],
    source: str = "GLUS checkpoint",
    strict: bool = True,
    expect_vision_tower: bool = False,
) -> LoadReport:
    """Load a state dict under the released GLUS key names into ``model``.

    The released checkpoints do not contain CLIP, so ``vision_tower.*`` keys count as missing only when
    ``expect_vision_tower`` is set (the parity fixture stores them).
    """
    vision_keys = {k for k in model.state_dict() if k.startswith("vision_tower.")}
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unplaced: list[str] = []
    for key, tensor in state.items():
        if _DROPPED_KEY.search(key):
            dropped.append(key)
            continue
        target = map_released_key(key)
        if target is None:
            unplaced.append(key)
            continue
        mapped[_adapt_clip_key(target, vision_keys)] = tensor
    prefixes = ("language_model.", "multi_modal_projector.", "seg_projector.", "sam.")
    if expect_vision_tower:
        prefixes += ("vision_tower.",)
    report = _load_mapped(model, mapped, source, prefixes)
    report.unexpected = sorted(report.unexpected + unplaced)
    report.dropped = dropped
    if strict and not report.ok:
        raise CheckpointError(str(report))
    return report


def load_sam2_checkpoint(model: GlusModel, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official SAM-2 ``.pt`` (``{"model": state_dict}``) into ``model.sam``."""
    state = read_state_dict(path)
    report = _load_mapped(model, {f"sam.{k}": v for k, v in state.items()}, f"SAM-2 {path}", ("sam.",))
    if strict and not report.ok:
        raise CheckpointError(str(report))
    return report


def load_clip_vision(model: GlusModel, clip_dir: str | Path, strict: bool = True) -> LoadReport:
    """Load the vision half of a local CLIP checkpoint (e.g. ``openai/clip-vit-large-patch14``)."""
    state = read_state_dict(clip_dir)
    vision_keys = {k for k in model.state_dict() if k.startswith("vision_tower.")}
    mapped = {}
    for key, tensor in state.items():
        if key.startswith("vision_model."):
            mapped[_adapt_clip_key("vision_tower." + key, vision_keys)] = tensor
    report = _load_mapped(model, mapped, f"CLIP {clip_dir}", ("vision_tower.",))
    if strict and not report.ok:
        raise CheckpointError(str(report))
    return report


def released_config(glus_dir: str | Path, clip_dir: str | Path | None = None) -> GlusConfig:
    """A :class:`GlusConfig` from a released checkpoint's flat llava ``config.json`` (and CLIP's config).

    The flat file is not given to ``AutoConfig`` (``model_type "llava"`` means something else in
    transformers 5); LLaMA fields are taken from it, SAM-2 is Hiera-L v1 as GLUS was trained.
    """
    raw = json.loads((Path(glus_dir) / CONFIG_NAME).read_text())
    config = glus_7b_config()
    for key in list(config.llm):
        if key in raw and raw[key] is not None:
            config.llm[key] = raw[key]
    if raw.get("mm_vision_select_layer") is not None:
        config.vision_feature_layer = int(raw["mm_vision_select_layer"])
    if raw.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError("only mm_vision_select_feature='patch' (CLS dropped) is supported")
    if clip_dir is not None:
        clip_raw = json.loads((Path(clip_dir) / CONFIG_NAME).read_text())
        clip_raw = clip_raw.get("vision_config", clip_raw)
        for key in list(config.vision):
            if key in clip_raw:
                config.vision[key] = clip_raw[key]
        config.clip_image_size = int(config.vision["image_size"])
    config.mask_threshold = float(raw.get("mask_threshold", 0.0))
    return config


def load_released_glus(
    glus_dir: str | Path,
    clip_dir: str | Path,
    sam2_checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    sam2_config: str | None = None,
    sam2_overrides: list[str] | None = None,
) -> tuple[GlusModel, GlusTokenizer, list[LoadReport]]:
    """Build glus-7b from a released checkpoint folder plus a local CLIP folder (and optionally SAM-2 .pt).

    ``sam2_config``/``sam2_overrides`` replace SAM-2 Hiera-L v1 (GLUS's) only for checkpoints trained otherwise.
    """
    config = released_config(glus_dir, clip_dir)
    if sam2_config is not None:
        config.sam2_config = sam2_config
    if sam2_overrides is not None:
        config.sam2_overrides = list(sam2_overrides)
    model = GlusModel(config)
    reports = []
    if sam2_checkpoint is not None:
        reports.append(load_sam2_checkpoint(model, sam2_checkpoint))
    reports.append(load_clip_vision(model, clip_dir))
    reports.append(load_released_state_dict(model, read_state_dict(glus_dir), f"GLUS {glus_dir}"))
    for r in reports:
        logger.info("%s", r)
    return model.to(dtype).eval(), GlusTokenizer.from_pretrained(glus_dir), reports


# --- this project's format ---
def save_pretrained(model: GlusModel, tokenizer: GlusTokenizer, directory: str | Path,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer files into ``directory``.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors smaller; loading casts them back to the
    model's dtype.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "glus-backend", "config": model.config.name})
    tokenizer.save_pretrained(directory)
    return directory


def is_released_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_NAME
    return path.is_file() and json.loads(path.read_text()).get("model_type") == "llava"


def from_pretrained(
    directory: str | Path, dtype: torch.dtype = torch.float32, strict: bool = True
) -> tuple[GlusModel, GlusTokenizer, LoadReport]:
    """Load a model saved by :func:`save_pretrained`."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a GLUS checkpoint directory?")
    if is_released_checkpoint(directory):
        raise CheckpointError(
            f"{directory} is a released GLUS checkpoint: load it with load_released_glus(glus_dir, clip_dir)"
        )
    config = GlusConfig.load(directory)
    model = GlusModel(config)
    state = read_state_dict(directory / WEIGHTS_NAME)
    report = _load_mapped(model, state, str(directory), None)
    if strict and not report.ok:
        raise CheckpointError(str(report))
    return model.to(dtype).eval(), GlusTokenizer.from_pretrained(directory), report
