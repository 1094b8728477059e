"""CategoryVectorStore: the standard LangChain suite on both backends, plus our own cases."""

from __future__ import annotations

import itertools
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from rar_agent.errors import ConfigError, EncoderMismatchError, LabelError
from rar_agent.memory import CategoryMemory
from rar_agent.vectorstore import CategoryVectorStore, point_id_for
from tests.helpers.small_memory import make_images

_names = itertools.count()


class TestEdgeVectorStoreStandard(VectorStoreIntegrationTests):
    """The suite on the embedded (qdrant-edge) backend, one fresh directory per test."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        memory = CategoryMemory.open(tmp_path / "mem", collection="std")
        try:
            yield CategoryVectorStore(memory, self.get_embeddings())
        finally:
            memory.close()


class TestLocalClientVectorStoreStandard(VectorStoreIntegrationTests):
    """The suite on the qdrant-client backend (its in-process ``:memory:`` mode)."""

    @pytest.fixture
    def vectorstore(self) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        memory = CategoryMemory.open(":memory:", collection=f"std{next(_names)}")
        try:
            yield CategoryVectorStore(memory, self.get_embeddings())
        finally:
            memory.close()


# ---------------------------------------------------------------------------- our own cases


def test_point_ids_map_arbitrary_strings_and_keep_uuids() -> None:
    given = "0b8f5c1e-3a7d-4e2f-9c61-5d4b3a2f1e0d"
    assert point_id_for(given) == given
    assert point_id_for("doc 1") == point_id_for("doc 1") != point_id_for("doc 2")
    assert len(point_id_for("§ weird / id ✓")) == 36


def test_encoder_embeddings_text_and_images(tmp_path: Path, tiny_encoder: Any) -> None:
    from rar_agent.encoders import EncoderEmbeddings

    memory = CategoryMemory.open(tmp_path / "mem", collection="enc")
    try:
        store = CategoryVectorStore(memory, EncoderEmbeddings(tiny_encoder))
        ids = store.add_texts(
            ["grey heron", "a photo of a tabby cat"],
            metadatas=[{}, {"label": "tabby cat", "lang": "en"}],
            ids=["heron", "cat"],
        )
        assert ids == ["heron", "cat"]
        assert memory.labels("text") == {"grey heron": 1, "tabby cat": 1}
        assert memory.info.fingerprint == tiny_encoder.fingerprint  # bound to the encoder

        images = make_images(tmp_path / "img")
        image_ids = store.add_images([str(images["red apple"])], [{"label": "red apple"}])
        assert memory.labels("image") == {"red apple": 1}
        image_store = CategoryVectorStore(memory, EncoderEmbeddings(tiny_encoder), kind="image")
        docs = image_store.similarity_search("an apple", k=5)
        assert [d.id for d in docs] == image_ids
        assert docs[0].page_content == str(images["red apple"])

        top = store.similarity_search_with_score("grey heron", k=1)
        assert top[0][0] == Document(id="heron", page_content="grey heron", metadata={})
        assert top[0][1] == pytest.approx(1.0, abs=1e-4)
        relevance = store.similarity_search_with_relevance_scores("grey heron", k=2)
        assert all(0.0 <= score <= 1.0 for _, score in relevance)

        retriever = store.as_retriever(search_kwargs={"k": 1})
        assert retriever.invoke("a photo of a tabby cat")[0].metadata == {
            "label": "tabby cat",
            "lang": "en",
        }
    finally:
        memory.close()


def test_builder_entries_come_back_as_label_documents(tmp_path: Path, tiny_encoder: Any) -> None:
    from rar_agent.encoders import EncoderEmbeddings
    from rar_agent.ingest.builders import add_class_names

    memory = CategoryMemory.open(tmp_path / "mem", collection="built")
    try:
        add_class_names(memory, tiny_encoder, ["osprey", "kestrel"])
        store = CategoryVectorStore(memory, EncoderEmbeddings(tiny_encoder))
        docs = store.similarity_search("a bird of prey", k=5)
        assert sorted(d.page_content for d in docs) == ["kestrel", "osprey"]
        assert all(d.metadata["kind"] == "text" for d in docs)
        assert store.get_by_ids([docs[0].id]) == [docs[0]]  # point ids work as document ids
    finally:
        memory.close()


def test_errors_are_clear(tmp_path: Path, tiny_encoder: Any) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from rar_agent.encoders import EncoderEmbeddings

    memory = CategoryMemory.open(":memory:", collection="errors")
    fake = CategoryVectorStore(memory, DeterministicFakeEmbedding(size=8))
    with pytest.raises(ConfigError, match="cannot embed images"):
        fake.add_images(["x.png"], [{"label": "x"}])
    with pytest.raises(ConfigError):
        fake.add_texts(["a", "b"], metadatas=[{}])
    with pytest.raises(ConfigError):
        fake.delete(None)
    with pytest.raises(LabelError):
        fake.add_texts(["   "])
    with pytest.raises(ConfigError):
        CategoryVectorStore(memory, DeterministicFakeEmbedding(size=8), kind="video")
    fake.add_texts(["alpha"])
    with pytest.raises(EncoderMismatchError):  # the memory is bound to the fake embeddings
        CategoryVectorStore(memory, EncoderEmbeddings(tiny_encoder)).add_texts(["beta"])
    enc_store = CategoryVectorStore(memory, EncoderEmbeddings(tiny_encoder))
    with pytest.raises(LabelError, match="label"):
        enc_store.add_images([str(make_images(tmp_path)["black cat"])], [{}])
    memory.close()


def test_a_search_option_it_cannot_honour_is_refused_not_ignored() -> None:
    """LangChain code often passes ``filter=``: answering with the documents it excluded
    (as the store did) is wrong; the search says it cannot filter instead."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    store = CategoryVectorStore.from_texts(
        ["kingfisher", "heron"],
        DeterministicFakeEmbedding(size=8),
        metadatas=[{"label": "kingfisher"}, {"label": "heron"}],
    )
    try:
        with pytest.raises(ConfigError, match="not filter=: it cannot filter"):
            store.similarity_search("heron", k=2, filter={"label": "heron"})
        retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"label": "heron"}})
        with pytest.raises(ConfigError, match="not filter="):
            retriever.invoke("heron")
        kept = store.similarity_search("heron", k=2, kind="text", score_threshold=-1.0)
        assert {d.page_content for d in kept} == {"kingfisher", "heron"}
    finally:
        store.memory.close()


