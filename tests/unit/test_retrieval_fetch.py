"""The retriever fetches only the stored vectors its category scores read."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent.errors import ConfigError
from rar_agent.memory import CategoryMemory, Hit, MemoryEntry
from rar_agent.memory.storage import StorageSettings
from rar_agent.retrieval import CategoryRetriever, StoredRows, category_scores, mean_members

QUERY = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
# source -> (label, vector): "pair" is scored by a local mean of its two entries, "single"
# by its one entry, "dup" by its near-duplicate of the query (similarity 0.97)
ENTRIES = {
    "pair-1": ("pair", (0.8, 0.6, 0.0, 0.0)),
    "pair-2": ("pair", (0.75, 0.0, 0.66, 0.0)),
    "single": ("single", (0.7, 0.0, 0.0, 0.714)),
    "dup-1": ("dup", (0.97, 0.0, -0.243, 0.0)),
    "dup-2": ("dup", (0.5, 0.0, 0.0, -0.866)),
}


def _unit(v: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


@pytest.fixture(params=["edge", "local"])
def memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CategoryMemory]:
    """The embedded memory (its search hands the hits' vectors over) and the server client's
    test double (its hits come without: the retriever reads them)."""
    where = tmp_path / "m" if request.param == "edge" else ":memory:"
    mem = CategoryMemory.open(where, collection="fetch")
    mem.bind_encoder("test:fetch", 4)
    entries = [MemoryEntry(label, "image", src, f"h-{src}") for src, (label, _) in ENTRIES.items()]
    mem.add_entries(entries, np.stack([_unit(v) for _, v in ENTRIES.values()]))
    yield mem
    mem.close()


def _recording(memory: CategoryMemory, drop: set[str]) -> list[list[str]]:
    """Record each ``get_vectors`` call's ids; ids in ``drop`` come back missing (an entry
    removed between the search and the fetch)."""
    calls: list[list[str]] = []
    fetch = memory.get_vectors

    def get_vectors(ids: Iterable[str], *, kind: str | None = None) -> dict[str, list[float]]:
        wanted = list(ids)
        calls.append(wanted)
        return {k: v for k, v in fetch(wanted, kind=kind).items() if k not in drop}

    memory.get_vectors = get_vectors  # type: ignore[method-assign]
    return calls


def _handed_over(memory: CategoryMemory) -> list[str]:
    """Record the ids of the hits whose vectors are read out of a search's answer."""
    read: list[str] = []
    search = memory.search_batch

    def recorded(hit: Hit) -> Hit:
        reader = hit.read_vector
        if reader is None:
            return hit

        def read_vector() -> list[float] | None:
            read.append(hit.id)
            return reader()

        return dataclasses.replace(hit, read_vector=read_vector)

    def search_batch(vectors: np.ndarray, **kwargs: Any) -> list[list[Hit]]:
        return [[recorded(h) for h in hits] for hits in search(vectors, **kwargs)]

    memory.search_batch = search_batch  # type: ignore[method-assign]
    return read


def _second_reads(memory: CategoryMemory) -> bool:
    """Whether the retriever reads stored vectors in a second call (no backend hand-over)."""
    return memory.info.backend != "edge"


def test_only_the_local_means_vectors_are_fetched(memory: CategoryMemory) -> None:
    hits = memory.search(QUERY, kind="image", limit=10)
    ids = {h.source: h.id for h in hits}
    calls = _recording(memory, drop=set())
    handed = _handed_over(memory)
    retriever = CategoryRetriever(memory=memory, encoder=None, k=3)
    [candidates] = retriever.retrieve_vectors(QUERY[None, :])
    pair = sorted([ids["pair-1"], ids["pair-2"]])
    if _second_reads(memory):
        assert [sorted(c) for c in calls] == [pair] and handed == []
    else:  # the embedded search hands them over: no second read
        assert calls == [] and sorted(handed) == pair
    # the same scores as with every vector at hand
    rows = np.stack([_unit(ENTRIES[h.source][1]) for h in hits])
    full = category_scores(QUERY, rows, [h.label for h in hits], [h.score for h in hits])
    assert {c.label: c.score for c in candidates} == pytest.approx(full, abs=1e-5)
    assert full["single"] == pytest.approx(
        float(hits[[h.source for h in hits].index("single")].score)
    )
    assert mean_members([h.label for h in hits], [h.score for h in hits]) == sorted(
        i for i, h in enumerate(hits) if h.label == "pair"
    )


@pytest.mark.parametrize("memory", ["local"], indirect=True)  # the embedded search hands
def test_an_entry_gone_before_the_fetch_is_left_out(memory: CategoryMemory) -> None:  # them over
    hits = memory.search(QUERY, kind="image", limit=10)
    ids = {h.source: h.id for h in hits}
    calls = _recording(memory, drop={ids["pair-2"]})
    retriever = CategoryRetriever(memory=memory, encoder=None, k=3)
    [candidates] = retriever.retrieve_vectors(QUERY[None, :])
    scores = {c.label: c.score for c in candidates}
    # "pair" keeps one entry, so its similarity decides; nothing more is fetched
    first = next(h for h in hits if h.source == "pair-1")
    assert scores["pair"] == pytest.approx(first.score, abs=1e-6)
    assert len(calls) == 1
    assert scores["dup"] == pytest.approx(0.97 / np.linalg.norm([0.97, 0.243]), abs=1e-4)


