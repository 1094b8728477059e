"""Where the open-set calibration lives: the memory record's extension ``"openset"``.

The memory stores the calibration and never decides when to recompute it. Every read and
every read-modify-write of it goes through the two functions below; the write is the
memory's atomic compare-and-set (``CategoryMemory.update_extension``), so concurrent
updates are never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EXTENSION", "ExtensionStore", "read_extension", "update_extension"]

logger = logging.getLogger(__name__)

EXTENSION = "openset"
"""The name of the memory record's extension holding the calibration."""

ExtensionUpdate = Callable[[dict[str, Any] | None], dict[str, Any] | None]


class ExtensionStore(Protocol):
    """The part of :class:`~rar_agent.memory.CategoryMemory` that stores the calibration."""

    collection: str
    read_only: bool

    def extension(self, name: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """An extension of the memory's record (``refresh``: re-read from the backend)."""
        ...

    def update_extension(self, name: str, fn: ExtensionUpdate) -> dict[str, Any] | None:
        """Change an extension of the memory's record atomically (compare-and-set)."""
        ...


def read_extension(memory: ExtensionStore, *, fresh: bool = False) -> dict[str, Any] | None:
    """The stored calibration (a JSON dict), or ``None`` when there is none; ``fresh``: as the
    backend holds it now (a server memory's record may change in other processes), else as
    this handle last read it."""
    data = memory.extension(EXTENSION, refresh=fresh)
    return data if isinstance(data, dict) else None


def update_extension(memory: ExtensionStore, fn: ExtensionUpdate) -> dict[str, Any] | None:
    """Replace the stored calibration with ``fn(current)`` atomically and return it.

    ``fn`` may run more than once (compare-and-set retries), so it only merges (no
    searches). On a read-only memory nothing is written and ``fn``'s result is only
    returned.
    """
    if memory.read_only:
        logger.info("memory %r is read-only: its calibration is not stored", memory.collection)
        return fn(read_extension(memory))
    return memory.update_extension(EXTENSION, fn)
