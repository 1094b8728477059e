"""Where a memory lives and which backend opens it: the one home of those decisions.

- A memory is either *embedded* (a directory, opened with qdrant-edge) or a collection on a
  Qdrant *server* (a URL, opened with qdrant-client); :func:`open_backend` picks the backend,
  and refuses a memory path and a server URL given together.
- An embedded memory without an explicit path lives in :func:`default_memory_dir`:
  ``<home>/memories/<collection>``.
- :func:`memory_target` reads those choices from :class:`~rar_agent.config.Settings`.
- Collection names follow :func:`check_collection_name` everywhere (they are also directory
  names).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rar_agent.errors import ConfigError

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.memory.backend import MemoryBackend

__all__ = [
    "MemoryTarget",
    "check_collection_name",
    "default_memory_dir",
    "memory_target",
    "open_backend",
]

_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_collection_name(name: object) -> str:
    """Return ``name`` if it is a valid collection name: 1-64 of letters, digits, ``_ - .``.

    The first character is a letter or digit, so a name is also a safe directory name.

    Raises:
        ConfigError: It is not a string of that form.
    """
    if not isinstance(name, str) or not _COLLECTION.fullmatch(name):
        raise ConfigError(
            f"collection name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'"
        )
    return name


def default_memory_dir(collection: str, home: str | os.PathLike[str] | None = None) -> Path:
    """``<home>/memories/<collection>``, the directory of an embedded memory by default.

    Args:
        collection: The collection name (checked).
        home: The data directory; None means ``Settings().home`` (``RAR_HOME``).

    Raises:
        ConfigError: The collection name is invalid.
    """
    check_collection_name(collection)
    if home is None:
        from rar_agent.config import Settings

        home = Settings().home
    return Path(home).expanduser() / "memories" / collection


@dataclass(frozen=True)
class MemoryTarget:
    """Where the settings say a memory lives: ``path`` (embedded) or ``url`` (server)."""

    collection: str
    path: Path | None = None
    url: str | None = None
    api_key: str | None = None
    shard_number: int | None = None
    replication_factor: int | None = None


def memory_target(settings: Settings, collection: str | None = None) -> MemoryTarget:
    """Read where a memory lives from the settings.

    Args:
        settings: ``memory_path`` (embedded directory), ``qdrant_url``/``qdrant_api_key``
            (server), ``home`` and ``collection``.
        collection: Another collection than ``settings.collection`` (e.g. a cached
            vocabulary memory): it lives beside the others, in ``<home>/memories/``, or on
            the configured server.

    Returns:
        The target; both ``path`` and ``url`` are set when the settings name both, which
        :func:`open_backend` refuses.
    """
    name = check_collection_name(collection or settings.collection)
    url = settings.qdrant_url or None
    path = settings.memory_path
    if url is None and (path is None or collection is not None):
        path = default_memory_dir(name, settings.home)
    return MemoryTarget(
        collection=name,
        path=path,
        url=url,
        api_key=settings.qdrant_api_key,
        shard_number=settings.shard_number,
        replication_factor=settings.replication_factor,
    )


def open_backend(
    collection: str,
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    api_key: str | None = None,
    location: str | None = None,
    create: bool = True,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    timeout: float | None = None,
) -> MemoryBackend:
    """Open the storage of one memory: embedded at ``path``, or on the server at ``url``.

    Arguments as :meth:`CategoryMemory.open <rar_agent.memory.CategoryMemory.open>`.

    Raises:
        ConfigError: An invalid collection name, or more than one of ``path``, ``url`` and
            ``location`` (a memory lives in one place).
        MemoryStoreError: It cannot be opened (missing, unreachable, wrong API key).
        MemoryBusyError: Another process holds the embedded memory.
    """
    check_collection_name(collection)
    if path is not None and url is not None:
        raise ConfigError(
            f"both a memory path ({path}) and a Qdrant server URL ({url}) are set: a memory "
            "lives in one place, so give only one: --memory / RAR_MEMORY_PATH for an embedded "
            "memory, or --qdrant-url / RAR_QDRANT_URL for a server"
        )
    if location is not None and (path is not None or url is not None):
        raise ConfigError("give only one of path (embedded), url (server) or location")
    if url is None and location is None:
        from rar_agent.memory.edge import open_edge

        directory = Path(path) if path is not None else default_memory_dir(collection)
        return open_edge(directory, create=create)
    if location is not None and location != ":memory:":
        raise ConfigError(
            f"location {location!r} is not supported: use url= for a server, path= "
            "for an embedded memory, or location=':memory:' in tests"
        )
    from rar_agent.memory.server import ServerBackend

    return ServerBackend(
        collection,
        url=url,
        api_key=api_key,
        location=location,
        create=create,
        shard_number=shard_number,
        replication_factor=replication_factor,
        timeout=timeout,
    )
