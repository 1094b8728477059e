"""The reject step on a real (embedded) memory: the retriever's category scores and the
verdicts are those of their definitions however often the values they keep are reused, and
no kept value outlives a write (each write path, another handle's, a concurrent one)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.config import parse_reject
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.openset import calibration as cal_mod
from rar_agent.openset.calibration import MAX_AGE_S, SHOT_LEVELS, Calibration
from rar_agent.openset.store import EXTENSION
from rar_agent.pipeline import Recognizer
from rar_agent.pipeline.teacher import Teacher, learn_entries
from rar_agent.retrieval import RANK_HITS, category_scores

DIM = 48
# examples per category: single-example categories, a few pairs, and some with many, so the
# thresholds come from different shot levels (and some levels have none of their own)
SHOTS = [1] * 8 + [2] * 4 + [3] * 3 + [5] * 3 + [12] * 3 + [20] * 2


class _Vectors:
    fingerprint = "vectors:reject-step"
    dim = DIM


def _space(seed: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SHOTS) + 6, DIM))  # 6 categories the memory never saw
    return centres / np.linalg.norm(centres, axis=1, keepdims=True), rng


def _draw(centre: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    x = centre + rng.normal(size=(n, DIM)) * 0.9 / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[CategoryMemory]:
    centres, rng = _space(3)
    mem = CategoryMemory.open(tmp_path / "m", collection="reject")
    mem.bind_encoder(_Vectors.fingerprint, DIM)
    for c, n in enumerate(SHOTS):
        entries = [MemoryEntry(f"category {c}", "image", f"{c}-{i}", f"h{c}-{i}") for i in range(n)]
        mem.add_entries(entries, _draw(centres[c], rng, n))
    openset.fit(mem)
    yield mem
    mem.close()


def _queries(n: int) -> np.ndarray:
    centres, _ = _space(3)
    rng = np.random.default_rng(4)
    return np.concatenate([_draw(centres[i % len(centres)], rng, 1) for i in range(n)])


def _expected_scores(memory: CategoryMemory, query: np.ndarray) -> dict[str, float]:
    """The category scores by their definition, every nearest entry's vector read afresh
    (the categories further off score their best similarity)."""
    hits = memory.search(query, kind="image", limit=50)
    out: dict[str, float] = {}
    for h in hits:
        out[h.label] = max(out.get(h.label, -1.0), h.score)
    near = hits[: RANK_HITS + 1]
    stored = memory.get_vectors([h.id for h in near], kind="image")
    rows = np.asarray([stored[h.id] for h in near], dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    return out | category_scores(q, rows, [h.label for h in near], [h.score for h in near])


def _expected_verdict(cal: Calibration, query: np.ndarray, alpha: float, among: list[str]) -> tuple:
    """The auto verdict by its definition: the best statistic of the candidates' categories
    (``among``) against the threshold of the largest shot level not above its examples that
    has one, and the share of that level's stand-ins at most as known; and the level."""
    model = cal.model()
    assert model is not None
    labels, counts, means = cal.means()
    row = model.scores(model.project(query), means)[0]
    held = [labels.index(label) for label in among]
    best = held[int(np.argmax(row[held]))]
    level = max(m for m in SHOT_LEVELS if m <= max(int(counts[best]), 1))
    while level > SHOT_LEVELS[0] and cal.threshold(alpha, level)[0] is None:
        level -= 1
    threshold = cal.threshold(alpha, level)[0]
    assert threshold is not None
    values = cal.scores_at(level)
    share = float(np.searchsorted(values, row[best], side="right")) / len(values)
    return (round(float(row[best]), 6), round(threshold, 6), round(share, 6)), level


