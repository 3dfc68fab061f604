"""Which model version serves predictions, decided without loading it (the web process never imports torch).

The version in use is, in order: the promoted version recorded in ``MODEL_DIR/versions/CURRENT``; else the
checkpoint directory of ``GLUS_CHECKPOINT``; else the demo model bundled in the ``model`` package. A version
name is ``<config name>-<8 hex digits>``, the digits hashing the config and the weight files' sizes and times,
so a changed checkpoint gets a new name and Label Studio asks for predictions again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

BUNDLED_MODEL = "glus-tiny-demo"


class NoModelError(RuntimeError):
    """No checkpoint is configured and none is bundled."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    source: str  # "registry" | "checkpoint" | "bundled"


def bundled_checkpoint() -> Path:
    """``model/assets/glus-tiny-demo`` found without importing the ``model`` package (it imports torch)."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        raise NoModelError("the `model` package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / BUNDLED_MODEL


def version_of(path: str | Path) -> str:
    """A stable name for a checkpoint directory's contents."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NoModelError(f"{path} is not a model directory (no config.json)")
    raw = config_file.read_bytes()
    config = json.loads(raw)
    name = config.get("name") or ("glus-7b" if config.get("model_type") == "llava" else "glus")
    digest = hashlib.sha256(raw)
    for weights in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin"))):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return f"{name}-{digest.hexdigest()[:8]}"


class ModelRegistry:
    """Model versions under ``MODEL_DIR/versions/<version>/`` and the one in use."""

    def __init__(self, model_dir: str | Path, default_checkpoint: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.default_checkpoint = Path(default_checkpoint) if default_checkpoint else None

    @property
    def versions_dir(self) -> Path:
        return self.model_dir / "versions"

    def current(self) -> ModelVersion:
        pointer = self.versions_dir / "CURRENT"
        if pointer.is_file():
            name = pointer.read_text().strip()
            path = self.versions_dir / name
            if (path / "config.json").is_file():
                return ModelVersion(name, path, "registry")
        if self.default_checkpoint is not None:
            return ModelVersion(version_of(self.default_checkpoint), self.default_checkpoint, "checkpoint")
        bundled = bundled_checkpoint()
        if not (bundled / "config.json").is_file():
            raise NoModelError(
                "no model: set GLUS_CHECKPOINT to a model directory (or create one with `glus init --out DIR`)"
            )
        return ModelVersion(version_of(bundled), bundled, "bundled")
