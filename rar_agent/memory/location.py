"""Where a memory lives: :class:`MemoryLocation`, the one definition of a memory's address and
connection parameters (``CategoryMemory.open`` opens the backend it names).

- A memory is either *embedded* (a directory, opened with qdrant-edge), a collection on a
  Qdrant *server* (a URL, opened with qdrant-client, with its API key, timeout and the
  cluster layout of a new collection), or qdrant-client's *in-process* local mode (a test
  double for the server code path).
- An embedded memory named by collection only lives in :func:`default_memory_dir`:
  ``<home>/memories/<collection>``. The home comes from the caller: this layer reads no
  settings and no environment; :meth:`MemoryLocation.from_settings` reads a ``Settings``
  object an entry point built.
- Collection names follow :func:`check_collection_name` everywhere (they are also directory
  names).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError

if TYPE_CHECKING:
    from rar_agent.config import Settings

__all__ = [
    "IN_PROCESS",
    "MemoryLocation",
    "check_collection_name",
    "default_memory_dir",
]

_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The ``where`` that names qdrant-client's in-process local mode (tests only).
IN_PROCESS = ":memory:"


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


def default_memory_dir(collection: str, home: str | os.PathLike[str]) -> Path:
    """``<home>/memories/<collection>``, the directory of an embedded memory by default.

    Args:
        collection: The collection name (checked).
        home: The data directory (``Settings.home``, read by the caller).

    Raises:
        ConfigError: The collection name is invalid.
    """
    check_collection_name(collection)
    return Path(home).expanduser() / "memories" / collection


@dataclass(frozen=True)
class MemoryLocation:
    """Where one memory lives and how to reach it: the one home of these parameters.

    Exactly one of ``path`` (embedded), ``url`` (server) and ``in_process`` is set. Build
    one with :meth:`embedded`, :meth:`server`, :meth:`in_process_store`, :meth:`parse` or
    :meth:`from_settings`; open it with ``CategoryMemory.open(location)``.

    Attributes:
        collection: The collection name (checked; also the directory name by default).
        path: The embedded memory's directory.
        url: The Qdrant server's URL (``http://host:6333``).
        api_key: The server's API key (never shown in ``repr``).
        in_process: qdrant-client's in-process local mode (a test double, not a store).
        timeout: Server request timeout in seconds.
        shard_number: Shards of a new server collection.
        replication_factor: Replicas of each shard of a new server collection.
        write_consistency_factor: Replicas that must acknowledge a write.

    Raises:
        ConfigError: A bad collection name, none or more than one place, server options
            on an embedded memory, or a non-positive number.
    """

    collection: str = "default"
    path: Path | None = None
    url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    in_process: bool = False
    timeout: float | None = None
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None

    def __post_init__(self) -> None:
        check_collection_name(self.collection)
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        self._check_place()
        self._check_server_options()

    def _check_place(self) -> None:
        """Exactly one of path, url and in_process; a URL that names its scheme."""
        if self.path is not None and self.url is not None:
            raise ConfigError(
                f"both a memory path ({self.path}) and a Qdrant server URL ({self.url}) are "
                "set: a memory lives in one place, so give only one: --memory / "
                "RAR_MEMORY_PATH for an embedded memory, or --qdrant-url / RAR_QDRANT_URL "
                "for a server"
            )
        places = (self.path is not None) + (self.url is not None) + bool(self.in_process)
        if places != 1:
            raise ConfigError(
                "a memory location needs exactly one of a path (embedded), a url (server) or "
                "in_process (tests)"
            )
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"Qdrant URL {self.url!r} must start with http:// or https://")

    def _check_server_options(self) -> None:
        """Server options only for a server, each a positive number."""
        layout = self.cluster_layout
        options = {**layout, "api_key": self.api_key, "timeout": self.timeout}
        given = sorted(k for k, v in options.items() if v is not None)
        if self.path is not None and given:
            raise ConfigError(
                f"{', '.join(given)} apply to a Qdrant server, not to the embedded memory at "
                f"{self.path}: drop them, or give a server URL instead of a path"
            )
        for name, value in layout.items():
            if value is not None:
                positive_int(name, value)
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def embedded(cls, path: str | os.PathLike[str], collection: str = "default") -> MemoryLocation:
        """An embedded memory in directory ``path``."""
        return cls(collection=collection, path=Path(path))

    @classmethod
    def server(
        cls,
        url: str,
        collection: str = "default",
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> MemoryLocation:
        """A collection on the Qdrant server at ``url`` (the layout applies when created)."""
        return cls(
            collection=collection,
            url=url,
            api_key=api_key,
            timeout=timeout,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )

    @classmethod
    def in_process_store(cls, collection: str = "default") -> MemoryLocation:
        """qdrant-client's in-process local mode: the server code path, for tests."""
        return cls(collection=collection, in_process=True)

    @classmethod
    def parse(
        cls, where: MemoryLocation | str | os.PathLike[str], collection: str = "default"
    ) -> MemoryLocation:
        """A location from what a caller gave: itself, ``":memory:"``, a URL or a directory.

        Args:
            where: A :class:`MemoryLocation` (returned as it is: ``collection`` is then
                ignored), :data:`IN_PROCESS`, an ``http(s)://`` URL, or a directory.
            collection: The collection name for the other forms.

        Raises:
            ConfigError: ``where`` is none of these, or the collection name is invalid.
        """
        if isinstance(where, MemoryLocation):
            return where
        if isinstance(where, str) and where == IN_PROCESS:
            return cls.in_process_store(collection)
        if isinstance(where, str) and where.startswith(("http://", "https://")):
            return cls.server(where, collection)
        if isinstance(where, str | os.PathLike):
            return cls.embedded(where, collection)
        raise ConfigError(
            f"a memory location must be a directory, a Qdrant URL, ':memory:' or a "
            f"MemoryLocation, not {type(where).__name__}"
        )

    @classmethod
    def from_settings(cls, settings: Settings, collection: str | None = None) -> MemoryLocation:
        """Where the settings say a memory lives (read by an entry point and passed here).

        Args:
            settings: ``memory_path`` (embedded directory), ``qdrant_url`` /
                ``qdrant_api_key`` / ``qdrant_timeout`` and the cluster layout (server),
                ``home`` and ``collection``.
            collection: Another collection than ``settings.collection`` (e.g. a cached
                vocabulary memory): it lives beside the others, in ``<home>/memories/``, or
                on the configured server.

        Raises:
            ConfigError: Both a memory path and a server URL are set, or a bad name.
        """
        name = check_collection_name(collection or settings.collection)
        url = settings.qdrant_url or None
        path = settings.memory_path
        if url is None and (path is None or collection is not None):
            path = default_memory_dir(name, settings.home)
        if url is None or path is not None:
            return cls(collection=name, path=path, url=url)
        return cls.server(
            url,
            name,
            api_key=settings.qdrant_api_key,
            timeout=settings.qdrant_timeout,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            write_consistency_factor=settings.write_consistency_factor,
        )

    # ------------------------------------------------------------------ reading

    @property
    def backend(self) -> Literal["edge", "server"]:
        """``"edge"`` for an embedded memory, ``"server"`` for qdrant-client."""
        return "edge" if self.path is not None else "server"

    @property
    def cluster_layout(self) -> dict[str, int | None]:
        """The cluster layout of a new server collection (``None``: the server's default)."""
        return {
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
        }

    def describe(self) -> str:
        """The directory, the URL or ``":memory:"``, for messages."""
        if self.path is not None:
            return str(self.path)
        return self.url or IN_PROCESS

    def with_collection(self, collection: str) -> MemoryLocation:
        """The same place with another collection (an embedded one in a sibling directory)."""
        if self.path is not None:
            return dataclasses.replace(
                self,
                collection=collection,
                path=self.path.parent / check_collection_name(collection),
            )
        return dataclasses.replace(self, collection=collection)
