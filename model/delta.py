"""A fine-tuned version stored as what training changed, against the model it was trained from.

GLUS fine-tunes with LoRA on the LLM's attention projections and trains a few parts in full (token embeddings,
LM head, projectors, ``[SEG]`` projector, SAM-2's mask decoder). A delta folder holds exactly that:

* ``delta.safetensors`` - the LoRA factors (``...q_proj.lora_A.weight`` / ``lora_B.weight``, peft's names without
  the adapter name) and the parts trained in full, with the persistent buffers of their modules (batch-norm
  statistics), under this project's parameter names;
* ``delta.json`` - the parent's version name, the LoRA settings and the keys trained in full;
* ``config.json`` and the tokenizer files - unchanged from the parent, so that the folder describes itself.

At glus-7b shapes that is about 0.3 B parameters (4 % of the base in bf16) instead of a 14.6 GB merged copy.
Loading applies a chain of deltas, oldest first, to the base (:func:`model.checkpoint.load_checkpoint`): the
parts trained in full replace the parent's, and each LoRA pair is merged into its weight in float32
(``W += alpha / rank * B @ A``), which is what the trainer's forward pass computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .loading import CheckpointError
from .weights import WeightSource, release_pages

DELTA_WEIGHTS = "delta.safetensors"
DELTA_CONFIG = "delta.json"
DELTA_FORMAT = "glus-delta/1"


def is_delta(directory: str | Path) -> bool:
    return (Path(directory) / DELTA_CONFIG).is_file()


def read_delta_spec(directory: str | Path) -> dict:
    """``{"format", "parent", "lora": {...} | None, "full": [keys]}`` of a delta folder."""
    path = Path(directory) / DELTA_CONFIG
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if spec.get("format") != DELTA_FORMAT:
        raise CheckpointError(f"{path}: unknown delta format {spec.get('format')!r} (expected {DELTA_FORMAT})")
    return spec


def _adapter_key(name: str) -> str:
    """peft's ``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in ("lora_A", "lora_B") and i + 2 < len(parts):
            return ".".join(parts[: i + 1] + parts[i + 2 :])
    return name


def fully_trained_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the parameters that trained in full (``requires_grad``, not LoRA) and of the persistent
    buffers of the modules that own them (a trained batch norm's running statistics)."""
    keys: list[str] = []
    for module_name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own or ".lora_" in f".{module_name}":  # the adapters themselves are stored as LoRA factors
            continue
        persistent = [n for n in module._buffers if n not in module._non_persistent_buffers_set]
        prefix = f"{module_name}." if module_name else ""
        keys += [prefix + n for n in own + persistent if getattr(module, n) is not None]
    return keys


def save_delta(model: nn.Module, tokenizer, directory: str | Path, parent: str, lora_settings: dict | None,
               dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """Write what training changed in ``model`` (LoRA still injected, not merged) as a delta of ``parent``.

    ``dtype`` stores the floating-point tensors smaller (the served dtype, e.g. bf16); LoRA factors stay float32.
    """
    from .lora import lora_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    full = fully_trained_keys(model)
    tensors: dict[str, torch.Tensor] = {}
    for key in full:
        tensor = state[key].detach().cpu()
        tensors[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    adapters = {_adapter_key(k): v.float().contiguous() for k, v in lora_state_dict(model).items()}
    if adapters and lora_settings is None:
        raise ValueError("the model has LoRA adapters: give their settings (rank, alpha)")
    tensors.update(adapters)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / DELTA_WEIGHTS),
              metadata={"format": DELTA_FORMAT, "parent": parent})  # fmt: skip
    spec = {"format": DELTA_FORMAT, "parent": parent, "lora": lora_settings if adapters else None, "full": full}
    (directory / DELTA_CONFIG).write_text(json.dumps(spec, indent=2) + "\n")
    model.config.save(directory)
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def apply_delta(model: nn.Module, directory: str | Path) -> dict:
    """Apply one delta folder to ``model`` in place (tensors keep the model's dtype and device); returns its spec.

    Every key must fit: a delta made for another network is refused with the keys named.
    """
    spec = read_delta_spec(directory)
    source = WeightSource(Path(directory) / DELTA_WEIGHTS)
    own = model.state_dict()
    lora = spec.get("lora") or {}
    factors = {k for k in source.keys() if ".lora_A." in k or ".lora_B." in k}
    full = [k for k in source.keys() if k not in factors]
    unknown = [k for k in full if k not in own]
    targets = {k.split(".lora_")[0] + ".weight" for k in factors}
    unknown += sorted(t for t in targets if t not in own)
    if unknown:
        raise CheckpointError(f"{directory}: {len(unknown)} delta keys fit nowhere in this model: {unknown[:8]}")
    for key in full:
        if tuple(own[key].shape) != source.info(key).shape:
            raise CheckpointError(f"{directory}: shape mismatch for {key}: delta {source.info(key).shape}, "
                                  f"model {tuple(own[key].shape)}")  # fmt: skip
    for key, tensor, mapped in source.read(full):
        own[key].copy_(tensor)
        if mapped:
            release_pages(tensor)
    if targets:
        scale = float(lora["alpha"]) / float(lora["rank"])
        pairs = {}
        for key, tensor, _ in source.read(sorted(factors)):
            pairs.setdefault(key.split(".lora_")[0], {})[key.split(".lora_")[1][0]] = tensor.float().clone()
        for layer, pair in pairs.items():
            weight = own[layer + ".weight"]
            merged = weight.float() + scale * (pair["B"].to(weight.device) @ pair["A"].to(weight.device))
            weight.copy_(merged.to(weight.dtype))
    return spec