@pytest.mark.parametrize("where", ["edge", "local"])
def test_get_vectors_of_one_kind_reads_that_vector_alone(where: str, tmp_path: Path) -> None:
    mem = CategoryMemory.open(tmp_path / "m" if where == "edge" else ":memory:", collection="k")
    mem.bind_encoder("test:kind", 4)
    entries = [
        MemoryEntry("cat", "image", "cat.jpg", "h-image"),
        MemoryEntry("cat", "text", "templates:test", "h-text"),
    ]
    vectors = np.stack([_unit((1.0, 0.2, 0.0, 0.0)), _unit((0.0, 1.0, 0.3, 0.0))])
    mem.add_entries(entries, vectors)
    image_id = next(h.id for h in mem.search(vectors[0], kind="image", limit=5))
    text_id = next(h.id for h in mem.search(vectors[1], kind="text", limit=5))
    both = mem.get_vectors([image_id, text_id, str(uuid.uuid4())])  # an unknown id: skipped
    assert set(both) == {image_id, text_id}
    images = mem.get_vectors([image_id, text_id], kind="image")
    assert set(images) == {image_id}  # the text entry has no image vector: missing
    assert images[image_id] == pytest.approx(both[image_id])
    assert np.asarray(images[image_id]) == pytest.approx(vectors[0], abs=1e-6)
    assert mem.get_vectors([text_id], kind="text")[text_id] == pytest.approx(both[text_id])
    with pytest.raises(ConfigError, match="kind"):
        mem.get_vectors([image_id], kind="video")
    mem.close()


def test_the_next_query_reads_the_kept_vectors_with_the_same_scores(
    memory: CategoryMemory,
) -> None:
    calls = _recording(memory, drop=set())
    handed = _handed_over(memory)
    retriever = CategoryRetriever(memory=memory, encoder=None, k=3)
    first = retriever.retrieve_vectors(QUERY[None, :])
    read = len(calls), len(handed)
    again = retriever.retrieve_vectors(np.stack([QUERY, QUERY]))
    assert read in ((1, 0), (0, 2))  # one read, or the two vectors handed over
    assert (len(calls), len(handed)) == read  # the second and third queries read nothing
    fresh = CategoryRetriever(memory=memory, encoder=None, k=3).retrieve_vectors(QUERY[None, :])
    for candidates in (*again, *first):
        assert [(c.label, c.score) for c in candidates] == [(c.label, c.score) for c in fresh[0]]


def test_an_entry_removed_and_taught_again_reads_its_new_content(
    memory: CategoryMemory,
) -> None:
    retriever = CategoryRetriever(memory=memory, encoder=None, k=3)
    before = {c.label: c.score for c in retriever.retrieve_vectors(QUERY[None, :])[0]}
    memory.remove_label("pair")
    # the same label and source, another content (and so another id and hash)
    entries = [MemoryEntry("pair", "image", f"pair-{i}", f"h2-pair-{i}") for i in (1, 2)]
    memory.add_entries(entries, np.stack([_unit((0.1, 0.99, 0.0, 0.0)), _unit((0.9, 0.1, 0.4, 0))]))
    after = {c.label: c.score for c in retriever.retrieve_vectors(QUERY[None, :])[0]}
    fresh = CategoryRetriever(memory=memory, encoder=None, k=3).retrieve_vectors(QUERY[None, :])
    assert after == {c.label: c.score for c in fresh[0]}
    assert after["pair"] != pytest.approx(before["pair"])


def test_kept_rows_are_bounded_and_only_for_entries_under_their_contents_id() -> None:
    from rar_agent.memory.entries import content_id

    def hit(i: int, digest: str | None, own_id: bool = True) -> Hit:
        payload = {"label": "x", "kind": "image", "source": f"s{i}"}
        if digest is not None:
            payload["content_hash"] = digest
        pid = content_id("image", "x", digest or "") if own_id else str(uuid.uuid4())
        return Hit.from_point(pid, 0.5, payload)

    kept = StoredRows(size=2)
    hits = [hit(i, f"h{i}") for i in range(3)]
    rows = kept.put(hits[:1], np.array([[0.0, 1.0]], np.float32))
    rows += kept.put(hits[1:], np.array([[1.0, 1.0], [2.0, 1.0]], np.float32))
    assert rows[0].dtype == np.float32 and not rows[0].flags.writeable
    oldest, *kept_rows = kept.get(hits)
    assert oldest is None  # the oldest went out
    assert kept_rows[0] is rows[1] and kept_rows[1] is rows[2] and len(kept) == 2
    assert kept_rows[1].tolist() == [2.0, 1.0] and kept_rows[1].base is None  # its own copy
    for other in (hit(9, None), hit(8, "h8", own_id=False)):  # no hash; a document's own id
        [row] = kept.put([other], np.array([[1.0, 0.0]], np.float32))
        assert row.tolist() == [1.0, 0.0]
        assert kept.get([other]) == [None] and len(kept) == 2


