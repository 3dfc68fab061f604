"""Model versions: where they live, what they are called, and which one serves - the same on every host.

* A **version** is the base checkpoint (``GLUS_CHECKPOINT``, else the demo model bundled in the ``model``
  package) or a fine-tuned version registered by a training run: a delta of its parent (LoRA + the parts trained
  in full, see ``model/delta.py``; a full checkpoint folder is accepted too).
* Registered versions live in the **store**, ``GLUS_MODEL_STORE``: a folder or an ``fsspec`` URL every host can
  read (a shared volume, ``s3://bucket/glus``, ...), default ``MODEL_DIR/versions`` (one host). A host loads a
  version from a copy in its own ``MODEL_DIR/cache/versions`` (a local store is used in place).
* A version's **name** comes from its content: ``<config name>-<8 hex>`` of a SHA-256 over its config, weights
  and tokenizer files, so every host names the same files alike. A base checkpoint's digest is cached per host
  (``MODEL_DIR/cache/digests.json``, by file size and modification time): 14.6 GB are read once per host.
* **Which version serves** is the Redis key ``<GLUS_QUEUE_PREFIX>:model:current``, read by every web process and
  worker; each promotion also writes ``CURRENT`` in the store (read when Redis has no key, e.g. after a flush)
  and appends to ``HISTORY.jsonl`` there.

Nothing here imports torch: the web process uses it to say which version predictions come from.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "glus-tiny-demo"
CONTENT_FILES = ("config.json", "delta.json", "*.safetensors", "*.bin", "*.pt", "*.index.json", "tokenizer.model",
                 "added_tokens.json")  # fmt: skip
"""The files that make a model what it is (and so its name): not notes, logs or model cards."""


class NoModelError(RuntimeError):
    """No checkpoint is configured and none is bundled."""


@dataclass(frozen=True)
class ModelVersion:
    """A version this host can load: ``base`` (a checkpoint folder) with ``deltas`` applied in order."""

    version: str
    path: Path  # the version's own folder (the checkpoint, or the delta)
    source: str  # "registry" | "checkpoint" | "bundled"
    base: Path | None = None
    deltas: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.base is None:
            object.__setattr__(self, "base", self.path)


@dataclass(frozen=True)
class VersionRecord:
    version: str
    path: Path
    metadata: dict = field(default_factory=dict)


def bundled_checkpoint() -> Path:
    """``model/assets/glus-tiny-demo`` found without importing the ``model`` package (it imports torch)."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        raise NoModelError("the `model` package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / BUNDLED_MODEL


def content_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in CONTENT_FILES))


