"""The rule that ranks categories: a local class mean, near-duplicates decide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rar_agent.evaluation.stream import classify
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.retrieval import NEAR_DUPLICATE, CategoryRetriever, category_scores


def _unit(*rows: tuple[float, ...]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


QUERY = _unit((1.0, 0.0, 0.0))[0]
# "odd": one stray example close to the query, its category's others far off;
# "tight": two examples on either side of the query
ODD = _unit((0.9, 0.436, 0.0), (0.0, 1.0, 0.2), (0.0, 0.9, 0.4))
TIGHT = _unit((0.85, 0.0, 0.527), (0.85, 0.0, -0.527))


def test_one_odd_example_does_not_outweigh_its_category() -> None:
    rows = np.concatenate([ODD, TIGHT])
    labels = ["odd"] * 3 + ["tight"] * 2
    sims = rows @ QUERY
    scores = category_scores(QUERY, rows, labels, sims)
    assert max(sims[:3]) > max(sims[3:])  # the nearest example is the odd one's
    assert scores["tight"] > scores["odd"]  # but its category's mean lies farther
    assert scores["tight"] == pytest.approx(1.0, abs=1e-6)
    assert scores["odd"] >= float(np.mean(sims[:3]))  # never below the mean similarity
    assert classify(rows, labels, QUERY[None, :], "local_mean") == ["tight"]  # the eval's
    assert classify(rows, labels, QUERY[None, :], "nearest") == ["odd"]


def test_a_single_entry_or_a_near_duplicate_scores_its_similarity() -> None:
    rows = np.concatenate([_unit((1.0, 0.01, 0.0)), ODD[1:], TIGHT[:1]])
    labels = ["odd", "odd", "odd", "tight"]
    sims = rows @ QUERY
    scores = category_scores(QUERY, rows, labels, sims)
    assert sims[0] >= NEAR_DUPLICATE
    assert scores == pytest.approx({"odd": float(sims[0]), "tight": float(sims[3])})


def test_the_recognizer_ranks_by_the_rule(tmp_path: Path) -> None:
    class _Vectors:
        fingerprint = "test:category-scores"
        dim = 3

    memory = CategoryMemory.open(tmp_path / "m", collection="rank")
    memory.bind_encoder(_Vectors.fingerprint, 3)
    labels = ["odd"] * 3 + ["tight"] * 2
    entries = [
        MemoryEntry(label, "image", f"{label}-{i}", f"h{i}") for i, label in enumerate(labels)
    ]
    memory.add_entries(entries, np.concatenate([ODD, TIGHT]))
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=2)  # type: ignore[arg-type]
    [candidates] = retriever.retrieve_vectors(QUERY[None, :])
    assert [c.label for c in candidates] == ["tight", "odd"]
    assert candidates[0].score >= candidates[1].score
    assert candidates[1].scores[0] > candidates[0].scores[0]  # raw similarities kept
    memory.close()
