"""Configuration of a Sa2VA network, read from a released checkpoint's ``config.json``.

A released Sa2VA folder (``ByteDance/Sa2VA-1B`` and the like, written by the Sa2VA converter) has a
``config.json`` with ``"model_type": "sa2va_chat"``, a ``vision_config`` (InternViT), an ``llm_config`` (the LLM's
own transformers config, with ``architectures``), the chat ``template`` name and the projector settings. Nothing
about SAM-2 is stored there: the reference hard-codes SAM-2.0 Hiera-L, and so does :data:`SAM2_CONFIG` here;
``sam2_overrides`` (this project's own key, absent from released folders) lets test checkpoints shrink it.

What this backend can serve is checked here, before any weight is read: InternVL-family checkpoints whose LLM is
Qwen2 (Sa2VA-1B, -4B, the InternVL3 variants). InternLM2 LLMs (Sa2VA-8B, -26B), the Qwen-VL variants and
anything else are refused with :class:`UnsupportedSa2VA`, naming what is missing.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

MODEL_TYPE = "sa2va_chat"
SAM2_CONFIG = "configs/sam2/sam2_hiera_l.yaml"  # SAM 2.0 Hiera-L, the reference's hard-coded grounding encoder
MLLM_IMAGE_SIZE = 448  # hard-coded in the reference (``preparing_for_generation``), not read from the config
SAM_IMAGE_SIZE = 1024
TEMPLATES = {
    # the reference's chat templates (``templates.py``): no system prompt; ``{input}`` is the user turn
    "qwen_chat": "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
    "phi3_chat": "<|user|>\n{input}<|end|>\n<|assistant|>\n",
}
SUPPORTED_LLMS = ("Qwen2ForCausalLM",)
INFERENCE_MODES = ("sa2va", "sa2va-i")


class UnsupportedSa2VA(ValueError):
    """A Sa2VA checkpoint or request this backend cannot serve; the message says what is missing."""


@dataclass
class Sa2VAConfig:
    """Everything needed to build a Sa2VA network and run it on a video."""

    name: str = "sa2va"
    vision: dict[str, Any] = field(default_factory=dict)  # InternViT: hidden_size, num_hidden_layers, ...
    llm: dict[str, Any] = field(default_factory=dict)  # transformers' Qwen2Config fields
    template: str = "qwen_chat"
    downsample_ratio: float = 0.5  # pixel shuffle: 32x32 patches -> 16x16 tokens of 4x the width
    ps_version: str = "v2"
    select_layer: int = -1  # the ViT layer whose output the projector reads (-1: the last)
    sam2_config: str = SAM2_CONFIG
    sam2_overrides: list[str] = field(default_factory=list)  # dotlist on the yaml (test sizes only)
    seg_token: str = "[SEG]"
    image_context_token: str = "<IMG_CONTEXT>"
    image_start_token: str = "<img>"
    image_end_token: str = "</img>"
    # Sa2VA-i checkpoints hold a second mask decoder: the fine-tuned one as ``sam_mask_decoder_modified`` and
    # SAM-2.0's original one as ``sam_mask_decoder``; set by the loader from the checkpoint's keys
    two_decoders: bool = False

    @property
    def vision_hidden(self) -> int:
        return int(self.vision["hidden_size"])

    @property
    def llm_hidden(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per 448-px frame: (448 / patch)^2 * ratio^2 (256 for every released size)."""
        side = MLLM_IMAGE_SIZE // int(self.vision.get("patch_size", 14))
        return int(side * side * self.downsample_ratio**2)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_released(cls, data: dict[str, Any], name: str = "sa2va") -> Sa2VAConfig:
        """The config of a released Sa2VA folder's ``config.json`` (``model_type`` ``sa2va_chat``); refuses what
        this backend cannot serve."""
        if data.get("model_type") != MODEL_TYPE:
            raise UnsupportedSa2VA(f"not a Sa2VA config: model_type is {data.get('model_type')!r}, not {MODEL_TYPE!r}")
        if "vision_config" not in data or "llm_config" not in data:
            qwen_vl = "text_config" in data or "Qwen" in str(data.get("architectures"))
            raise UnsupportedSa2VA(
                "this Sa2VA checkpoint has no vision_config/llm_config"
                + (" (a Qwen2.5-VL / Qwen3-VL variant): only the InternVL-family checkpoints (Sa2VA-1B, -4B, "
                   "InternVL3-*) are supported" if qwen_vl else "")  # fmt: skip
            )
        llm = dict(data["llm_config"])
        architecture = (llm.get("architectures") or ["?"])[0]
        if architecture not in SUPPORTED_LLMS:
            raise UnsupportedSa2VA(
                f"the LLM of this Sa2VA checkpoint is {architecture}; supported: {', '.join(SUPPORTED_LLMS)} "
                "(Sa2VA-1B, -4B and the InternVL3 variants). InternLM2 (Sa2VA-8B, -26B) is not implemented"
            )
        template = data.get("template", "qwen_chat")
        if template not in TEMPLATES:
            raise UnsupportedSa2VA(f"unknown chat template {template!r}; supported: {', '.join(TEMPLATES)}")
        vision = dict(data["vision_config"])
        if int(vision.get("image_size", MLLM_IMAGE_SIZE)) != MLLM_IMAGE_SIZE:
            raise UnsupportedSa2VA(f"vision_config.image_size must be {MLLM_IMAGE_SIZE} (the reference's)")
        if data.get("ps_version", "v2") != "v2":
            raise UnsupportedSa2VA(f"pixel shuffle version {data.get('ps_version')!r}; only 'v2' is supported")
        return cls(
            name=name,
            vision=vision,
            llm=llm,
            template=template,
            downsample_ratio=float(data.get("downsample_ratio", 0.5)),
            ps_version="v2",
            select_layer=int(data.get("select_layer", -1)),
            sam2_overrides=list(data.get("sam2_overrides") or []),
        )