def test_stored_vectors_become_the_same_unit_rows(memory: CategoryMemory) -> None:
    """The fetched lists of floats become exactly the rows numpy reads from them, normalised."""
    from rar_agent.retrieval import _unit_rows

    hits = memory.search(QUERY, kind="image", limit=10)
    stored = memory.get_vectors([h.id for h in hits], kind="image")
    lists = [stored[h.id] for h in hits]
    lists += np.random.default_rng(0).normal(size=(40, 1281)).tolist()
    for dim in (4, 1281):
        block = [v for v in lists if len(v) == dim]
        expected = np.array(block, dtype=np.float32)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        rows = _unit_rows(block)
        assert rows.dtype == np.float32 and np.array_equal(rows, expected)


def test_an_entry_rewritten_under_its_own_id_reads_its_new_vector(memory: CategoryMemory) -> None:
    """The vector store writes under the document's id, with the hash of its text or image
    address: the same id and hash can come back with another vector (the file at that
    address changed), and a retriever that read the old one must not keep using it."""
    from rar_agent.pipeline.teacher import learn_entries

    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    entries = [MemoryEntry("doc", "image", f"photos/{i}.jpg", f"h-doc-{i}") for i in (1, 2)]
    learn_entries(memory, entries, np.stack([_unit((0.8, 0.0, 0.6, 0.0))] * 2), ids=ids)
    retriever = CategoryRetriever(memory=memory, encoder=None, k=4)
    before = {c.label: c.score for c in retriever.retrieve_vectors(QUERY[None, :])[0]}
    # the second photo replaced by another picture, added again under its document's id
    learn_entries(memory, entries[1:], _unit((0.9, 0.3, -0.3, 0.0))[None, :], ids=ids[1:])
    after = {c.label: c.score for c in retriever.retrieve_vectors(QUERY[None, :])[0]}
    fresh = CategoryRetriever(memory=memory, encoder=None, k=4).retrieve_vectors(QUERY[None, :])
    assert after == {c.label: c.score for c in fresh[0]}
    assert after["doc"] != pytest.approx(before["doc"])


@pytest.mark.parametrize("where", ["edge", "local"])
def test_a_search_asked_for_vectors_hands_over_the_stored_ones(where: str, tmp_path: Path) -> None:
    mem = CategoryMemory.open(tmp_path / "m" if where == "edge" else ":memory:", collection="v")
    mem.bind_encoder("test:vectors", 4)
    entries = [MemoryEntry(label, "image", src, f"h-{src}") for src, (label, _) in ENTRIES.items()]
    mem.add_entries(entries, np.stack([_unit(v) for _, v in ENTRIES.values()]))
    [plain] = mem.search_batch(QUERY[None, :], kind="image", limit=10)
    [carrying] = mem.search_batch(QUERY[None, :], kind="image", limit=10, with_vectors=True)
    assert carrying == plain  # the same hits: a reader is not part of a hit's value
    assert all(h.read_vector is None for h in plain)
    if where == "edge":
        stored = mem.get_vectors([h.id for h in carrying], kind="image")
        assert [h.read_vector() for h in carrying if h.read_vector] == [
            stored[h.id] for h in carrying
        ]
    else:  # a server declines: its hits come without, and the retriever reads them
        assert all(h.read_vector is None for h in carrying)
    mem.close()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_the_vectors_handed_over_give_the_scores_a_second_read_gives(
    quantization: str, tmp_path: Path
) -> None:
    """Bit for bit: the search's vectors are the stored ones (the originals, where a
    quantized copy is searched), turned into the same rows."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 16))
    x = (np.repeat(centres, 6, axis=0) + rng.normal(0, 0.6, (240, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    storage = StorageSettings(quantization=quantization)  # type: ignore[arg-type]
    mem = CategoryMemory.open(tmp_path / "m", collection="same", storage=storage)
    mem.bind_encoder("test:same", 16)
    mem.add_entries([MemoryEntry(f"c{i // 6}", "image", f"e{i}", f"h{i}") for i in range(240)], x)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    handed = CategoryRetriever(memory=mem, encoder=None, k=5).retrieve_vectors(queries)
    calls = _recording(mem, drop=set())
    search = mem.search_batch
    mem.search_batch = lambda v, **kw: search(v, **{**kw, "with_vectors": False})  # type: ignore[method-assign]
    read = CategoryRetriever(memory=mem, encoder=None, k=5).retrieve_vectors(queries)
    assert calls  # the second retriever did read them again
    assert read == handed
    assert any(c.score != max(c.scores) for found in read for c in found)  # local means ran
    mem.close()
