"""The reject step on a real (embedded) memory: the retriever's category scores and the
verdicts are those of their definitions, however often the kept values are reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.openset.calibration import SHOT_LEVELS, Calibration
from rar_agent.pipeline import Recognizer
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


def _expected_verdict(cal: Calibration, query: np.ndarray, alpha: float) -> tuple:
    """The auto verdict by its definition: the best category's statistic against the
    threshold of the largest shot level not above its examples that has one, and the share
    of that level's stand-ins at most as known; and the level."""
    model = cal.model()
    assert model is not None
    _, counts, means = cal.means()
    row = model.scores(model.project(query), means)[0]
    best = int(np.argmax(row))
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
        expected = {i: _expected_verdict(reference, queries[i], alpha) for i in order}
        levels |= {level for _, level in expected.values()}
        for _ in range(2):  # the second time every kept row and threshold is reused
            found = [c for b in batches for c in recognizer.retriever.retrieve_vectors(queries[b])]
            verdicts = recognizer.judge_many(found, queries[order])
            for i, candidates, verdict in zip(order, found, verdicts, strict=True):
                for c in candidates:
                    assert c.score == pytest.approx(scores[i][c.label], rel=1e-12, abs=1e-12)
                said = (verdict.similarity, verdict.threshold, verdict.known_share)
                assert said == expected[i][0]
                assert bool(verdict.reasons) == (said[0] < said[1])
    assert len(levels) >= 3  # thresholds of several shot levels were compared
