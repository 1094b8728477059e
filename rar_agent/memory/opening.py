"""Open the memory a ``Settings`` object names (one an entry point built and passed down:
nothing here reads the environment)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rar_agent.memory.core import CategoryMemory
from rar_agent.memory.location import MemoryLocation

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.memory.storage import StorageSettings

__all__ = ["configured_memory", "open_memory"]

logger = logging.getLogger(__name__)


def open_memory(
    settings: Settings,
    collection: str | None = None,
    *,
    create: bool = True,
    read_only: bool = False,
    storage: StorageSettings | None = None,
) -> CategoryMemory:
    """Open the memory the settings name (see :meth:`MemoryLocation.from_settings
    <rar_agent.memory.location.MemoryLocation.from_settings>`).

    Args:
        settings: Where memories live (``memory_path``, ``qdrant_url``, ``home``...), as
            the entry point read them.
        collection: Another collection than ``settings.collection``.
        create: Create the memory if missing; with False a missing memory is an error.
        read_only: Refuse every write through the returned handle (implies ``create=False``).
        storage: Storage settings if the memory gets created (see :meth:`CategoryMemory.open`).

    Raises:
        ConfigError: Both a memory path and a server URL are set, or a bad collection name.
        MemoryStoreError: It cannot be opened.
        MemoryBusyError: Another process holds the embedded memory.
    """
    location = MemoryLocation.from_settings(settings, collection)
    return CategoryMemory.open(location, create=create, read_only=read_only, storage=storage)


def configured_memory(settings: Settings, *, read_only: bool = False) -> CategoryMemory | None:
    """The memory the settings name; ``None`` when it is the default one and missing or empty.

    This is the one answer to "no memory was named" for ``recognize``, ``chat``, ``mcp`` and
    ``Recognizer.from_settings``: ``None`` means the caller uses the built-in memory (see
    ``pipeline.vocabulary_memory``). A memory named explicitly (``memory_path``,
    ``collection`` or ``qdrant_url``) that does not exist is an error, as in ``rar-agent
    memory list``, and so is one with no entries: a mistyped path must not turn into an empty
    memory or a silent fallback. ``read_only`` opens the memory read-only; it changes nothing
    about which memory is meant.

    Raises:
        MemoryStoreError: A named memory is missing (``MemoryNotFoundError``) or empty
            (``EmptyMemoryError``), or a memory (named or the default one) is there but
            cannot be opened: never a silent fallback to the built-in memory.
    """
    from rar_agent.errors import EmptyMemoryError, MemoryNotFoundError

    named = bool(settings.qdrant_url) or bool(
        {"memory_path", "collection"} & settings.model_fields_set
    )
    try:
        memory = open_memory(settings, create=False, read_only=read_only)
    except MemoryNotFoundError as e:
        location = MemoryLocation.from_settings(settings)
        if named and _unbuilt_builtin(location):
            raise MemoryNotFoundError(
                f"no category memory at {location.path}: the built-in memory is built on its "
                "first use; run rar-agent recognize PHOTO with no memory named (no "
                "--collection) once, then name it"
            ) from e
        if named:
            raise
        return None
    if memory.count() > 0:
        return memory
    where = memory.info.location
    memory.close()
    if named:
        raise EmptyMemoryError(
            f"memory {settings.collection!r} at {where} holds no entries: add some (rar-agent "
            "memory build / memory add; in Python rar_agent.ingest), or give labels for a "
            "zero-shot memory (--labels; in Python labels=[...])"
        )
    logger.info("memory %r is empty: using the built-in vocabulary", settings.collection)
    return None


def _unbuilt_builtin(location: MemoryLocation) -> bool:
    """Whether ``location`` is a built-in memory (``builtin-<encoder>-<hash>``, as
    :func:`rar_agent.pipeline.vocabulary.builtin_memory_name` names it) not built yet."""
    return (
        location.path is not None
        and location.collection.startswith("builtin-")
        and not location.path.exists()
    )
