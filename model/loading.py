"""Filling a network from weight sources: built without weights, each tensor read once, placed once.

The network is built under :func:`empty_weights` (parameters on the meta device: no memory, no random
initialisation; buffers stay real because some are computed at construction). Each source is planned first
(:func:`plan_source`: every stored key mapped to a parameter, dropped as a harmless buffer, ignored as a part
the network does not use, or unexpected), shapes are checked against the network before anything is read,
and then :func:`load_planned` reads each tensor once, converts it to the serving dtype on the serving device,
puts it in place and releases the file pages it came from. For glus-7b in bf16 this keeps the peak at the
weights plus one tensor, where building a random fp32 model and copying into it took three times the weights.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .weights import WeightSource, release_pages

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the offending keys or files."""


class Skip(enum.Enum):
    """Why a stored tensor is not loaded."""

    DROPPED = "dropped"  # a harmless buffer the network rebuilds itself (position_ids, rotary inv_freq)
    IGNORED = "ignored"  # a part the network does not use by design (CLIP's text tower)


KeyMapper = Callable[[str], "str | Skip | None"]
"""A stored key -> the network's key, a :class:`Skip`, or None when it fits nowhere (unexpected)."""


def _show(keys: list[str]) -> str:
    head = ", ".join(keys[:8])
    return f"{len(keys)} ({head}{', ...' if len(keys) > 8 else ''})" if keys else "0"


@dataclass
class LoadReport:
    """What a load did with one source: tensors loaded, what the network still lacks, what fit nowhere, and
    what was skipped on purpose."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # harmless buffers skipped on purpose (position_ids, inv_freq)
    ignored: list[str] = field(default_factory=list)  # parts the network does not use (CLIP's text tower)
    superseded: list[str] = field(default_factory=list)  # also held by a later source, which is the one read
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        text = (
            f"{self.source}: loaded {self.loaded} tensors ({self.bytes_read / 1e9:.2f} GB in {self.seconds:.1f} s); "
            f"missing {_show(self.missing)}; unexpected {_show(self.unexpected)}; dropped {_show(self.dropped)}"
        )
        if self.ignored:
            text += f"; ignored {len(self.ignored)} unused"
        if self.superseded:
            text += f"; {len(self.superseded)} superseded by a later source"
        return text


@contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with their parameters on the meta device: no allocation, no initialisation.

    Parameters move to meta as they are registered, so constructors that compute with real tensors (SAM-2's
    Hiera calls ``.item()`` on a ``linspace``) still run, and buffers, some computed at construction (rotary
    frequencies, position ids), stay real. Building glus-7b this way takes about a second.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def empty_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters still on the meta device (never loaded)."""
    return [name for name, p in module.named_parameters() if p.is_meta]


@dataclass
class SourcePlan:
    """One source's keys, mapped onto the network before anything is read."""

    source: WeightSource
    report: LoadReport
    targets: dict[str, str]  # network key -> stored key
    expects: tuple[str, ...]  # network key prefixes this source is meant to provide (for 'missing')


def plan_source(
    source: WeightSource, name: str, mapper: KeyMapper, network_keys: Collection[str], expects: tuple[str, ...]
) -> SourcePlan:
    """Map every key of ``source``; a network key claimed by two stored keys is an error."""
    report = LoadReport(name)
    targets: dict[str, str] = {}
    for key in source.keys():
        fate = mapper(key)
        if fate is Skip.DROPPED:
            report.dropped.append(key)
        elif fate is Skip.IGNORED:
            report.ignored.append(key)
        elif fate is None or fate not in network_keys:
            report.unexpected.append(key)
        elif fate in targets:
            raise CheckpointError(f"{name}: both {targets[fate]} and {key} would load into {fate}")
        else:
            targets[fate] = key
    report.unexpected.sort()
    return SourcePlan(source, report, targets, expects)


def _place(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put ``value`` in as ``key``: assigned where the network is empty (meta), copied in where it is built."""
    owner_name, _, leaf = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if leaf in owner._parameters:
        current = owner._parameters[leaf]
        if current.is_meta:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=current.requires_grad)
        else:
            current.data.copy_(value)
    else:
        current = owner._buffers[leaf]
        if current is None or current.is_meta:
            owner._buffers[leaf] = value
        else:
            current.copy_(value)


def load_planned(
    model: nn.Module,
    plans: list[SourcePlan],
    dtype: torch.dtype | Callable[[str], torch.dtype | None] | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> list[LoadReport]:
    """Load the planned sources into ``model`` (later sources win where two hold the same key).

    Floating-point tensors are converted to ``dtype`` (or ``dtype(network key)``; the stored dtype when None) on
    ``device``, one at a time; integer tensors keep theirs. Shapes are checked and ``strict`` is enforced before
    anything is read. A network built with :func:`empty_weights` must end with nothing missing, strict or not.
    """
    own = model.state_dict(keep_vars=True)
    winner: dict[str, int] = {}
    for index, plan in enumerate(plans):
        for target in plan.targets:
            if target in winner:
                earlier = plans[winner[target]]
                earlier.report.superseded.append(earlier.targets[target])
            winner[target] = index
    for index, plan in enumerate(plans):
        for target, key in plan.targets.items():
            stored = plan.source.info(key).shape
            if tuple(own[target].shape) != stored and winner[target] == index:
                raise CheckpointError(
                    f"{plan.report.source}: shape mismatch for {target} (stored as {key}): "
                    f"checkpoint {stored}, model {tuple(own[target].shape)}"
                )
    for key in own:
        if key not in winner:
            owners = [plan for plan in plans if key.startswith(plan.expects)]
            if owners:
                owners[-1].report.missing.append(key)
    reports = [plan.report for plan in plans]
    if strict and not all(r.ok for r in reports):
        raise CheckpointError("; ".join(str(r) for r in reports if not r.ok))
    with torch.no_grad():
        for index, plan in enumerate(plans):
            started = time.perf_counter()
            keys = [key for target, key in plan.targets.items() if winner[target] == index]
            target_of = {key: target for target, key in plan.targets.items()}
            for key, tensor, mapped in plan.source.read(keys):
                target_dtype = dtype(target_of[key]) if callable(dtype) else dtype
                wanted = target_dtype if target_dtype is not None and tensor.is_floating_point() else tensor.dtype
                _place(model, target_of[key], tensor.to(device=device, dtype=wanted, copy=True))
                plan.report.bytes_read += tensor.numel() * tensor.element_size()
                plan.report.loaded += 1
                if mapped:
                    release_pages(tensor)
                del tensor
            plan.report.seconds = time.perf_counter() - started
            logger.info("%s", plan.report)
    left = empty_parameters(model)
    if left:
        raise CheckpointError(f"{len(left)} parameters were never loaded: {_show(left)}")
    return reports
