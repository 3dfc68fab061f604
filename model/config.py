"""Configuration of a GLUS network: one explicit object, saved as JSON next to the weights.

Two named configurations exist:

* ``glus-7b``: the released GLUS layout (LLaMA-7B, CLIP ViT-L/14-224, SAM-2 Hiera-L v1). Weights come from
  a local checkpoint directory (see :mod:`model.checkpoint`); nothing is ever downloaded.
* ``glus-tiny``: the same code path at a size that runs a 32-frame video in seconds on two CPU cores. It is
  the size of the demo model the project trains itself, and of the test models.

Switches that depart from the reference (fixes of reference bugs, aids for training from scratch) are fields
here with documented defaults, so that every departure is visible in ``config.json``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MOTION_CHANNELS = {None: 0, "frame_difference": 6}
"""Extra CLIP input channels of each ``vision_motion_channels`` setting."""


@dataclass
class GlusConfig:
    """Everything needed to build a GLUS network and run it on a video."""

    name: str = "glus-tiny"
    # --- language model (a LLaMA decoder, built with transformers' LlamaConfig) ---
    llm: dict[str, Any] = field(default_factory=dict)
    # --- vision tower (CLIP vision transformer, transformers' CLIPVisionConfig) ---
    vision: dict[str, Any] = field(default_factory=dict)
    vision_feature_layer: int = -2  # hidden state of the penultimate layer, CLS token dropped
    vision_token_pool: int = 4  # average every 4 consecutive patch tokens (raster order): 256 -> 64
    projector_type: str = "linear"  # "linear" (GLUS) or "mlp2x_gelu" (tiny-model aid)
    # tiny-model aids for the visual tokens (see VisionProjector), off for glus-7b: square pooling cells instead
    # of GLUS's 1x4 strips, unit-scale tokens, and a fixed 2-D position embedding
    vision_token_pool_layout: str = "raster"  # "raster" (GLUS) or "grid"
    projector_output_norm: str | None = None  # None (GLUS) or "layernorm"
    vision_position_embedding: str | None = None  # None (GLUS) or "sincos2d"
    # None (GLUS) or "frame_difference" (tiny-model aid, see preprocessing.clip_video_pixel_values): CLIP also sees
    # each frame's differences to its neighbours (6 more input channels, vision["num_channels"] = 9)
    vision_motion_channels: str | None = None
    clip_image_size: int = 224
    clip_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    clip_std: tuple[float, float, float] = OPENAI_CLIP_STD
    # --- [SEG] projection ---
    seg_hidden_norm: str | None = None  # None (GLUS) or "batchnorm" (tiny-model aid against collapse)
    # None (GLUS) or "layernorm": scale the prompt token to the size of SAM-2's own output tokens (tiny-model aid:
    # a from-scratch mask decoder otherwise learns to ignore a prompt token much smaller than its other tokens)
    seg_output_norm: str | None = None
    # None (GLUS) or "pointer" (tiny-model aid, see modeling/point_prompt.py): the [SEG] state also points at one
    # of its query frame's visual tokens, and that cell's position prompts SAM-2 as a soft point; or "pointer_map":
    # the same, and the pointer's cell probabilities also enter SAM-2 as a dense prompt (modeling/point_prompt.py)
    seg_point_prompt: str | None = None
    # --- SAM-2 (the `sam2` package's SAM2Base, built from one of its yaml files plus overrides) ---
    sam2_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam2_overrides: list[str] = field(default_factory=list)
    sam_mean: tuple[float, float, float] = IMAGENET_MEAN
    sam_std: tuple[float, float, float] = IMAGENET_STD
    mask_threshold: float = 0.0
    # In eval mode SAM-2 replaces an unstable single-mask output by the best of its 3 multimask outputs. GLUS
    # never trains those 3 tokens (released checkpoints keep the original SAM-2 ones), so a model trained from
    # scratch must turn this off: its multimask tokens are random.
    sam_multimask_fallback: bool = True
    # --- special tokens (ids in the tokenizer's vocabulary) ---
    seg_token: str = "[SEG]"
    im_start_token: str = "<im_start>"
    im_end_token: str = "<im_end>"
    # --- video prompt layout and memory ---
    context_frames: int = 4
    query_window: int = 4
    # The reference's open inference prompt ends "... result is " with a trailing-space token that never precedes
    # [SEG] in training; kept for released checkpoints (parity), off for models trained from scratch here.
    open_prompt_trailing_space: bool = True
    num_maskmem: int = 7  # past frames read by memory attention: previous + 6 at stride `mem_stride`
    mem_stride: int = 3  # 3 at inference in the reference, 1 in training
    use_memory_bank: bool = True

    def __post_init__(self) -> None:
        self.clip_mean = tuple(self.clip_mean)
        self.clip_std = tuple(self.clip_std)
        self.sam_mean = tuple(self.sam_mean)
        self.sam_std = tuple(self.sam_std)
        if self.projector_type not in ("linear", "mlp2x_gelu"):
            raise ValueError(f"unknown projector_type {self.projector_type!r}")
        if self.vision_token_pool_layout not in ("raster", "grid"):
            raise ValueError(f"unknown vision_token_pool_layout {self.vision_token_pool_layout!r}")
        square = math.isqrt(self.vision_token_pool) ** 2 == self.vision_token_pool
        if self.vision_token_pool_layout == "grid" and not square:
            raise ValueError("vision_token_pool_layout 'grid' needs a square vision_token_pool (1, 4, 9, ...)")
        if self.projector_output_norm not in (None, "layernorm"):
            raise ValueError(f"unknown projector_output_norm {self.projector_output_norm!r}")
        if self.vision_position_embedding not in (None, "sincos2d"):
            raise ValueError(f"unknown vision_position_embedding {self.vision_position_embedding!r}")
        if self.vision_motion_channels not in MOTION_CHANNELS:
            raise ValueError(f"unknown vision_motion_channels {self.vision_motion_channels!r}")
        channels = 3 + MOTION_CHANNELS[self.vision_motion_channels]
        if int(self.vision.get("num_channels", 3)) != channels:
            raise ValueError(
                f"vision_motion_channels {self.vision_motion_channels!r} needs vision num_channels {channels}, "
                f"got {self.vision.get('num_channels', 3)}"
            )
        if self.seg_hidden_norm not in (None, "batchnorm"):
            raise ValueError(f"unknown seg_hidden_norm {self.seg_hidden_norm!r}")
        if self.seg_output_norm not in (None, "layernorm"):
            raise ValueError(f"unknown seg_output_norm {self.seg_output_norm!r}")
        if self.seg_point_prompt not in (None, "pointer", "pointer_map"):
            raise ValueError(f"unknown seg_point_prompt {self.seg_point_prompt!r}")
        if self.seg_point_prompt and self.vision_token_pool_layout != "grid" and self.vision_token_pool != 1:
            raise ValueError(
                f"seg_point_prompt {self.seg_point_prompt!r} needs visual tokens on a square grid (pool layout 'grid')"
            )
        if self.num_maskmem < 1 or self.mem_stride < 1:
            raise ValueError("num_maskmem and mem_stride must be >= 1")

    # --- derived sizes ---
    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision["hidden_size"])

    @property
    def patch_grid(self) -> int:
        """CLIP patches per image side."""
        return int(self.vision["image_size"]) // int(self.vision["patch_size"])

    @property
    def visual_tokens_per_image(self) -> int:
        patches = self.patch_grid**2
        if patches % self.vision_token_pool:
            raise ValueError("patch count must be divisible by vision_token_pool")
        return patches // self.vision_token_pool

    # --- serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlusConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GLUS config fields: {unknown}")
        return cls(**copy.deepcopy(data))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> GlusConfig:
        return cls.from_dict(json.loads((Path(directory) / CONFIG_NAME).read_text()))


def glus_7b_config() -> GlusConfig:
    """The released GLUS layout: LISA-7B (LLaMA-7B, vocab 32004) + CLIP ViT-L/14-224 + SAM-2 Hiera-L v1."""
    return GlusConfig(
        name="glus-7b",
        llm=dict(
            vocab_size=32004,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=768,
        ),
        clip_image_size=224,
        sam2_config="configs/sam2/sam2_hiera_l.yaml",
        sam2_overrides=[],
    )


# SAM-2 Hiera-T yaml shrunk to a CPU size: 128 px input, 64-d decoder and memory attention, 32-d memories.
_TINY_SAM2_OVERRIDES = [
    "model.image_size=128",
    "model.image_encoder.trunk.embed_dim=24",
    "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.trunk.window_spec=[8,4,4,2]",
    "model.image_encoder.neck.backbone_channel_list=[192,96,48,24]",
    "model.image_encoder.neck.d_model=64",
    "model.image_encoder.neck.position_encoding.num_pos_feats=64",
    "model.memory_attention.d_model=64",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.d_model=64",
    "model.memory_attention.layer.dim_feedforward=256",
    "model.memory_attention.layer.self_attention.embedding_dim=64",
    "model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    "model.memory_attention.layer.cross_attention.embedding_dim=64",
    "model.memory_attention.layer.cross_attention.kv_in_dim=32",
    "model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "model.memory_encoder.out_dim=32",
    "model.memory_encoder.in_dim=64",
    "model.memory_encoder.position_encoding.num_pos_feats=32",
    "model.memory_encoder.mask_downsampler.embed_dim=64",
    "model.memory_encoder.fuser.layer.dim=64",
]


def glus_tiny_config(vocab_size: int = 320) -> GlusConfig:
    """Same code path as glus-7b at CPU size (about 3 M parameters)."""
    return GlusConfig(
        name="glus-tiny",
        llm=dict(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=128,
        ),
        clip_image_size=64,
        projector_type="linear",
        seg_hidden_norm=None,
        sam2_config="configs/sam2/sam2_hiera_t.yaml",
        sam2_overrides=list(_TINY_SAM2_OVERRIDES),
    )


def with_sam_image_size(config: GlusConfig, size: int) -> GlusConfig:
    """The same config with SAM-2's input resized to ``size`` px (a multiple of 16), feature sizes to match."""
    if size % 16:
        raise ValueError("the SAM-2 image size must be a multiple of 16")
    side = size // 16
    kept = [
        o
        for o in config.sam2_overrides
        if not o.startswith(
            (
                "model.image_size=",
                "model.memory_attention.layer.self_attention.feat_sizes=",
                "model.memory_attention.layer.cross_attention.feat_sizes=",
            )
        )
    ]
    config.sam2_overrides = [
        f"model.image_size={size}",
        *kept,
        f"model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
        f"model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
    ]
    return config


