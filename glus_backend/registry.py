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
import os
import time
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
        return self.base()

    def base(self) -> ModelVersion:
        """What is served when no version is promoted: ``GLUS_CHECKPOINT``, else the bundled model."""
        if self.default_checkpoint is not None:
            return ModelVersion(version_of(self.default_checkpoint), self.default_checkpoint, "checkpoint")
        bundled = bundled_checkpoint()
        if not (bundled / "config.json").is_file():
            raise NoModelError(
                "no model: set GLUS_CHECKPOINT to a model directory (or create one with `glus init --out DIR`)"
            )
        return ModelVersion(version_of(bundled), bundled, "bundled")

    # --- versions written by training runs (issue: learning from corrections) ---
    @property
    def history_file(self) -> Path:
        return self.versions_dir / "HISTORY.jsonl"

    def versions(self) -> list[VersionRecord]:
        """Every registered version, oldest first, with its metadata (``version.json``)."""
        records = []
        if not self.versions_dir.is_dir():
            return records
        for folder in self.versions_dir.iterdir():
            meta_file = folder / "version.json"
            if folder.is_dir() and meta_file.is_file() and (folder / "config.json").is_file():
                meta = json.loads(meta_file.read_text())
                records.append(VersionRecord(folder.name, folder, meta))
        return sorted(records, key=lambda r: (r.metadata.get("created", 0), r.version))

    def register(self, checkpoint_dir: str | Path, metadata: dict) -> VersionRecord:
        """Move a trained checkpoint folder into ``versions/<version>/`` with ``version.json``; not promoted."""
        source = Path(checkpoint_dir)
        name = version_of(source)
        target = self.versions_dir / name
        if target.exists():
            raise ValueError(f"version {name} is already registered")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        meta = {"version": name, "created": time.time(), **metadata}
        (source / "version.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        os.replace(source, target)
        return VersionRecord(name, target, meta)

    def promote(self, version: str, reason: str = "promoted") -> ModelVersion:
        """Make ``version`` the one served: workers switch between jobs, ``/setup`` reports it."""
        path = self.versions_dir / version
        if not (path / "config.json").is_file():
            raise ValueError(f"unknown version {version!r}; registered: {[r.version for r in self.versions()]}")
        previous = self.current().version
        tmp = self.versions_dir / f".CURRENT.{os.getpid()}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.versions_dir / "CURRENT")  # atomic: readers see the old or the new name
        self._record(version, previous, reason)
        return ModelVersion(version, path, "registry")

    def rollback(self, version: str | None = None) -> ModelVersion:
        """Serve ``version``, or the one served before the current promotion; without one, the base model."""
        if version is None:
            entries = self._history()
            if not entries:
                raise ValueError("nothing to roll back: no version was ever promoted")
            version = entries[-1]["previous"]
        registered = {r.version for r in self.versions()}
        if version in registered:
            return self.promote(version, reason="rollback")
        base = self.base()
        if base.version != version:  # checked before anything changes: a bad name leaves the served version
            raise ValueError(f"unknown version {version!r}; registered: {sorted(registered)}")
        (self.versions_dir / "CURRENT").unlink(missing_ok=True)  # back to GLUS_CHECKPOINT or the bundled model
        self._record(version, None, "rollback")
        return base

    def _record(self, version: str, previous: str | None, reason: str) -> None:
        with self.history_file.open("a") as history:
            history.write(json.dumps({"version": version, "previous": previous, "at": time.time(), "reason": reason}))
            history.write("\n")

    def _history(self) -> list[dict]:
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class VersionRecord:
    version: str
    path: Path
    metadata: dict
