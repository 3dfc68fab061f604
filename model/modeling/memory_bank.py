"""GLUS's memory bank: which past frames a query frame reads, and keeping only what can still be read.

Positions are indices in the query stream of one expression (0, 1, 2, ...), not frame numbers: a backward
pass from a key frame is its own stream. Frame ``f`` reads, oldest first, up to ``num_maskmem`` memories:
the previous frame ``f-1`` and ``floor((f-2)/r)*r - k*r`` for ``k = 0..num_maskmem-2`` (stride ``r``).
SAM-2's temporal position encoding and object pointers are not used.

*Pinned* memories are SAM-2's "conditioning frames": an annotator's corrected mask, encoded once, that every
later frame reads in addition to the positions above and that :meth:`MemoryBank.write` never drops. They are
keyed by stream position too (a correction before the stream's first frame has a negative position), are read
first (SAM-2 puts conditioning frames before the others) and are never read twice: a pinned position is
left out of the usual positions. Without pins the bank behaves exactly as GLUS's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemoryEntry:
    """One frame's memory: features and positional encoding, both ``(B, C_mem, h, w)``, detached."""

    features: torch.Tensor
    pos_enc: torch.Tensor


def positions_to_read(position: int, num_maskmem: int, stride: int) -> list[int]:
    """Stream positions frame ``position`` reads from, oldest first (negative positions dropped)."""
    out: list[int] = []
    for t_rel in range(num_maskmem, 0, -1):
        if t_rel == 1:
            prev = position - 1
        else:
            prev = ((position - 2) // stride) * stride - (t_rel - 2) * stride
        if prev >= 0:
            out.append(prev)
    return out


class MemoryBank:
    """Memories of one query stream. One instance per expression and pass; never shared."""

    def __init__(self, num_maskmem: int, stride: int) -> None:
        self.num_maskmem = num_maskmem
        self.stride = stride
        self.entries: dict[int, MemoryEntry] = {}  # the usual (unpinned) memories
        self.pinned: dict[int, MemoryEntry] = {}

    def __len__(self) -> int:
        return len(self.entries) + len(self.pinned)

    def read(self, position: int) -> list[MemoryEntry]:
        """Memories for frame ``position``: pinned ones (by position), then the usual ones oldest first;
        positions never written (no [SEG]) are skipped."""
        return [self.pinned[p] if p in self.pinned else self.entries[p] for p in self.read_positions(position)]

    def read_positions(self, position: int) -> list[int]:
        """The stored positions :meth:`read` returns for frame ``position``: pinned first, then the usual ones."""
        usual = [p for p in positions_to_read(position, self.num_maskmem, self.stride) if p in self.entries]
        if not self.pinned:
            return usual
        pinned = sorted(p for p in self.pinned if p < position)
        return pinned + [p for p in usual if p not in self.pinned]

    def pin(self, position: int, entry: MemoryEntry) -> None:
        """Store a memory every later frame reads and nothing drops (a corrected frame's, SAM-2's conditioning
        frame). ``position`` may be negative: a correction before the stream's first frame."""
        self.pinned[position] = MemoryEntry(entry.features.detach(), entry.pos_enc.detach())

    def write(self, position: int, entry: MemoryEntry) -> None:
        """Store frame ``position`` and drop every memory no later frame can read."""
        self.entries[position] = MemoryEntry(entry.features.detach(), entry.pos_enc.detach())
        keep = set(positions_to_read(position + 1, self.num_maskmem, self.stride))
        for p in [p for p in self.entries if p not in keep]:
            del self.entries[p]
