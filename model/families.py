"""Model families behind one interface: a video and expressions in, per-frame masks and scores out.

The backend's worker, ``glus segment``, evaluation and ``predict-dataset`` load a checkpoint folder with
:func:`load_video_model` and call :meth:`VideoModel.segment_stream`; which family serves is read from the folder:

=========  ==========================================================  =========================================
family     checkpoint folder                                           options (:class:`FamilyOptions`)
=========  ==========================================================  =========================================
``glus``   this project's format, or a released GLUS folder            ``schedule``, ``key_frames``, ``llm_every``
           (``"model_type": "llava"``, with a CLIP folder)
``sa2va``  a released Sa2VA / Sa2VA-i folder (``"model_type":          ``sa2va_mode`` (``sa2va`` / ``sa2va-i``;
           "sa2va_chat"``, InternVL family with a Qwen2 LLM)            default ``sa2va-i`` for a Sa2VA-i folder),
                                                                       ``sa2va_key_frames`` (5)
=========  ==========================================================  =========================================

What only GLUS does (re-propagating corrections, click prompts, fine-tuning) is offered by
:attr:`VideoModel.glus_segmenter`; a Sa2VA model has none and the callers refuse with
:class:`UnsupportedByFamily`, naming the family.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # this module imports no torch: the web process and the registry read folders with it
    import numpy as np
    import torch

    from .inference import Expression, FrameResult, Progress

FAMILIES = ("glus", "sa2va")
SECOND_DECODER_PREFIX = "grounding_encoder.sam2_model.sam_mask_decoder_modified."
KEY_FRAME_RULES = ("first", "confidence")


class UnsupportedByFamily(RuntimeError):
    """Something the served model's family does not do (e.g. re-propagating corrections with Sa2VA)."""


def family_of(checkpoint: str | Path) -> str:
    """``"sa2va"`` for a folder whose ``config.json`` says ``"model_type": "sa2va_chat"``, else ``"glus"``."""
    config = Path(checkpoint) / "config.json"
    try:
        data = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    return "sa2va" if data.get("model_type") == "sa2va_chat" else "glus"


def stored_keys(checkpoint: str | Path) -> list[str]:
    """The tensor names of a folder's safetensors weights, from the index or the files' JSON headers (no torch,
    nothing but the headers read)."""
    folder = Path(checkpoint)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text()).get("weight_map", {}))
    keys: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            keys += [k for k in json.loads(handle.read(length)) if k != "__metadata__"]
    return keys


def checkpoint_variant(checkpoint: str | Path) -> str:
    """What a folder serves, by name: ``sa2va-i`` (a Sa2VA folder with the second decoder), ``sa2va``, or
    ``glus``."""
    if family_of(checkpoint) != "sa2va":
        return "glus"
    return "sa2va-i" if any(k.startswith(SECOND_DECODER_PREFIX) for k in stored_keys(checkpoint)) else "sa2va"


@dataclass
class FamilyOptions:
    """Inference settings of each family; a family ignores the other's. The backend fills them from its settings
    (``GLUS_SCHEDULE``, ``GLUS_KEY_FRAMES``, ``GLUS_LLM_EVERY``, ``GLUS_SA2VA_MODE``, ``GLUS_SA2VA_KEY_FRAMES``)."""

    schedule: str = "sliding"  # glus: "sliding" | "clip"
    key_frames: str = "first"  # glus: "first" | "confidence"
    llm_every: int = 1  # glus
    sa2va_mode: str | None = None  # sa2va: "sa2va" | "sa2va-i"; None: "sa2va-i" when the folder is Sa2VA-i
    sa2va_key_frames: int = 5  # sa2va: frames the MLLM sees

    def __post_init__(self) -> None:
        if self.key_frames not in KEY_FRAME_RULES:
            raise ValueError(f"unknown key-frame rule {self.key_frames!r}; choose one of {KEY_FRAME_RULES}")


class VideoModel(Protocol):
    """One loaded model, any family."""

    family: str
    description: str  # e.g. "glus (sliding schedule)", "sa2va (sa2va-i, 5 key frames)"

    @property
    def glus_segmenter(self) -> Any | None: ...

    def for_video(self, video_id: str) -> VideoModel:
        """The same model for one named video (GLUS's key-frame JSONs are looked up by video id)."""

    def segment_stream(
        self,
        frames: Any,
        expressions: Sequence[str | Expression],
        progress: Callable[[Progress], None] | None = None,
    ) -> Iterator[tuple[int, int, FrameResult]]: ...