def test_scores_and_verdicts_are_those_of_their_definitions(memory: CategoryMemory) -> None:
    queries = _queries(60)
    batches = [[i] if i % 8 else [i, i + 1, i + 2] for i in range(0, len(queries), 4)]
    order = [i for batch in batches for i in batch]
    scores = {i: _expected_scores(memory, queries[i]) for i in order}
    levels: set[int] = set()
    for alpha in (0.05, 0.2):
        recognizer = Recognizer(memory, _Vectors(), k=5, reject=f"auto:{alpha}")  # type: ignore[arg-type]
        reference = openset.load(memory)  # another object: nothing it keeps is shared
        assert reference is not None and reference.calibrated
        for _ in range(2):  # the second time every kept row and threshold is reused
            found = [c for b in batches for c in recognizer.retriever.retrieve_vectors(queries[b])]
            verdicts = recognizer.judge_many(found, queries[order])
            for i, candidates, verdict in zip(order, found, verdicts, strict=True):
                for c in candidates:
                    assert c.score == pytest.approx(scores[i][c.label], rel=1e-12, abs=1e-12)
                among = [c.label for c in candidates]
                expected, level = _expected_verdict(reference, queries[i], alpha, among)
                levels.add(level)
                said = (verdict.similarity, verdict.threshold, verdict.known_share)
                assert said == expected
                stat, threshold, _ = expected
                assert bool(verdict.reasons) == (stat < threshold)
    assert len(levels) >= 3  # thresholds of several shot levels were compared


# ------------------------------------------------------------------ no kept value outlives a write
#
# The recognizer judges with the calibration object ``openset.current`` hands it; what the
# verdict keeps (thresholds, shot levels, the category means' terms) lives on that object, and
# every write path replaces the object: in this process at once, from another handle or
# process within ``MAX_AGE_S``. Each test judges (so that everything is kept), writes, and
# judges again: the verdicts are those of the calibration read afresh from the record.


def _verdicts(recognizer: Recognizer, queries: np.ndarray) -> list[tuple]:
    """Each query's candidates (label, score) and verdict."""
    found = recognizer.retriever.retrieve_vectors(queries)
    verdicts = recognizer.judge_many(found, queries)
    return [
        ([(c.label, c.score) for c in cs], v.model_dump())
        for cs, v in zip(found, verdicts, strict=True)
    ]


def _from_record(memory: CategoryMemory, queries: np.ndarray) -> list[tuple]:
    """:func:`_verdicts` by a new retriever and the calibration read afresh from the record."""
    fresh = openset.load(memory)
    found = Recognizer(memory, _Vectors(), k=5, reject="auto").retriever.retrieve_vectors(queries)  # type: ignore[arg-type]
    setting = parse_reject("auto")
    return [
        ([(c.label, c.score) for c in cs], openset.judge(cs, setting, fresh, q).model_dump())
        for cs, q in zip(found, queries, strict=True)
    ]


def _entries(label: str, tag: str, n: int) -> list[MemoryEntry]:
    return [MemoryEntry(label, "image", f"{tag}-{i}", f"{tag}-{i}") for i in range(n)]


def _add(memory: CategoryMemory) -> None:  # the teacher's and the vector store's door
    centres, rng = _space(5)
    learn_entries(memory, _entries("category 12", "added", 3), _draw(centres[12], rng, 3))


def _relabel(memory: CategoryMemory) -> None:
    [hit] = memory.search(_queries(13)[12], kind="image", limit=1)
    Teacher(memory, None).relabel(hit.id, "category 0")


def _undo(memory: CategoryMemory) -> None:  # two relabels, the second undone
    _relabel(memory)
    [hit] = memory.search(_queries(14)[13], kind="image", limit=1)
    Teacher(memory, None).relabel(hit.id, "category 1")
    Teacher(memory, None).undo(1)


def _remove(memory: CategoryMemory) -> None:  # `rar-agent memory remove`'s steps
    openset.update(memory, removed=memory.remove_label("category 12"))


def _rebuild(memory: CategoryMemory) -> None:  # a build: write, then calibrate in full
    centres, rng = _space(6)
    memory.add_entries(_entries("category 13", "rebuilt", 4), _draw(centres[13], rng, 4))
    openset.fit(memory)


