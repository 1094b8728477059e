"""``CategoryMemory``: one API over the embedded (qdrant-edge) and server (qdrant-client)
Qdrant backends."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory.backend import MemoryBackend
from rar_agent.memory.entries import Hit, MemoryEntry, check_kind, normalize_label
from rar_agent.memory.location import open_backend
from rar_agent.memory.meta_ops import MetaOps
from rar_agent.memory.storage import StorageSettings
from rar_agent.memory.storage_ops import (
    OPTIMIZE_MIN_UNINDEXED,
    UPSERT_BATCH,
    StorageOps,
    StoredPoint,
)
from rar_agent.memory.vectors import as_vector_rows, check_point_ids

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["OPTIMIZE_MIN_UNINDEXED", "UPSERT_BATCH", "CategoryMemory", "StoredPoint"]

logger = logging.getLogger(__name__)


class CategoryMemory(MetaOps, StorageOps):
    """A category memory: labelled vectors in Qdrant, searched by cosine similarity.

    Each entry is one point with a named vector (``image`` for example images, ``text`` for
    class-name prototypes) and a payload ``{label, kind, source, content_hash, ...}``. Point
    ids are deterministic, so adding the same entry twice stores it once. The memory records
    the encoder it was built with and refuses another one. Thread-safe.

    Use :meth:`open`; close it (or use it as a context manager) when done. A memory opened
    with ``read_only=True`` refuses every write (entries, removals, its record, indexing).
    """

    def __init__(
        self,
        backend: MemoryBackend,
        collection: str,
        *,
        read_only: bool = False,
        storage: StorageSettings | None = None,
    ) -> None:
        self._backend = backend
        self.collection = collection
        self.read_only = read_only
        self._lock = threading.RLock()
        self._bound: tuple[str, int] | None = None
        self._dim: int | None = None
        self._storage_request = storage
        self._storage: StorageSettings | None = None
        self._closed = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        collection: str = "default",
        create: bool = True,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        timeout: float | None = None,
        read_only: bool = False,
        storage: StorageSettings | None = None,
    ) -> CategoryMemory:
        """Open a memory: embedded at ``path``, or a collection on a Qdrant server.

        Args:
            path: The memory's directory (embedded backend). ``None`` with no ``url`` means
                ``<RAR_HOME>/memories/<collection>`` (see :mod:`rar_agent.memory.location`).
            url: Qdrant server URL; selects the server backend.
            api_key: The server's API key.
            location: ``":memory:"`` for qdrant-client's in-process local mode (tests only).
            collection: Collection name (1-64 of letters, digits, ``_ - .``).
            create: Create the memory if it does not exist yet.
            shard_number, replication_factor, write_consistency_factor: Server only: the
                cluster layout of a new collection (shards, replicas per shard, replicas
                that acknowledge a write).
            timeout: Server only: request timeout in seconds.
            read_only: Refuse every write through this handle; the memory must exist
                (``create`` is ignored).
            storage: Storage settings if this handle creates the memory (fixed from then
                on; ``None``: by the first build's size, ``StorageSettings.for_entries``).

        Returns:
            The open memory.

        Raises:
            ConfigError: Conflicting or invalid arguments (more than one of ``path``, ``url``
                and ``location``; a bad collection name).
            MemoryStoreError: It cannot be opened (missing, unreachable, wrong API key).
            MemoryBusyError: Another process holds the embedded memory.
        """
        StorageSettings.check(storage)
        backend = open_backend(
            collection,
            path=path,
            url=url,
            api_key=api_key,
            location=location,
            create=create and not read_only,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
            timeout=timeout,
        )
        return cls(backend, collection, read_only=read_only, storage=storage)

    # ------------------------------------------------------------------ writing

    def add_entries(
        self,
        entries: Sequence[MemoryEntry],
        vectors: ArrayLike,
        *,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Store entries with their vectors (upserted in batches of ``UPSERT_BATCH``).

        Everything is validated before anything is written. Re-adding an entry replaces it
        (same id), so rebuilding never duplicates. The memory never recomputes its open-set
        calibration itself: the caller does (:func:`rar_agent.openset.update`).

        Args:
            entries: The entries; ``entries[i]`` is stored under its ``kind`` vector.
            vectors: Array-like ``(len(entries), dim)`` of finite, non-zero vectors.
            ids: Point ids (UUID strings) to store under instead of each ``entry.point_id``
                (the LangChain vector store maps its document ids to these).

        Returns:
            The point ids, in the order of ``entries``.

        Raises:
            MemoryStoreError: No encoder was bound with :meth:`bind_encoder`.
            EncoderMismatchError: The vectors have a different length than the memory's.
            ConfigError: Counts differ, or a vector is zero, NaN or infinite.
        """
        entries = list(entries)
        if any(not isinstance(e, MemoryEntry) for e in entries):
            raise ConfigError("add_entries takes MemoryEntry objects")
        self._check_writable("add entries")
        with self._lock:
            self._check_open()
            if self._bound is None:
                raise MemoryStoreError(
                    "call memory.bind_encoder(encoder.fingerprint, encoder.dim) before adding "
                    "entries, so the memory knows which encoder made them"
                )
            dim = self._bound[1]
        rows = self._as_matrix(vectors, dim, what="vectors")
        if rows.shape[0] != len(entries):
            raise ConfigError(f"got {len(entries)} entries but {rows.shape[0]} vectors")
        ids = [e.point_id for e in entries] if ids is None else check_point_ids(ids, len(entries))
        self._upsert(ids, [e.kind for e in entries], rows, [e.payload() for e in entries])
        return ids

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` that are stored (for resumable builds)."""
        self._check_open()
        return self._backend.existing([str(i) for i in ids])

    def get_entries(self, ids: Iterable[str]) -> list[Hit]:
        """The stored entries among ``ids``, in the order given (missing ids are skipped).

        Each comes as a :class:`Hit` with its full payload and ``score`` 0.0.
        """
        self._check_open()
        wanted = [str(i) for i in ids]
        found = dict(self._backend.retrieve(wanted))
        return [Hit.from_point(i, 0.0, found[i]) for i in dict.fromkeys(wanted) if i in found]

    def get_vectors(self, ids: Iterable[str]) -> dict[str, list[float]]:
        """The stored vectors of the entries among ``ids`` (their own kind's vector)."""
        self._check_open()
        wanted = list(dict.fromkeys(str(i) for i in ids))
        out: dict[str, list[float]] = {}
        for pid, vectors, payload in self._backend.retrieve_vectors(wanted):
            kind = payload.get("kind")
            vector = vectors.get(kind) if kind in vectors else next(iter(vectors.values()), None)
            if vector:
                out[pid] = list(vector)
        return out

    def remove_label(self, label: str) -> int:
        """Remove every entry of a category; return how many were removed."""
        self._check_writable("remove entries")
        return self._backend.delete_label(normalize_label(label))

    def remove_ids(self, ids: Iterable[str]) -> int:
        """Remove entries by point id; return how many existed."""
        self._check_writable("remove entries")
        wanted = [str(i) for i in ids]
        present = self._backend.existing(wanted)
        self._backend.delete_ids(sorted(present))
        return len(present)

    def optimize(self, *, min_unindexed: int = 0) -> bool:
        """Build the search index after bulk loads (embedded backend; blocks).

        Args:
            min_unindexed: Skip unless at least this many entries are not indexed yet, so
                small memories (fast enough by exact search) cost nothing.

        Returns:
            Whether the index was (re)built.
        """
        self._check_writable("build its index")
        return self._backend.optimize(min_unindexed)

    # ------------------------------------------------------------------ reading

    def search(self, vector: ArrayLike, *, kind: str = "image", limit: int = 50) -> list[Hit]:
        """Nearest entries of one vector, best first.

        Args:
            vector: A ``(dim,)`` (or ``(1, dim)``) query vector.
            kind: Which entries to search: ``"image"`` or ``"text"``.
            limit: How many entries to return.

        Returns:
            Hits sorted by score, highest first (empty if the memory has none of ``kind``).
        """
        rows = np.asarray(vector, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[0] != 1:
            raise ConfigError(f"search takes one vector, got shape {tuple(rows.shape)}")
        return self.search_batch(rows, kind=kind, limit=limit)[0]

    def search_batch(
        self, vectors: ArrayLike, *, kind: str = "image", limit: int = 50
    ) -> list[list[Hit]]:
        """Nearest entries of each row of ``vectors`` (one batched engine call).

        Raises:
            EncoderMismatchError: The vectors' length differs from the memory's.
            ConfigError: Bad ``kind``/``limit`` or non-finite vectors.
        """
        check_kind(kind)
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
            raise ConfigError(f"limit must be a positive integer, not {limit!r}")
        self._check_open()
        dim = self._stored_dim()
        rows = self._as_matrix(vectors, dim, what="query vectors")
        if rows.shape[0] == 0:
            return []
        if dim is None:
            return [[] for _ in range(rows.shape[0])]
        results = self._backend.query_batch(rows.tolist(), kind, int(limit), self.storage)
        return [sorted(hits, key=lambda h: -h.score) for hits in results]

    async def asearch(
        self, vector: ArrayLike, *, kind: str = "image", limit: int = 50
    ) -> list[Hit]:
        """Async :meth:`search` (runs in a worker thread)."""
        return await asyncio.to_thread(self.search, vector, kind=kind, limit=limit)

    async def asearch_batch(
        self, vectors: ArrayLike, *, kind: str = "image", limit: int = 50
    ) -> list[list[Hit]]:
        """Async :meth:`search_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(self.search_batch, vectors, kind=kind, limit=limit)

    def labels(self, kind: str | None = None) -> dict[str, int]:
        """Entries per label (optionally of one kind), most entries first."""
        self._check_open()
        counts = self._backend.label_counts(None if kind is None else check_kind(kind))
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def count(self, kind: str | None = None) -> int:
        """Number of entries (optionally of one kind)."""
        self._check_open()
        return self._backend.count(None if kind is None else check_kind(kind))

    def stats(self) -> dict[str, Any]:
        """Entries per kind, labels, encoder, backend, storage settings and footprint."""
        info = self.info
        footprint, parts = self.footprint()
        return {
            "collection": self.collection,
            "backend": info.backend,
            "location": info.location,
            "fingerprint": info.fingerprint,
            "encoder_spec": info.encoder_spec,
            "dim": info.dim,
            "description": info.description,
            "created_at": info.created_at,
            "entries": self.count(),
            "image_entries": self.count("image"),
            "text_entries": self.count("text"),
            "labels": len(self.labels()),
            "storage": self.storage.to_dict(),
            "storage_summary": self.storage.describe(),
            "footprint": footprint.to_dict(),
            "disk_mib_by_part": {k: round(v / 2**20, 1) for k, v in (parts or {}).items()},
            **{f"storage_{k}": v for k, v in self._backend.stats().items()},
        }

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the memory (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._backend.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> CategoryMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CategoryMemory(collection={self.collection!r}, backend={self._backend.name!r}, "
            f"location={self._backend.location!r})"
        )

    # ------------------------------------------------------------------ helpers

    def _stored_dim(self) -> int | None:
        """The memory's vector length (cached once known: it never changes)."""
        if self._dim is None:
            meta = self._backend.read_meta()
            self._dim = meta.get("dim") if meta else None
        return self._dim

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryStoreError(f"memory {self.collection!r} is closed: open it again")

    def _check_writable(self, what: str) -> None:
        self._check_open()
        if self.read_only:
            raise MemoryStoreError(
                f"memory {self.collection!r} is open read-only, so it cannot {what}: open it "
                "for writing to change it (rar-agent mcp: --allow-learning)"
            )

    def _as_matrix(self, vectors: ArrayLike, dim: int | None, *, what: str) -> np.ndarray:
        return as_vector_rows(
            vectors, dim, what=what, collection=self.collection, fingerprint=self._fingerprint
        )

    def _fingerprint(self) -> str | None:
        if self._bound:
            return self._bound[0]
        return (self._backend.read_meta() or {}).get("fingerprint")
