"""Category memory over Qdrant: embedded (qdrant-edge) or server (qdrant-client).

Qdrant itself is imported only when a memory is opened.
"""

from rar_agent.memory.core import CategoryMemory, default_memory_dir
from rar_agent.memory.entries import (
    KINDS,
    MAX_LABEL_CHARS,
    EntryKind,
    Hit,
    MemoryEntry,
    MemoryInfo,
    normalize_label,
)

__all__ = [
    "KINDS",
    "MAX_LABEL_CHARS",
    "CategoryMemory",
    "EntryKind",
    "Hit",
    "MemoryEntry",
    "MemoryInfo",
    "default_memory_dir",
    "normalize_label",
]
