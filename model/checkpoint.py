"""Loading and saving GLUS weights from local directories. Nothing is ever downloaded.

Three kinds of input are understood, each as the real files are laid out:

* **this project's format** (``save_pretrained``): ``config.json`` (a :class:`GlusConfig`), ``model.safetensors``
  under this project's parameter names, and the tokenizer files;
* **a released GLUS checkpoint** (``Swindl/GLUS-S``, ``GLUS-A``; a Hugging Face folder with a flat
  ``"model_type": "llava"`` ``config.json``, ``.bin`` or ``.safetensors`` shards with or without an index, in
  fp32, fp16 or bf16, ``tokenizer.model``, ``added_tokens.json``), mapped with :func:`map_released_key`
  (glus-reference.md section 8). CLIP is not stored in it: pass a local CLIP folder as published on the hub
  (a whole ``CLIPModel``, text tower and ``position_ids`` buffers included) or as ``CLIPVisionModel`` saves it
  under transformers 4 (``vision_model.*`` keys) or 5 (bare keys). Which SAM-2 the folder was trained with is
  ``sam2_config`` (default Hiera-L v1, as GLUS); the GLUS folder holds SAM-2's weights, ``gamma`` layer-scales
  included under either spelling, so an official SAM-2 ``.pt`` is optional;
* **an official SAM-2 / 2.1 ``.pt``** (``{"model": state_dict}``) for the ``sam`` part alone.

Loading builds the network without weights and places each stored tensor once, in the serving dtype on the
serving device (:mod:`model.loading`), reading shards lazily (:mod:`model.weights`). Every load returns
:class:`LoadReport` s naming loaded, missing, unexpected, dropped (harmless buffers) and ignored (unused parts)
keys; strict loads raise :class:`CheckpointError` with them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import CONFIG_NAME, DEFAULT_SAM2, GlusConfig, glus_7b_config, sam2_config_path
from .loading import CheckpointError, LoadReport, Skip, SourcePlan, empty_weights, load_planned, plan_source
from .modeling.glus import GlusModel
from .tokenizer import GlusTokenizer
from .weights import TensorDictSource, WeightFileError, WeightSource

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
__all__ = ["CheckpointChain", "CheckpointError", "LoadReport", "from_pretrained", "load_checkpoint", "load_clip_vision",
           "load_released_glus", "load_released_state_dict", "load_sam2_checkpoint", "map_released_key",
           "read_state_dict", "released_config", "save_pretrained"]  # fmt: skip

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
# buffers a network rebuilds itself: rotary frequencies, batch-norm counters, position ids (saved by older versions)
_DROPPED_KEY = re.compile(r"(rotary_emb\.inv_freq|\.num_batches_tracked|embeddings\.position_ids)$")
# what a whole CLIPModel holds besides the vision tower GLUS uses
_CLIP_UNUSED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
_GLUS_PARTS = ("language_model.", "multi_modal_projector.", "seg_projector.", "sam.")


def map_released_key(key: str) -> str | None:
    """This project's name for a released GLUS checkpoint key, or None if the key has no place here."""
    for pattern, replacement in _RELEASED_KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def _clip_key(bare: str, vision_keys: set[str]) -> str | None:
    """The network's key for a CLIP vision key without its ``vision_model.`` prefix: CLIPVisionModel's keys
    carry that prefix under transformers 4 and not under 5, so both spellings are tried."""
    for candidate in ("vision_tower." + bare, "vision_tower.vision_model." + bare):
        if candidate in vision_keys:
            return candidate
    return None


def clip_key_mapper(vision_keys: set[str]):
    """Key mapper for a CLIP folder: a whole ``CLIPModel`` (hub), or a ``CLIPVisionModel`` saved by transformers
    4 (``vision_model.*``) or 5 (bare keys)."""

    def mapper(key: str) -> str | Skip | None:
        if _DROPPED_KEY.search(key):
            return Skip.DROPPED
        if key.startswith(_CLIP_UNUSED):
            return Skip.IGNORED
        return _clip_key(key.removeprefix("vision_model."), vision_keys)

    return mapper