@pytest.mark.parametrize("write", [_add, _relabel, _undo, _remove, _rebuild])
def test_each_write_path_leaves_no_kept_value_behind(
    memory: CategoryMemory,
    write,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write in this process is judged by at once, however slow the write was (the copy
    is never re-read for its age here)."""
    monkeypatch.setattr(cal_mod, "MAX_AGE_S", 3600.0)
    queries = _queries(30)
    recognizer = Recognizer(memory, _Vectors(), k=5, reject="auto")  # type: ignore[arg-type]
    before = _verdicts(recognizer, queries)
    assert before == _from_record(memory, queries)
    write(memory)
    after = _verdicts(recognizer, queries)
    assert after == _from_record(memory, queries)
    assert after != before  # the write changed what is said: a stale value would show


def test_another_handles_write_is_judged_by_within_the_age_limit(
    memory: CategoryMemory, tmp_path: Path
) -> None:
    """Another handle (as another process would) writes the memory: this recognizer reads
    the new calibration once its copy is ``MAX_AGE_S`` old."""
    queries = _queries(30)
    recognizer = Recognizer(memory, _Vectors(), k=5, reject="auto")  # type: ignore[arg-type]
    before = _verdicts(recognizer, queries)
    other = CategoryMemory.open(tmp_path / "m", collection="reject")
    other.bind_encoder(_Vectors.fingerprint, DIM)
    _add(other)
    other.close()
    time.sleep(MAX_AGE_S + 0.05)
    after = _verdicts(recognizer, queries)
    assert after == _from_record(memory, queries) and after != before


def test_a_calibration_dropped_meanwhile_is_merged_into_a_copy_that_keeps_nothing(
    memory: CategoryMemory, tmp_path: Path
) -> None:
    """Another writer drops the stored calibration while an update searches for its stand-ins:
    the update merges into a copy of the one it read, whose means must include the example
    just added (a copy keeping the old one's derived means judged without it)."""
    other = CategoryMemory.open(tmp_path / "m", collection="reject")
    search = memory.search_batch

    def search_while_another_drops(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        other.update_extension(EXTENSION, lambda _old: None)
        return search(*args, **kwargs)

    centres, rng = _space(7)
    ids = memory.add_entries(_entries("category 12", "taught", 1), _draw(centres[12], rng, 1))
    memory.search_batch = search_while_another_drops  # type: ignore[method-assign]
    try:
        merged = openset.update(memory, added=ids)
    finally:
        memory.search_batch = search  # type: ignore[method-assign]
        other.close()
    assert merged.categories.count_of("category 12") == SHOTS[12] + 1
    reread = Calibration.model_validate(merged.model_dump(mode="json"))
    for kept, fresh in zip(merged.means(), reread.means(), strict=True):
        assert np.array_equal(np.asarray(kept), np.asarray(fresh))


def test_an_unchanged_calibration_is_not_parsed_again_when_its_copy_ages(
    memory: CategoryMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-reading the record every ``MAX_AGE_S`` parsed the calibration and derived the
    verdict's values again (7-15 ms at 10k entries) even when nothing had changed."""
    monkeypatch.setattr(cal_mod, "MAX_AGE_S", 0.0)  # every call re-reads the record
    first = openset.current(memory)
    assert first is not None
    assert openset.current(memory) is first  # the same stored calibration: kept as it is
    _add(memory)
    after = openset.current(memory)
    stored = openset.load(memory)
    assert after is not None and after is not first and stored is not None
    assert after.model_dump() == stored.model_dump() != first.model_dump()


def test_a_server_memorys_calibration_written_elsewhere_is_read_within_the_age_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a server memory the record was re-read from the handle's own copy, so a
    calibration another process wrote (a replica that was taught, `rar-agent memory
    remove`) was never seen. The in-process store runs the server backend; the other
    process's write goes to the collection through the client, as it would."""
    from rar_agent.memory.server import META_KEY

    centres, rng = _space(3)
    memory = CategoryMemory.open(":memory:", collection="served")
    memory.bind_encoder(_Vectors.fingerprint, DIM)
    for c, n in enumerate(SHOTS):
        entries = _entries(f"category {c}", f"s{c}", n)
        memory.add_entries(entries, _draw(centres[c], rng, n))
    openset.fit(memory)
    monkeypatch.setattr(cal_mod, "MAX_AGE_S", 0.0)
    held = openset.current(memory)
    assert held is not None and held.link is not None
    client = memory._backend._client  # type: ignore[attr-defined]
    record = client.get_collection("served").config.metadata[META_KEY]
    record["extensions"][EXTENSION]["link"] = held.link / 2  # another process's calibration
    record["revision"] += 1
    client.update_collection("served", metadata={META_KEY: record})
    now = openset.current(memory)
    assert now is not None and now.link == pytest.approx(held.link / 2)
    memory.close()
