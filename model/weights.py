"""Reading weights from the files users mount, one tensor at a time, without holding a file in memory.

A :class:`WeightSource` is one weights file (``.safetensors``, ``.bin``, ``.pt``/``.pth``) or a folder of shards
(with or without a ``*.index.json``). Listing its keys and shapes reads only headers; :meth:`WeightSource.read`
yields the tensors of the keys asked for, file by file, as views of the memory-mapped file (safetensors' own
mmap; ``torch.load(mmap=True, weights_only=True)`` for pickled files). A caller copies what it keeps into the
dtype and device it serves in, then calls :func:`release_pages` so that the file pages it touched leave the
process at once: peak host memory stays at the weights being built plus one tensor, not weights plus a shard.

Nothing here knows GLUS; :mod:`model.checkpoint` maps the keys onto the network.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class WeightFileError(RuntimeError):
    """A weights file or folder that cannot be read; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known from the file's header alone."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def weight_files(path: Path) -> list[Path]:
    """The files holding the weights of ``path``: itself, the shards its index names, or the shards it holds
    (``*.safetensors`` preferred over ``pytorch_model*.bin``, as transformers does)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WeightFileError(f"weights not found: {path}")
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightFileError(f"{index} is not a shard index (no 'weight_map'): {exc}") from None
            files = [path / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise WeightFileError(f"{index} names shards that are not in {path}: {', '.join(absent)}")
            return files
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise WeightFileError(f"no .safetensors or pytorch_model*.bin weights in {path}")
    return files


def _load_pickled(file: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A pickled state dict, memory-mapped when the file is in torch's zip format; ``(tensors, mapped)``.

    SAM-2's ``.pt`` files wrap theirs as ``{"model": state_dict}``.
    """
    try:
        try:
            obj, mapped = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError as exc:  # the legacy (pre-zip) format cannot be mapped: read it whole
            if "mmap can only be used" not in str(exc):
                raise
            logger.warning("%s is in torch's legacy format: read whole, not memory-mapped", file)
            obj, mapped = torch.load(str(file), map_location="cpu", weights_only=True), False
    except Exception as exc:  # noqa: BLE001 - unpickling refused (weights_only) or a corrupt file
        raise WeightFileError(f"cannot read {file}: {type(exc).__name__}: {str(exc)[:300]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightFileError(f"{file} does not hold a state dict of tensors")
    return obj, mapped


@contextmanager
def _open(file: Path) -> Iterator[tuple[object, bool]]:
    """``(handle, mapped)``: a safetensors handle or a pickled state dict, open for the duration."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                yield handle, True
        except SafetensorError as exc:
            raise WeightFileError(f"cannot read {file}: {exc}") from None
    elif file.suffix in _PICKLE_SUFFIXES:
        state, mapped = _load_pickled(file)
        try:
            yield state, mapped
        finally:
            state.clear()
    else:
        raise WeightFileError(f"unknown weights format: {file} (expected .safetensors, .bin, .pt or .pth)")


class WeightSource:
    """The tensors of one weights file or folder of shards, listed from headers and read lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files = weight_files(self.path)
        self._info: dict[str, TensorInfo] = {}
        for file in self.files:
            with _open(file) as (handle, _):
                if isinstance(handle, dict):
                    entries = {k: (tuple(v.shape), v.dtype) for k, v in handle.items()}
                else:
                    entries = {}
                    for key in handle.keys():
                        piece = handle.get_slice(key)
                        entries[key] = (tuple(piece.get_shape()), _SAFETENSORS_DTYPES[piece.get_dtype()])
            for key, (shape, dtype) in entries.items():
                if key in self._info:
                    raise WeightFileError(f"{key} is stored twice: in {self._info[key].file.name} and {file.name}")
                self._info[key] = TensorInfo(file, shape, dtype)

    def __repr__(self) -> str:
        return f"WeightSource({str(self.path)!r}, {len(self.files)} file(s), {len(self._info)} tensors)"

    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, key: object) -> bool:
        return key in self._info

    def info(self, key: str) -> TensorInfo:
        return self._info[key]

    def nbytes(self, keys: Iterable[str] | None = None) -> int:
        """Bytes on disk of ``keys`` (default: every tensor)."""
        return sum(self._info[k].nbytes for k in (self._info if keys is None else keys))

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor, bool]]:
        """``(key, tensor, mapped)`` for each of ``keys``, one file open at a time.

        A mapped tensor is a view of the file: copy it before the next one is read and pass it to
        :func:`release_pages` once copied. An unmapped one (legacy ``.bin``) is plain memory.
        """
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self._info[key].file, []).append(key)
        for file in self.files:
            wanted = by_file.get(file)
            if not wanted:
                continue
            with _open(file) as (handle, mapped):
                for key in wanted:
                    tensor = handle[key] if isinstance(handle, dict) else handle.get_tensor(key)
                    yield key, tensor, mapped


_MADV_DONTNEED = 4
_libc = None


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the file pages backing a memory-mapped ``tensor`` from this process (Linux ``madvise``).

    Safe for read-only file mappings: touching the tensor again reads the file again. Without it every page
    read stays counted in the process until the whole file is closed, which for a 10 GB shard is 10 GB.
    Call it only on tensors :meth:`WeightSource.read` reports as mapped (on anonymous memory it would zero them).
    """
    global _libc
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    storage = tensor.untyped_storage()  # the whole storage: a strided view may not span it contiguously
    page = mmap.PAGESIZE
    start = storage.data_ptr()
    end = start + storage.nbytes()
    aligned = start - start % page
    _libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(end - aligned), _MADV_DONTNEED)


class TensorDictSource(WeightSource):
    """A state dict already in memory, read through the same interface (tests, converted checkpoints)."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str = "state dict") -> None:
        self.path = Path(name)
        self.files = []
        self._tensors = tensors
        self._info = {k: TensorInfo(self.path, tuple(v.shape), v.dtype) for k, v in tensors.items()}

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor, bool]]:
        for key in keys:
            yield key, self._tensors[key], False