def test_from_texts_defaults_to_an_in_process_memory() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    store = CategoryVectorStore.from_texts(
        ["kingfisher", "heron"], DeterministicFakeEmbedding(size=8), ids=["k", "h"]
    )
    try:
        assert store.memory.info.backend == "server"
        assert [d.id for d in store.get_by_ids(["h", "k", "missing"])] == ["h", "k"]
    finally:
        store.memory.close()


async def test_async_search_matches_sync(tmp_path: Path) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    memory = CategoryMemory.open(tmp_path / "mem", collection="async")
    try:
        store = CategoryVectorStore(memory, DeterministicFakeEmbedding(size=8))
        await store.aadd_texts(["one", "two", "three"], ids=["1", "2", "3"])
        assert await store.asimilarity_search("two", k=3) == store.similarity_search("two", k=3)
        await store.adelete(["2"])
        assert [d.id for d in await store.aget_by_ids(["1", "2", "3"])] == ["1", "3"]
    finally:
        memory.close()


def test_memory_explicit_ids_and_get_entries() -> None:
    from rar_agent.memory import MemoryEntry

    memory = CategoryMemory.open(":memory:", collection="ids")
    try:
        memory.bind_encoder("fake", 2)
        entries = [MemoryEntry("a", "text", "s", "h1"), MemoryEntry("b", "text", "s", "h2")]
        with pytest.raises(ConfigError, match="not a UUID"):
            memory.add_entries(entries, [[1.0, 0.0], [0.0, 1.0]], ids=["x", "y"])
        with pytest.raises(ConfigError, match="2 entries but 1 ids"):
            memory.add_entries(entries, [[1.0, 0.0], [0.0, 1.0]], ids=[point_id_for("x")])
        ids = [point_id_for("x"), point_id_for("y")]
        assert memory.add_entries(entries, [[1.0, 0.0], [0.0, 1.0]], ids=ids) == ids
        got = memory.get_entries([ids[1], point_id_for("missing"), ids[0], ids[1]])
        assert [(h.id, h.label) for h in got] == [(ids[1], "b"), (ids[0], "a")]
    finally:
        memory.close()