NAMED_CONFIGS = {"glus-7b": glus_7b_config, "glus-tiny": glus_tiny_config}

SAM2_CONFIGS = {
    "sam2-hiera-l": "configs/sam2/sam2_hiera_l.yaml",
    "sam2-hiera-b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2-hiera-s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2-hiera-t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2.1-hiera-l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2.1-hiera-b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1-hiera-s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1-hiera-t": "configs/sam2.1/sam2.1_hiera_t.yaml",
}
"""SAM-2 architectures a released GLUS folder may have been trained with, by name -> the ``sam2`` package's yaml."""
DEFAULT_SAM2 = "sam2-hiera-l"  # GLUS was trained with SAM-2 Hiera-L v1


def sam2_config_path(name: str) -> str:
    """The ``sam2`` package yaml of a SAM-2 architecture: a name of :data:`SAM2_CONFIGS` or a yaml path inside
    the package (``configs/sam2.1/sam2.1_hiera_s.yaml``)."""
    if name in SAM2_CONFIGS:
        return SAM2_CONFIGS[name]
    if name in SAM2_CONFIGS.values():
        return name
    raise ValueError(f"unknown SAM-2 architecture {name!r}; known: {', '.join(SAM2_CONFIGS)}")


def get_config(name: str) -> GlusConfig:
    """A fresh copy of a named configuration (``glus-7b`` or ``glus-tiny``)."""
    try:
        return NAMED_CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; known: {sorted(NAMED_CONFIGS)}") from None
