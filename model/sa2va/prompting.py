"""The Sa2VA video prompt, as the reference builds it for referring segmentation.

The user turn is the frames' image tokens (``<img>`` + 256 ``<IMG_CONTEXT>`` + ``</img>`` per frame, joined by
newlines), then a newline and the request: ``Please segment {expression}.``, or, for an expression that is a
question, `` {expression} Please respond with a segmentation mask.`` (the reference's evaluation prompts). It is
wrapped in the checkpoint's chat template, with no system prompt.
"""

from __future__ import annotations

from .config import TEMPLATES, Sa2VAConfig


def request_text(expression: str) -> str:
    """The request after the image tokens."""
    expression = expression.strip()
    if not expression:
        raise ValueError("the expression is empty")
    if "?" in expression:
        return f" {expression} Please respond with a segmentation mask."
    return f"Please segment {expression}."


def video_prompt(config: Sa2VAConfig, expression: str, num_frames: int) -> str:
    """The whole prompt text for ``num_frames`` MLLM frames."""
    if num_frames < 1:
        raise ValueError("at least one frame goes to the MLLM")
    frame = config.image_start_token + config.image_context_token * config.tokens_per_frame + config.image_end_token
    user = "\n".join([frame] * num_frames) + "\n" + request_text(expression)
    return TEMPLATES[config.template].format(input=user)
