"""``CategoryMemory``: one API over the embedded (qdrant-edge) and server (qdrant-client)
Qdrant backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory.backend import MemoryBackend
from rar_agent.memory.entries import Hit, MemoryEntry, MemoryInfo, check_kind, normalize_label
from rar_agent.memory.location import open_backend
from rar_agent.memory.meta import ENCODER_SPEC_KEY, memory_info, record_encoder
from rar_agent.memory.storage import (
    STORAGE_KEY,
    Footprint,
    StorageSettings,
    estimate_footprint,
    footprint_from_parts,
)
from rar_agent.memory.vectors import as_vector_rows, check_point_ids

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["OPTIMIZE_MIN_UNINDEXED", "UPSERT_BATCH", "CategoryMemory", "StoredPoint"]

logger = logging.getLogger(__name__)

# Points per upsert call. Measured on 2 cores at 50k x 512-d (scripts/bench_scale.py
# --upsert-batches): 16.2k points/s at 64-128, 15.0k at 256, 11.3k at 512, 9k at 1024-4096
# (bigger batches build bigger Python lists and lose the caches); a server's guide asks for
# 64-256 per request too.
UPSERT_BATCH = 128
# Below this many unindexed entries exact search is fast enough; building HNSW is not free.
OPTIMIZE_MIN_UNINDEXED = 10_000

StoredPoint = tuple[str, str, list[float], dict[str, Any]]
"""``(id, kind, vector, payload)`` of one stored entry, as :meth:`CategoryMemory.scroll` gives."""


class CategoryMemory:
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
            shard_number: Server only: shards of a newly created collection.
            replication_factor: Server only: replicas per shard of a new collection.
            write_consistency_factor: Server only: replicas that must acknowledge a write.
            timeout: Server only: request timeout in seconds.
            read_only: Refuse every write through this handle; the memory must exist
                (``create`` is ignored).
            storage: Storage settings for a memory created by this handle (fixed from then
                on); ``None`` picks them by the size of the first build
                (:meth:`StorageSettings.for_entries`). An existing memory with other
                settings is refused when entries are bound.

        Returns:
            The open memory.

        Raises:
            ConfigError: Conflicting or invalid arguments (more than one of ``path``, ``url``
                and ``location``; a bad collection name).
            MemoryStoreError: It cannot be opened (missing, unreachable, wrong API key).
            MemoryBusyError: Another process holds the embedded memory.
        """
        if storage is not None and not isinstance(storage, StorageSettings):
            raise ConfigError(f"storage must be StorageSettings, not {type(storage).__name__}")
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

    # ------------------------------------------------------------------ encoder

    def bind_encoder(
        self,
        fingerprint: str,
        dim: int,
        *,
        description: str | None = None,
        expected_entries: int | None = None,
    ) -> None:
        """Record the encoder on first use (creating the storage); refuse another one later.

        When the encoder was loaded with :func:`rar_agent.encoders.load_encoder`, how it was
        loaded (its :class:`~rar_agent.encoders.EncoderSpec`) is recorded too, as
        ``info.encoder_spec``, so the memory can be opened later without naming the encoder.

        Args:
            fingerprint: The encoder's fingerprint (model + weights identity).
            dim: The encoder's embedding length.
            description: Optional domain description to record (a hint for the ranker).
            expected_entries: How many entries the first build will add; picks the storage
                settings when none were given to :meth:`open`.

        Raises:
            EncoderMismatchError: The memory was built with another encoder.
            ConfigError: ``dim`` is not a positive integer, the fingerprint is empty, or
                the storage settings given to :meth:`open` differ from the memory's.
        """
        from rar_agent.encoders.loader import spec_for

        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError("the encoder fingerprint must be a non-empty string")
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError(f"the embedding dimension must be a positive integer, not {dim!r}")
        dim = int(dim)
        spec = spec_for(fingerprint)
        with self._lock:
            self._check_open()
            if self.read_only:  # record_encoder writes in these two cases only
                meta = self._backend.read_meta(refresh=True) or {}
                if not meta.get("fingerprint"):
                    self._check_writable("record its encoder (it has none yet: build it first)")
                if description is not None and description != meta.get("description"):
                    self._check_writable("record a description")
            storage = self._storage_request or StorageSettings.for_entries(expected_entries)
            record_encoder(
                self._backend,
                self.collection,
                fingerprint,
                dim,
                description,
                None if self.read_only else spec,  # a read-only memory records nothing
                storage,
            )
            self._check_storage(self._backend.read_meta() or {})
            self._bound = (fingerprint, dim)

    def bind_metadata(self, meta: dict[str, Any]) -> None:
        """Create this memory as a copy of another's metadata (``memory push`` / ``pull``).

        Every key is kept (encoder, storage settings, calibration, ...), except
        ``collection``, which names this memory. A memory that already exists must hold
        the same encoder; its own metadata is then replaced by ``meta``.

        Raises:
            ConfigError: ``meta`` has no encoder fingerprint or dimension.
            EncoderMismatchError: This memory exists with another encoder.
        """
        fingerprint, dim = meta.get("fingerprint"), meta.get("dim")
        if not isinstance(fingerprint, str) or not isinstance(dim, int):
            raise ConfigError("the source memory records no encoder: bind one and build it first")
        storage = StorageSettings.from_dict(meta.get(STORAGE_KEY))
        self._check_writable("copy another memory into it")
        with self._lock:
            self._storage_request = storage
            self.bind_encoder(fingerprint, dim)
            self._backend.write_meta({**meta, "collection": self.collection})
            self._storage = storage

    def _check_storage(self, meta: dict[str, Any]) -> None:
        stored = StorageSettings.from_dict(meta.get(STORAGE_KEY))
        wanted = self._storage_request
        if wanted is not None and wanted != stored:
            raise ConfigError(
                f"memory {self.collection!r} at {self._backend.location} was created with "
                f"storage settings ({stored.describe()}), not ({wanted.describe()}): they are "
                "fixed at creation; drop the storage options, or build into another --collection"
            )
        self._storage = stored

    @property
    def storage(self) -> StorageSettings:
        """The memory's storage settings (the defaults for a memory created without any)."""
        if self._storage is None:
            self._check_open()
            meta = self._backend.read_meta() or {}
            if not meta:  # not created yet: what creating it now would use
                return self._storage_request or StorageSettings()
            self._storage = StorageSettings.from_dict(meta.get(STORAGE_KEY))
        return self._storage

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of everything the memory records about itself (all keys)."""
        self._check_open()
        return dict(self._backend.read_meta(refresh=True) or {})

    def set_encoder_spec(self, spec: dict[str, str | None] | None) -> None:
        """Record how to load the memory's encoder (``EncoderSpec.to_meta()``'s form)."""
        self._update_meta(ENCODER_SPEC_KEY, spec)

    def set_description(self, description: str | None) -> None:
        """Record a domain description (e.g. "bird species"); requires a bound encoder."""
        self._update_meta("description", description)

    def set_gate_margin(self, margin: float | None) -> None:
        """Record the ranking-gate margin the evaluation harness chose (for ``gate="auto"``)."""
        self._update_meta("gate_margin", None if margin is None else float(margin))

    def _update_meta(self, key: str, value: Any) -> None:
        self._check_writable(f"set the {key.replace('_', ' ')}")
        with self._lock:
            meta = self._backend.read_meta(refresh=True)
            if not meta:
                raise MemoryStoreError(f"bind an encoder before setting the {key}")
            self._backend.write_meta({**meta, key: value})

    @property
    def info(self) -> MemoryInfo:
        """What the memory records: encoder fingerprint, dim, backend, description."""
        self._check_open()
        return memory_info(self._backend, self.collection)

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
        (same id), so rebuilding never duplicates.

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

    def write_points(self, points: Sequence[StoredPoint]) -> None:
        """Store points as another memory's :meth:`scroll` gave them (``memory push/pull``).

        Ids, kinds, vectors and payloads are kept exactly; the memory must be bound (see
        :meth:`bind_metadata`) to vectors of the same length.

        Raises:
            MemoryStoreError: No encoder is bound.
            ConfigError: A bad id, kind or vector (nothing is written).
        """
        self._check_writable("write entries")
        with self._lock:
            if self._bound is None:
                raise MemoryStoreError("bind the source's metadata before writing its points")
            dim = self._bound[1]
        if not points:
            return
        ids = check_point_ids([p[0] for p in points], len(points))
        kinds = [check_kind(p[1]) for p in points]
        rows = self._as_matrix([p[2] for p in points], dim, what="vectors")
        self._upsert(ids, kinds, rows, [p[3] for p in points])

    def _upsert(
        self,
        ids: Sequence[str],
        kinds: Sequence[str],
        rows: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        if rows.shape[0] and not np.all(np.linalg.norm(rows, axis=1) > 0):
            raise ConfigError("a vector is all zeros: it has no direction to compare by")
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            self._backend.upsert(
                ids[start:stop], kinds[start:stop], rows[start:stop].tolist(), payloads[start:stop]
            )

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

    @contextlib.contextmanager
    def bulk_load(self, expected_entries: int) -> Iterator[None]:
        """Defer indexing while a big build writes, then index once at the end.

        Deferred only when it pays: an empty memory about to receive at least
        ``OPTIMIZE_MIN_UNINDEXED`` entries, or one whose earlier bulk load was interrupted
        (it resumes deferred). Indexing is switched back on even if the build fails; the
        index itself is built (:meth:`optimize`) only when it succeeds.
        """
        self._check_writable("load entries")
        defer = self._backend.indexing_deferred() or (
            expected_entries >= OPTIMIZE_MIN_UNINDEXED and self.count() == 0
        )
        if defer:
            self._backend.set_indexing(False, self.storage)
        try:
            yield
        finally:
            if defer:
                self._backend.set_indexing(True, self.storage)

    def scroll(
        self, offset: str | None = None, limit: int = 512
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of stored entries in id order, with their vectors (for copying a memory).

        Args:
            offset: The id to start from (``None``: the first); pass the returned next
                offset to continue.
            limit: Entries per page.

        Returns:
            ``(points, next_offset)``; ``next_offset`` is ``None`` after the last page.
        """
        self._check_open()
        page, following = self._backend.scroll(offset, int(limit))
        points = []
        for pid, vectors, payload in page:
            kind = str(payload.get("kind", ""))
            if kind not in vectors:
                kind = next(iter(vectors), "")
            points.append((pid, kind, list(vectors.get(kind, [])), payload))
        return points, following

    def footprint(self) -> tuple[Footprint, dict[str, int] | None]:
        """RAM and disk the memory takes, and the measured bytes on disk per component.

        On the embedded backend the figures come from the shard's files, sorted by where
        each part lives under the memory's settings; a server reports no files, so there
        they are computed from the entry count (:func:`estimate_footprint`).
        """
        self._check_open()
        parts = self._backend.disk_usage()
        if parts is None:
            return estimate_footprint(self.storage, self.count(), self._stored_dim() or 1), None
        return footprint_from_parts(self.storage, parts), parts

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