# SAM-2 at the parity fixtures' size (shared/fixtures/sa2va*-reference-tiny-a, "tiny_config.sam2"): Hiera embed 8,
# stages [1, 1, 2, 1], FPN 32, memory attention 32 / 1 layer, memory dim 16; image size 1024 as released
TINY_SAM2_OVERRIDES = [
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.d_model=32",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.d_model=32",
    "model.memory_attention.layer.dim_feedforward=64",
    "model.memory_attention.layer.self_attention.embedding_dim=32",
    "model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "model.memory_attention.layer.cross_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
    "model.memory_encoder.out_dim=16",
    "model.memory_encoder.in_dim=32",
    "model.memory_encoder.position_encoding.num_pos_feats=16",
    "model.memory_encoder.mask_downsampler.embed_dim=32",
    "model.memory_encoder.fuser.layer.dim=32",
]


def sa2va_tiny_config(vocab_size: int = 401, two_decoders: bool = False) -> Sa2VAConfig:
    """The parity fixtures' sizes (InternViT 32 x 2 layers, Qwen2 64 x 2 layers, SAM-2 at 32 channels): the
    same code path as the released sizes, for tests."""
    return Sa2VAConfig(
        name="sa2va-i-tiny" if two_decoders else "sa2va-tiny",
        vision=dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2, qkv_bias=True,
                    qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6, image_size=448,
                    patch_size=14, hidden_act="gelu", initializer_factor=1.0),  # fmt: skip
        llm=dict(architectures=["Qwen2ForCausalLM"], vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                 max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 use_sliding_window=False, attention_dropout=0.0),  # fmt: skip
        sam2_overrides=list(TINY_SAM2_OVERRIDES),
        two_decoders=two_decoders,
    )


def sa2va_1b_config(two_decoders: bool = False) -> Sa2VAConfig:
    """Sa2VA-1B's shapes (InternVL2.5-1B: InternViT-300M-448px-V2_5 + Qwen2.5-0.5B-Instruct; SAM-2.0 Hiera-L),
    from the public InternVL2.5 / Qwen2.5 configs (sa2va-reference.md 1.1; to be checked against the hub's
    config.json on first download). The vocabulary is Qwen2.5's 151,643 tokens + its 22 special ones + Sa2VA's
    added ones."""
    return Sa2VAConfig(
        name="sa2va-i-1b" if two_decoders else "sa2va-1b",
        vision=dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=24,
                    qkv_bias=True, qk_normalization=False, norm_type="layer_norm", layer_norm_eps=1e-6,
                    image_size=448, patch_size=14, hidden_act="gelu", initializer_factor=1.0),  # fmt: skip
        llm=dict(architectures=["Qwen2ForCausalLM"], vocab_size=151677, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
                 max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 use_sliding_window=False, attention_dropout=0.0),  # fmt: skip
        two_decoders=two_decoders,
    )
