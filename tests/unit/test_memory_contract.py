"""The CategoryMemory contract, run on every backend.

Here: the embedded qdrant-edge backend (temp dirs) and qdrant-client's local mode
(``:memory:``). ``tests/integration/test_memory_server.py`` runs these same tests against
a real Qdrant server. Vectors are hand-made so the right answers are known.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rar_agent.errors import ConfigError, EncoderMismatchError, LabelError, MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry

DIM = 8
MakeMemory = Callable[[], CategoryMemory]


@pytest.fixture(params=["edge", "local"])
def make_memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeMemory]:
    """Factory of fresh, empty memories on one backend; all closed after the test."""
    opened: list[CategoryMemory] = []

    def make() -> CategoryMemory:
        name = f"t{len(opened)}"
        if request.param == "edge":
            mem = CategoryMemory.open(tmp_path / name, collection=name)
        else:
            mem = CategoryMemory.open(":memory:", collection=name)
        opened.append(mem)
        return mem

    yield make
    for mem in opened:
        mem.close()


def unit(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Basis vector ``i`` plus a little noise, normalised."""
    v = np.zeros(DIM, dtype=np.float32)
    v[i % DIM] = 1.0
    if noise:
        v += np.random.default_rng(seed).normal(0, noise, DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def image_entry(label: str, n: int) -> MemoryEntry:
    return MemoryEntry(label, "image", f"/data/{label}/{n}.jpg", f"hash-{label}-{n}")


def text_entry(label: str) -> MemoryEntry:
    return MemoryEntry(label, "text", "templates:test", f"text-{label}")


def filled(make_memory: MakeMemory) -> CategoryMemory:
    """cat (3 images), dog (2 images), fox (1 image) near basis 0/1/2; text cat/dog/owl."""
    mem = make_memory()
    mem.bind_encoder("enc-A", DIM)
    entries, vecs = [], []
    for axis, (label, n) in enumerate([("cat", 3), ("dog", 2), ("fox", 1)]):
        for j in range(n):
            entries.append(image_entry(label, j))
            vecs.append(unit(axis, 0.05, seed=10 * axis + j))
    for axis, label in [(0, "cat"), (1, "dog"), (5, "owl")]:
        entries.append(text_entry(label))
        vecs.append(unit(axis))
    mem.add_entries(entries, np.stack(vecs))
    return mem


def test_unbound_memory_is_empty_and_refuses_writes(make_memory: MakeMemory) -> None:
    mem = make_memory()
    assert mem.count() == 0
    assert mem.labels() == {}
    assert mem.search(unit(0)) == []
    assert mem.info.fingerprint is None
    with pytest.raises(MemoryStoreError, match="bind_encoder"):
        mem.add_entries([image_entry("cat", 0)], unit(0)[None])


def test_search_finds_the_right_label_sorted_by_score(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    hits = mem.search(unit(1, 0.02, seed=99), kind="image", limit=10)
    assert [h.label for h in hits[:2]] == ["dog", "dog"]
    assert len(hits) == 6  # only image entries
    assert all(h.kind == "image" for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0].score > 0.9
    assert hits[0].source.startswith("/data/dog/")
    assert hits[0].payload["content_hash"].startswith("hash-dog-")
    top = mem.search(unit(2), kind="image", limit=1)
    assert len(top) == 1 and top[0].label == "fox"


def test_kind_selects_the_named_vector(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    hits = mem.search(unit(5), kind="text", limit=10)
    assert [h.label for h in hits][0] == "owl"
    assert {h.kind for h in hits} == {"text"}
    assert len(hits) == 3
    assert "owl" not in {h.label for h in mem.search(unit(5), kind="image", limit=10)}
    with pytest.raises(ConfigError, match="kind"):
        mem.search(unit(0), kind="audio")


def test_ids_are_deterministic_and_re_adding_does_not_duplicate(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    before = mem.count()
    entries = [image_entry("cat", 0), image_entry("cat", 1)]
    ids = mem.add_entries(entries, np.stack([unit(0), unit(0)]))
    assert ids == [e.point_id for e in entries]
    assert ids == [image_entry("cat", 0).point_id, image_entry("cat", 1).point_id]
    assert mem.count() == before
    assert mem.existing_ids([*ids, str(uuid.uuid4())]) == set(ids)


def test_counts_and_labels(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    assert mem.count() == 9
    assert mem.count("image") == 6
    assert mem.count("text") == 3
    assert mem.labels() == {"cat": 4, "dog": 3, "fox": 1, "owl": 1}
    assert list(mem.labels()) == ["cat", "dog", "fox", "owl"]
    assert mem.labels("image") == {"cat": 3, "dog": 2, "fox": 1}
    assert mem.labels("text") == {"cat": 1, "dog": 1, "owl": 1}


def test_the_vectors_of_one_category_by_kind(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    cat = mem.vectors_of(" cat ")
    assert sorted(cat) == ["image", "text"] and cat["image"].shape == (3, DIM)
    expected = np.stack([unit(0, 0.05, seed=j) for j in range(3)])
    assert sorted(map(tuple, cat["image"].round(5))) == sorted(map(tuple, expected.round(5)))
    assert np.allclose(cat["text"], unit(0)[None], atol=1e-6)
    assert mem.vectors_of("fox")["image"].shape == (1, DIM) and "text" not in mem.vectors_of("fox")
    assert mem.vectors_of("wolf") == {}


def test_remove_label_and_ids(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    assert mem.remove_label("  cat ") == 4
    assert "cat" not in mem.labels()
    assert mem.remove_label("cat") == 0
    assert mem.count() == 5
    dog0 = image_entry("dog", 0).point_id
    assert mem.remove_ids([dog0, str(uuid.uuid4())]) == 1
    assert mem.labels("image") == {"dog": 1, "fox": 1}
    assert all(h.id != dog0 for h in mem.search(unit(1), limit=10))


def test_category_counts_follow_every_write(make_memory: MakeMemory) -> None:
    """Retrieval asks for them on every query of a memory with both sides (its base side):
    they are kept, and every write that may change them is seen at once."""
    mem = make_memory()
    assert mem.category_counts() == {"image": 0, "text": 0}
    mem = filled(make_memory)
    assert mem.category_counts() == {"image": 3, "text": 3}
    mem.add_entries([text_entry("heron")], unit(6)[None])
    assert mem.category_counts() == {"image": 3, "text": 4}
    mem.add_entries([image_entry("owl", 0)], unit(5)[None])
    assert mem.category_counts() == {"image": 4, "text": 4}
    mem.remove_label("cat")
    assert mem.category_counts() == {"image": 3, "text": 3}
    mem.remove_ids([image_entry("fox", 0).point_id])
    assert mem.category_counts() == {"image": 2, "text": 3}


def test_labels_with_quotes_commas_and_other_scripts(make_memory: MakeMemory) -> None:
    mem = make_memory()
    mem.bind_encoder("enc-A", DIM)
    names = ['the "quoted", one', "猫", "кошка", "गाय", "🐈 cat", "o'neil"]
    entries = [image_entry(name, 0) for name in names]
    mem.add_entries(entries, np.stack([unit(i) for i in range(len(names))]))
    assert mem.labels() == dict.fromkeys(names, 1) | {}
    assert set(mem.labels()) == set(names)
    for i, name in enumerate(names):
        assert mem.search(unit(i), limit=1)[0].label == name
    assert mem.remove_label("猫") == 1
    assert mem.remove_label('the "quoted", one') == 1
    assert set(mem.labels()) == set(names) - {"猫", 'the "quoted", one'}


def test_search_batch_equals_individual_searches(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    queries = np.stack([unit(i, 0.3, seed=i) for i in range(5)])
    batch = mem.search_batch(queries, kind="image", limit=4)
    assert len(batch) == 5
    for q, hits in zip(queries, batch, strict=True):
        single = mem.search(q, kind="image", limit=4)
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)
    assert mem.search_batch(np.zeros((0, DIM)), kind="image") == []


def test_encoder_mismatch_is_refused(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    mem.bind_encoder("enc-A", DIM)  # the same encoder again is fine
    with pytest.raises(EncoderMismatchError) as err:
        mem.bind_encoder("enc-B", DIM)
    assert "enc-A" in str(err.value) and "enc-B" in str(err.value)
    assert "--clip-model" in str(err.value)
    with pytest.raises(EncoderMismatchError, match="16-d"):
        mem.bind_encoder("enc-A", 16)
    assert mem.info.fingerprint == "enc-A"
    assert mem.info.dim == DIM


def test_dim_mismatch_is_refused_without_writing(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    before = mem.count()
    with pytest.raises(EncoderMismatchError, match="4 dimensions"):
        mem.add_entries([image_entry("elk", 0)], np.ones((1, 4)))
    with pytest.raises(EncoderMismatchError):
        mem.search(np.ones(4))
    assert mem.count() == before


def test_bad_vectors_are_rejected_before_anything_is_written(make_memory: MakeMemory) -> None:
    mem = make_memory()
    mem.bind_encoder("enc-A", DIM)
    n = 700  # more than one upsert batch: the bad row is in the second one
    entries = [image_entry("elk", i) for i in range(n)]
    vecs = np.tile(unit(3), (n, 1))
    vecs[650, 2] = np.nan
    with pytest.raises(ConfigError, match="row 650"):
        mem.add_entries(entries, vecs)
    vecs[650] = 0.0
    with pytest.raises(ConfigError, match="zeros"):
        mem.add_entries(entries, vecs)
    with pytest.raises(ConfigError, match="700 entries but 699"):
        mem.add_entries(entries, vecs[:-1])
    assert mem.count() == 0
    with pytest.raises(ConfigError):
        mem.search(np.full(DIM, np.inf))


def test_many_entries_in_several_batches(make_memory: MakeMemory) -> None:
    mem = make_memory()
    mem.bind_encoder("enc-A", DIM)
    rng = np.random.default_rng(0)
    n = 1100
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    entries = [image_entry(f"c{i % 7}", i) for i in range(n)]
    ids = mem.add_entries(entries, vecs)
    assert len(set(ids)) == n and mem.count() == n
    assert sum(mem.labels().values()) == n
    mem.optimize()
    hit = mem.search(vecs[123], limit=1)[0]
    assert hit.id == ids[123] and hit.score == pytest.approx(1.0, abs=1e-4)


def test_info_stats_description_and_close(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    mem.bind_encoder("enc-A", DIM, description="pets")
    info = mem.info
    assert (info.fingerprint, info.dim, info.description) == ("enc-A", DIM, "pets")
    assert info.backend in {"edge", "server"}
    assert info.created_at
    stats = mem.stats()
    assert stats["entries"] == 9 and stats["image_entries"] == 6 and stats["labels"] == 4
    assert stats["storage_points"] == 9
    mem.close()
    mem.close()
    assert mem.closed
    with pytest.raises(MemoryStoreError, match="closed"):
        mem.count()


def test_bad_arguments(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    with pytest.raises(ConfigError, match="limit"):
        mem.search(unit(0), limit=0)
    with pytest.raises(ConfigError, match="one vector"):
        mem.search(np.ones((2, DIM)))
    with pytest.raises(ConfigError, match="2-D"):
        mem.search_batch(np.ones(DIM))
    with pytest.raises(ConfigError):
        mem.bind_encoder("", DIM)
    with pytest.raises(ConfigError):
        mem.bind_encoder("enc-A", 0)
    with pytest.raises(LabelError):
        mem.remove_label("   ")


async def test_async_search(make_memory: MakeMemory) -> None:
    mem = filled(make_memory)
    hits = await mem.asearch(unit(2), limit=1)
    assert hits[0].label == "fox"
    batch = await mem.asearch_batch(np.stack([unit(0), unit(1)]), limit=1)
    assert [b[0].label for b in batch] == ["cat", "dog"]
