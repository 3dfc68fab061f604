"""The GLUS network, in small modules named after what they are."""

from .glus import GlusModel
from .memory_bank import MemoryBank, MemoryEntry
from .projector import VisionProjector
from .seg_projector import SegProjector

__all__ = ["GlusModel", "MemoryBank", "MemoryEntry", "SegProjector", "VisionProjector"]
