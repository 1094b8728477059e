"""``CategoryMemory``: one API over the embedded (qdrant-edge) and server (qdrant-client)
Qdrant backends: its record, its entries, searching, storage and copies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError, EncoderMismatchError, MemoryStoreError
from rar_agent.memory.backend import MemoryBackend
from rar_agent.memory.entries import (
    Hit,
    MemoryEntry,
    MemoryInfo,
    StoredPoint,
    check_kind,
    normalize_label,
)
from rar_agent.memory.location import MemoryLocation
from rar_agent.memory.record import EncoderRecord, MemoryRecord
from rar_agent.memory.storage import (
    Footprint,
    StorageSettings,
    estimate_footprint,
    footprint_from_parts,
)
from rar_agent.memory.vectors import as_vector_rows, check_point_ids

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "CAS_ATTEMPTS",
    "OPTIMIZE_MIN_UNINDEXED",
    "UPSERT_BATCH",
    "CategoryMemory",
    "ExtensionUpdate",
    "StoredPoint",
]

logger = logging.getLogger(__name__)

# Points per upsert call. Measured on 2 cores at 50k x 512-d (tools/bench_scale.py
# --upsert-batches): 16.2k points/s at 64-128, 15.0k at 256, 11.3k at 512, 9k at 1024-4096
# (bigger batches build bigger Python lists and lose the caches); a server's guide asks for
# 64-256 per request too.
UPSERT_BATCH = 128
# Below this many unindexed entries exact search is fast enough; building HNSW is not free.
OPTIMIZE_MIN_UNINDEXED = 10_000
#: Compare-and-set attempts of one record update before it gives up.
CAS_ATTEMPTS = 50

ExtensionUpdate = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""``fn(current extension or None) -> new extension or None (delete it)``."""


