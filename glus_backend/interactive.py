"""Interactive re-propagation: the annotator clicks an object on frame k, the rest of the task follows.

Label Studio 1.23.2's labeling page calls the backend interactively (``/predict`` with ``params.context``) only
for regions drawn with a *smart* tool while Auto-Annotation is on, and of the tools a frame-sequence task offers
only the smart **KeyPoint** does so (a brush stroke or a polygon never does: see ``docs/label-studio.md``). So a
``<KeyPointLabels smart="true">`` control with the objects' labels is the trigger: a click on frame ``k`` with an
object's label asks for that object from ``k`` to the end of the task. The context carries the click::

    {"result": [{"type": "keypointlabels", "item_index": 2, "is_positive": true,
                 "value": {"x": 39.9, "y": 49.9, "keypointlabels": ["Ball"], ...}, ...}]}

and the task comes with the annotator's draft: if the draft already has a region of that object on frame ``k`` (a
brush or polygon correction, saved by the page's autosave within 5 s), that region seeds SAM-2's memory, wherever
the click is (a click *on* a region only selects it, so the annotator clicks beside it); otherwise SAM-2 draws the
mask from the clicks (an object with no region on ``k`` is clicked on). The worker re-propagates the object over
frames ``k..`` (:func:`glus_backend.correction_jobs.propagate_clicks`) while the web process waits for the answer,
which the page applies as regions on their own pages (with Auto-Accept on), replacing the object's predicted regions
(same ids).

This module is the web side: it reads the request (no numpy, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .label_config import result_labels

__all__ = ["ClickRequest", "click_request"]

_MASK_TYPES = ("brushlabels", "polygonlabels")


@dataclass(frozen=True)
class ClickRequest:
    """Clicks on one frame for one label, and the annotator's regions of that label on that frame (if any)."""

    frame: int
    label: str
    clicks: list[dict]  # {"x": %, "y": %, "positive": bool}
    seed_results: list[dict]


def click_request(context: Any, task: dict) -> ClickRequest | None:
    """The click request in an interactive ``context``, or None when it has no smart KeyPoint clicks.

    The frame is the last click's ``item_index`` (the context may also hold earlier, unaccepted clicks of the same
    label on other pages: only those on that frame count)."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    points = [r for r in context["result"] if isinstance(r, dict) and r.get("type") == "keypointlabels"]
    points = [r for r in points if isinstance(r.get("value"), dict) and result_labels(r)]
    if not points:
        return None
    last = points[-1]
    frame, label = int(last.get("item_index") or 0), result_labels(last)[0]
    clicks = [
        {"x": float(r["value"].get("x", 0.0)), "y": float(r["value"].get("y", 0.0)),
         "positive": r.get("is_positive", True) is not False}
        for r in points
        if int(r.get("item_index") or 0) == frame and label in result_labels(r)
    ]  # fmt: skip
    return ClickRequest(frame, label, clicks, _seed_results(task, frame, label))


def _seed_results(task: dict, frame: int, label: str) -> list[dict]:
    """The annotator's regions of ``label`` on ``frame``: from their latest draft, else their latest annotation."""
    sources = [d for d in task.get("drafts") or [] if isinstance(d, dict)]
    if not sources:
        sources = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not sources:
        return []
    latest = max(sources, key=lambda s: str(s.get("updated_at") or s.get("created_at") or ""))
    return [
        r
        for r in latest.get("result") or []
        if isinstance(r, dict) and r.get("type") in _MASK_TYPES and int(r.get("item_index") or 0) == frame
        and label in result_labels(r)
    ]  # fmt: skip
