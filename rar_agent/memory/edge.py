"""Embedded backend: Qdrant's engine in-process through qdrant-edge-py (pre-1.0 API).

Everything qdrant-edge specific lives in this module. Layout of one memory directory::

    <dir>/rar_memory.json   metadata (encoder fingerprint, dim, description, ...)
    <dir>/.rar.lock         flock'ed by the process that has the memory open
    <dir>/shard/            the Qdrant edge shard (edge_config.json, segments/, wal/)

A shard path can be opened only once per process, so open shards live in a process-wide
registry shared by every ``CategoryMemory`` on that path; a shard stays registered until it
is really closed (flushed), so reopening it at once waits for that instead of failing.
Another process gets :class:`MemoryBusyError`.

Every call goes through the shard's read/write lock: searches, reads and counts share it,
writes, index builds and closing hold it alone. qdrant-edge (0.9) releases the GIL for part
of a search only (a thread beside one-by-one queries stood still 56-60% of the time, beside a
batch 87-95%), and it runs one query at a time in a process, even on two shards
(``tools/bench_concurrency.py``: 8 threads or 2 shards keep one CPU busy). A batch
(``query_batch``) pays the Python around the engine once, at the price of stalling the
process's other threads longer; docs/scaling.md ("One process") has the figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rar_agent.errors import (
    MemoryBusyError,
    MemoryNotFoundError,
    MemoryStoreError,
    RarError,
    unwritable_reason,
)
from rar_agent.memory.backend import PointVectors, ScrollPage
from rar_agent.memory.edge_files import (
    acquire_lock,
    read_json,
    release_lock,
    remove_memory_files,
    staged_json,
    write_json_atomic,
)
from rar_agent.memory.edge_files import disk_usage as shard_disk_usage
from rar_agent.memory.engine_settings import edge_config, edge_search_params
from rar_agent.memory.entries import KINDS, Hit
from rar_agent.memory.storage import StorageSettings

if TYPE_CHECKING:
    import numpy as np

__all__ = ["META_FILE", "SHARD_DIR", "EdgeBackend", "ReadWriteLock", "is_busy_error", "open_edge"]

logger = logging.getLogger(__name__)

META_FILE = "rar_memory.json"
SHARD_DIR = "shard"
_CHUNK = 1024
# Flush after this many written points: the WAL keeps every update until a flush, so a 1M
# bulk load mapped 2.5 GB of WAL; flushing every 100k keeps it near 0.2 GB (for ~15% slower
# upserts, a small part of such a build).
_FLUSH_EVERY = 100_000


class ReadWriteLock:
    """Many readers or one writer; a waiting writer goes before new readers.

    The writer may re-enter (for reading or writing); a reader must not (a nested read
    behind a waiting writer would wait forever).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared with other readers."""
        me = threading.get_ident()
        with self._cond:
            nested = self._writer == me
            if nested:
                self._depth += 1
            else:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                if nested:
                    self._depth -= 1
                else:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()


class _Shared:
    """One open memory directory, shared by every handle in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = ReadWriteLock()
        self.refs = 0
        self.closing = False
        self.closed = threading.Event()
        self.shard: Any = None
        self.lock_fd: int | None = None
        self.meta: dict[str, Any] | None = None
        self.unflushed = 0
        self.created = False  # no memory was in the directory: the opening made it
        self.empty_sides: set[str] = set()
        """Vectors (kinds) a search found no point of since the last write: searching them
        again finds nothing (the shard is written by this process alone, under the write
        lock, which empties this set first)."""
        self.categories = _CategoryCounts()
        """Distinct labels of each kind, the one place they are kept."""

    def written(self, *, counted: bool = False) -> None:
        """Forget what a write may change (under the write lock); ``counted``: the write
        keeps the category counts itself (:meth:`_CategoryCounts.before`)."""
        self.empty_sides.clear()
        if not counted:
            self.categories.forget()