class _TableEmbeddings(Embeddings):
    """Embeddings from a fixed table (texts not in it embed as the query direction)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table.get(text, [1.0, 0.0, 0.0])


def _unit(*v: float) -> list[float]:
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


# a query along x; "heron" is nearest, "heron again" almost the same vector (cosine 0.9993
# with it), "egret" further from the query but a different direction, "cat" orthogonal
_MMR_TABLE = {
    "heron": _unit(0.95, 0.3, 0.0),
    "heron again": _unit(0.94, 0.33, 0.02),
    "egret": _unit(0.85, 0.0, -0.5),
    "cat": _unit(0.0, 1.0, 0.0),
}


async def test_mmr_search_skips_near_duplicates_sync_async_and_retriever() -> None:
    """Maximal marginal relevance used to raise a bare NotImplementedError (from
    ``as_retriever(search_type="mmr")`` too); it now picks diverse documents."""
    store = CategoryVectorStore.from_texts(
        list(_MMR_TABLE), _TableEmbeddings(_MMR_TABLE), ids=list(_MMR_TABLE)
    )
    try:
        plain = [d.id for d in store.similarity_search("query", k=2)]
        assert plain == ["heron", "heron again"]
        mmr = store.max_marginal_relevance_search("query", k=2, fetch_k=4, lambda_mult=0.5)
        assert [d.id for d in mmr] == ["heron", "egret"]
        by_vector = store.max_marginal_relevance_search_by_vector([1.0, 0.0, 0.0], k=2)
        assert [d.id for d in by_vector] == ["heron", "egret"]
        # lambda_mult=1 is relevance alone: the similarity order
        same = store.max_marginal_relevance_search("query", k=2, lambda_mult=1.0)
        assert [d.id for d in same] == plain
        retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4})
        assert [d.id for d in retriever.invoke("query")] == ["heron", "egret"]
        assert [d.id for d in await retriever.ainvoke("query")] == ["heron", "egret"]
        amm = await store.amax_marginal_relevance_search("query", k=2)
        assert [d.id for d in amm] == ["heron", "egret"]
        amv = await store.amax_marginal_relevance_search_by_vector([1.0, 0.0, 0.0], k=2)
        assert [d.id for d in amv] == ["heron", "egret"]
        assert [d.page_content for d in mmr] == ["heron", "egret"]  # documents round-trip
    finally:
        store.memory.close()


def test_mmr_search_refuses_bad_arguments() -> None:
    store = CategoryVectorStore.from_texts(list(_MMR_TABLE), _TableEmbeddings(_MMR_TABLE))
    try:
        with pytest.raises(ConfigError, match="lambda_mult must be between 0 and 1"):
            store.max_marginal_relevance_search("query", lambda_mult=1.5)
        with pytest.raises(ConfigError, match="fetch_k must be a positive integer"):
            store.max_marginal_relevance_search("query", fetch_k=0)
        with pytest.raises(ConfigError, match="k must be a positive integer"):
            store.max_marginal_relevance_search("query", k=0)
        with pytest.raises(ConfigError, match="not filter="):
            store.max_marginal_relevance_search("query", filter={"label": "heron"})
    finally:
        store.memory.close()
