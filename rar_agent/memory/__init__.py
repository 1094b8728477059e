"""Category memory over Qdrant: embedded (qdrant-edge) or server (qdrant-client).

Where a memory lives and which backend opens it is decided in
:mod:`~rar_agent.memory.location`; :func:`open_memory` opens the one the settings name.
Qdrant itself is imported only when a memory is opened.
"""

from rar_agent.memory.core import CategoryMemory
from rar_agent.memory.entries import (
    KINDS,
    MAX_LABEL_CHARS,
    EntryKind,
    Hit,
    MemoryEntry,
    MemoryInfo,
    normalize_label,
)
from rar_agent.memory.location import check_collection_name, default_memory_dir
from rar_agent.memory.opening import configured_memory, memory_encoder, open_memory

__all__ = [
    "KINDS",
    "MAX_LABEL_CHARS",
    "CategoryMemory",
    "EntryKind",
    "Hit",
    "MemoryEntry",
    "MemoryInfo",
    "check_collection_name",
    "configured_memory",
    "default_memory_dir",
    "memory_encoder",
    "normalize_label",
    "open_memory",
]
