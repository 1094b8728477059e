"""Category memory over Qdrant: embedded (qdrant-edge) or server (qdrant-client).

Numpy and Qdrant only: no images, no encoders (ingestion is :mod:`rar_agent.ingest`). Where
a memory lives is one value, :class:`MemoryLocation`; what it records about itself is one
typed :class:`MemoryRecord` with atomic extension updates. :func:`open_memory` opens the
memory a ``Settings`` object (built by an entry point) names. Qdrant itself is imported
only when a memory is opened.
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
from rar_agent.memory.location import MemoryLocation, check_collection_name, default_memory_dir
from rar_agent.memory.opening import configured_memory, open_memory
from rar_agent.memory.record import EncoderRecord, MemoryRecord

__all__ = [
    "KINDS",
    "MAX_LABEL_CHARS",
    "CategoryMemory",
    "EncoderRecord",
    "EntryKind",
    "Hit",
    "MemoryEntry",
    "MemoryInfo",
    "MemoryLocation",
    "MemoryRecord",
    "check_collection_name",
    "configured_memory",
    "default_memory_dir",
    "normalize_label",
    "open_memory",
]