def _config_name(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NoModelError(f"{path} is not a model directory (no config.json)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") == "sa2va_chat":  # a released Sa2VA folder: the family is the name
        from model.families import checkpoint_variant

        return checkpoint_variant(path)
    return config.get("name") or ("glus-7b" if config.get("model_type") == "llava" else "glus")


def version_of(path: str | Path, digests: Path | None = None) -> str:
    """The content name of a model folder: ``<config name>-<8 hex digits of SHA-256 over its content files>``.

    ``digests`` (a JSON file) caches the digest by the files' sizes and modification times, so a large
    checkpoint is read once.
    """
    path = Path(path).resolve()
    name = _config_name(path)
    files = content_files(path)
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = {}
    if digests is not None and digests.is_file():
        try:
            cache = json.loads(digests.read_text())
        except ValueError:
            cache = {}
    entry = cache.get(str(path))
    if entry and entry.get("files") == stamp:
        return f"{name}-{entry['digest'][:8]}"
    started = time.perf_counter()
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{f.stat().st_size}\n".encode())
        with f.open("rb") as stream:
            while chunk := stream.read(8 * 1024 * 1024):
                digest.update(chunk)
    hexdigest = digest.hexdigest()
    seconds = time.perf_counter() - started
    if seconds > 2:
        logger.info("named %s by its content (%.1f GB in %.0f s)", path, sum(s for _, s, _ in stamp) / 1e9, seconds)
    if digests is not None:
        cache[str(path)] = {"files": stamp, "digest": hexdigest}
        digests.parent.mkdir(parents=True, exist_ok=True)
        tmp = digests.with_name(f".{digests.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, digests)
    return f"{name}-{hexdigest[:8]}"


class VersionStore:
    """The folder or ``fsspec`` URL registered versions live in, shared by every host."""

    def __init__(self, url: str | Path) -> None:
        import fsspec

        self.url = str(url)
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str | None:
        try:
            return self.fs.cat_file(self.path(*parts)).decode()
        except FileNotFoundError:
            return None

    def write_text(self, text: str, *parts: str) -> None:
        """Readers see the old or the new text, never a part (an object store writes whole objects)."""
        target = self.path(*parts)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
            Path(tmp).write_text(text)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, text.encode())

    def folders(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(Path(p).name for p in self.fs.ls(self.root, detail=False) if self.fs.isdir(p))

    def put_folder(self, local: Path, name: str) -> None:
        target = self.path(name)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            shutil.move(str(local), target)
        else:
            self.fs.put(str(local), target, recursive=True)
            shutil.rmtree(local)

    def get_folder(self, name: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        self.fs.get(self.path(name) + "/", str(tmp), recursive=True)
        try:
            os.rename(tmp, local)  # another worker of this host may have fetched it meanwhile: keep theirs
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove_folder(self, name: str) -> None:
        self.fs.rm(self.path(name), recursive=True)

    def size(self, name: str) -> int:
        return int(self.fs.du(self.path(name)))


class ModelRegistry:
    """Versions in the store, the one served (Redis, backed by the store), and where this host loads them from."""

    def __init__(
        self,
        model_dir: str | Path,
        default_checkpoint: str | Path | None = None,
        store: str | Path | None = None,
        redis: Redis | None = None,
        prefix: str = "glus",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.default_checkpoint = Path(default_checkpoint) if default_checkpoint else None
        self.store = VersionStore(store or self.model_dir / "versions")
        self.redis = redis
        self.current_key = f"{prefix}:model:current"
        self.cache_dir = self.model_dir / "cache" / "versions"

    @classmethod
    def from_settings(cls, settings, redis: Redis | None = None) -> ModelRegistry:
        return cls(settings.model_dir, settings.checkpoint, settings.model_store, redis, settings.queue_prefix)

    @property
    def versions_dir(self) -> Path:
        """The store's folder, when the store is a local folder."""
        return Path(self.store.root)

    @property
    def digests_file(self) -> Path:
        return self.model_dir / "cache" / "digests.json"

    # --- which version serves ---
    def current_name(self) -> str:
        """The served version's name, without fetching anything (what the web process reports)."""
        if self.redis is not None:
            try:
                value = self.redis.get(self.current_key)
                if value:
                    return value.decode()
            except RedisError as exc:
                logger.warning("Redis unreachable, reading the served version from the store: %s", exc)
        name = (self.store.read_text("CURRENT") or "").strip()
        if name and self.store.exists(name, "config.json"):
            if self.redis is not None:
                try:
                    self.redis.set(self.current_key, name, nx=True)  # after a Redis flush: share it again
                except RedisError:
                    pass
            return name
        return self.base().version

    def current(self) -> ModelVersion:
        """The served version, ready to load on this host (its delta chain fetched into the cache)."""
        return self.resolve(self.current_name())

    def base(self) -> ModelVersion:
        """What is served when no version is promoted: ``GLUS_CHECKPOINT``, else the bundled model."""
        if self.default_checkpoint is not None:
            path, source = self.default_checkpoint, "checkpoint"
        else:
            path, source = bundled_checkpoint(), "bundled"
            if not (path / "config.json").is_file():
                raise NoModelError(
                    "no model: set GLUS_CHECKPOINT to a model directory (or create one with `glus init --out DIR`)"
                )
        return ModelVersion(version_of(path, self.digests_file), path, source)

    def resolve(self, name: str) -> ModelVersion:
        """``name`` as base + delta chain, each delta fetched from the store into this host's cache."""
        base = self.base()
        if name == base.version:
            return base
        walked: list[str] = []  # name, its parent, ... (newest first)
        deltas: list[Path] = []
        current, root, own = name, base.path, None
        while current != base.version:
            if current in walked:
                raise ValueError(f"version {name} is its own ancestor: {' -> '.join([*walked, current])}")
            if not self.store.exists(current, "config.json"):
                if not walked:
                    raise ValueError(f"unknown version {name!r}; registered: {[r.version for r in self.versions()]}")
                raise ValueError(
                    f"version {walked[-1]} is a delta of {current}, which is neither registered nor this host's "
                    f"base ({base.version}, GLUS_CHECKPOINT)"
                )
            walked.append(current)
            path = self.local_copy(current)
            own = own or path  # the version's own folder
            delta = path / "delta.json"
            if not delta.is_file():  # a registered full checkpoint ends the chain
                root = path
                break
            deltas.append(path)
            current = json.loads(delta.read_text())["parent"]
        return ModelVersion(name, own, "registry", root, tuple(reversed(deltas)))

    def local_copy(self, name: str) -> Path:
        if self.store.is_local:
            return Path(self.store.path(name))
        local = self.cache_dir / name
        if not (local / "config.json").is_file():
            logger.info("fetching version %s from %s", name, self.store.url)
            self.store.get_folder(name, local)
        return local

    # --- versions written by training runs ---
    def versions(self) -> list[VersionRecord]:
        """Every registered version, oldest first, with its metadata (``version.json``)."""
        records = []
        for name in self.store.folders():
            meta = self.store.read_text(name, "version.json")
            if meta is not None and self.store.exists(name, "config.json"):
                records.append(VersionRecord(name, Path(self.store.path(name)), json.loads(meta)))
        return sorted(records, key=lambda r: (r.metadata.get("created", 0), r.version))

    def register(self, checkpoint_dir: str | Path, metadata: dict) -> VersionRecord:
        """Name a trained folder by its content and move it into the store with ``version.json``; not promoted."""
        source = Path(checkpoint_dir)
        name = version_of(source)
        if self.store.exists(name, "config.json"):
            raise ValueError(f"version {name} is already registered")
        meta = {"version": name, "created": time.time(), **metadata}
        (source / "version.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        self.store.put_folder(source, name)
        return VersionRecord(name, Path(self.store.path(name)), meta)

    def promote(self, version: str, reason: str = "promoted") -> ModelVersion:
        """Serve ``version`` on every host: workers switch between jobs, ``/setup`` reports it."""
        if not self.store.exists(version, "config.json"):
            raise ValueError(f"unknown version {version!r}; registered: {[r.version for r in self.versions()]}")
        resolved = self.resolve(version)  # its chain must load here before it is served anywhere
        previous = self.current_name()
        self._serve(version)
        self._record(version, previous, reason)
        return resolved

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
        self._serve(None)
        self._record(version, None, "rollback")
        return base

    def _serve(self, version: str | None) -> None:
        """Redis first (what every host reads), then the store's ``CURRENT`` (what survives Redis)."""
        if self.redis is not None:
            if version is None:
                self.redis.delete(self.current_key)
            else:
                self.redis.set(self.current_key, version)
        if version is None:
            if self.store.exists("CURRENT"):
                self.store.fs.rm(self.store.path("CURRENT"))
        else:
            self.store.write_text(version + "\n", "CURRENT")

    def _record(self, version: str, previous: str | None, reason: str) -> None:
        entry = json.dumps({"version": version, "previous": previous, "at": time.time(), "reason": reason})
        self.store.write_text((self.store.read_text("HISTORY.jsonl") or "") + entry + "\n", "HISTORY.jsonl")

    @property
    def history_file(self) -> Path:
        return self.versions_dir / "HISTORY.jsonl"

    def _history(self) -> list[dict]:
        text = self.store.read_text("HISTORY.jsonl") or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # --- disk ---
    def prunable(self) -> list[VersionRecord]:
        """Registered versions never served (refused by the gate, or never promoted), that no kept version
        descends from: what :meth:`prune` deletes."""
        records = self.versions()
        served = {e["version"] for e in self._history()} | {self.current_name()}
        parents = {}
        for record in records:
            delta = self.store.read_text(record.version, "delta.json")
            parents[record.version] = json.loads(delta)["parent"] if delta else None
        keep = set(served)
        for name in list(served):
            while name in parents and parents[name] is not None:
                name = parents[name]
                keep.add(name)
        return [r for r in records if r.version not in keep]

    def prune(self, dry_run: bool = False) -> list[tuple[str, int]]:
        """Delete :meth:`prunable` versions from the store and this host's cache; ``(name, bytes)`` of each."""
        removed = []
        for record in self.prunable():
            size = self.store.size(record.version)
            if not dry_run:
                self.store.remove_folder(record.version)
                shutil.rmtree(self.cache_dir / record.version, ignore_errors=True)
            removed.append((record.version, size))
        return removed
