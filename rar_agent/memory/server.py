"""Server backend: a Qdrant server (or cluster) through qdrant-client.

The memory's record (encoder fingerprint, dim, ...) lives in the collection's own metadata
under the key ``rar_memory`` (Qdrant >= 1.16). ``MemoryLocation.in_process_store()`` runs
qdrant-client's pure-Python local mode: a test double for this code path, not a store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rar_agent.errors import MemoryNotFoundError, MemoryStoreError, RarError
from rar_agent.memory.backend import PointVectors, ScrollPage
from rar_agent.memory.engine_settings import collection_config, server_search_params
from rar_agent.memory.entries import KINDS, Hit
from rar_agent.memory.location import IN_PROCESS, MemoryLocation
from rar_agent.memory.storage import StorageSettings

if TYPE_CHECKING:
    import numpy as np

__all__ = ["META_KEY", "ServerBackend"]

logger = logging.getLogger(__name__)

META_KEY = "rar_memory"
_CHUNK = 1024
_CLIENT_TIMEOUT_S = 5
"""qdrant-client's request timeout when none is given (its HTTP client's default)."""
CATEGORY_COUNTS_FOR_S = 10.0
"""Seconds a handle keeps its count of categories per kind (:meth:`ServerBackend.
category_counts`) before asking the server again: its own writes forget it at once, other
processes' writes are seen within this time."""


def _note_a_plain_key(location: MemoryLocation) -> None:
    """Warn, once per opening, that the API key goes unencrypted beyond this machine.

    qdrant-client warns of any key over ``http://``, loopback included (docker compose's own
    ``http://localhost:6333``), as a Python warning that prints a line of its source code.
    """
    from urllib.parse import urlsplit

    from rar_agent.netfetch import is_loopback

    url = location.url or ""
    if location.api_key and url.startswith("http://"):
        host = urlsplit(url).hostname or ""
        if not is_loopback(host):
            logger.warning(
                "the Qdrant API key goes unencrypted to %s: give an https:// URL (docs/deploy.md, "
                "TLS) unless the network between is yours alone (e.g. docker compose's own)",
                url,
            )


