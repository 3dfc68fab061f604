"""Writing weights in the layouts users mount: a released GLUS folder, a CLIP folder, an official SAM-2 ``.pt``.

These writers exist so that the loaders are tested on files laid out exactly like the real ones, at tiny sizes
in CI and at full glus-7b shapes in the real-scale rehearsal (``bench/rehearse_7b.py``), with weights that
are either a model's own or seeded random ones. They stream: a shard is written as soon as it is full, so a
14.6 GB checkpoint is written in shard-sized memory.

Layouts (glus-reference.md section 8):

* **released GLUS**: flat ``"model_type": "llava"`` ``config.json``; shards ``pytorch_model-0000i-of-0000n.bin``
  with ``pytorch_model.bin.index.json`` (transformers 4.31, as released) or ``model-0000i-of-0000n.safetensors``
  with ``model.safetensors.index.json``; keys ``model.layers.*``, ``lm_head.*``, ``model.mm_projector.*``,
  ``model.text_hidden_fcs.0.*``, ``model.visual_model.*`` (SAM-2, ``gamma`` or ``weight`` layer-scales); no CLIP;
* **CLIP**: ``hub`` (``openai/clip-vit-large-patch14``: a whole ``CLIPModel``, text tower, projections,
  ``logit_scale`` and the ``position_ids`` buffers, ``vision_config`` nested in ``config.json``),
  ``transformers4`` (``CLIPVisionModel.save_pretrained`` under transformers 4: ``vision_model.*`` keys and
  ``position_ids``, ``pytorch_model.bin``) or ``transformers5`` (bare keys, no buffers, ``model.safetensors``);
* **SAM-2**: ``{"model": state_dict}`` in one ``.pt``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

CLIP_LAYOUTS = ("hub", "transformers4", "transformers5")
# CLIP ViT-L/14's text tower, as openai/clip-vit-large-patch14 ships it beside the vision tower
CLIP_L_TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768,
)  # fmt: skip


class ShardWriter:
    """Writes ``(key, tensor)`` pairs into shards of at most ``max_bytes`` and, when there are several, an index
    named as transformers names them."""

    def __init__(self, directory: str | Path, fmt: str = "safetensors", max_bytes: int = 5 * 10**9) -> None:
        if fmt not in ("safetensors", "bin"):
            raise ValueError(f"unknown shard format {fmt!r} (safetensors or bin)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fmt, self.max_bytes = fmt, max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[key] = tensor.detach().contiguous().cpu()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self._written):05d}.{self.fmt}"
        if self.fmt == "safetensors":
            save_file(self._pending, str(path), metadata={"format": "pt"})
        else:
            torch.save(self._pending, path)
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Name the shards (``model.safetensors`` alone, or ``model-00001-of-00002.safetensors`` + index)."""
        if self._pending or not self._written:
            self._flush()
        stem, suffix = ("model", "safetensors") if self.fmt == "safetensors" else ("pytorch_model", "bin")
        count = len(self._written)
        weight_map, files = {}, []
        for number, (temporary, keys) in enumerate(self._written, start=1):
            name = f"{stem}.{suffix}" if count == 1 else f"{stem}-{number:05d}-of-{count:05d}.{suffix}"
            files.append(temporary.rename(self.directory / name))
            weight_map.update({key: name for key in keys})
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return files


def released_glus_key(key: str, gamma_spelling: str = "gamma") -> str | None:
    """The released GLUS checkpoint's name of a project key (the inverse of ``map_released_key``); None for
    CLIP, which the released folders do not store."""
    if key.startswith("language_model.model."):
        return "model." + key.removeprefix("language_model.model.")
    if key.startswith("language_model.lm_head."):
        return "lm_head." + key.removeprefix("language_model.lm_head.")
    if key.startswith("multi_modal_projector.linear_1."):
        return "model.mm_projector." + key.rsplit(".", 1)[1]
    if key.startswith("seg_projector.layers."):
        return "model.text_hidden_fcs.0." + key.removeprefix("seg_projector.layers.")
    if key.startswith("sam."):
        name = "model.visual_model." + key.removeprefix("sam.")
        if gamma_spelling == "weight" and name.endswith(".gamma") and ".fuser.layers." in name:
            name = name.removesuffix(".gamma") + ".weight"
        return name
    if key.startswith("vision_tower."):
        return None
    raise ValueError(f"{key} has no place in a released GLUS checkpoint")


