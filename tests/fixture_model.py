"""Build the GLUS network matching ../shared/fixtures/glus-reference-tiny (shared by tests and bench)."""

from __future__ import annotations

import json
from pathlib import Path

from model.config import GlusConfig

FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "glus-reference-tiny"
LLM_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
CLIP_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "projection_dim",
)


def fixture_config(fixture_dir: Path = FIXTURE_DIR) -> GlusConfig:
    meta = json.loads((fixture_dir / "meta.json").read_text())
    llm = {k: meta["llm_config"][k] for k in LLM_KEYS}
    llm["rope_theta"] = 10000.0
    settings = meta["settings"]
    return GlusConfig(
        name="glus-reference-tiny",
        llm=llm,
        vision={k: meta["clip_config"][k] for k in CLIP_KEYS},
        vision_feature_layer=meta["llm_config"]["mm_vision_select_layer"],
        clip_image_size=meta["clip_config"]["image_size"],
        sam2_config="configs/sam2/sam2_hiera_t.yaml",
        sam2_overrides=list(meta["sam2_hydra_overrides_on_vendored_sam2_hiera_t_yaml"]),
        mem_stride=settings["mem_stride"],
        num_maskmem=settings["num_maskmem"],
        context_frames=settings["context_frame_num"],
        query_window=settings["question_frame_num"],
    )
