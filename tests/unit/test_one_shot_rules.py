"""The numpy sweeps behind the one-example section (``tools/one_shot_rules.py``): a rule
fitted on sets keeps ALPHA on each of them, the raise is the smallest that reaches a third,
a query-normalised score is calibrated by the smallest quantile of the sets named, and a
cohort-normalised score sets each similarity against its example's and query's cohort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rar_agent.openset.prior import PRIOR_DIR, MemoryScale, encoder_prior, prior_score
from tools.one_shot_rules import (
    _unit,
    cohort_scores,
    fit_line,
    known_quantile,
    main,
    memory_statistics,
    oracle,
    prior_and_margin,
    query_scores,
    raised,
    reference_cohorts,
    rejected,
    scored,
    set_moments,
    shipped_cuts,
    third_of_unseen,
)

ALPHA = 0.05


def _memories(shift: float, spread: float, n: int = 60, seed: int = 0) -> list[dict]:
    """Memories whose known queries' prior scores lie ``shift`` above their unseen ones and
    whose statistic ``c`` is ``spread``-wide around 0.5 and moves their knowns with it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = 0.5 + spread * rng.normal()
        known = rng.normal(shift + 10 * (c - 0.5), 1.0, 48)
        unseen = rng.normal(0.0, 1.0, 16)
        scores = np.concatenate([known, unseen])
        out.append(
            {
                "stats": {"c": c},
                "known": np.arange(64) < 48,
                "scores": {k: scores for k in ("prior", "margin", "above_mean", "query_z")},
            }
        )
    return out


def test_a_line_fitted_on_sets_keeps_alpha_on_each_of_them() -> None:
    sets = {"near": _memories(1.0, 0.05, seed=1), "far": _memories(3.0, 0.05, seed=2)}
    for keys in ((), ("c",)):
        beta, offset = fit_line(sets, ["near", "far"], keys, ALPHA)
        for runs in sets.values():
            design = np.array([[1.0, *(r["stats"][k] for k in keys)] for r in runs])
            known, _ = rejected(runs, list(offset + design @ beta))
            assert known <= ALPHA + 0.01  # the smallest over the sets: none rejects more
        assert len(beta) == 1 + len(keys)
    # the statistic moves each memory's knowns, so the line follows it (slope near 10)
    beta, _ = fit_line(sets, ["near", "far"], ("c",), ALPHA)
    assert beta[1] == pytest.approx(10.0, abs=3.0)


def test_the_oracle_is_the_unseen_below_the_sets_own_known_quantile() -> None:
    runs = _memories(2.0, 0.0)
    cut = known_quantile(runs, ALPHA)
    known, unseen = rejected(runs, [cut] * len(runs))
    assert known == pytest.approx(ALPHA, abs=0.01)
    assert oracle(runs, ALPHA) == pytest.approx(unseen)


def test_the_raise_is_the_smallest_that_reaches_a_third_of_the_targets_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tools.one_shot_rules as rules

    sets = {"target": _memories(3.0, 0.0, seed=3), "other": _memories(1.0, 0.0, seed=4)}
    monkeypatch.setattr(rules, "shipped_cuts", lambda runs, alpha, fp: [-1.0] * len(runs))
    out = raised(sets, ALPHA, "fp", "target")
    delta = out["delta"]
    assert out["target"][1] >= 1 / 3
    below = rejected(sets["target"], [-1.0 + delta - 0.05] * 60)[1]
    assert below < 1 / 3
    assert out["other"][0] > out["target"][0]  # the other set's knowns pay more


def test_a_query_score_is_calibrated_by_the_smallest_quantile_of_the_sets_named() -> None:
    sets = {"a": _memories(1.0, 0.0, seed=5), "b": _memories(3.0, 0.0, seed=6)}
    out = query_scores(sets, ALPHA, ["a"])
    assert out["margin"]["a"][0] == pytest.approx(ALPHA, abs=0.01)
    assert out["margin"]["b"][0] < 0.01  # b's knowns lie higher: a's cut barely touches them
    both = query_scores(sets, ALPHA, ["a", "b"])
    assert both["margin"]["a"][:3] == out["margin"]["a"]  # a's quantile is the smaller
    # held out, b is judged by a's cut alone, a by b's (which rejects far more of a's knowns)
    assert both["margin"]["b"][3] == out["margin"]["b"][0]
    assert both["margin"]["a"][3] > 0.3