class CategoryMemory:
    """A category memory: labelled vectors in Qdrant, searched by cosine similarity.

    Each entry is one point with a named vector (``image`` for example images, ``text`` for
    class-name prototypes) and a payload ``{label, kind, source, content_hash, ...}``. Point
    ids are deterministic, so adding the same entry twice stores it once. The memory keeps a
    typed :class:`~rar_agent.memory.record.MemoryRecord` of itself (its encoder, storage
    settings, description and extensions such as the open-set calibration), changed by
    compare-and-set on its revision, and refuses vectors of another encoder. Thread-safe.

    Use :meth:`open`; close it (or use it as a context manager) when done. A memory opened
    with ``read_only=True`` refuses every write (entries, removals, its record, indexing).

    Attributes:
        on_slow_step: Called with one sentence before a step that blocks without progress
            (building the search index after a bulk load: minutes at a million entries);
            a command line prints it. ``None``: nothing is said.
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
        # Serialises this handle's record updates, so its own threads never race each
        # other's compare-and-set (other handles and processes are caught by the revision).
        self._record_lock = threading.RLock()
        self._bound: tuple[str, int] | None = None
        self._dim: int | None = None
        self._storage_request = storage
        self._storage: StorageSettings | None = None
        self._closed = False
        self.on_slow_step: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        where: MemoryLocation | str | os.PathLike[str],
        *,
        collection: str = "default",
        create: bool = True,
        read_only: bool = False,
        storage: StorageSettings | None = None,
    ) -> CategoryMemory:
        """Open a memory: embedded in a directory, or a collection on a Qdrant server.

        Args:
            where: A :class:`~rar_agent.memory.location.MemoryLocation` (a server with its
                API key, timeout, cluster layout; ``MemoryLocation.from_settings`` reads
                the settings), a directory (embedded), an ``http(s)://`` URL (a server
                without a key) or ``":memory:"`` (qdrant-client's local mode, tests only).
            collection: Collection name (1-64 of letters, digits, ``_ - .``) when ``where``
                is not a ``MemoryLocation`` (which names its own).
            create: Create the memory if it does not exist yet.
            read_only: Refuse every write through this handle; the memory must exist
                (``create`` is ignored).
            storage: Storage settings if this handle creates the memory (fixed from then
                on; ``None``: by the first build's size, ``StorageSettings.for_entries``).

        Returns:
            The open memory.

        Raises:
            ConfigError: An invalid location or collection name.
            MemoryStoreError: It cannot be opened (missing, unreachable, wrong API key).
            MemoryBusyError: Another process holds the embedded memory.
        """
        StorageSettings.check(storage)
        location = MemoryLocation.parse(where, collection)
        backend = _open_backend(location, create=create and not read_only)
        return cls(backend, location.collection, read_only=read_only, storage=storage)

    # ------------------------------------------------------------------ the record

    @property
    def record(self) -> MemoryRecord | None:
        """What the memory records about itself (a copy), ``None`` before an encoder is
        bound. Re-read from the backend (a server's record may change elsewhere)."""
        self._check_open()
        return self._read_record(refresh=True)

    @property
    def described(self) -> str:
        """How messages name this memory: ``the memory at DIR`` when embedded (its folder
        names it; a ``--memory DIR`` memory's collection is ``default`` whatever the folder),
        ``memory 'NAME' at URL`` on a server."""
        if self._backend.name == "edge":
            return f"the memory at {self._backend.location}"
        return f"memory {self.collection!r} at {self._backend.location}"

    @property
    def info(self) -> MemoryInfo:
        """What the memory records: encoder fingerprint, dim, backend, description."""
        self._check_open()
        rec = self._read_record()
        return MemoryInfo(
            fingerprint=rec.fingerprint if rec else None,
            dim=rec.dim if rec else None,
            collection=self.collection,
            backend=self._backend.name,
            description=rec.description if rec else None,
            location=self._backend.location,
            created_at=rec.created_at if rec else None,
            gate_margin=rec.gate_margin if rec else None,
            encoder_spec=rec.encoder_spec.model_dump() if rec and rec.encoder_spec else None,
            storage=rec.storage if rec else None,
        )

    def bind_encoder(
        self,
        fingerprint: str,
        dim: int,
        *,
        encoder_spec: EncoderRecord | dict[str, str | None] | None = None,
        description: str | None = None,
        expected_entries: int | None = None,
    ) -> None:
        """Record the encoder on first use (creating the storage); refuse another one later.

        Args:
            fingerprint: The encoder's fingerprint (model + weights identity).
            dim: The encoder's embedding length.
            encoder_spec: How the encoder loads again (``{"model", "pretrained"}``, what
                ``EncoderSpec.to_meta()`` gives), recorded if the memory has none yet, so
                it can be opened later without naming the encoder. The caller passes it:
                the memory knows nothing about encoders.
            description: Optional domain description to record (a hint for the ranker).
            expected_entries: How many entries the first build will add; picks the storage
                settings when none were given to :meth:`open`.

        Raises:
            EncoderMismatchError: The memory was built with another encoder.
            ConfigError: ``dim`` is not a positive integer, the fingerprint is empty, or
                the storage settings given to :meth:`open` differ from the memory's.
            MemoryStoreError: A read-only memory would have to record something.
        """
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError("the encoder fingerprint must be a non-empty string")
        dim = positive_int("the embedding dimension", dim)
        spec = EncoderRecord.parse(encoder_spec)
        with self._lock, self._record_lock:
            self._check_open()
            current = self._read_record(refresh=True)
            if current is None:
                storage = self._storage_request or StorageSettings.for_entries(expected_entries)
                self._create(
                    MemoryRecord.new(
                        self.collection,
                        fingerprint,
                        dim,
                        description=description,
                        encoder_spec=spec,
                        storage=storage,
                    )
                )
            else:
                self._confirm(current, fingerprint, dim, spec, description)
            self._check_storage(self._read_record())
            self._bound = (fingerprint, dim)

    def _create(self, record: MemoryRecord) -> None:
        """Create the storage of a new memory and store its first record."""
        self._check_writable("record its encoder (it has none yet: build it first)")
        self._backend.create(record.dim, record.to_stored(), record.storage)
        logger.info(
            "memory %r bound to encoder %s (%d-d), storage: %s",
            self.collection,
            record.fingerprint,
            record.dim,
            record.storage.describe(),
        )

    def _confirm(
        self,
        current: MemoryRecord,
        fingerprint: str,
        dim: int,
        spec: EncoderRecord | None,
        description: str | None,
    ) -> None:
        """Check an existing memory's encoder; record a new description or a missing spec."""
        if current.fingerprint != fingerprint or current.dim != dim:
            raise EncoderMismatchError(self._mismatch(current, fingerprint, dim, spec))
        changes: dict[str, Any] = {}
        if description is not None and description != current.description:
            self._check_writable("record a description")
            changes["description"] = description
        if spec is not None and current.encoder_spec is None and not self.read_only:
            changes["encoder_spec"] = spec  # a read-only memory records nothing
        if changes:
            self._commit(lambda rec: rec.changed(**changes), what="record its encoder")

    def set_encoder_spec(self, spec: EncoderRecord | dict[str, str | None] | None) -> None:
        """Record how to load the memory's encoder (``EncoderSpec.to_meta()``'s form)."""
        value = EncoderRecord.parse(spec)
        self._commit(lambda rec: rec.changed(encoder_spec=value), what="set the encoder spec")

    def set_description(self, description: str | None) -> None:
        """Record a domain description (e.g. "bird species"); requires a bound encoder."""
        self._commit(lambda rec: rec.changed(description=description), what="set the description")

    def set_gate_margin(self, margin: float | None) -> None:
        """Record the ranking-gate margin the evaluation harness chose (for ``gate="auto"``)."""
        value = None if margin is None else float(margin)
        self._commit(lambda rec: rec.changed(gate_margin=value), what="set the gate margin")

    def extension(self, name: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """The extension ``name`` of the record (a shallow copy), ``None`` when there is none.

        Read from this handle's copy of the record (a server is not asked on every call:
        searches read the calibration this way); :meth:`update_extension` re-reads it, and so
        does ``refresh`` (a server's record may change in other processes).
        """
        self._check_open()
        rec = self._read_record(refresh=refresh)
        value = rec.extensions.get(name) if rec else None
        return dict(value) if value is not None else None

    def update_extension(self, name: str, fn: ExtensionUpdate) -> dict[str, Any] | None:
        """Change the extension ``name`` atomically: ``fn(current) -> new`` (``None``: delete).

        A compare-and-set on the record's revision: ``fn`` gets the current extension (or
        ``None``) and returns the new one; if the record changed meanwhile, ``fn`` runs
        again on the newer one (so it must only compute, and may run more than once).
        Updates through this handle are serialised; other handles and processes are caught
        by the revision. On the embedded backend the check and the atomic file replace
        happen under the shard's write lock, so no update is ever lost; on a server,
        Qdrant has no conditional write for collection metadata, so another *process*
        writing between this one's re-read and write can still win (see
        ``ServerBackend.replace_meta``).

        Args:
            name: The extension's name (``"calibration"``, ...).
            fn: The change, from the current JSON object (or ``None``) to the new one.

        Returns:
            The extension as stored (``None`` when deleted or absent).

        Raises:
            MemoryStoreError: No encoder is bound yet, the memory is read-only, or
                ``CAS_ATTEMPTS`` attempts all met a newer record.
            ConfigError: ``fn`` returned something that is not a dict or ``None``.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"an extension name must be a non-empty string, not {name!r}")
        result: list[dict[str, Any] | None] = [None]

        def change(rec: MemoryRecord) -> MemoryRecord | None:
            current = rec.extensions.get(name)
            new = fn(dict(current) if current is not None else None)
            if new is not None and not isinstance(new, dict):
                raise ConfigError(
                    f"the update of extension {name!r} returned {type(new).__name__}, not a "
                    "dict or None"
                )
            result[0] = new
            if new == current:
                return None
            extensions = {k: v for k, v in rec.extensions.items() if k != name}
            if new is not None:
                extensions[name] = new
            return rec.changed(extensions=extensions)

        self._commit(change, what=f"update its {name}")
        return result[0]

    def bind_record(self, record: MemoryRecord) -> None:
        """Create this memory as a copy of another's record (``memory push`` / ``pull``).

        Everything is kept (encoder, storage settings, extensions, ...) except the
        collection name, which names this memory. A memory that already exists must hold
        the same encoder; its own record is then replaced by ``record``.

        Raises:
            EncoderMismatchError: This memory exists with another encoder.
        """
        storage = record.storage
        self._check_writable("copy another memory into it")
        with self._lock, self._record_lock:
            self._storage_request = storage
            self.bind_encoder(record.fingerprint, record.dim)
            self._commit(
                lambda rec: record.changed(collection=self.collection, revision=rec.revision),
                what="copy another memory's record",
            )
            self._storage = storage

    def _read_record(self, *, refresh: bool = False) -> MemoryRecord | None:
        data = self._backend.read_meta(refresh=refresh)
        if not data:
            return None
        return MemoryRecord.from_stored(
            data, collection=self.collection, where=self._backend.location
        )

    def _commit(
        self, change: Callable[[MemoryRecord], MemoryRecord | None], *, what: str
    ) -> MemoryRecord:
        """Apply ``change`` to the record by compare-and-set on its revision, retried.

        ``change`` returns the new record (with the revision one higher) or ``None`` when
        nothing changes.
        """
        self._check_writable(what)
        with self._record_lock:
            for attempt in range(CAS_ATTEMPTS):
                self._check_open()
                current = self._read_record(refresh=True)
                if current is None:
                    raise MemoryStoreError(
                        f"memory {self.collection!r} has no encoder bound yet, so it cannot "
                        f"{what}: build it (or call bind_encoder) first"
                    )
                new = change(current)
                if new is None:
                    return current
                if new.revision != current.revision + 1:
                    new = new.model_copy(update={"revision": current.revision + 1})
                if self._backend.replace_meta(new.to_stored(), current.revision):
                    return new
                logger.debug("memory %r: record changed meanwhile, retrying", self.collection)
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise MemoryStoreError(
            f"memory {self.collection!r} could not {what}: its record kept changing under "
            f"{CAS_ATTEMPTS} attempts (many writers at once); try again"
        )

    def _mismatch(
        self, stored: MemoryRecord, fingerprint: str, dim: int, spec: EncoderRecord | None
    ) -> str:
        """The refusal naming both encoders (by spec where known) and what to do."""
        built = f"{stored.fingerprint!r} ({stored.dim}-d)"
        if stored.encoder_spec:
            built = f"{stored.encoder_spec.label} ({stored.fingerprint}, {stored.dim}-d)"
        given = f"{spec.label} ({fingerprint}, {dim}-d)" if spec else f"{fingerprint!r} ({dim}-d)"
        own = (
            " or leave them out and its own loads (in Python: Recognizer(memory) with no encoder)"
            if stored.encoder_spec
            else ""
        )
        renamed = _renamed_weights(stored.fingerprint, fingerprint)
        if renamed is not None:
            return f"{self.described} was built with encoder {built}, not {given}: {renamed}"
        return (
            f"{self.described} was built with encoder "
            f"{built}, not {given}: use the same --clip-model / --encoder it was built with (in "
            f"Python: load_encoder of that spec){own}, or build a memory for this encoder under "
            "another collection"
        )

    # ------------------------------------------------------------------ storage

    def _check_storage(self, record: MemoryRecord | None) -> None:
        stored = record.storage if record else StorageSettings()
        wanted = self._storage_request
        if wanted is not None and wanted != stored:
            raise ConfigError(
                f"{self.described} was created with "
                f"storage settings ({stored.describe()}), not ({wanted.describe()}): they are "
                "fixed at creation; drop the storage options, or build into another --collection"
            )
        self._storage = stored

    @property
    def storage(self) -> StorageSettings:
        """The memory's storage settings (the defaults for a memory created without any)."""
        if self._storage is None:
            self._check_open()
            rec = self._read_record()
            if rec is None:  # not created yet: what creating it now would use
                return self._storage_request or StorageSettings()
            self._storage = rec.storage
        return self._storage

    def write_points(self, points: Sequence[StoredPoint]) -> None:
        """Store points as another memory's :meth:`scroll` gave them (``memory push/pull``).

        Ids, kinds, vectors and payloads are kept exactly; the memory must be bound (see
        :meth:`bind_record`) to vectors of the same length.

        Raises:
            MemoryStoreError: No encoder is bound.
            ConfigError: A bad id, kind or vector (nothing is written).
        """
        self._check_writable("write entries")
        with self._lock:
            if self._bound is None:
                raise MemoryStoreError("bind the source's record before writing its points")
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
        self, offset: str | None = None, limit: int = 512, *, label: str | None = None
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of stored entries in id order, with their vectors (for copying a memory).

        Args:
            offset: The id to start from (``None``: the first); pass the returned next
                offset to continue.
            limit: Entries per page.
            label: Only this category's entries (a filtered read on the ``label`` index).

        Returns:
            ``(points, next_offset)``; ``next_offset`` is ``None`` after the last page.
        """
        self._check_open()
        wanted = None if label is None else normalize_label(label)
        page, following = self._backend.scroll(offset, int(limit), wanted)
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

    def get_vectors(self, ids: Iterable[str], *, kind: str | None = None) -> dict[str, list[float]]:
        """The stored vectors of the entries among ``ids`` (their own kind's vector).

        Args:
            ids: Entry ids.
            kind: Entries known to be of this kind (``"image"``/``"text"``, as a search's
                hits are): only that vector is read, without the payloads (faster); an
                entry of the other kind is then missing from the answer.
        """
        self._check_open()
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if kind is not None:
            check_kind(kind)
            points = self._backend.retrieve_vectors(wanted, using=kind)
            return {pid: vectors[kind] for pid, vectors, _ in points}
        out: dict[str, list[float]] = {}
        for pid, vectors, payload in self._backend.retrieve_vectors(wanted):
            stored = payload.get("kind")
            vector = (
                vectors.get(stored) if stored in vectors else next(iter(vectors.values()), None)
            )
            if vector:
                out[pid] = list(vector)
        return out

    def vectors_of(self, label: str) -> dict[str, np.ndarray]:
        """The stored vectors of one category's entries, by kind (``"image"``/``"text"``), as
        float32 unit rows ``(n, dim)``; empty when no entry has ``label``.

        A filtered read on the ``label`` index: it costs what the category holds, not what
        the memory does.
        """
        rows: dict[str, list[list[float]]] = {}
        offset: str | None = None
        while True:
            page, offset = self.scroll(offset, 512, label=label)
            for _, kind, vector, _ in page:
                if vector:
                    rows.setdefault(kind, []).append(vector)
            if offset is None:
                break
        out = {}
        for kind, found in rows.items():
            matrix = np.asarray(found, dtype=np.float32)
            out[kind] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
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

        def starting(unindexed: int) -> None:
            if self.on_slow_step is not None and unindexed > 0:
                self.on_slow_step(
                    f"indexing {unindexed:,} entries for fast search: no progress is shown "
                    "while it runs (about half a minute per 100k entries on 2 cores)"
                )

        return self._backend.optimize(min_unindexed, starting)

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
        self,
        vectors: ArrayLike,
        *,
        kind: str = "image",
        limit: int = 50,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """Nearest entries of each row of ``vectors`` (one batched engine call).

        ``with_vectors``: each hit reads its stored vector out of the search's answer
        (``Hit.read_vector``) where the backend hands them over with it (the embedded one
        does; a server's hits come without, and :meth:`get_vectors` reads them).

        Raises:
            EncoderMismatchError: The vectors' length differs from the memory's.
            ConfigError: Bad ``kind``/``limit`` or non-finite vectors.
        """
        check_kind(kind)
        positive_int("limit", limit)
        self._check_open()
        dim = self._stored_dim()
        rows = self._as_matrix(vectors, dim, what="query vectors")
        if rows.shape[0] == 0:
            return []
        if dim is None:
            return [[] for _ in range(rows.shape[0])]
        results = self._backend.query_batch(
            rows, kind, int(limit), self.storage, with_vectors=with_vectors
        )
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

    def category_counts(self) -> dict[str, int]:
        """How many categories (distinct labels) each side holds: ``{"image": n, "text":
        m}``. Counted once and kept: an embedded memory's writes of a few entries keep them
        up to date, any other write has them counted anew; a server's are counted anew after
        this handle writes and every ``CATEGORY_COUNTS_FOR_S`` seconds (other processes'
        writes). Cheap enough for every query."""
        self._check_open()
        return self._backend.category_counts()

    def count(self, kind: str | None = None, *, label: str | None = None) -> int:
        """Number of entries (optionally of one kind, of one label: an indexed count, far
        cheaper than :meth:`labels` on a memory with many labels)."""
        self._check_open()
        wanted = None if label is None else normalize_label(label)
        return self._backend.count(None if kind is None else check_kind(kind), wanted)

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

    @property
    def created(self) -> bool:
        """Whether this handle created the memory: no memory was in its directory when it
        was opened, or it created the server collection."""
        return self._backend.created

    def drop(self) -> None:
        """Delete the memory this handle created, and close the handle: a first write that
        failed leaves nothing behind (an embedded directory goes when nothing else is in it).

        Raises:
            MemoryStoreError: This handle did not create it (a memory that was there before
                is never deleted; the handle stays open), it is open elsewhere in this
                process, or its storage cannot be deleted.
        """
        with self._lock:
            self._check_open()
            self._check_writable("be deleted")
            if not self.created:
                raise MemoryStoreError(
                    f"{self.described} was there before this handle opened it: it is not deleted"
                )
            self._closed = True
            try:
                self._backend.drop()
            finally:
                self._backend.close()

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
            rec = self._read_record()
            self._dim = rec.dim if rec else None
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
        rec = self._read_record()
        return rec.fingerprint if rec else None

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


def _open_backend(location: MemoryLocation, *, create: bool) -> MemoryBackend:
    """Open the storage of the memory at ``location`` (the engine is imported only now).

    Raises:
        MemoryStoreError: It cannot be opened (missing, unreachable, wrong API key).
        MemoryBusyError: Another process holds the embedded memory.
    """
    if location.path is not None:
        from rar_agent.memory.edge import open_edge

        return open_edge(location.path, create=create)
    from rar_agent.memory.server import ServerBackend

    return ServerBackend(location, create=create)


def _renamed_weights(built: str, given: str) -> str | None:
    """What to do where two encoder fingerprints (``backend:name:digest``) differ by name
    only: the same weights, moved to a folder or file of another name (a memory copied to
    another machine), which a memory does not take for its own; ``None`` otherwise."""
    old, new = _fingerprint_parts(built), _fingerprint_parts(given)
    if old is None or new is None or old[1] == new[1] or (old[0], old[2]) != (new[0], new[2]):
        return None
    was, now = old[1].rsplit(":", 1)[-1], new[1].rsplit(":", 1)[-1]
    return (
        f"these are its weights (digest {old[2]}), in a folder or file named {now!r}, where "
        f"the memory knows them by the name {was!r}: the name is part of the encoder a memory "
        f"is bound to, so give them that name again (rename or copy {now!r} to {was!r}) and "
        "pass that path"
    )


def _fingerprint_parts(fingerprint: str) -> tuple[str, str, str] | None:
    """``(backend, name, digest)`` of an encoder fingerprint, or ``None`` for another form."""
    backend, _, rest = fingerprint.partition(":")
    name, colon, digest = rest.rpartition(":")
    return (backend, name, digest) if colon and name else None
