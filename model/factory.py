"""Building models that do not come from a checkpoint: seeded random initialisation at a named size.

Used by tests, benchmarks and ``glus init`` (a random-weight checkpoint to exercise the whole path).
Random weights give meaningless masks; the trained demo model is shipped separately.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .config import GlusConfig, get_config
from .modeling.glus import GlusModel
from .tokenizer import GlusTokenizer, train_tokenizer

TINY_TOKENIZER_DIR = Path(str(resources.files("model").joinpath("assets/glus-tiny-tokenizer")))

# Words the tiny tokenizer should keep whole-ish: the prompt templates and the synthetic world's vocabulary.
_TINY_WORDS = (
    "the a an object objects square squares circle circles triangle triangles ring rings blob shape "
    "red green blue yellow white black orange purple pink cyan gray brown dark light bright small big large tiny "
    "left right top bottom middle center upper lower first second third last other two both all "
    "moving moves moved move stops stop stopped still static standing turns turning then and or that which who "
    "up down towards away faster slower fast slow quickly slowly leaves leaving enters entering appears disappears "
    "hidden behind occluded visible frame video in on of to from with at by is it this what can you "
    "dog cat car person man woman cup bird horse jumps runs walks"
)


def tiny_tokenizer_corpus() -> list[str]:
    from .prompting import ANSWER_TEMPLATES, CONTEXT_INSTRUCTION, QUESTION_TEMPLATES, SYSTEM_PROMPT

    # the fixed prompt text is repeated so that BPE merges its words (short prompts train faster and dilute less)
    lines = [SYSTEM_PROMPT, CONTEXT_INSTRUCTION, "USER: ASSISTANT:"] * 100
    lines += [q.format(expression="the red square moving left") for q in QUESTION_TEMPLATES]
    lines += [a.replace("[SEG]", "") for a in ANSWER_TEMPLATES]
    words = _TINY_WORDS.split()
    lines += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    from .synthetic.world import VOCABULARY, generate_video

    lines += [" ".join(VOCABULARY)]
    lines += [e.text for seed in range(300) for e in generate_video(900_000 + seed).expressions]
    return lines * 4


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 640) -> GlusTokenizer:
    """(Re)train the small SentencePiece tokenizer shipped in ``model/assets/glus-tiny-tokenizer``."""
    return train_tokenizer(tiny_tokenizer_corpus(), directory, vocab_size=vocab_size)


def tiny_tokenizer() -> GlusTokenizer:
    return GlusTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def random_model(
    config: GlusConfig | str = "glus-tiny",
    tokenizer: GlusTokenizer | None = None,
    seed: int = 0,
    seg_logit_bias: float | None = None,
) -> tuple[GlusModel, GlusTokenizer]:
    """A seeded random-init model and its tokenizer.

    ``seg_logit_bias`` raises the ``[SEG]`` row of ``lm_head`` so that greedy decoding predicts ``[SEG]``
    (as the parity fixture was made); without it a random LLM almost never does and every frame is
    'target absent'.
    """
    if isinstance(config, str):
        config = get_config(config)
    tokenizer = tokenizer or tiny_tokenizer()
    config.llm["vocab_size"] = (
        max(int(config.llm["vocab_size"]), len(tokenizer)) if config.name != "glus-tiny" else len(tokenizer)
    )
    torch.manual_seed(seed)
    model = GlusModel(config).eval()
    if seg_logit_bias is not None:
        _point_lm_head_at_seg(model, tokenizer, seg_logit_bias)
    return model, tokenizer


def _point_lm_head_at_seg(model: GlusModel, tokenizer: GlusTokenizer, bias: float) -> None:
    """Set the ``[SEG]`` row of ``lm_head`` along the hidden state of a typical open prompt's last position."""
    from .prompting import inference_prompt

    config = model.config
    ids = torch.tensor(tokenizer.encode_prompt(inference_prompt("the object", config.context_frames, 1)))
    channels = model.vision_tower.config.num_channels
    pixels = torch.zeros(config.context_frames + 1, channels, config.clip_image_size, config.clip_image_size)
    with torch.no_grad():
        hidden = model.language_hidden_states(model.embed_prompt(ids, model.encode_images(pixels)).unsqueeze(0))[0, -1]
        seg_id = tokenizer.token_to_id(config.seg_token)
        model.language_model.lm_head.weight[seg_id] = hidden / hidden.norm() * bias