_REGISTRY: dict[Path, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def open_edge(path: str | os.PathLike[str], *, create: bool = True) -> EdgeBackend:
    """Open (or share) the embedded memory in directory ``path``.

    Args:
        path: The memory directory.
        create: Create the directory if it does not exist.

    Returns:
        A handle; close it when done (the shard closes with its last handle).

    Raises:
        MemoryStoreError: No memory there and ``create`` is false, or it cannot be opened.
        MemoryBusyError: Another process has it open.
    """
    resolved = Path(path).expanduser().resolve()
    while True:
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(resolved)
            opened = shared is None
            if shared is None:
                shared = _open_shared(resolved, create)
                _REGISTRY[resolved] = shared
            if not shared.closing:
                shared.refs += 1
                return EdgeBackend(shared, created=opened and shared.created)
            closed = shared.closed
        closed.wait()  # its last handle is flushing it: open it again once it is closed


def _unusable(path: Path, doing: str, error: OSError) -> MemoryStoreError:
    """Why the memory directory ``path`` cannot be used, and what to give instead."""
    return MemoryStoreError(
        f"cannot {doing} the memory directory {path} ({unwritable_reason(error, path)}): "
        "give a folder you can write (--memory DIR, or RAR_HOME for every memory)"
    )


def _open_shared(path: Path, create: bool) -> _Shared:
    try:
        exists = (path / META_FILE).is_file() or (path / SHARD_DIR).is_dir()
    except OSError as e:  # a folder on the way that cannot be looked into (or named)
        raise _unusable(path, "look into", e) from e
    if not exists and not create:
        raise MemoryNotFoundError(
            f"no category memory at {path}: build one first (rar-agent memory build; in "
            "Python rar_agent.ingest) or check the path (--memory, or RAR_HOME and --collection)"
        )
    if path.exists() and not path.is_dir():
        raise MemoryStoreError(f"{path} is a file, not a memory directory: choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unusable(path, "create", e) from e
    shared = _Shared(path)
    shared.created = not exists
    shared.lock_fd = acquire_lock(path)
    try:
        meta_path = path / META_FILE
        if meta_path.is_file():
            shared.meta = read_json(meta_path)
        if (path / SHARD_DIR / "edge_config.json").is_file():
            shared.shard = _load_shard(path / SHARD_DIR)
    except BaseException:
        release_lock(shared.lock_fd)
        raise
    return shared


def is_busy_error(error: BaseException) -> bool:
    """Whether a qdrant-edge error says another process holds the shard's WAL lock.

    qdrant-edge 0.9 raises a plain ``Exception`` whose text carries the Rust I/O error kind
    (``... Can't init WAL: Kind(WouldBlock)``): no exception type, no errno. This is the one
    place that reads it; a future typed error belongs here.
    """
    if isinstance(error, BlockingIOError):
        return True
    return type(error) is Exception and "WouldBlock" in str(error)


@contextlib.contextmanager
def _engine(what: str, path: Path) -> Iterator[None]:
    """Turn qdrant-edge's plain exceptions into ``MemoryStoreError``."""
    try:
        yield
    except RarError:
        raise
    except Exception as e:
        text = str(e)
        if is_busy_error(e):
            raise MemoryBusyError(
                f"memory at {path} is in use by another process; close it, or use a Qdrant "
                "server (--qdrant-url) for many processes"
            ) from e
        raise MemoryStoreError(f"embedded Qdrant could not {what} at {path}: {text}") from e


def _load_shard(shard_path: Path) -> Any:
    from qdrant_edge import EdgeShard

    with _engine("open the shard", shard_path):
        return EdgeShard.load(str(shard_path))


def _revision(meta: dict[str, Any] | None) -> int:
    """The revision of a stored record (0 for none, or one from before revisions)."""
    value = (meta or {}).get("revision", 0)
    return value if isinstance(value, int) else 0


def _named_vector(point: Any, using: str) -> list[float] | None:
    """A search result's stored vector ``using`` (``None`` without it)."""
    return (point.vector or {}).get(using)


def _kind_filter(kind: str | None, label: str | None = None) -> Any:
    from qdrant_edge import FieldCondition, Filter, MatchValue

    must: list[Any] = []
    if kind is not None:
        must.append(FieldCondition("kind", match=MatchValue(kind)))
    if label is not None:
        must.append(FieldCondition("label", match=MatchValue(label)))
    return Filter(must=must) if must else None


def _label_counts(shard: Any, kind: str | None) -> dict[str, int]:
    """Points per label of ``kind`` (all kinds: None) in a shard."""
    from qdrant_edge import CountRequest, FacetRequest

    flt = _kind_filter(kind)
    total = int(shard.count(CountRequest(exact=True, filter=flt)))
    if total == 0:
        return {}
    response = shard.facet(FacetRequest("label", limit=total, exact=True, filter=flt))
    return {str(h.value): int(h.count) for h in response if h.count > 0}


def _holds(shard: Any, kind: str, label: str) -> bool:
    """Whether a shard holds a point of ``label`` of ``kind`` (an indexed count)."""
    from qdrant_edge import CountRequest

    return int(shard.count(CountRequest(exact=True, filter=_kind_filter(kind, label)))) > 0


_FOLLOWED = 16
"""Points, and categories, a write may touch and still keep the category counts up to date
(:class:`_CategoryCounts`): beyond, they are counted anew when next asked."""


class _CategoryCounts:
    """Distinct labels of each kind in a shard, kept from one write to the next.

    Counted in full when first asked (an exact facet of each kind: at 10k example images of
    1000 categories beside 1000 class rows, 18 ms of the calling thread's CPU and 42 ms of the
    process's, the engine's threads included). A write that touches at most
    ``_FOLLOWED`` points and categories keeps them up to date instead: whether each category
    it touches is held, asked before and after it (an indexed count each, with the payloads
    of the points it replaces or removes read first), changes its kind's count by one. Any
    other write forgets them. All under the shard's lock: counting under the shared one,
    following a write under the write lock.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] | None = None

    def get(self, shard: Any) -> dict[str, int]:
        """The counts, counted in full when not kept (``shard`` None: an empty memory)."""
        if self._counts is None:
            self._counts = {
                kind: 0 if shard is None else len(_label_counts(shard, kind)) for kind in KINDS
            }
        return dict(self._counts)

    def forget(self) -> None:
        """Count them anew when next asked."""
        self._counts = None

    def before(
        self, shard: Any, *, ids: Sequence[str] = (), payloads: Sequence[dict[str, Any]] = ()
    ) -> _Before | None:
        """Before a write of ``payloads`` and of the points ``ids`` (replaced or removed):
        what :meth:`after` needs, or None where it cannot follow (the counts are forgotten)."""
        counts, self._counts = self._counts, None  # forgotten if the write fails
        if counts is None or len(ids) > _FOLLOWED or len(payloads) > _FOLLOWED:
            return None
        stored = shard.retrieve(list(ids), True, False) if ids else []
        touched = _categories_of([*payloads, *(dict(r.payload or {}) for r in stored)])
        if touched is None or len(touched) > _FOLLOWED:
            return None
        return _Before(counts, {c: _holds(shard, *c) for c in touched})

    def after(self, shard: Any, before: _Before | None) -> None:
        """After the write :meth:`before` saw: each category it touched that is now held
        and was not, or the reverse, counts one more, or one less, on its side."""
        if before is None:
            return
        counts = dict(before.counts)
        for (kind, label), held in before.held.items():
            counts[kind] += int(_holds(shard, kind, label)) - int(held)
        self._counts = counts


class _Before(NamedTuple):
    """The category counts before a write, and whether each category it touches was held."""

    counts: dict[str, int]
    held: dict[tuple[str, str], bool]


def _categories_of(payloads: Sequence[dict[str, Any]]) -> set[tuple[str, str]] | None:
    """The ``(kind, label)`` categories points with these payloads count in (a point of
    another kind counts in none); None where a label is not text (how the facet counts it
    is not certain)."""
    out = set()
    for payload in payloads:
        kind, label = payload.get("kind"), payload.get("label")
        if kind not in KINDS:
            continue
        if not isinstance(label, str):
            return None
        out.add((kind, label))
    return out


class EdgeBackend:
    """A handle on a shared embedded memory; see :func:`open_edge`."""

    name = "edge"

    def __init__(self, shared: _Shared, *, created: bool = False) -> None:
        self._shared: _Shared | None = shared
        self.location = str(shared.path)
        self.created = created

    # -------------------------------------------------------------- plumbing

    @property
    def _s(self) -> _Shared:
        if self._shared is None:
            raise MemoryStoreError(f"memory at {self.location} is closed: open it again")
        return self._shared

    @contextlib.contextmanager
    def _use(self, what: str, *, write: bool = False, counted: bool = False) -> Iterator[Any]:
        """Hold the shard lock (shared, or alone to ``write``) and yield the shard (``None``
        before :meth:`create`); ``counted``: the write keeps the category counts itself."""
        s = self._s
        with s.lock.write() if write else s.lock.read(), _engine(what, s.path):
            if write:
                s.written(counted=counted)
            yield s.shard

    # -------------------------------------------------------------- metadata

    def read_meta(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """The metadata of ``rar_memory.json`` (kept in memory while open)."""
        s = self._s
        with s.lock.read():
            return dict(s.meta) if s.meta is not None else None

    def create(self, dim: int, meta: dict[str, Any], storage: StorageSettings) -> None:
        """Create the shard (named vectors ``image``/``text``, cosine) and record ``meta``."""
        from qdrant_edge import EdgeShard, PayloadSchemaType, UpdateOperation

        s = self._s
        with s.lock.write():
            s.written()
            if s.shard is None:
                shard_path = s.path / SHARD_DIR
                with _engine("create the shard", shard_path):
                    s.shard = EdgeShard.create(str(shard_path), edge_config(dim, storage))
            # Also for a shard whose creator was killed before indexing it: without the
            # ``label`` index, ``labels()`` (a facet) would fail forever.
            with _engine("index the shard", s.path):
                indexed = set(s.shard.info().payload_schema)
                for field in ("label", "kind"):
                    if field not in indexed:
                        s.shard.update(
                            UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword)
                        )
            write_json_atomic(s.path / META_FILE, meta)
            s.meta = dict(meta)

    def replace_meta(self, meta: dict[str, Any], expected_revision: int) -> bool:
        """Write ``rar_memory.json`` if the record is still at ``expected_revision``.

        A compare-and-set under the shard's write lock, with an atomic file replace. One
        process holds the directory (its lock file), and every handle in it shares this
        shard, so no other writer can interleave. The new file is written and synced before
        the lock is taken: searches, which share that lock, wait only for the check and the
        rename, not for the disk (a taught example rewrites the record, calibration
        included: 25-30 ms per write measured on a busy machine, every search waiting).

        Returns:
            Whether it was written (``False``: another writer changed it first).
        """
        s = self._s
        with staged_json(s.path / META_FILE, meta) as staged, s.lock.write():
            if _revision(s.meta) != expected_revision:
                return False
            staged.install()
            s.meta = dict(meta)
            return True

    # -------------------------------------------------------------- data

    def upsert(
        self,
        ids: Sequence[str],
        kinds: Sequence[str],
        vectors: Sequence[list[float]],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Upsert one batch of points."""
        from qdrant_edge import Point, UpdateOperation

        points = [
            Point(pid, {kind: vec}, payload)
            for pid, kind, vec, payload in zip(ids, kinds, vectors, payloads, strict=True)
        ]
        with self._use("write entries", write=True, counted=True) as shard:
            if shard is None:
                raise MemoryStoreError("the memory has no shard yet: call bind_encoder first")
            before = self._s.categories.before(shard, ids=ids, payloads=payloads)
            shard.update(UpdateOperation.upsert_points(points))
            self._s.categories.after(shard, before)
            self._s.unflushed += len(points)
            if self._s.unflushed >= _FLUSH_EVERY:
                shard.flush()
                self._s.unflushed = 0

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Stored subset of ``ids``."""
        records = self._retrieve(ids, "look up entries", payload=False, vectors=False)
        return {str(r.id) for r in records}

    def retrieve(self, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(id, payload)`` of the stored points among ``ids``."""
        records = self._retrieve(ids, "read entries", payload=True, vectors=False)
        return [(str(r.id), dict(r.payload or {})) for r in records]

    def retrieve_vectors(self, ids: Sequence[str], using: str | None = None) -> list[PointVectors]:
        """``(id, vectors, payload)`` of the stored points among ``ids``; with ``using``, only
        that named vector and no payload (points without it are skipped)."""
        if using is None:
            records = self._retrieve(ids, "read entries", payload=True, vectors=True)
            return [(str(r.id), dict(r.vector or {}), dict(r.payload or {})) for r in records]
        records = self._retrieve(ids, "read entries", payload=False, vectors=[using])
        found = ((str(r.id), (r.vector or {}).get(using)) for r in records)
        return [(pid, {using: vector}, {}) for pid, vector in found if vector]

    def _retrieve(
        self, ids: Sequence[str], what: str, *, payload: bool, vectors: bool | list[str]
    ) -> list[Any]:
        """The stored records among ``ids``, fetched in chunks (none before creation)."""
        records: list[Any] = []
        with self._use(what) as shard:
            if shard is None:
                return records
            for i in range(0, len(ids), _CHUNK):
                records += shard.retrieve(list(ids[i : i + _CHUNK]), payload, vectors)
        return records

    def query_batch(
        self,
        vectors: np.ndarray,
        using: str,
        limit: int,
        storage: StorageSettings,
        *,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Batch nearest-neighbour search (``query`` for one vector, ``query_batch`` else).

        A side a search found empty is not searched again until the next write: retrieval
        searches both sides of a memory that may hold only one (about 0.1 ms of CPU and a
        hand-over to the engine's thread a query, for nothing; the rows become the engine's
        lists of floats only for a side that is searched).

        ``with_vectors``: the engine hands the hits' vectors over with the search (about
        0.04 ms a query for 50 hits at 100k entries; a quantized memory's rescoring has read
        these originals already) and makes one a list of floats only when its hit's
        ``read_vector`` asks, which costs less than reading the same vectors again by id
        (``retrieve_vectors``: a second call, its lock and its records)."""
        from qdrant_edge import Query, QueryBatchRequest, QueryRequest

        params = edge_search_params(storage)
        with self._use("search") as shard:
            empty = self._s.empty_sides
            if shard is None or using in empty:
                return [[] for _ in vectors]
            requests = [
                QueryRequest(
                    limit=limit,
                    query=Query.Nearest(v, using=using),
                    with_payload=True,
                    with_vector=[using] if with_vectors else None,
                    params=params,
                )
                for v in vectors.tolist()
            ]
            if len(requests) == 1:
                results = [shard.query(requests[0])]
            else:
                results = shard.query_batch(QueryBatchRequest(requests))
            if results and not any(results):  # a side with points always has a nearest one
                empty.add(using)
        if not with_vectors:
            return [[Hit.from_point(p.id, p.score, p.payload) for p in res] for res in results]
        return [
            [
                Hit.from_point(p.id, p.score, p.payload, partial(_named_vector, p, using))
                for p in res
            ]
            for res in results
        ]

    def scroll(self, offset: str | None, limit: int, label: str | None = None) -> ScrollPage:
        """One page of points (of ``label``) in id order, with vectors and payloads, and the
        next offset."""
        from qdrant_edge import ScrollRequest

        with self._use("read entries") as shard:
            if shard is None:
                return [], None
            request = ScrollRequest(
                offset=offset,
                limit=limit,
                filter=_kind_filter(None, label),
                with_payload=True,
                with_vector=True,
            )
            records, following = shard.scroll(request)
        page = [(str(r.id), dict(r.vector or {}), dict(r.payload or {})) for r in records]
        return page, None if following is None else str(following)

    def delete_ids(self, ids: Sequence[str]) -> None:
        """Delete points by id."""
        from qdrant_edge import UpdateOperation

        with self._use("delete entries", write=True, counted=True) as shard:
            if shard is not None and ids:
                before = self._s.categories.before(shard, ids=ids)
                shard.update(UpdateOperation.delete_points(list(ids)))
                self._s.categories.after(shard, before)

    def delete_label(self, label: str) -> int:
        """Delete every point of ``label``."""
        from qdrant_edge import CountRequest, UpdateOperation

        with self._use("delete a label", write=True, counted=True) as shard:
            if shard is None:
                return 0
            flt = _kind_filter(None, label)
            n = int(shard.count(CountRequest(exact=True, filter=flt)))
            if n:
                every_side = [{"kind": kind, "label": label} for kind in KINDS]
                before = self._s.categories.before(shard, payloads=every_side)
                shard.update(UpdateOperation.delete_points_by_filter(flt))
                self._s.categories.after(shard, before)
            return n

    def label_counts(self, kind: str | None) -> dict[str, int]:
        """Points per label (an exact facet on the ``label`` index)."""
        with self._use("list labels") as shard:
            return {} if shard is None else _label_counts(shard, kind)

    def category_counts(self) -> dict[str, int]:
        """Distinct labels of each kind, kept from write to write (:class:`_CategoryCounts`:
        0.005 ms once kept)."""
        with self._use("count categories") as shard:
            # under the shared lock: a write, which changes them, waits for it to finish
            return self._s.categories.get(shard)

    def count(self, kind: str | None, label: str | None = None) -> int:
        """Number of points (of one kind, of one label)."""
        from qdrant_edge import CountRequest

        with self._use("count entries") as shard:
            if shard is None:
                return 0
            flt = _kind_filter(kind, label)
            return int(shard.count(CountRequest(exact=True, filter=flt)))

    def optimize(self, min_unindexed: int, starting: Callable[[int], None]) -> bool:
        """Build the HNSW index (blocking) when enough points are still unindexed; say so
        through ``starting(unindexed points)`` first."""
        with self._use("optimize", write=True) as shard:
            if shard is None:
                return False
            info = shard.info()
            unindexed = info.points_count - info.indexed_vectors_count
            if min_unindexed > 0 and unindexed < min_unindexed:
                return False
            starting(unindexed)
            shard.optimize()
            return True

    def set_indexing(self, enabled: bool, storage: StorageSettings) -> None:
        """Nothing to do: the shard indexes only in :meth:`optimize`, never during loads."""

    def indexing_deferred(self) -> bool:
        """Never: see :meth:`set_indexing`."""
        return False

    def disk_usage(self) -> dict[str, int] | None:
        """Bytes on disk per part of the shard (see ``edge_files.disk_usage``)."""
        s = self._s
        with s.lock.read():
            return shard_disk_usage(s.path / SHARD_DIR)

    def stats(self) -> dict[str, Any]:
        """Points, segments and indexed vectors of the shard."""
        with self._use("read stats") as shard:
            if shard is None:
                return {"points": 0, "segments": 0, "indexed_vectors": 0}
            info = shard.info()
            return {
                "points": int(info.points_count),
                "segments": int(info.segments_count),
                "indexed_vectors": int(info.indexed_vectors_count),
                "payload_indexes": sorted(info.payload_schema),
            }

    def close(self) -> None:
        """Drop this handle; the last one flushes and closes the shard and the lock.

        The shard stays in the registry (marked closing) until it is closed, so an open of
        the same path meanwhile waits and then opens it afresh, instead of finding the
        directory locked by its own process.
        """
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _REGISTRY_LOCK:
            shared.refs -= 1
            if shared.refs > 0:
                return
            shared.closing = True
        try:
            with shared.lock.write():
                try:
                    if shared.shard is not None:
                        with _engine("close the shard", shared.path):
                            shared.shard.flush()
                            shared.shard.close()
                finally:
                    shared.shard = None
                    release_lock(shared.lock_fd)
                    shared.lock_fd = None
        finally:
            with _REGISTRY_LOCK:
                if _REGISTRY.get(shared.path) is shared:
                    del _REGISTRY[shared.path]
            shared.closed.set()

    def drop(self) -> None:
        """Close this handle and delete the memory it created: its files, and its directory
        when nothing else is left in it.

        Raises:
            MemoryStoreError: This handle did not create it, another handle of this process
                has it open, or its files cannot be deleted.
        """
        s = self._s
        if not self.created:
            raise MemoryStoreError(
                f"the memory at {s.path} was there before this handle opened it: it is not deleted"
            )
        with _REGISTRY_LOCK:
            if s.refs > 1:
                raise MemoryStoreError(
                    f"the memory at {s.path} is open elsewhere in this process: close it first"
                )
        self.close()
        with _REGISTRY_LOCK:  # nobody may open it again while its files go
            if s.path not in _REGISTRY:
                remove_memory_files(s.path, (META_FILE, SHARD_DIR))
        self.created = False
