"""Open the memory the settings name: the entry point for the CLI, the pipeline and tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rar_agent.memory.core import CategoryMemory
from rar_agent.memory.location import memory_target

if TYPE_CHECKING:
    from rar_agent.config import Settings

__all__ = ["open_memory"]


def open_memory(
    settings: Settings | None = None,
    collection: str | None = None,
    *,
    create: bool = True,
    read_only: bool = False,
) -> CategoryMemory:
    """Open the memory the settings name (see :func:`~rar_agent.memory.location.memory_target`).

    Args:
        settings: Where memories live (``memory_path``, ``qdrant_url``, ``home``...);
            default: ``Settings()`` from the ``RAR_*`` environment.
        collection: Another collection than ``settings.collection``.
        create: Create the memory if missing; with False a missing memory is an error.
        read_only: Refuse every write through the returned handle (implies ``create=False``).

    Raises:
        ConfigError: Both a memory path and a server URL are set, or a bad collection name.
        MemoryStoreError: It cannot be opened.
        MemoryBusyError: Another process holds the embedded memory.
    """
    if settings is None:
        from rar_agent.config import Settings

        settings = Settings()
    target = memory_target(settings, collection)
    return CategoryMemory.open(
        target.path,
        url=target.url,
        api_key=target.api_key,
        collection=target.collection,
        create=create,
        shard_number=target.shard_number,
        replication_factor=target.replication_factor,
        read_only=read_only,
    )
