"""Which objects to segment in a task: text expressions, each paired with the label its results will carry.

Sources, first match wins (docs/DESIGN.md section 3):

a. **Interactive context** (``/predict`` with ``params.context``): the texts of its ``textarea`` results
   (``{"result": [{"type": "textarea", "from_name": .., "value": {"text": [..]}}]}``); if there are none, its
   ``text_prompt`` key, else its ``prompt`` key (a string).
b. **Task data**: the first of ``expression_fields`` present in the task (a missing key or ``None`` is skipped):
   a string (several expressions separated by newlines or ';'), a list of strings, or a list of
   ``{"text": str, "label": str?}`` objects (strings and objects may be mixed). List items are not split further.
c. **Label hints**: every config label that has a ``hint`` attribute gives one object (expression = hint,
   label = value).
d. **Label values**: every config label value is used as the expression (e.g. ``<Label value="the red car"/>``).

Label of an expression from (a)/(b), first rule that applies:

1. an explicit label: the object's ``"label"``, or a ``"Label: expression"`` prefix naming a config label
   (case-insensitively; the config's spelling is kept), e.g. ``"Ball: the yellow ball"`` - an unknown explicit label
   is an error;
2. the only label, when the config has exactly one;
3. the label whose ``hint`` is the expression (case-insensitively);
4. the label whose value occurs in the expression as a whole word, case-insensitively; when several do, the one whose
   match contains the others' ("the race car" is "race car", not "car");
5. otherwise the expression is **ambiguous** and that is an error naming it and the labels: nothing is guessed.

A config without labels (a ``<VideoRectangle>`` without a ``<Labels>`` palette) gives the label ``""`` and supports
only (a) and (b).

Expressions are stripped; identical (expression, label) pairs are kept once, in order; more than ``max_objects``
objects is an error. Every :class:`PromptError` names the task field, context key or config part at fault.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .label_config import LabelOption, ServedConfig

__all__ = ["DEFAULT_EXPRESSION_FIELDS", "ObjectPrompt", "PromptError", "extract_prompts"]

DEFAULT_EXPRESSION_FIELDS = ("expressions", "expression", "prompt")
"""Task data fields read as expressions, first present wins (``GLUS_EXPRESSION_FIELDS`` overrides)."""

_SEPARATORS = re.compile(r"[;\r\n]+")


class PromptError(ValueError):
    """The task (or interactive context) gives no usable expression; the message names the field or key."""


@dataclass(frozen=True)
class ObjectPrompt:
    """One object to segment: the referring expression and the config label its results carry."""

    expression: str
    label: str


def _split(text: str) -> list[str]:
    return [part.strip() for part in _SEPARATORS.split(text) if part.strip()]


def _matches(value: str, lowered: str) -> list[tuple[int, int]]:
    pattern = rf"(?<!\w){re.escape(value.lower())}(?!\w)"
    return [m.span() for m in re.finditer(pattern, lowered)]


def _inside(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    x, y = span
    return any(a <= x and y <= b and b - a > y - x for a, b in others)


def _pick_label(expression: str, options: tuple[LabelOption, ...], where: str) -> str:
    """Rules 2-5 of the module docstring (rule 1, an explicit label, is the caller's)."""
    if not options:
        return ""
    if len(options) == 1:
        return options[0].value
    lowered = expression.lower()
    for option in options:
        if option.hint is not None and option.hint.lower() == lowered:
            return option.value
    spans = {o.value: _matches(o.value, lowered) for o in options}
    found = [v for v, s in spans.items() if s]
    # a label whose every match lies inside a longer label's match ("car" in "race car") is not named
    others = {v: [span for w in found if w != v for span in spans[w]] for v in found}
    named = [v for v in found if not all(_inside(span, others[v]) for span in spans[v])]
    if len(named) == 1:
        return named[0]
    values = ", ".join(repr(o.value) for o in options)
    why = f"names several labels ({', '.join(map(repr, named))})" if named else f"names none of the labels {values}"
    first = options[0].value
    raise PromptError(
        f"{where}: the expression {expression!r} {why}, so its label is ambiguous: say which, as "
        f"'{first}: {expression}' or {{'text': {expression!r}, 'label': {first!r}}}"
    )


def _explicit_label(label: Any, where: str, options: tuple[LabelOption, ...]) -> str:
    values = [o.value for o in options]
    if not isinstance(label, str) or label not in values:
        choices = ", ".join(repr(v) for v in values) or "none: the labeling config has no labels"
        raise PromptError(f"{where} label {label!r} is not a label of the labeling config (choose from: {choices})")
    return label


def _labelled(text: str, where: str, options: tuple[LabelOption, ...]) -> ObjectPrompt:
    """One expression, with a ``"Label: expression"`` prefix honoured when it names a config label."""
    head, colon, rest = text.partition(":")
    if colon and rest.strip():
        spelled = {o.value.lower(): o.value for o in options}
        label = spelled.get(head.strip().lower())
        if label is not None:
            return ObjectPrompt(rest.strip(), label)
    return ObjectPrompt(text, _pick_label(text, options, where))


def _from_field(value: Any, field: str, options: tuple[LabelOption, ...]) -> list[ObjectPrompt]:
    where = f"task field '{field}'"
    if isinstance(value, str):
        pieces = _split(value)
        if not pieces:
            raise PromptError(f"{where} is empty")
        return [_labelled(p, where, options) for p in pieces]
    if not isinstance(value, list | tuple):
        raise PromptError(
            f"{where} must be a string, a list of strings or a list of {{'text': ..., 'label': ...}} objects, "
            f"got {type(value).__name__}"
        )
    prompts = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            text, label = item.strip(), None
        elif isinstance(item, dict):
            text = item.get("text")
            if not isinstance(text, str):
                raise PromptError(f"{where}[{i}] has no 'text' string")
            text, label = text.strip(), item.get("label")
        else:
            raise PromptError(f"{where}[{i}] must be a string or a {{'text': ..., 'label': ...}} object")
        if not text:
            raise PromptError(f"{where}[{i}] is empty")
        if label is None:
            prompts.append(_labelled(text, f"{where}[{i}]", options))
        else:
            prompts.append(ObjectPrompt(text, _explicit_label(label, f"{where}[{i}]", options)))
    if not prompts:
        raise PromptError(f"{where} is empty")
    return prompts


def _from_context(context: dict | None, options: tuple[LabelOption, ...]) -> list[ObjectPrompt] | None:
    if not isinstance(context, dict):
        return None
    texts: list[tuple[str, str]] = []  # (text, where)
    results = context.get("result")
    areas = [
        r
        for r in (results if isinstance(results, list) else [])
        if isinstance(r, dict) and str(r.get("type", "")).lower() == "textarea"
    ]
    for area in areas:
        where = f"context TextArea '{area.get('from_name', '?')}'"
        raw = (area.get("value") or {}).get("text")
        items = [raw] if isinstance(raw, str) else list(raw or [])
        pieces = [p for item in items if isinstance(item, str) for p in _split(item)]
        if not pieces:
            raise PromptError(f"{where} is empty")
        texts.extend((p, where) for p in pieces)
    if not areas:
        for key in ("text_prompt", "prompt"):
            raw = context.get(key)
            if raw is None:
                continue
            if not isinstance(raw, str):
                raise PromptError(f"context key '{key}' must be a string")
            if not _split(raw):
                raise PromptError(f"context key '{key}' is empty")
            texts = [(p, f"context key '{key}'") for p in _split(raw)]
            break
    if not texts:
        return None
    return [_labelled(t, where, options) for t, where in texts]


def extract_prompts(
    task_data: dict,
    config: ServedConfig,
    expression_fields: Sequence[str] = DEFAULT_EXPRESSION_FIELDS,
    context: dict | None = None,
    max_objects: int = 20,
) -> list[ObjectPrompt]:
    """The objects to segment in one task, by the rules in the module docstring."""
    options = config.label_options()
    prompts = _from_context(context, options)
    source = "the interactive context"
    if prompts is None:
        for field in expression_fields:
            if isinstance(task_data, dict) and task_data.get(field) is not None:
                prompts = _from_field(task_data[field], field, options)
                source = f"task field '{field}'"
                break
    if prompts is None:
        hinted = [o for o in options if o.hint]
        if hinted:
            prompts, source = [ObjectPrompt(o.hint or "", o.value) for o in hinted], "the label hints"
        elif options:
            prompts, source = [ObjectPrompt(o.value, o.value) for o in options], "the label values"
        else:
            fields = ", ".join(f"'{f}'" for f in expression_fields)
            raise PromptError(
                f"no expression: the task has none of the fields {fields}, and the labeling config has no labels "
                "to use as expressions"
            )
    unique = list(dict.fromkeys(prompts))
    if len(unique) > max_objects:
        raise PromptError(f"{source} gives {len(unique)} objects; the limit is {max_objects}")
    return unique