def released_llava_config(llm: dict, vision_hidden_size: int, sam_prompt_dim: int, dtype: torch.dtype) -> dict:
    """The flat ``config.json`` the GLUS merge script writes (glus-reference.md section 8.1)."""
    return {
        "_name_or_path": "LISA-7B-v1", "architectures": ["GLUSForCausalLM"], "model_type": "llava",
        **llm,
        "hidden_act": "silu", "initializer_range": 0.02, "use_cache": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "vision_tower": "openai/clip-vit-large-patch14",
        "mm_hidden_size": vision_hidden_size, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": True, "mm_use_im_patch_token": False, "image_aspect_ratio": "square",
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False, "train_mask_decoder": True,
        "out_dim": sam_prompt_dim, "mask_threshold": 0.0, "max_hole_area": 0.0, "max_sprinkle_area": 0.0,
        "torch_dtype": str(dtype).removeprefix("torch."), "transformers_version": "4.31.0",
    }  # fmt: skip


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def write_released_glus(
    directory: str | Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    llava_config: dict,
    tokenizer=None,
    fmt: str = "bin",
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 10 * 10**9,
    gamma_spelling: str = "gamma",
) -> list[Path]:
    """A released GLUS folder from ``(project key, tensor)`` pairs (CLIP's are skipped, as the merge script
    drops them); ``dtype`` casts floating-point tensors as they are written."""
    writer = ShardWriter(directory, fmt, max_shard_bytes)
    for key, tensor in tensors:
        name = released_glus_key(key, gamma_spelling)
        if name is not None:
            writer.add(name, _cast(tensor, dtype))
    files = writer.close()
    (Path(directory) / "config.json").write_text(json.dumps(llava_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return files


def _bare_vision_key(key: str) -> str:
    return key.removeprefix("vision_tower.").removeprefix("vision_model.")


def write_clip_folder(
    directory: str | Path,
    vision: Iterable[tuple[str, torch.Tensor]],
    vision_config: dict,
    layout: str = "hub",
    text: Iterable[tuple[str, torch.Tensor]] = (),
    text_config: dict | None = None,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """A CLIP folder in one of :data:`CLIP_LAYOUTS` from the vision tower's ``(key, tensor)`` pairs (project
    ``vision_tower.*`` or CLIP names) and, for ``hub``, a whole ``CLIPModel``'s other tensors (``text``: keys as
    ``CLIPModel`` names them, ``text_model.*``, ``text_projection.weight``, ``visual_projection.weight``,
    ``logit_scale``)."""
    if layout not in CLIP_LAYOUTS:
        raise ValueError(f"unknown CLIP layout {layout!r}; known: {CLIP_LAYOUTS}")
    directory = Path(directory)
    writer = ShardWriter(directory, "bin" if layout == "transformers4" else "safetensors", 10 * 10**9)
    prefix = "" if layout == "transformers5" else "vision_model."
    positions = None
    for key, tensor in vision:
        bare = _bare_vision_key(key)
        writer.add(prefix + bare, _cast(tensor, dtype))
        if bare == "embeddings.position_embedding.weight":
            positions = tensor.shape[0]
    if layout != "transformers5" and positions is not None:  # a persistent buffer before transformers 4.31
        writer.add("vision_model.embeddings.position_ids", torch.arange(positions).unsqueeze(0))
    text_positions = None
    for key, tensor in text if layout == "hub" else ():
        writer.add(key, _cast(tensor, dtype))
        if key == "text_model.embeddings.position_embedding.weight":
            text_positions = tensor.shape[0]
    if text_positions is not None:
        writer.add("text_model.embeddings.position_ids", torch.arange(text_positions).unsqueeze(0))
    files = writer.close()
    if layout == "hub":
        config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": vision_config.get(
            "projection_dim", 768), "text_config": dict(text_config or {}), "vision_config": dict(vision_config)}
    else:
        config = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", **vision_config}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return files


def write_sam2_pt(path: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], dtype=None) -> Path:
    """An official-layout SAM-2 checkpoint (``{"model": state_dict}``) from ``sam.*`` or bare SAM-2 keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key.removeprefix("sam."): _cast(tensor, dtype).contiguous() for key, tensor in tensors}
    torch.save({"model": state}, path)
    return path


def clip_text_tensors(text_config: dict, vision_width: int, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random tensors of a whole ``CLIPModel``'s parts other than the vision tower, under its key names."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from .loading import empty_weights

    with empty_weights():
        text_model = CLIPTextModel(CLIPTextConfig(**text_config))
    shapes = {"text_model." + k.removeprefix("text_model."): tuple(p.shape) for k, p in text_model.named_parameters()}
    projection = int(text_config.get("projection_dim", text_config["hidden_size"]))
    shapes["text_projection.weight"] = (projection, int(text_config["hidden_size"]))
    shapes["visual_projection.weight"] = (projection, vision_width)
    shapes["logit_scale"] = ()
    yield from random_tensors(shapes, seed=seed)


def random_tensors(
    shapes: dict[str, tuple[int, ...]],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    std: float = 0.02,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random weights for ``shapes``, made one at a time: normal(0, ``std``), except norm weights (ones),
    biases (zeros) and layer-scales (1e-6). Meaningless, but finite and shaped like the real thing. ``device``
    draws the numbers there (a GPU draws 7 B of them in a moment; the values differ from the CPU's for the same
    seed); every tensor comes back on the CPU."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "bias":
            tensor = torch.zeros(shape, dtype=dtype)
        elif leaf == "gamma":
            tensor = torch.full(shape, 1e-6, dtype=dtype)
        elif leaf == "weight" and len(shape) == 1 and "norm" in key:
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=device)
            if tensor.numel():
                tensor.normal_(0.0, std, generator=generator)
            tensor = tensor.cpu()
        yield key, tensor


def parameter_shapes(module: nn.Module, where: Callable[[str], bool] = lambda key: True) -> dict[str, tuple]:
    """Shapes of ``module``'s persistent tensors (it may be empty, see ``model.loading.empty_weights``)."""
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items() if where(k)}
