"""Key-frame selection: where the query stream of an expression starts.

GLUS (self-refinement) segments from a key frame forwards to the end and backwards to the first frame.
The reference picks the key frame with a separate Chat-UniVi IoU regressor whose weights are not released,
and reads its choices from a JSON ``{"<video>_<exp_id>": <frame number>}``. Selectors here:

* :class:`FirstFrame` - no key frame (plain forward pass), the default;
* :class:`JsonKeyFrames` - externally chosen key frames in the reference's JSON format;
* :class:`ConfidenceKeyFrames` - the model's own confidence: probe a few evenly spaced frames with a
  one-frame prompt and take the one where P([SEG]) x predicted IoU is highest (0 for an empty mask).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class FrameProbe:
    """The model's view of one frame alone (fresh memory, one query round)."""

    seg_probability: float
    iou_prediction: float
    mask_area: int


@dataclass
class KeyFrameRequest:
    expression: str
    num_frames: int
    frame_names: list[str]
    probe: Callable[[int], FrameProbe]
    video_id: str | None = None
    expression_id: str | None = None


class KeyFrameSelector(Protocol):
    def select(self, request: KeyFrameRequest) -> int: ...


class FirstFrame:
    """Start at frame 0 (no backward pass)."""

    def select(self, request: KeyFrameRequest) -> int:
        return 0


class JsonKeyFrames:
    """Key frames chosen outside, as ``{"<video>_<exp_id>": frame_number}`` (the reference's KFS output).

    The frame number is matched against the frame names (``00012.jpg`` -> 12) as the reference does;
    expressions missing from the file start at frame 0.
    """

    def __init__(self, choices: dict[str, int] | str | Path) -> None:
        if not isinstance(choices, dict):
            path = Path(choices)
            try:
                choices = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read key-frame JSON {path}: {exc}") from exc
        self.choices = {str(k): int(v) for k, v in choices.items()}

    def select(self, request: KeyFrameRequest) -> int:
        key = f"{request.video_id}_{request.expression_id}"
        if key not in self.choices:
            return 0
        number = self.choices[key]
        try:
            numbers = [int(name) for name in request.frame_names]
        except ValueError:
            numbers = list(range(request.num_frames))
        if number not in numbers:
            raise ValueError(f"key frame {number} for {key} is not a frame of the video")
        return numbers.index(number)


class ConfidenceKeyFrames:
    """Probe ``num_candidates`` evenly spaced frames; pick the highest P([SEG]) x predicted IoU."""

    def __init__(self, num_candidates: int = 8) -> None:
        if num_candidates < 1:
            raise ValueError("num_candidates must be >= 1")
        self.num_candidates = num_candidates

    def candidates(self, num_frames: int) -> list[int]:
        n = min(self.num_candidates, num_frames)
        return sorted({round(i * (num_frames - 1) / max(n - 1, 1)) for i in range(n)})

    def select(self, request: KeyFrameRequest) -> int:
        best, best_score = 0, -1.0
        for index in self.candidates(request.num_frames):
            p = request.probe(index)
            score = p.seg_probability * p.iou_prediction if p.mask_area > 0 else 0.0
            if score > best_score:
                best, best_score = index, score
        return best