class ServerBackend:
    """One collection on a Qdrant server (or qdrant-client's in-process local mode).

    Args:
        location: Where the collection lives: URL, API key, timeout and the cluster layout
            of a new collection, or ``in_process`` (tests only).
        create: Whether a missing collection may be created (on ``bind_encoder``).

    Raises:
        MemoryStoreError: The server is unreachable, refuses the API key, or the collection
            is missing and ``create`` is false.
    """

    name = "server"
    created = False

    def __init__(self, location: MemoryLocation, *, create: bool = True) -> None:
        from qdrant_client import QdrantClient

        self.collection = collection = location.collection
        self.location = location.describe()
        self._local = location.url is None
        self._cluster = location.cluster_layout
        # Local mode is plain Python dicts: serialise it. A server handles concurrency itself.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._local else contextlib.nullcontext()
        )
        # Serialises this handle's record writes (see ``replace_meta``).
        self._meta_lock = threading.Lock()
        timeout = max(1, round(location.timeout)) if location.timeout is not None else None
        self._timeout = timeout or _CLIENT_TIMEOUT_S  # for the timed-out message
        with self._call("connect"):
            if self._local:
                self._client: Any = QdrantClient(location=IN_PROCESS)
            else:
                _note_a_plain_key(location)
                with warnings.catch_warnings():  # said above, in words, where it matters
                    warnings.filterwarnings("ignore", message="Api key is used with an insecure")
                    self._client = QdrantClient(
                        url=location.url,
                        api_key=location.api_key,
                        timeout=timeout,
                        check_compatibility=False,
                    )
            exists = self._client.collection_exists(collection)
        if not exists and not create:
            raise MemoryNotFoundError(
                f"no collection {collection!r} on {self.location}: build it first "
                "(rar-agent memory build) or check --collection"
            )
        self._exists = exists
        self._meta: dict[str, Any] | None = self._fetch_meta() if exists else None
        self._closed = False
        self._categories: tuple[float, dict[str, int]] | None = None  # (when counted, counts)

    # -------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Map qdrant-client / transport failures to ``MemoryStoreError``."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        where = f"the Qdrant server at {self.location}" if not self._local else "local Qdrant"
        try:
            with self._lock:
                yield
        except RarError:
            raise
        except UnexpectedResponse as e:
            if e.status_code in (401, 403):
                raise MemoryStoreError(
                    f"{where} refused the API key ({e.status_code}) while trying to {what}: "
                    "set the right key with --api-key or RAR_QDRANT_API_KEY"
                ) from e
            detail = e.content.decode(errors="replace").strip()[:300]
            raise MemoryStoreError(
                f"{where} answered HTTP {e.status_code}{f' ({detail})' if detail else ''} "
                f"while trying to {what}: check that --qdrant-url / RAR_QDRANT_URL is a Qdrant "
                "server's address (such as http://localhost:6333) and that the server is healthy"
            ) from e
        except ResponseHandlingException as e:
            source = e.source
            timed_out = "timeout" in type(source).__name__.lower()
            state = f"did not answer within {self._timeout} s" if timed_out else "is unreachable"
            longer = (
                "; or allow it longer: --qdrant-timeout SECONDS / RAR_QDRANT_TIMEOUT"
                if timed_out
                else ""
            )
            raise MemoryStoreError(
                f"{where} {state} ({type(source).__name__}: {source}) while trying to {what}: "
                "check --qdrant-url / RAR_QDRANT_URL and that the server is running "
                f"(docker compose up -d qdrant){longer}"
            ) from e
        except Exception as e:
            raise MemoryStoreError(f"{where} failed to {what}: {type(e).__name__}: {e}") from e

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryStoreError(f"memory {self.collection!r} is closed: open it again")

    def _filter(self, kind: str | None, label: str | None = None) -> Any:
        from qdrant_client import models

        must: list[Any] = []
        if kind is not None:
            must.append(models.FieldCondition(key="kind", match=models.MatchValue(value=kind)))
        if label is not None:
            must.append(models.FieldCondition(key="label", match=models.MatchValue(value=label)))
        return models.Filter(must=must) if must else None

    def _fetch_meta(self) -> dict[str, Any] | None:
        with self._call("read the collection"):
            info = self._client.get_collection(self.collection)
        meta = (info.config.metadata or {}).get(META_KEY)
        return dict(meta) if isinstance(meta, dict) else None

    # -------------------------------------------------------------- metadata

    def read_meta(self, *, refresh: bool = False) -> dict[str, Any] | None:
        """The memory metadata from the collection (cached; ``refresh`` re-reads it)."""
        self._check_open()
        if refresh and self._exists:
            self._meta = self._fetch_meta()
        return dict(self._meta) if self._meta is not None else None

    def create(self, dim: int, meta: dict[str, Any], storage: StorageSettings) -> None:
        """Create the collection (named vectors ``image``/``text``, cosine) and record meta."""
        from qdrant_client import models

        self._check_open()
        if not self._exists:
            with self._call("create the collection"):
                if not self._client.collection_exists(self.collection):
                    self._client.create_collection(
                        self.collection,
                        **collection_config(dim, storage, **self._cluster),
                        metadata={META_KEY: meta},
                    )
                    self.created = True
                with warnings.catch_warnings():  # local mode warns that indexes do nothing
                    warnings.simplefilter("ignore", UserWarning)
                    for field in ("label", "kind"):
                        self._client.create_payload_index(
                            self.collection, field, models.PayloadSchemaType.KEYWORD, wait=True
                        )
            self._exists = True
        self._check_vectors(dim)
        self._write_meta(meta)

    def _check_vectors(self, dim: int) -> None:
        with self._call("read the collection"):
            info = self._client.get_collection(self.collection)
        vectors = info.config.params.vectors
        sizes = {k: v.size for k, v in vectors.items()} if isinstance(vectors, dict) else {}
        if any(sizes.get(k) != dim for k in KINDS):
            raise MemoryStoreError(
                f"collection {self.collection!r} on {self.location} has vectors {sizes or vectors}"
                f", not named vectors 'image' and 'text' of size {dim}: use another --collection"
            )

    def replace_meta(self, meta: dict[str, Any], expected_revision: int) -> bool:
        """Store ``meta`` if the stored record is still at ``expected_revision``.

        Qdrant offers no conditional write for collection metadata (its conditional update,
        ``update_filter``, applies to points only), so this is a compare-and-set within
        this handle: the record is re-read from the server and written under a lock.
        Writers in other processes (or other handles) can still interleave between that
        read and the write; the last write then wins.

        Returns:
            Whether it was written (``False``: another writer changed it first).
        """
        with self._meta_lock:
            stored = self._fetch_meta() if self._exists else None
            if _revision(stored) != expected_revision:
                self._meta = stored
                return False
            self._write_meta(meta)
            return True

    def _write_meta(self, meta: dict[str, Any]) -> None:
        """Store ``meta`` in the collection metadata and check the server kept it."""
        self._check_open()
        with self._call("write the collection metadata"):
            self._client.update_collection(self.collection, metadata={META_KEY: meta})
        stored = self._fetch_meta()
        if stored != meta:
            raise MemoryStoreError(
                f"the Qdrant server at {self.location} did not keep the collection metadata: "
                "it needs Qdrant 1.16 or newer; upgrade the server"
            )
        self._meta = dict(meta)

    # -------------------------------------------------------------- data

    def upsert(
        self,
        ids: Sequence[str],
        kinds: Sequence[str],
        vectors: Sequence[list[float]],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Upsert one batch of points (waits until applied)."""
        from qdrant_client import models

        self._check_open()
        points = [
            models.PointStruct(id=pid, vector={kind: vec}, payload=payload)
            for pid, kind, vec, payload in zip(ids, kinds, vectors, payloads, strict=True)
        ]
        with self._call("write entries"):
            self._client.upsert(self.collection, points=points, wait=True)
        self._categories = None

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
            return [_point(r) for r in records]
        records = self._retrieve(ids, "read entries", payload=False, vectors=[using])
        points = (_point(r) for r in records)
        return [(pid, {using: v[using]}, {}) for pid, v, _ in points if v.get(using)]

    def _retrieve(
        self, ids: Sequence[str], what: str, *, payload: bool, vectors: bool | list[str]
    ) -> list[Any]:
        """The stored records among ``ids``, fetched in chunks (none before creation)."""
        self._check_open()
        records: list[Any] = []
        if not self._exists:
            return records
        with self._call(what):
            for i in range(0, len(ids), _CHUNK):
                records += self._client.retrieve(
                    self.collection,
                    list(ids[i : i + _CHUNK]),
                    with_payload=payload,
                    with_vectors=vectors,
                )
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
        """Batch nearest-neighbour search in one request.

        ``with_vectors`` is declined: a server would send every hit's vector over the wire
        (50 of them a query, where the retriever reads about 10 and keeps them for the next
        queries), so the hits come without a reader and the caller reads what it needs."""
        from qdrant_client import models

        self._check_open()
        if not self._exists:
            return [[] for _ in vectors]
        # Local mode is an exact search that warns about any search parameters.
        params = None if self._local else server_search_params(storage)
        requests = [
            models.QueryRequest(query=v, using=using, limit=limit, with_payload=True, params=params)
            for v in vectors.tolist()
        ]
        with self._call("search"):
            responses = self._client.query_batch_points(self.collection, requests=requests)
        return [[Hit.from_point(p.id, p.score, p.payload) for p in r.points] for r in responses]

    def scroll(self, offset: str | None, limit: int, label: str | None = None) -> ScrollPage:
        """One page of points (of ``label``) in id order, with vectors and payloads, and the
        next offset."""
        self._check_open()
        if not self._exists:
            return [], None
        with self._call("read entries"):
            records, following = self._client.scroll(
                self.collection,
                scroll_filter=self._filter(None, label),
                offset=offset,
                limit=limit,
                with_payload=True,
                with_vectors=True,
            )
        return [_point(r) for r in records], None if following is None else str(following)

    def delete_ids(self, ids: Sequence[str]) -> None:
        """Delete points by id."""
        from qdrant_client import models

        self._check_open()
        if not self._exists or not ids:
            return
        with self._call("delete entries"):
            self._client.delete(
                self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )
        self._categories = None

    def delete_label(self, label: str) -> int:
        """Delete every point of ``label``."""
        from qdrant_client import models

        self._check_open()
        if not self._exists:
            return 0
        flt = self._filter(None, label)
        with self._call("delete a label"):
            n = int(self._client.count(self.collection, count_filter=flt, exact=True).count)
            if n:
                self._client.delete(
                    self.collection, points_selector=models.FilterSelector(filter=flt), wait=True
                )
        self._categories = None
        return n

    def label_counts(self, kind: str | None) -> dict[str, int]:
        """Points per label (an exact facet on ``label``)."""
        self._check_open()
        if not self._exists:
            return {}
        flt = self._filter(kind)
        with self._call("list labels"):
            total = int(self._client.count(self.collection, count_filter=flt, exact=True).count)
            if total == 0:
                return {}
            response = self._client.facet(
                self.collection, "label", facet_filter=flt, limit=total, exact=True
            )
        return {str(h.value): int(h.count) for h in response.hits if h.count > 0}

    def category_counts(self) -> dict[str, int]:
        """Distinct labels of each kind, kept until this handle writes or for
        ``CATEGORY_COUNTS_FOR_S`` (other processes write to a server unseen)."""
        kept = self._categories
        if kept is not None and time.monotonic() - kept[0] < CATEGORY_COUNTS_FOR_S:
            return dict(kept[1])
        counts: dict[str, int] = {kind: len(self.label_counts(kind)) for kind in KINDS}
        self._categories = (time.monotonic(), counts)
        return dict(counts)

    def count(self, kind: str | None, label: str | None = None) -> int:
        """Number of points (of one kind, of one label)."""
        self._check_open()
        if not self._exists:
            return 0
        with self._call("count entries"):
            result = self._client.count(
                self.collection, count_filter=self._filter(kind, label), exact=True
            )
        return int(result.count)

    def optimize(self, min_unindexed: int, starting: Callable[[int], None]) -> bool:
        """Nothing to do: a server builds its indexes in the background."""
        self._check_open()
        return False

    def set_indexing(self, enabled: bool, storage: StorageSettings) -> None:
        """Defer HNSW building during a bulk load (``m=0``, Qdrant's advice: segments are
        still merged and quantized), or restore the memory's ``m`` (indexes everything once)."""
        from qdrant_client import models

        self._check_open()
        if self._local or not self._exists:
            return  # local mode has no index
        m = storage.hnsw_m if enabled else 0
        with self._call("set the indexing mode"):
            self._client.update_collection(self.collection, hnsw_config=models.HnswConfigDiff(m=m))

    def indexing_deferred(self) -> bool:
        """Whether a bulk load left HNSW building off (``m=0``)."""
        self._check_open()
        if self._local or not self._exists:
            return False
        with self._call("read the collection"):
            info = self._client.get_collection(self.collection)
        return info.config.hnsw_config.m == 0

    def disk_usage(self) -> dict[str, int] | None:
        """Unknown: a server does not report a collection's files."""
        return None

    def stats(self) -> dict[str, Any]:
        """Points, segments, indexed vectors and cluster layout as the server reports them."""
        self._check_open()
        if not self._exists:
            return {"points": 0, "segments": 0, "indexed_vectors": 0}
        with self._call("read stats"):
            info = self._client.get_collection(self.collection)
        params = info.config.params
        return {
            "points": int(info.points_count or 0),
            "segments": int(info.segments_count or 0),
            "indexed_vectors": int(info.indexed_vectors_count or 0),
            "status": str(getattr(info.status, "value", info.status)),
            "payload_indexes": sorted(info.payload_schema or {}),
            "shard_number": params.shard_number,
            "replication_factor": params.replication_factor,
            "write_consistency_factor": params.write_consistency_factor,
        }

    def close(self) -> None:
        """Close the client (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()

    def drop(self) -> None:
        """Delete the collection this handle created, then close (nothing else is deleted).

        Raises:
            MemoryStoreError: This handle did not create it, or the server failed to delete it.
        """
        if not self.created:
            raise MemoryStoreError(
                f"collection {self.collection!r} on {self.location} was there before this "
                "handle opened it: it is not deleted"
            )
        self._check_open()
        try:
            with self._call("delete the collection it created"):
                self._client.delete_collection(self.collection)
            self.created = self._exists = False
        finally:
            self.close()


def _revision(meta: dict[str, Any] | None) -> int:
    """The revision of a stored record (0 for none, or one from before revisions)."""
    value = (meta or {}).get("revision", 0)
    return value if isinstance(value, int) else 0


def _point(record: Any) -> PointVectors:
    """``(id, named vectors, payload)`` of a qdrant-client record."""
    vectors = dict(record.vector) if isinstance(record.vector, dict) else {}
    return str(record.id), vectors, dict(record.payload or {})
