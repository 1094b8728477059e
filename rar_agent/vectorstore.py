"""The category memory as a LangChain ``VectorStore``.

:class:`CategoryVectorStore` stores documents in a :class:`~rar_agent.memory.CategoryMemory`
(either Qdrant backend), so ``as_retriever()`` and existing RAG code work over it:

- ``add_texts`` embeds text with any LangChain ``Embeddings`` (usually the encoder's
  :class:`~rar_agent.encoders.EncoderEmbeddings`) into the ``text`` side; ``add_images``
  embeds image files into the ``image`` side. Each entry's label is ``metadata["label"]``
  when given, else the text itself.
- Any string id works: Qdrant wants UUIDs, so an id that is not one is mapped to a UUIDv5
  and the original is kept in the payload and returned as ``Document.id``.
- ``max_marginal_relevance_search`` (also ``as_retriever(search_type="mmr")``) picks among
  the ``fetch_k`` nearest by maximal marginal relevance over their stored vectors.
- Documents round-trip exactly (``page_content``, ``metadata``, ``id``). Entries written by
  the memory builders come back with the label as content and their payload as metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError, LabelError

if TYPE_CHECKING:
    from rar_agent.memory import CategoryMemory, Hit

__all__ = ["CategoryVectorStore", "ID_NAMESPACE", "point_id_for"]

#: Namespace of the UUIDv5 that maps arbitrary document ids to Qdrant point ids. Fixed forever.
ID_NAMESPACE = uuid.UUID("4f1d7e2a-9c3b-5e8d-a1f0-7261722d7673")
_DOC_ID = "doc_id"
_CONTENT = "page_content"
_METADATA = "metadata"
_SOURCE = "langchain"


def point_id_for(doc_id: str) -> str:
    """The Qdrant point id of a document id (a UUID stays as it is; others get a UUIDv5)."""
    text = str(doc_id)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(ID_NAMESPACE, text))


def _fingerprint(embeddings: Embeddings) -> str:
    """What the memory records as its 'encoder' for these embeddings."""
    encoder = getattr(embeddings, "encoder", None)
    if encoder is not None and isinstance(getattr(encoder, "fingerprint", None), str):
        return str(encoder.fingerprint)
    cls = type(embeddings)
    model = next(
        (
            str(getattr(embeddings, a))
            for a in ("model", "model_name", "size")
            if getattr(embeddings, a, None) is not None
        ),
        "",
    )
    return f"langchain:{cls.__module__}.{cls.__qualname__}:{model}"


def _check_positive(name: str, value: object) -> None:
    """Refuse a count that is not a positive integer (``True`` is not a count)."""
    positive_int(name, value)


def _label_for(text: str, metadata: dict[str, Any]) -> str:
    from rar_agent.memory import MAX_LABEL_CHARS, normalize_label

    label = metadata.get("label")
    if label is not None:
        return normalize_label(label)
    cleaned = " ".join(ch for ch in text.split() if ch.isprintable())[:MAX_LABEL_CHARS]
    if not cleaned:
        raise LabelError("a document has empty text and no metadata['label']: give it a label")
    return normalize_label(cleaned)


class CategoryVectorStore(VectorStore):
    """A LangChain vector store over a category memory.

    Args:
        memory: The memory to read and write (its encoder binding is checked against the
            embeddings' fingerprint on first write).
        embedding: Any LangChain ``Embeddings``; with the encoder's ``EncoderEmbeddings``
            text queries also work against image entries (``kind="image"``).
        kind: The memory side ``similarity_search`` queries: ``"text"`` (default) or
            ``"image"``.
        fingerprint: Override the fingerprint recorded for ``embedding``.

    Example:
        ```python
        store = CategoryVectorStore(recognizer.memory, EncoderEmbeddings(recognizer.encoder))
        store.add_texts(["grey heron"], metadatas=[{"label": "grey heron"}])
        store.as_retriever(search_kwargs={"k": 3}).invoke("a wading bird")
        ```
    """

    def __init__(
        self,
        memory: CategoryMemory,
        embedding: Embeddings,
        *,
        kind: Literal["text", "image"] = "text",
        fingerprint: str | None = None,
    ) -> None:
        if kind not in ("text", "image"):
            raise ConfigError(f"kind must be 'text' or 'image', not {kind!r}")
        self.memory = memory
        self._embedding = embedding
        self.kind = kind
        self.fingerprint = fingerprint or _fingerprint(embedding)

    @property
    def embeddings(self) -> Embeddings:
        """The embeddings used for texts and queries."""
        return self._embedding

    # ------------------------------------------------------------------ writing

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed texts and store them as ``text`` entries (same id = replaced).

        Args:
            texts: Contents; each is also the entry's label unless ``metadata["label"]``.
            metadatas: One JSON-serialisable dict per text.
            ids: Document ids (any strings; ``None`` items get a new UUID).

        Returns:
            The document ids, in order.
        """
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if texts else []
        return self._store(texts, vectors, "text", metadatas, ids)

    def add_images(
        self,
        uris: Sequence[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed image files (paths, URLs or data URIs) as ``image`` entries.

        Each metadata dict needs a ``label``: the category the image is an example of.

        Raises:
            ConfigError: The embeddings cannot embed images (no ``embed_image``).
            LabelError: An image has no ``metadata["label"]``.
        """
        uris = list(uris)
        embed_image: Callable[[list[str]], list[list[float]]] | None = getattr(
            self._embedding, "embed_image", None
        )
        if embed_image is None:
            raise ConfigError(
                f"{type(self._embedding).__name__} cannot embed images: use the encoder's "
                "EncoderEmbeddings (rar_agent.encoders) for add_images"
            )
        for i, meta in enumerate(metadatas or [{}] * len(uris)):
            if "label" not in meta:
                raise LabelError(f"image {uris[i]!r} has no metadata['label']: give its category")
        vectors = embed_image(uris) if uris else []
        return self._store(uris, vectors, "image", metadatas, ids)

    def _store(
        self,
        texts: list[str],
        vectors: Sequence[Sequence[float]],
        kind: str,
        metadatas: list[dict[str, Any]] | None,
        ids: Sequence[str | None] | None,
    ) -> list[str]:
        from rar_agent.memory import MemoryEntry

        if metadatas is not None and len(metadatas) != len(texts):
            raise ConfigError(f"got {len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise ConfigError(f"got {len(texts)} texts but {len(ids)} ids")
        if not texts:
            return []
        doc_ids = [
            str(i) if i is not None else str(uuid.uuid4()) for i in (ids or [None] * len(texts))
        ]
        metas = [dict(m) for m in metadatas] if metadatas is not None else [{}] * len(texts)
        entries = [
            MemoryEntry(
                _label_for(text, meta),
                kind,  # type: ignore[arg-type]
                meta.get("source", _SOURCE) if isinstance(meta.get("source"), str) else _SOURCE,
                hashlib.sha256(text.encode("utf-8")).hexdigest(),
                extra={_DOC_ID: doc_id, _CONTENT: text, _METADATA: meta},
            )
            for text, meta, doc_id in zip(texts, metas, doc_ids, strict=True)
        ]
        from rar_agent.encoders.spec import spec_of
        from rar_agent.pipeline.teacher import learn_entries

        spec = spec_of(getattr(self.embeddings, "encoder", None))
        self.memory.bind_encoder(
            self.fingerprint,
            len(vectors[0]),
            encoder_spec=spec.to_meta() if spec is not None else None,
        )
        # The teacher's door: the calibration follows every write.
        learn_entries(self.memory, entries, vectors, ids=[point_id_for(d) for d in doc_ids])
        return doc_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (missing ids are ignored).

        Raises:
            ConfigError: ``ids`` is ``None`` (deleting everything is ``memory.remove_label``'s
                or a new collection's job).
        """
        if ids is None:
            raise ConfigError("delete needs the ids of the documents to delete")
        removed = self.memory.remove_ids([point_id_for(i) for i in ids])
        if removed and self.memory.count("image"):
            from rar_agent import openset

            openset.update(self.memory, removed=removed)
        return True

    # ------------------------------------------------------------------ reading

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents with these ids, in the order given (missing ids are skipped)."""
        hits = self.memory.get_entries([point_id_for(i) for i in ids])
        return [self._to_document(hit) for hit in hits]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` documents nearest to ``query``."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents with their cosine similarity (higher is closer)."""
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, **kwargs)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest to a vector."""
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` nearest documents to a vector, with cosine similarities.

        Keyword Args:
            kind: ``"text"`` or ``"image"`` to override the store's side for this call.
            score_threshold: Drop results below this similarity.

        Raises:
            ConfigError: ``k`` is not a positive integer, or another keyword is given (such
                as ``filter``: this store cannot filter, and ignoring it would answer with
                documents the caller excluded).
        """
        _check_positive("k", k)
        unknown = sorted(set(kwargs) - {"kind", "score_threshold"})
        if unknown:
            raise ConfigError(
                f"CategoryVectorStore searches take kind= and score_threshold=, not "
                f"{', '.join(f'{name}=' for name in unknown)}: it cannot filter; search with "
                "a larger k and keep the documents whose metadata you want"
            )
        kind = kwargs.get("kind", self.kind)
        hits = self.memory.search(list(embedding), kind=kind, limit=k)
        threshold = kwargs.get("score_threshold")
        return [
            (self._to_document(h), h.score)
            for h in hits
            if threshold is None or h.score >= threshold
        ]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents near ``query`` and unlike each other (maximal marginal relevance).

        See :meth:`max_marginal_relevance_search_by_vector`.
        """
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen by maximal marginal relevance among the ``fetch_k`` nearest.

        Each pick maximises ``lambda_mult * similarity to the query - (1 - lambda_mult) *
        the highest similarity to a document already picked`` (``langchain_core``'s
        ``maximal_marginal_relevance`` over the stored vectors), so ``lambda_mult=1`` is a
        plain similarity search and ``0`` the most diverse set.

        Keyword Args:
            kind: ``"text"`` or ``"image"`` to override the store's side for this call.
            score_threshold: Leave out candidates below this similarity.

        Raises:
            ConfigError: ``k`` or ``fetch_k`` is not a positive integer, ``lambda_mult`` is
                outside 0..1, or another keyword is given (see
                :meth:`similarity_search_with_score_by_vector`).
        """
        import numpy as np
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        _check_positive("k", k)
        _check_positive("fetch_k", fetch_k)
        if not 0.0 <= lambda_mult <= 1.0:
            raise ConfigError(f"lambda_mult must be between 0 and 1, got {lambda_mult!r}")
        pairs = self.similarity_search_with_score_by_vector(embedding, max(k, fetch_k), **kwargs)
        if not pairs:
            return []
        kind = kwargs.get("kind", self.kind)
        ids = [point_id_for(str(doc.id)) for doc, _ in pairs]
        stored = self.memory.get_vectors(ids, kind=kind)
        found = [(doc, pid) for (doc, _), pid in zip(pairs, ids, strict=True) if pid in stored]
        docs = [doc for doc, _ in found]
        rows = [stored[pid] for _, pid in found]
        picked = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), rows, lambda_mult=lambda_mult, k=k
        )
        return [docs[i] for i in picked]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Cosine similarity in [-1, 1] -> relevance in [0, 1]; float32 rounding can put a
        # perfect match a hair above 1, so clamp.
        return lambda score: min(1.0, max(0.0, (score + 1.0) / 2.0))

    @staticmethod
    def _to_document(hit: Hit) -> Document:
        payload = hit.payload
        if _DOC_ID in payload:
            return Document(
                id=str(payload[_DOC_ID]),
                page_content=str(payload.get(_CONTENT, hit.label)),
                metadata=dict(payload.get(_METADATA) or {}),
            )
        # An entry written by the memory builders: the label is the content.
        return Document(id=hit.id, page_content=hit.label, metadata=dict(payload))

    # ------------------------------------------------------------------ async

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_texts` (embeds with ``aembed_documents``)."""
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if texts else []
        return await asyncio.to_thread(self._store, texts, vectors, "text", metadatas, ids)

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Async :meth:`delete`."""
        return await asyncio.to_thread(self.delete, ids, **kwargs)

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Async :meth:`get_by_ids`."""
        return await asyncio.to_thread(self.get_by_ids, ids)

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Async :meth:`similarity_search`."""
        pairs = await self.asimilarity_search_with_score(query, k, **kwargs)
        return [doc for doc, _ in pairs]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score` (embeds with ``aembed_query``)."""
        vector = await self._embedding.aembed_query(query)
        return await asyncio.to_thread(
            self.similarity_search_with_score_by_vector, vector, k, **kwargs
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search` (embeds with ``aembed_query``)."""
        vector = await self._embedding.aembed_query(query)
        return await asyncio.to_thread(
            self.max_marginal_relevance_search_by_vector,
            vector,
            k,
            fetch_k,
            lambda_mult,
            **kwargs,
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        memory: CategoryMemory | None = None,
        **kwargs: Any,
    ) -> CategoryVectorStore:
        """A store filled with ``texts``.

        Args:
            texts: Contents to add.
            embedding: The embeddings.
            metadatas: Optional metadata per text.
            ids: Optional ids.
            memory: The memory to use; otherwise one is opened at ``location=`` (a
                ``MemoryLocation``, a directory, a server URL; default: qdrant-client's
                in-process ``":memory:"``) or ``path=`` / ``url=`` (with ``api_key=``), as
                ``collection=`` (default ``"langchain"``); other keywords go to
                :meth:`CategoryMemory.open`.
            **kwargs: ``kind`` and ``fingerprint`` for the store; the rest for the memory.
        """
        from rar_agent.memory import CategoryMemory, MemoryLocation

        store_args = {k: kwargs.pop(k) for k in ("kind", "fingerprint") if k in kwargs}
        if memory is None:
            collection = kwargs.pop("collection", "langchain")
            places = [kwargs.pop(k) for k in ("location", "path", "url") if k in kwargs]
            if len(places) > 1:
                raise ValueError("give one of location=, path= or url= for the memory")
            where = MemoryLocation.parse(places[0] if places else ":memory:", collection)
            api_key = kwargs.pop("api_key", None)
            if api_key is not None and where.url is not None:
                where = MemoryLocation.server(where.url, collection, api_key=api_key)
            memory = CategoryMemory.open(where, **kwargs)
        store = cls(memory, embedding, **store_args)
        store.add_texts(texts, metadatas, ids=ids)
        return store