class _BoundModel:
    """A family's segmenter with its options bound (what :class:`VideoModel` asks for)."""

    family = ""

    def __init__(self, segmenter, options) -> None:
        self.segmenter = segmenter
        self.options = options

    def segment_stream(self, frames, expressions, progress=None):
        return self.segmenter.segment_stream(frames, expressions, self.options, progress)

    def segment(self, frames, expressions, progress=None):
        return self.segmenter.segment(frames, expressions, self.options, progress)


class GlusVideoModel(_BoundModel):
    """GLUS (:class:`~model.inference.VideoSegmenter`) with its :class:`~model.inference.SegmentOptions`."""

    family = "glus"

    @property
    def description(self) -> str:
        return f"glus ({self.options.schedule} schedule)"

    @property
    def glus_segmenter(self):
        return self.segmenter

    def for_video(self, video_id: str) -> GlusVideoModel:
        return GlusVideoModel(self.segmenter, replace(self.options, video_id=video_id))


class Sa2VAVideoModel(_BoundModel):
    """Sa2VA / Sa2VA-i (:class:`~model.sa2va.inference.Sa2VASegmenter`) with its options."""

    family = "sa2va"

    @property
    def description(self) -> str:
        return f"sa2va ({self.options.mode}, {self.options.key_frames} key frames)"

    @property
    def glus_segmenter(self) -> None:
        return None

    def for_video(self, video_id: str) -> Sa2VAVideoModel:
        return self


def load_video_model(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    options: FamilyOptions | None = None,
    clip_dir: str | Path | None = None,
    sam2_checkpoint: str | Path | None = None,
    sam2_config: str | None = None,
    deltas: Sequence[str | Path] = (),
) -> VideoModel:
    """The model in ``checkpoint`` for serving, whatever its family (:func:`family_of`). ``clip_dir``,
    ``sam2_checkpoint``, ``sam2_config`` and ``deltas`` are GLUS's (a released GLUS folder needs ``clip_dir``);
    a Sa2VA folder with deltas is refused (fine-tuning Sa2VA is not implemented)."""
    import torch

    dtype = dtype or torch.float32
    options = options or FamilyOptions()
    if family_of(checkpoint) == "sa2va":
        if deltas:
            raise UnsupportedByFamily(
                f"{checkpoint} is a Sa2VA checkpoint: fine-tuned versions (deltas) exist for GLUS only"
            )
        from .sa2va.checkpoint import load_sa2va
        from .sa2va.inference import Sa2VAOptions, Sa2VASegmenter

        model, tokenizer, _ = load_sa2va(checkpoint, device=device, dtype=dtype)
        mode = options.sa2va_mode or ("sa2va-i" if model.config.two_decoders else "sa2va")
        segmenter = Sa2VASegmenter(model, tokenizer, device=device)
        return Sa2VAVideoModel(segmenter, Sa2VAOptions(mode=mode, key_frames=options.sa2va_key_frames))
    from .checkpoint import load_checkpoint
    from .inference import SegmentOptions, VideoSegmenter
    from .keyframes import ConfidenceKeyFrames, FirstFrame

    model, tokenizer = load_checkpoint(checkpoint, clip_dir, sam2_checkpoint, device, dtype, sam2_config, deltas)
    key_frames = ConfidenceKeyFrames() if options.key_frames == "confidence" else FirstFrame()
    segment = SegmentOptions(schedule=options.schedule, key_frames=key_frames, llm_every=options.llm_every)
    return GlusVideoModel(VideoSegmenter(model, tokenizer, device=device), segment)


def masks_of(model: VideoModel, frames: Any, expressions: Sequence[str]) -> list[np.ndarray]:
    """``(N, H, W)`` bool masks per expression (short videos, tests and evaluation)."""
    import numpy as np

    out: dict[int, dict[int, np.ndarray]] = {i: {} for i in range(len(expressions))}
    for index, _key, frame in model.segment_stream(frames, list(expressions)):
        out[index][frame.frame_index] = frame.mask
    return [np.stack([by_frame[t] for t in sorted(by_frame)]) for by_frame in out.values()]
