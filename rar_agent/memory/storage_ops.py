"""The part of ``CategoryMemory`` about storage: its settings, bulk loads, and the page-wise
reads and writes that copy a memory to another backend (``memory push`` / ``pull``).

A mixin of :class:`~rar_agent.memory.core.CategoryMemory`, kept apart to keep that module
short; it uses the memory's backend and checks through the names declared below.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory.entries import check_kind
from rar_agent.memory.storage import (
    STORAGE_KEY,
    Footprint,
    StorageSettings,
    estimate_footprint,
    footprint_from_parts,
)
from rar_agent.memory.vectors import check_point_ids

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.memory.backend import MemoryBackend

__all__ = ["OPTIMIZE_MIN_UNINDEXED", "UPSERT_BATCH", "StorageOps", "StoredPoint"]

# Points per upsert call. Measured on 2 cores at 50k x 512-d (scripts/bench_scale.py
# --upsert-batches): 16.2k points/s at 64-128, 15.0k at 256, 11.3k at 512, 9k at 1024-4096
# (bigger batches build bigger Python lists and lose the caches); a server's guide asks for
# 64-256 per request too.
UPSERT_BATCH = 128
# Below this many unindexed entries exact search is fast enough; building HNSW is not free.
OPTIMIZE_MIN_UNINDEXED = 10_000

StoredPoint = tuple[str, str, list[float], dict[str, Any]]
"""``(id, kind, vector, payload)`` of one stored entry, as :meth:`StorageOps.scroll` gives."""


class StorageOps:
    """Storage settings, bulk loads and copies (mixed into ``CategoryMemory``)."""

    collection: str
    _backend: MemoryBackend
    _lock: threading.RLock
    _bound: tuple[str, int] | None
    _storage: StorageSettings | None
    _storage_request: StorageSettings | None

    if TYPE_CHECKING:  # provided by CategoryMemory

        def bind_encoder(self, fingerprint: str, dim: int) -> None: ...
        def count(self, kind: str | None = None) -> int: ...
        def _check_open(self) -> None: ...
        def _check_writable(self, what: str) -> None: ...
        def _stored_dim(self) -> int | None: ...
        def _as_matrix(self, vectors: ArrayLike, dim: int | None, *, what: str) -> np.ndarray: ...

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

    def _upsert(
        self,
        ids: Sequence[str],
        kinds: Sequence[str],
        rows: np.ndarray,
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Upsert rows in batches of ``UPSERT_BATCH`` after the zero-vector check."""
        if rows.shape[0] and not np.all(np.linalg.norm(rows, axis=1) > 0):
            raise ConfigError("a vector is all zeros: it has no direction to compare by")
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            self._backend.upsert(
                ids[start:stop], kinds[start:stop], rows[start:stop].tolist(), payloads[start:stop]
            )