def test_a_memorys_statistics_and_scores_are_its_own() -> None:
    rng = np.random.default_rng(7)
    x = _unit(rng.normal(size=(8, 16)))
    scale = MemoryScale.measure([str(i) for i in range(8)], x)
    assert scale is not None
    stats = memory_statistics(x, scale, _unit(rng.normal(size=(5, 16))))
    assert stats["c"] == scale.centre and stats["gap"] >= 0.0
    queries = np.concatenate([x[:3] + 0.01 * rng.normal(size=(3, 16)), rng.normal(size=(2, 16))])
    truth = np.array(["0", "1", "2", "x", "y"])
    m = {"x": x, "labels": np.array([str(i) for i in range(8)]), "queries": queries,
         "truth": truth, "known": np.isin(truth, [str(i) for i in range(8)])}  # fmt: skip
    one = scored(m, _unit(rng.normal(size=(5, 16))))
    assert one["correct"].tolist() == [True, True, True, False, False]
    margin = one["scores"]["margin"]
    assert (margin >= 0).all() and margin[:3].min() > margin[3:].max()


def test_the_shipped_cut_of_a_query_answered_by_a_category_set_apart_is_the_far_one() -> None:
    fingerprint = json.loads(next(PRIOR_DIR.glob("efficientnet*.json")).read_text())["fingerprint"]
    prior = encoder_prior(fingerprint)
    assert prior is not None and prior.far_below is not None
    rng = np.random.default_rng(9)
    common = rng.normal(size=32)
    drawings = _unit(common + 0.8 * rng.normal(size=(7, 32)))  # alike: nearest other ~0.6
    photo = _unit(rng.normal(size=(1, 32)) - 0.2 * common)  # far from all of them
    x = np.concatenate([drawings, photo])
    labels = np.array([*(f"d{i}" for i in range(7)), "photo"])
    queries = np.concatenate([drawings[:2], photo]) + 0.05 * rng.normal(size=(3, 32))
    m = {"x": x, "labels": labels, "queries": queries, "truth": labels[[0, 1, 7]],
         "known": np.ones(3, dtype=bool)}  # fmt: skip
    one = scored(m, _unit(rng.normal(size=(5, 32))), None, prior.far_below)
    assert one["scale"].apart == ["photo"] and one["apart"].tolist() == [False, False, True]
    cut = shipped_cuts([one], ALPHA, fingerprint)[0]
    others = prior.threshold(ALPHA, 1, one["scale"])
    far = prior.far_threshold(ALPHA)
    assert others is not None and far is not None
    expected = min(others, prior_score(far, one["scale"]))
    assert np.allclose(cut, [others, others, expected]) and expected < others


def test_the_prior_and_the_margin_together_reject_only_where_both_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tools.one_shot_rules as rules

    sets = {"a": _memories(1.0, 0.0, seed=8)}
    monkeypatch.setattr(rules, "shipped_cuts", lambda runs, alpha, fp: [0.0] * len(runs))
    both = prior_and_margin(sets, ALPHA, "fp", ["a"], level=0.3)["a"]
    alone = rejected(sets["a"], [0.0] * 60)
    # the same scores stand for both here: the margin's 30% cut (about 0.5) lies above the
    # prior's 0.0, so together they reject what the prior alone rejects
    assert both == [pytest.approx(v, abs=1e-4) for v in alone]
    monkeypatch.setattr(rules, "shipped_cuts", lambda runs, alpha, fp: [5.0] * len(runs))
    capped = prior_and_margin(sets, ALPHA, "fp", ["a"], level=0.3)["a"]
    assert capped[0] == pytest.approx(0.3, abs=0.02)  # now the margin's cut decides


