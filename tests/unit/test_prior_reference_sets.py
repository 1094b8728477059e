"""The encoder prior's reference sets (``tools/fit_encoder_prior.py``): a memory example is
never a query of its own memory, and a set's quantile is the knowns' own."""

from __future__ import annotations

import numpy as np
import pytest

from tools.fit_encoder_prior import (
    ALPHAS,
    RefSet,
    _smallest,
    delivered,
    fit_rule,
    picture_set,
    quantiles,
    trials,
)


def _pool(categories: int, per: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(categories, 16))
    x = np.repeat(centres, per, axis=0) + 0.8 * rng.normal(size=(categories * per, 16))
    return x, [f"c{i}" for i in range(categories) for _ in range(per)]


def test_a_memory_example_is_never_a_query_of_its_own_memory() -> None:
    x, labels = _pool(12, 4)
    ref = picture_set("drawings", x, labels)
    assert ref.same_pool
    runs = trials(ref, shots=1, known=8, unseen=3, n=20, seed=0)
    # a pool of 4 per category: each memory holds 1 of each known category, so its knowns
    # have 3 queries each, never the example itself (a similarity of 1, always right)
    assert all(len(r["known"]) == 8 * 3 and len(r["unseen"]) == 3 * 4 for r in runs)
    assert np.mean([r["correct"].mean() for r in runs]) < 1.0


def test_separate_query_pools_keep_every_query() -> None:
    x, labels = _pool(10, 3, seed=1)
    y = np.asarray([int(v[1:]) for v in labels])
    tx, _ = _pool(10, 5, seed=2)
    ty = np.repeat(np.arange(10), 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = RefSet("split", unit, y, tx / np.linalg.norm(tx, axis=1, keepdims=True), ty)
    runs = trials(ref, shots=2, known=7, unseen=3, n=5, seed=0)
    assert all(len(r["known"]) == 7 * 5 and len(r["unseen"]) == 3 * 5 for r in runs)


def test_the_quantile_is_the_knowns_own_at_each_alpha() -> None:
    x, labels = _pool(12, 6, seed=3)
    runs = trials(picture_set("drawings", x, labels), 1, 8, 3, 30, seed=1)
    q = quantiles(runs)
    assert q == sorted(q) and len(q) == len(ALPHAS)
    share = np.mean([np.mean(r["known"] < q[ALPHAS.index(0.1)]) for r in runs])
    assert share == pytest.approx(0.1, abs=0.03)


def test_the_slopes_carry_how_the_quantile_moves_with_the_pair_spread() -> None:
    rng = np.random.default_rng(4)
    runs: dict[str, list[dict]] = {}
    for name, spread, level in (("even", 0.05, 0.0), ("clustered", 0.15, -1.0)):
        runs[name] = [
            {
                "known": level + rng.normal(size=200),
                "unseen": level - 1.0 + rng.normal(size=50),
                "correct": np.ones(200, dtype=bool),
                "pair_spread": spread + rng.normal(scale=0.005),
            }
            for _ in range(40)
        ]
    q, slopes = fit_rule(runs, ["even", "clustered"])
    assert all(s == pytest.approx(-10.0, abs=2.0) for s in slopes)  # -1 per 0.1 of spread
    for name in runs:  # each set judged at its own spread keeps ALPHA
        got = delivered(runs[name], q, slopes)["0.1"]["known_rejected"]
        assert got == pytest.approx(0.1, abs=0.03)
    flat = delivered(runs["even"], _smallest([quantiles(r) for r in runs.values()]))
    assert flat["0.1"]["known_rejected"] < 0.05  # one quantile for both: the even set loses
