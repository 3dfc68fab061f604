"""GLUS prompts: the llava_v1 conversation with 4 context frames and up to 4 query frames.

The text below is the trained prompt, typos included ("Please finished ..."); changing it changes what a
released checkpoint sees. One user turn per query frame, each starting with that frame's image; the first
user turn starts with the context block. Past assistant turns read "Sure, the segmentation result is [SEG].";
the current one is left open ("... result is ") for the model to predict ``[SEG]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .tokenizer import IMAGE_TOKEN

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
ROLES = ("USER", "ASSISTANT")
SEPARATORS = (" ", "</s>")
CONTEXT_INSTRUCTION = "Please finished the following tasks on the context frames above."
QUESTION_TEMPLATES = (
    "Can you segment the {expression} in this frame?",
    "Please segment the {expression} in this frame.",
    "What is {expression} in this frame? Please respond with segmentation mask.",
    "What is {expression} in this frame? Please output segmentation mask.",
)
ANSWER_TEMPLATES = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)
INFERENCE_QUESTION = QUESTION_TEMPLATES[0]
INFERENCE_ANSWER = "Sure, the segmentation result is [SEG]."
INFERENCE_ANSWER_PREFIX = "Sure, the segmentation result is "


class EmptyExpressionError(ValueError):
    """A referring expression that is empty once cleaned."""


def clean_expression(expression: str) -> str:
    """The expression as the reference puts it into the prompt: stripped, trailing '.' removed, lower-cased."""
    if not isinstance(expression, str):
        raise EmptyExpressionError(f"expression must be a string, got {type(expression).__name__}")
    text = expression.strip()
    if text.endswith("."):
        text = text[:-1]
    text = text.strip()
    if not text:
        raise EmptyExpressionError("the referring expression is empty")
    return text.lower()


def image_slot(use_im_start_end: bool = True) -> str:
    return f"<im_start>{IMAGE_TOKEN}<im_end>" if use_im_start_end else IMAGE_TOKEN


def render_llava_v1(messages: list[tuple[str, str | None]]) -> str:
    """Render a conversation in the llava_v1 layout (separator " " after USER, "</s>" after ASSISTANT)."""
    text = SYSTEM_PROMPT + SEPARATORS[0]
    for i, (role, message) in enumerate(messages):
        if message:
            text += f"{role}: {message}{SEPARATORS[i % 2]}"
        else:
            text += f"{role}:"
    return text


@dataclass(frozen=True)
class PromptRound:
    """One query frame's question/answer; ``answer=None`` leaves the assistant turn open for generation."""

    question: str
    answer: str | None


def build_prompt(num_context: int, rounds: list[PromptRound], use_im_start_end: bool = True) -> str:
    """Prompt text with ``num_context`` context images, then one image + question per round.

    If the last round is open, the text ends with the open answer prefix (the reference removes the final
    ``</s>`` of the rendered conversation), so the next token the model predicts is the frame's ``[SEG]``.
    """
    if not rounds:
        raise ValueError("a GLUS prompt needs at least one query round")
    slot = image_slot(use_im_start_end)
    # no context frames (an ablation): no context block at all
    context_block = slot * num_context + "\n" + CONTEXT_INSTRUCTION + "\n" if num_context else ""
    messages: list[tuple[str, str | None]] = []
    for i, rnd in enumerate(rounds):
        question = slot + "\n" + rnd.question
        if i == 0:
            question = context_block + question
        answer = rnd.answer if rnd.answer is not None else INFERENCE_ANSWER_PREFIX
        messages.append((ROLES[0], question))
        messages.append((ROLES[1], answer))
    text = render_llava_v1(messages)
    if rounds[-1].answer is None:
        text = "</s>".join(text.split("</s>")[:-1])
    return text


def inference_prompt(
    expression: str, num_context: int, num_query: int, open_last: bool = True, trailing_space: bool = True
) -> str:
    """The reference inference prompt: question template #0, fixed answer, the last round open or answered.

    An open prompt ends with the answer prefix ``"... result is "``; the reference keeps the trailing space,
    which becomes a token that never precedes ``[SEG]`` in training (there, ``"is"`` does). Released
    checkpoints are used with it (parity); ``trailing_space=False`` ends on ``"is"`` as in training, for models
    trained from scratch (``GlusConfig.open_prompt_trailing_space``).
    """
    question = INFERENCE_QUESTION.format(expression=clean_expression(expression))
    rounds = [PromptRound(question, INFERENCE_ANSWER) for _ in range(num_query)]
    if open_last:
        rounds[-1] = PromptRound(question, None)
    text = build_prompt(num_context, rounds)
    return text.rstrip(" ") if open_last and not trailing_space else text


def training_prompt(expression: str, num_context: int, num_query: int, rng: random.Random) -> str:
    """A training conversation: random question and answer templates per round, every round answered."""
    expr = clean_expression(expression)
    rounds = [
        PromptRound(rng.choice(QUESTION_TEMPLATES).format(expression=expr), rng.choice(ANSWER_TEMPLATES))
        for _ in range(num_query)
    ]
    return build_prompt(num_context, rounds)
