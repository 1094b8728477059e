"""Session 20's probe of the one-example check (``tools/one_shot_profiles.py``): a query is
scored by how its similarity profile agrees with its answer's example's, a shift that moves
every similarity together leaves that agreement alone, and each score is calibrated by the
smallest known quantile of the sets named (each of them also judged held out)."""

from __future__ import annotations

import numpy as np
import pytest

from tools.one_shot_profiles import SCORES, auroc, report, scored, top1_after
from tools.one_shot_rules import _unit

ALPHA = 0.05


def _memory(rng: np.random.Generator, dim: int = 40, used: int = 30) -> dict:
    """Eight examples and their vocabulary (30 rows) in the first ``used`` dimensions; one
    known query per example (the example plus noise) and eight unseen (new directions)."""

    def inside(n: int) -> np.ndarray:
        return np.pad(rng.normal(size=(n, used)), ((0, 0), (0, dim - used)))

    x = _unit(inside(8))
    queries = np.concatenate([x + 0.15 * _unit(inside(8)), _unit(inside(8))])
    labels = np.array([str(i) for i in range(8)])
    truth = np.array([*labels, *(f"u{i}" for i in range(8))])
    return {"x": x, "labels": labels, "queries": queries, "truth": truth,
            "known": np.arange(16) < 8, "vocab": _unit(inside(30))}  # fmt: skip


def test_a_second_picture_agrees_with_its_example_in_what_else_it_resembles() -> None:
    m = _memory(np.random.default_rng(0))
    one = scored(m, m["vocab"], None)
    assert one["correct"][:8].all() and not one["correct"][8:].any()
    for score in ("vocab", "memory"):
        s = one["scores"][score]
        assert s[:8].mean() > s[8:].mean() + 0.2, score
        assert (np.abs(s) <= 1 + 1e-9).all()  # correlations
    assert one["scores"]["prior+vocab"] == pytest.approx(
        one["scores"]["prior"] + one["scores"]["vocab_scaled"]
    )


def test_a_shift_that_lowers_every_similarity_together_leaves_the_profiles_alone() -> None:
    m = _memory(np.random.default_rng(1))
    shifted = dict(m)
    away = np.zeros(40)
    away[35] = 1.0  # a direction no example and no vocabulary row has: another artist's style
    shifted["queries"] = _unit(_unit(m["queries"]) + 0.8 * away)
    before, after = scored(m, m["vocab"], None), scored(shifted, m["vocab"], None)
    fall = before["scores"]["prior"] - after["scores"]["prior"]
    assert (fall > 0).all() and (fall[:8] > 1).all()  # the known queries' most
    for score in ("vocab", "memory"):
        assert after["scores"][score] == pytest.approx(before["scores"][score]), score


def _runs(shift: float, n: int = 40, seed: int = 0) -> list[dict]:
    """Memories whose known queries score ``shift`` above their unseen ones on every score,
    each known one right."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = np.concatenate([rng.normal(shift, 1.0, 48), rng.normal(0.0, 1.0, 16)])
        known = np.arange(64) < 48
        out.append({"known": known, "correct": known, "scores": dict.fromkeys(SCORES, s)})
    return out


def test_the_auroc_and_the_top1_after_rejection() -> None:
    apart = _runs(100.0)
    assert auroc(apart, "vocab") == 1.0
    same = [{**r, "scores": {"vocab": np.zeros(64)}} for r in _runs(0.0, n=3)]
    assert auroc(same, "vocab") == 0.5  # ties count half
    runs = _runs(1.0, n=5)
    assert top1_after(runs, [-np.inf] * 5, "vocab") == 1.0
    cuts = [float(np.quantile(r["scores"]["vocab"][:48], 0.25)) for r in runs]
    assert top1_after(runs, cuts, "vocab") == pytest.approx(0.75, abs=0.03)  # rejected: missed


def test_a_score_is_cut_at_the_smallest_known_quantile_and_each_calibrate_set_held_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tools.one_shot_profiles as profiles

    monkeypatch.setattr(profiles, "shipped_cuts", lambda runs, alpha, fp: [0.0] * len(runs))
    sets = {"low": _runs(1.0, seed=2), "high": _runs(3.0, seed=3), "judged": _runs(2.0, seed=4)}
    out = report(sets, ALPHA, ["low", "high"], "fp")
    row = out["vocab"]
    assert row["low"][0] == pytest.approx(ALPHA, abs=0.01)  # the smaller quantile binds
    assert row["high"][0] < 0.01 and len(row["high"]) == 6 and len(row["judged"]) == 5
    assert row["low"][5] > 0.3  # held out: judged by the high set's cut alone
    # a set whose knowns lie higher keeps the promise, and its own quantile would reach more
    assert row["judged"][0] < ALPHA and row["judged"][2] > row["judged"][1] + 0.2
    assert set(out) == {"shipped rule", *SCORES}
