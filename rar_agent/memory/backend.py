"""The small protocol both Qdrant backends implement (used only by ``CategoryMemory``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rar_agent.memory.entries import Hit
from rar_agent.memory.storage import StorageSettings

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MemoryBackend", "PointVectors", "ScrollPage"]

PointVectors = tuple[str, dict[str, list[float]], dict[str, Any]]
"""``(id, {vector name: vector}, payload)`` of one stored point."""
ScrollPage = tuple[list[PointVectors], str | None]
"""One page of a scroll: points and the offset of the next page (``None`` after the last)."""


class MemoryBackend(Protocol):
    """Storage operations of one memory (a shard or a collection).

    Before :meth:`create` the storage may not exist: reads then return nothing.
    Implementations are thread-safe.

    Attributes:
        name: ``"edge"`` or ``"server"``.
        location: Directory or URL, for messages.
        created: Whether this handle created the storage (the embedded directory, the
            server collection): it was not there before.
    """

    name: str
    location: str
    created: bool

    def read_meta(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """The stored record (``MemoryRecord.to_stored()``'s JSON object, or an older flat
        one), or ``None`` if none was recorded; ``refresh`` re-reads a cached copy."""
        ...

    def create(self, dim: int, meta: dict[str, Any], storage: StorageSettings) -> None:
        """Create the storage for ``dim``-long vectors with ``storage``, then record ``meta``.

        An existing storage is kept as it is (its settings were fixed when it was created).
        """
        ...

    def replace_meta(self, meta: dict[str, Any], expected_revision: int) -> bool:
        """Replace the stored record if its ``revision`` (0 when absent) is still
        ``expected_revision`` (compare-and-set); return whether it was written."""
        ...

    def upsert(
        self,
        ids: Sequence[str],
        kinds: Sequence[str],
        vectors: Sequence[list[float]],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Insert or replace points; each point has one named vector, ``kinds[i]``."""
        ...

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` that is stored."""
        ...

    def retrieve(self, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(id, payload)`` of the stored points among ``ids`` (missing ids are skipped)."""
        ...

    def retrieve_vectors(self, ids: Sequence[str], using: str | None = None) -> list[PointVectors]:
        """``(id, vectors, payload)`` of the stored points among ``ids``; with ``using``, only
        that named vector and no payload (points without it are skipped)."""
        ...

    def query_batch(
        self,
        vectors: np.ndarray,
        using: str,
        limit: int,
        storage: StorageSettings,
        *,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Nearest ``limit`` points per query vector (``(n, dim)`` float32 rows) on the named
        vector ``using``.

        ``storage`` gives the search parameters (HNSW ``ef``, rescoring). ``with_vectors``:
        give each hit a reader of its stored vector (``Hit.read_vector``) where the search
        hands the vectors over for less than a second read of them costs; a backend for which
        it does not leaves the hits without one (the caller reads the vectors it needs).
        """
        ...

    def scroll(self, offset: str | None, limit: int, label: str | None = None) -> ScrollPage:
        """Up to ``limit`` points from ``offset`` on (of ``label`` only, when given), in id
        order, as ``(id, vectors, payload)``, and the offset of the next page (``None`` after
        the last)."""
        ...

    def delete_ids(self, ids: Sequence[str]) -> None:
        """Delete points by id (missing ids are ignored)."""
        ...

    def delete_label(self, label: str) -> int:
        """Delete every point of ``label``; return how many there were."""
        ...

    def label_counts(self, kind: str | None) -> dict[str, int]:
        """Number of points per label, optionally only of one kind."""
        ...

    def category_counts(self) -> dict[str, int]:
        """Distinct labels of each kind (``image``, ``text``), counted once and kept while
        the writes this backend sees keep them right (cheap enough to ask on every query)."""
        ...

    def count(self, kind: str | None, label: str | None = None) -> int:
        """Number of points, optionally only of one kind and/or one label."""
        ...

    def optimize(self, min_unindexed: int, starting: Callable[[int], None]) -> bool:
        """Build indexes if at least ``min_unindexed`` points are not indexed; True if run.
        ``starting(unindexed points)`` is called first when it blocks to build them."""
        ...

    def set_indexing(self, enabled: bool, storage: StorageSettings) -> None:
        """Turn index building off for a bulk load, or back on (with ``storage``'s HNSW)."""
        ...

    def indexing_deferred(self) -> bool:
        """Whether index building is off (a bulk load that has not finished)."""
        ...

    def disk_usage(self) -> dict[str, int] | None:
        """Measured bytes on disk per component, or ``None`` where it cannot be measured."""
        ...

    def stats(self) -> dict[str, Any]:
        """Backend-level figures (points, segments, indexed vectors, ...)."""
        ...

    def close(self) -> None:
        """Release the storage (idempotent)."""
        ...

    def drop(self) -> None:
        """Close this handle and delete the storage it created (only when ``created``)."""
        ...