def test_sets_the_reports_need_and_were_not_given_are_named_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the default --calibrate icons,fashion without --icons drew every memory, then a traceback
    rng = np.random.default_rng(0)
    for name, rows in (("train_x", 70), ("test_x", 100), ("imagenet_rows", 20)):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(rows, 16)).astype(np.float32))
    np.save(tmp_path / "train_y.npy", np.arange(70) % 10)
    np.save(tmp_path / "test_y.npy", np.arange(100) % 10)
    shipped = "effnet:efficientnet-lite0/imagenet-fc:999755eaea0b74f7"  # judged by its prior
    (tmp_path / "vectors.json").write_text(json.dumps({"fingerprint": shipped}))
    with pytest.raises(SystemExit) as done:
        main(["--fashion", str(tmp_path), "--memories", "2"])
    assert done.value.code == 2
    said = capsys.readouterr().err
    assert "--calibrate icons,fashion: icons not among the sets given (fashion)" in said
    # calibrated by Fashion-MNIST alone, the rules had no other set to be fitted on
    with pytest.raises(SystemExit) as done:
        main(["--fashion", str(tmp_path), "--memories", "2", "--calibrate", "fashion"])
    assert done.value.code == 2
    assert "give --icons or --glyphs beside --fashion" in capsys.readouterr().err


def test_a_third_of_the_targets_unseen_is_reached_at_the_smallest_cut() -> None:
    sets = {"target": _memories(3.0, 0.0, seed=9), "other": _memories(1.0, 0.0, seed=10)}
    out = third_of_unseen(sets, "margin", "target")
    runs = sets["target"]
    assert rejected(runs, [out["cut"]] * len(runs), "margin")[1] >= 1 / 3
    values = np.concatenate([r["scores"]["margin"][~r["known"]] for r in runs])
    lower = values[values < out["cut"]].max()  # the next cut down: that value kept
    assert rejected(runs, [lower] * len(runs), "margin")[1] < 1 / 3
    assert out["other"][0] > out["target"][0]


def _cohort_case() -> tuple[dict, dict, np.ndarray]:
    """Two examples and two queries, each query at similarity 0.6 to its own example; two of
    the three cohort members crowd around example 0 (and so around its query)."""
    e = np.eye(6)
    x = np.stack([e[0], e[1]])
    q = np.stack([0.6 * e[0] + 0.8 * e[2], 0.6 * e[1] + 0.8 * e[3]])
    crowd = _unit(np.stack([e[0] + 0.5 * e[4], e[0] + 0.5 * e[5], e[3] + 0.5 * e[4]]))
    # the set's rows are the queries then the examples; the memory draws from the pool
    ref = {"x": np.concatenate([q, x]), "pool_x": x}
    m = {"x": x, "keys": ["0", "1"], "rows": np.array([0, 1])}
    return m, set_moments(ref, {"crowd": crowd}), q @ x.T


def test_a_similarity_near_a_crowded_example_counts_for_less() -> None:
    m, fixed, sims = _cohort_case()
    out = cohort_scores(m, sims, fixed)
    pull = 2 / np.sqrt(1.25) / 3  # the crowd's mean similarity to example 0
    query_pull = [2 * 0.6 / np.sqrt(1.25) / 3, 0.8 / np.sqrt(1.25) / 3]
    expected = [0.6 - (pull + query_pull[0]) / 2, 0.6 - (0.0 + query_pull[1]) / 2]
    assert out["d-crowd"] == pytest.approx(expected)
    for form in ("z", "t", "s", "d"):  # the same raw similarity, less where it is crowded
        assert out[f"{form}-crowd"][0] < out[f"{form}-crowd"][1], form
        assert out[f"{form}-crowd10"] == pytest.approx(out[f"{form}-crowd"])  # 3 < 10 members
    # the memory as cohort: a query's moments leave its own answer out
    assert out["d-memory"] == pytest.approx(0.6 - (0.0 + 0.0) / 2 * np.ones(2))


def test_the_reference_cohort_never_holds_the_judged_kind() -> None:
    rng = np.random.default_rng(11)
    refs = {
        "icons": {"x": rng.normal(size=(30, 8))},
        "emoji": {"x": rng.normal(size=(20, 8)) + 5.0},
        "emoji, noto -> emojify": {"x": rng.normal(size=(10, 8)) + 5.0,
                                   "pool_x": rng.normal(size=(10, 8)) + 5.0},
    }  # fmt: skip
    cohorts = reference_cohorts(refs)
    icons = np.unique(_unit(refs["icons"]["x"]), axis=0)
    for name in ("emoji", "emoji, noto -> emojify"):
        assert np.allclose(np.unique(cohorts[name], axis=0), icons)  # the icons alone
    assert len(cohorts["icons"]) == 40  # every emoji vector, none of its own