def released_key_mapper(vision_keys: set[str]):
    """Key mapper for a released GLUS folder (CLIP is normally not stored; if it is, it loads too)."""

    def mapper(key: str) -> str | Skip | None:
        if _DROPPED_KEY.search(key):
            return Skip.DROPPED
        target = map_released_key(key)
        if target is not None and target.startswith("vision_tower."):
            return _clip_key(target.removeprefix("vision_tower.").removeprefix("vision_model."), vision_keys)
        return target

    return mapper


def _sam2_key(key: str) -> str | Skip:
    return Skip.DROPPED if _DROPPED_KEY.search(key) else "sam." + key


def _source(path: str | Path) -> WeightSource:
    try:
        return WeightSource(path)
    except WeightFileError as exc:
        raise CheckpointError(str(exc)) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` / ``.bin`` / ``.pt`` file or folder of shards, in memory (small files:
    fixtures, tests; models load through :class:`WeightSource` instead)."""
    source = _source(path)
    return {key: tensor.clone() for key, tensor, _ in source.read(source.keys())}


def _vision_keys(model: GlusModel) -> set[str]:
    return {k for k in model.state_dict(keep_vars=True) if k.startswith("vision_tower.")}


def _load(model: GlusModel, plans: list[SourcePlan], strict: bool, dtype=None, device="cpu") -> list[LoadReport]:
    """Load in the serving layout of :meth:`GlusModel.to_serving`: SAM-2 in float32, the rest in ``dtype``."""

    def dtype_of(key: str) -> torch.dtype | None:
        return torch.float32 if key.startswith("sam.") else dtype

    return load_planned(model, plans, dtype=dtype_of if dtype is not None else None, device=device, strict=strict)


def load_released_state_dict(
    model: GlusModel,
    state: dict[str, torch.Tensor] | WeightSource,
    source: str = "GLUS checkpoint",
    strict: bool = True,
    expect_vision_tower: bool = False,
) -> LoadReport:
    """Load tensors under the released GLUS key names into ``model`` (built, or empty from :func:`empty_weights`).

    The released checkpoints do not contain CLIP, so ``vision_tower.*`` keys count as missing only when
    ``expect_vision_tower`` is set (the parity fixture stores them).
    """
    weights = TensorDictSource(state, source) if isinstance(state, dict) else state
    expects = _GLUS_PARTS + (("vision_tower.",) if expect_vision_tower else ())
    plan = plan_source(weights, source, released_key_mapper(_vision_keys(model)), model.state_dict(), expects)
    return _load(model, [plan], strict)[0]


def load_sam2_checkpoint(model: GlusModel, path: str | Path, strict: bool = True) -> LoadReport:
    """Load an official SAM-2 / 2.1 ``.pt`` (``{"model": state_dict}``) into ``model.sam``."""
    plan = plan_source(_source(path), f"SAM-2 {path}", _sam2_key, model.state_dict(), ("sam.",))
    return _load(model, [plan], strict)[0]


def load_clip_vision(model: GlusModel, clip_dir: str | Path, strict: bool = True) -> LoadReport:
    """Load the vision tower from a local CLIP folder (hub ``CLIPModel``, or ``CLIPVisionModel`` as saved by
    transformers 4 or 5); the text tower and projections are ignored, ``position_ids`` buffers dropped."""
    mapper = clip_key_mapper(_vision_keys(model))
    plan = plan_source(_source(clip_dir), f"CLIP {clip_dir}", mapper, model.state_dict(), ("vision_tower.",))
    return _load(model, [plan], strict)[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def released_config(
    glus_dir: str | Path, clip_dir: str | Path | None = None, sam2_config: str | None = None
) -> GlusConfig:
    """A :class:`GlusConfig` from a released checkpoint's flat llava ``config.json`` (and CLIP's config).

    The flat file is not given to ``AutoConfig`` (``model_type "llava"`` means something else in
    transformers 5); LLaMA fields are taken from it. The released files do not say which SAM-2 they were
    trained with: ``sam2_config`` (a name of :data:`model.config.SAM2_CONFIGS`) does, default Hiera-L v1.
    """
    raw = _read_json(Path(glus_dir) / CONFIG_NAME)
    config = glus_7b_config()
    for key in list(config.llm):
        if key in raw and raw[key] is not None:
            config.llm[key] = raw[key]
    if raw.get("mm_vision_select_layer") is not None:
        config.vision_feature_layer = int(raw["mm_vision_select_layer"])
    if raw.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError("only mm_vision_select_feature='patch' (CLS dropped) is supported")
    if clip_dir is not None:
        clip_raw = _read_json(Path(clip_dir) / CONFIG_NAME)
        clip_raw = clip_raw.get("vision_config") or clip_raw
        for key in list(config.vision):
            if key in clip_raw:
                config.vision[key] = clip_raw[key]
        config.clip_image_size = int(config.vision["image_size"])
    config.mask_threshold = float(raw.get("mask_threshold", 0.0))
    try:
        config.sam2_config = sam2_config_path(sam2_config or DEFAULT_SAM2)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    config.sam2_overrides = []
    return config


def build_empty(config: GlusConfig) -> GlusModel:
    """The network of ``config`` with no weights (parameters on the meta device); see :func:`empty_weights`."""
    with empty_weights():
        return GlusModel(config)


def load_released_glus(
    glus_dir: str | Path,
    clip_dir: str | Path,
    sam2_checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    sam2_config: str | None = None,
    sam2_overrides: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[GlusModel, GlusTokenizer, list[LoadReport]]:
    """glus-7b from a released checkpoint folder plus a local CLIP folder (and optionally a SAM-2 ``.pt``).

    ``sam2_config`` names the SAM-2 the folder was trained with (default Hiera-L v1); ``sam2_overrides``
    (dotlist) reshape it further, for test models only. Each tensor is read once: where the GLUS folder and the
    SAM-2 ``.pt`` both hold a key, the GLUS folder's (the fine-tuned one) is the one read.
    """
    config = released_config(glus_dir, clip_dir, sam2_config)
    if sam2_overrides is not None:
        config.sam2_overrides = list(sam2_overrides)
    tokenizer = GlusTokenizer.from_pretrained(glus_dir)
    model = build_empty(config)
    network_keys = model.state_dict(keep_vars=True)
    vision_keys = _vision_keys(model)
    plans = []
    if sam2_checkpoint is not None:
        plans.append(plan_source(_source(sam2_checkpoint), f"SAM-2 {sam2_checkpoint}", _sam2_key, network_keys, ()))
    plans.append(plan_source(_source(clip_dir), f"CLIP {clip_dir}", clip_key_mapper(vision_keys), network_keys,
                             ("vision_tower.",)))  # fmt: skip
    plans.append(plan_source(_source(glus_dir), f"GLUS {glus_dir}", released_key_mapper(vision_keys), network_keys,
                             _GLUS_PARTS))  # fmt: skip
    reports = _load(model, plans, strict=True, dtype=dtype, device=device)
    return model.to_serving(device, dtype).eval(), tokenizer, reports


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
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[GlusModel, GlusTokenizer, LoadReport]:
    """Load a model saved by :func:`save_pretrained`, in ``dtype`` on ``device``.

    Strict loads build the network without weights; ``strict=False`` builds it with random initialisation so
    that tensors the file lacks keep their initial values.
    """
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a GLUS checkpoint directory?")
    if is_released_checkpoint(directory):
        raise CheckpointError(
            f"{directory} is a released GLUS checkpoint: load it with load_released_glus(glus_dir, clip_dir)"
        )
    config = GlusConfig.load(directory)
    model = build_empty(config) if strict else GlusModel(config)
    plan = plan_source(_source(directory / WEIGHTS_NAME), str(directory), lambda k: k, model.state_dict(), ("",))
    report = _load(model, [plan], strict, dtype=dtype, device=device)[0]
    return model.to_serving(device, dtype).eval(), GlusTokenizer.from_pretrained(directory), report


@dataclass(frozen=True)
class CheckpointChain:
    """How to load one model version: a base checkpoint folder, the deltas applied to it (oldest first), and for
    a released base the CLIP folder, SAM-2 file and architecture."""

    base: Path
    deltas: tuple[Path, ...] = ()
    clip_dir: str | Path | None = None
    sam2_checkpoint: str | Path | None = None
    sam2_config: str | None = None

    def with_delta(self, delta: str | Path) -> CheckpointChain:
        return replace(self, deltas=(*self.deltas, Path(delta)))

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """``(model, tokenizer)``; see :func:`load_checkpoint`."""
        return load_checkpoint(self.base, self.clip_dir, self.sam2_checkpoint, device, dtype, self.sam2_config,
                               self.deltas)  # fmt: skip


def load_checkpoint(
    checkpoint: str | Path,
    clip_dir: str | Path | None = None,
    sam2_checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sam2_config: str | None = None,
    deltas: Sequence[str | Path] = (),
    sam2_overrides: Sequence[str] | None = None,
) -> tuple[GlusModel, GlusTokenizer]:
    """Whatever ``checkpoint`` is (this project's format or a released GLUS folder), loaded for serving, with
    ``deltas`` (fine-tuned versions, :mod:`model.delta`) applied in order, oldest first: what the CLI, the
    workers, training and the benchmarks call. ``clip_dir``, ``sam2_checkpoint``, ``sam2_config`` and
    ``sam2_overrides`` (test sizes only) apply to released folders, which need ``clip_dir``."""
    from .delta import apply_delta, is_delta, read_delta_spec

    checkpoint = Path(checkpoint)
    if is_delta(checkpoint):
        raise CheckpointError(
            f"{checkpoint} is a fine-tuned version stored as a delta of {read_delta_spec(checkpoint)['parent']}: give "
            "its base checkpoint and the chain of deltas, oldest first (glus: --checkpoint BASE --delta DIR ...; "
            "`glus-backend versions` names each version's parent)"
        )
    model, tokenizer = _load_base(checkpoint, clip_dir, sam2_checkpoint, device, dtype, sam2_config, sam2_overrides)
    for delta in deltas:
        spec = apply_delta(model, delta)
        logger.info("applied %s (parent %s, %d tensors in full, LoRA %s)", delta, spec["parent"], len(spec["full"]),
                    "yes" if spec.get("lora") else "no")  # fmt: skip
    return model, tokenizer


def _load_base(checkpoint: Path, clip_dir, sam2_checkpoint, device, dtype, sam2_config, sam2_overrides=None) -> tuple:
    if is_released_checkpoint(checkpoint):
        if not clip_dir:
            raise CheckpointError(
                f"{checkpoint} is a released GLUS checkpoint: give a local CLIP ViT-L/14 folder "
                "(--clip-dir / GLUS_CLIP_DIR)"
            )
        model, tokenizer, _ = load_released_glus(
            checkpoint, clip_dir, sam2_checkpoint, dtype, sam2_config,
            list(sam2_overrides) if sam2_overrides is not None else None, device,
        )  # fmt: skip
        return model, tokenizer
    model, tokenizer, _ = from_pretrained(checkpoint, dtype=dtype, device=device)
    if sam2_config is not None and sam2_config_path(sam2_config) != model.config.sam2_config:
        logger.warning("%s records its own SAM-2 (%s); the SAM-2 setting %s is for released folders",
                       checkpoint, model.config.sam2_config, sam2_config)  # fmt: skip
    return model, tokenizer
