"""Where the open-set calibration lives: the memory record's extension ``"openset"``.

The memory stores the calibration and never decides when to recompute it. Every read and
every read-modify-write of it goes through the two functions below, so switching to the
memory record's atomic ``update_extension`` is a change here only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EXTENSION", "ExtensionStore", "read_extension", "update_extension"]

logger = logging.getLogger(__name__)

EXTENSION = "openset"
"""The name of the memory record's extension holding the calibration."""


class ExtensionStore(Protocol):
    """The part of :class:`~rar_agent.memory.CategoryMemory` that stores the calibration."""

    collection: str

    def get_meta(self, key: str) -> Any:
        """A value of the memory's record."""
        ...

    def set_meta(self, key: str, value: Any) -> None:
        """Store a value in the memory's record."""
        ...


def read_extension(memory: ExtensionStore) -> dict[str, Any] | None:
    """The stored calibration (a JSON dict), or ``None`` when there is none."""
    extension = getattr(memory, "extension", None)
    data = extension(EXTENSION) if callable(extension) else memory.get_meta(EXTENSION)
    return data if isinstance(data, dict) else None


def update_extension(
    memory: ExtensionStore, fn: Callable[[dict[str, Any] | None], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Replace the stored calibration with ``fn(current)`` and return what was stored.

    Uses the memory's atomic ``update_extension`` (compare-and-set on its record's revision)
    where it has one; ``fn`` may then run more than once, so it only merges (no searches).
    On a read-only memory nothing is written and ``fn``'s result is only returned.
    """
    if getattr(memory, "read_only", False):
        logger.info("memory %r is read-only: its calibration is not stored", memory.collection)
        return fn(read_extension(memory))
    atomic = getattr(memory, "update_extension", None)
    if callable(atomic):
        atomic(EXTENSION, fn)
        return read_extension(memory)
    new = fn(read_extension(memory))
    memory.set_meta(EXTENSION, new)
    return new
