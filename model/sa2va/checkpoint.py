"""Loading a released Sa2VA / Sa2VA-i folder as it is, and writing one (test sizes, the real-scale rehearsal).

A released folder (``ByteDance/Sa2VA-1B``, ``kumuji/Sa2VA-i-1B`` as downloaded from the hub) holds:

* ``config.json`` with ``"model_type": "sa2va_chat"`` (:meth:`~.config.Sa2VAConfig.from_released`);
* the weights, ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``,
  under the chat model's own names (``vision_model.*``, ``mlp1.*``, ``language_model.*``,
  ``grounding_encoder.sam2_model.*``, ``text_hidden_fcs.*``); the memory encoder's layer scales are called
  ``g_weight`` (the converter's rename of SAM-2's ``gamma``). A Sa2VA-i folder also has
  ``grounding_encoder.sam2_model.sam_mask_decoder_modified.*``;
* the tokenizer files (Qwen2 BPE with the added ``[SEG]``, ``<IMG_CONTEXT>``, ``<img>``, ``</img>`` tokens) and the
  reference's remote code, which is not used here: no ``trust_remote_code``.

The network is built on the meta device and each stored tensor is read once, straight into the serving dtype
(:mod:`model.loading`); SAM-2 stays in float32 (0.9 GB at Hiera-L) unless asked otherwise.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, PretrainedConfig

from ..loading import CheckpointError, LoadReport, Skip, empty_weights, load_planned, plan_source
from ..released_layout import ShardWriter
from ..weights import WeightSource
from .config import MODEL_TYPE, Sa2VAConfig, UnsupportedSa2VA
from .modeling import Sa2VAModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAM_PREFIX = "grounding_encoder.sam2_model."
SECOND_DECODER = SAM_PREFIX + "sam_mask_decoder_modified."
_LAYER_SCALE = re.compile(r"^(.*memory_encoder\.fuser\.layers\.\d+)\.(g_weight|gamma)$")


def read_json(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def is_sa2va_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_NAME
    try:
        return path.is_file() and json.loads(path.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError):
        return False


def stored_to_model_key(key: str) -> str | Skip:
    """A stored key -> this network's key (``g_weight`` -> ``gamma``; rotary tables dropped)."""
    if key.endswith("rotary_emb.inv_freq"):
        return Skip.DROPPED
    match = _LAYER_SCALE.match(key)
    return f"{match.group(1)}.gamma" if match else key


def model_to_stored_key(key: str) -> str:
    """The released name of a network key (the inverse of :func:`stored_to_model_key`)."""
    match = _LAYER_SCALE.match(key)
    return f"{match.group(1)}.g_weight" if match else key


def read_config(directory: str | Path, source: WeightSource | None = None) -> Sa2VAConfig:
    """The folder's config, ``two_decoders`` set from its weight keys (a Sa2VA-i checkpoint)."""
    directory = Path(directory)
    config = Sa2VAConfig.from_released(read_json(directory), name=directory.name)
    source = source or WeightSource(directory)
    config.two_decoders = any(k.startswith(SECOND_DECODER) for k in source.keys())
    return config


def build_empty(config: Sa2VAConfig) -> Sa2VAModel:
    """The network of ``config`` with no weights (parameters on the meta device)."""
    with empty_weights():
        return Sa2VAModel(config)


def load_sa2va(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sam_dtype: torch.dtype | None = torch.float32,
) -> tuple[Sa2VAModel, object, LoadReport]:
    """``(model, tokenizer, report)`` of a released Sa2VA folder, in ``dtype`` on ``device`` (SAM-2 in
    ``sam_dtype``; None: ``dtype`` too). Strict: a missing or unexpected tensor is an error naming it."""
    directory = Path(directory)
    source = WeightSource(directory)
    config = read_config(directory, source)
    model = build_empty(config)
    plan = plan_source(source, str(directory), stored_to_model_key, model.state_dict(), ("",))

    def dtype_of(key: str) -> torch.dtype:
        return sam_dtype if (sam_dtype is not None and key.startswith(SAM_PREFIX)) else dtype

    report = load_planned(model, [plan], dtype=dtype_of, device=device)[0]
    if config.llm.get("tie_word_embeddings"):
        model.language_model.tie_weights()
    model = model.to(device)  # the buffers built at construction (RoPE tables); parameters are there already
    tokenizer = load_tokenizer(directory)
    return model.eval(), tokenizer, report


def load_tokenizer(directory: str | Path):
    """The folder's tokenizer (transformers' own classes; the reference's remote code is not run)."""
    directory = Path(directory)
    try:  # a generic config: the folder's config.json (model type sa2va_chat) says nothing about the tokenizer
        return AutoTokenizer.from_pretrained(str(directory), config=PretrainedConfig())
    except (OSError, ValueError) as exc:
        raise UnsupportedSa2VA(f"cannot load the tokenizer of {directory}: {exc}") from None


def released_config_dict(config: Sa2VAConfig) -> dict:
    """``config.json`` as the Sa2VA converter writes it (plus ``sam2_overrides`` for test sizes)."""
    data = {
        "architectures": ["Sa2VAChatModel"],
        "model_type": MODEL_TYPE,
        "vision_config": dict(config.vision, architectures=["InternVisionModel"]),
        "llm_config": dict(config.llm),
        "template": config.template,
        "downsample_ratio": config.downsample_ratio,
        "ps_version": config.ps_version,
        "select_layer": config.select_layer,
        "force_image_size": 448,
        "hidden_size": config.llm_hidden,
        "tie_word_embeddings": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
    }
    if config.sam2_overrides:
        data["sam2_overrides"] = list(config.sam2_overrides)
    return data


def save_released_sa2va(
    model: Sa2VAModel,
    tokenizer,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 10**9,
) -> list[Path]:
    """Write ``model`` as a released folder (config, shards + index, tokenizer); returns the weight files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(released_config_dict(model.config), indent=2) + "\n")
    writer = ShardWriter(directory, max_bytes=max_shard_bytes)
    for key, tensor in model.state_dict().items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        writer.add(model_to_stored_key(key), tensor)
    files = writer.close()
    tokenizer.save_pretrained(str(directory))
    return files
