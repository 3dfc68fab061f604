"""LoRA on the language model, as GLUS fine-tunes it (glus-reference.md section 1.6), through ``peft``.

GLUS puts rank-8 adapters (alpha 16, dropout 0.05, no bias) on the LLaMA ``q_proj`` and ``v_proj`` only (the
name filter excludes CLIP and SAM-2, which have layers of the same names) and trains in full the token
embeddings, the LM head, the projector, the ``[SEG]`` projector and SAM-2's mask decoder.

The adapters are injected into ``model.language_model`` in place (``peft.inject_adapter_in_model``), so the
network keeps its own forward pass; :func:`merge_lora` folds them into the base weights and removes them, which
gives a plain checkpoint that :func:`model.checkpoint.from_pretrained` loads (the released GLUS checkpoints are
merged the same way). :func:`lora_state_dict` is the adapter alone, for the record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .modeling.glus import GlusModel


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}


def _lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def add_lora(model: GlusModel, settings: LoraSettings | None = None) -> list[nn.Parameter]:
    """Inject LoRA adapters into the LLM's attention projections; returns the adapter parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    settings = settings or LoraSettings()
    if _lora_layers(model.language_model):
        raise ValueError("the language model already has LoRA adapters")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        bias="none",
        target_modules=list(settings.target_modules),
    )
    inject_adapter_in_model(config, model.language_model)
    return lora_parameters(model)


def lora_parameters(model: GlusModel) -> list[nn.Parameter]:
    """The adapter parameters (``lora_A`` / ``lora_B``) of the language model; empty without adapters."""
    return [p for n, p in model.language_model.named_parameters() if "lora_" in n]


def lora_settings_of(model: GlusModel) -> dict | None:
    """The settings of the adapters injected in ``model`` (read from the layers), or None without adapters."""
    layers = _lora_layers(model.language_model)
    if not layers:
        return None
    first = layers[0][1]
    adapter = first.active_adapters[0]
    targets = sorted({name.rsplit(".", 1)[-1] for name, _ in layers})
    return {"rank": int(first.r[adapter]), "alpha": float(first.lora_alpha[adapter]), "target_modules": targets}


def has_lora(model: GlusModel) -> bool:
    return bool(_lora_layers(model.language_model))


def lora_state_dict(model: GlusModel) -> dict[str, torch.Tensor]:
    """The adapter weights only (``lora_A`` / ``lora_B`` of every adapted layer)."""
    return {
        f"language_model.{k}": v.detach().cpu()
        for k, v in model.language_model.state_dict().items()
        if "lora_" in k
    }


@torch.no_grad()
def merge_lora(model: GlusModel) -> GlusModel:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back (in place)."""
    for name, layer in _lora_layers(model.language_model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.language_model.get_submodule(parent_name) if parent_name else model.language_model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model.language_model, "peft_config"):  # so that a later add_lora starts clean
        del model.language_model.peft_config
    return model
