"""The one-example check's stand-ins in its own regime (``tools/eval_one_shot.py``): the
emoji things whose drawings agree most, a memory from one emoji set judged on another's
drawings, and the oracle each set is reported against."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from rar_agent.openset import prior as prior_mod
from rar_agent.openset.calibration import GROUP_QUANTILE
from rar_agent.openset.prior import EncoderPrior
from tools.eval_one_shot import (
    emoji_sets,
    line,
    most_alike,
    one_memory,
    oracle,
    reference_sets,
    summary,
)

SETS = ("noto", "emojione", "emojify", "openmoji")


def _emoji_cache(
    tmp_path: Path, things: int = 40, seed: int = 0, rest: float = 0.6
) -> tuple[Path, np.ndarray]:
    """A cache as ``emoji_reference.encode_emoji`` writes it: each thing drawn by the four
    sets, the first ten things drawn far more alike than the rest (noise 0.1, ``rest``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(things, 24))
    rows, labels, sets = [], [], []
    for t in range(things):
        for s in SETS:
            rows.append(centres[t] + (0.1 if t < 10 else rest) * rng.normal(size=24))
            labels.append(f"thing{t:02d}")
            sets.append(s)
    np.save(tmp_path / "emoji_x.npy", np.asarray(rows, dtype=np.float32))
    info = {"fingerprint": "vectors:emoji-test", "labels": labels, "sets": sets}
    (tmp_path / "emoji.json").write_text(json.dumps(info))
    return tmp_path, centres


def _args(cache: Path, alike: int = 0, pair: list[str] | None = None) -> argparse.Namespace:
    return argparse.Namespace(emoji=cache, alike=alike, pair=pair or [])


def test_the_most_alike_things_are_those_whose_drawings_agree_across_the_colour_sets(
    tmp_path: Path,
) -> None:
    cache, _ = _emoji_cache(tmp_path)
    x = np.load(cache / "emoji_x.npy")
    info = json.loads((cache / "emoji.json").read_text())
    picked = most_alike(x, np.asarray(info["labels"]), np.asarray(info["sets"]), 10)
    assert sorted(picked) == [f"thing{t:02d}" for t in range(10)]


def test_the_alike_regime_holds_only_those_things_in_the_colour_sets(tmp_path: Path) -> None:
    cache, _ = _emoji_cache(tmp_path)
    regimes = emoji_sets(_args(cache, alike=12))
    alike = regimes["emoji, 3 colour sets, the 12 most alike"]
    assert len(alike["labels"]) == 12 * 3 and len(set(alike["labels"])) == 12
    assert len(regimes["emoji"]["labels"]) == 40 * 4
    assert len(regimes["emoji, 3 colour sets"]["labels"]) == 40 * 3


def test_a_pair_teaches_from_one_set_and_asks_with_the_other_only(tmp_path: Path) -> None:
    cache, _ = _emoji_cache(tmp_path)
    ref = emoji_sets(_args(cache, pair=["noto:emojify"]))["emoji, noto -> emojify"]
    x = np.load(cache / "emoji_x.npy")
    sets = np.asarray(json.loads((cache / "emoji.json").read_text())["sets"])
    assert np.array_equal(ref["pool_x"], x[sets == "noto"])
    assert np.array_equal(ref["x"], x[sets == "emojify"])
    (tmp_path / "work").mkdir()
    run = one_memory(ref, seed=0, workdir=tmp_path / "work")
    # 24 known + 8 unseen things, each asked once, by the other set's drawing
    assert len(run["scores"]["known"]) == 24 and len(run["scores"]["unseen"]) == 8
    assert run["known_top1"] > 0.9  # the same thing, another artist's (here: noisier) drawing


@pytest.mark.parametrize("pair", ["noto", "noto:noto", "noto:twemoji"])
def test_a_pair_that_names_no_two_sets_says_which_exist(tmp_path: Path, pair: str) -> None:
    cache, _ = _emoji_cache(tmp_path)
    sets = r"\(emojify, emojione, noto, openmoji\)"
    with pytest.raises(SystemExit, match=f"name two emoji sets.*{sets}"):
        emoji_sets(_args(cache, pair=[pair]))


def test_the_oracle_rejects_the_unseen_below_the_knowns_own_quantile() -> None:
    rng = np.random.default_rng(1)
    runs = [
        {"scores": {"known": rng.normal(2.0, 1.0, 200), "unseen": rng.normal(0.0, 1.0, 50)}}
        for _ in range(20)
    ]
    known = np.concatenate([r["scores"]["known"] for r in runs])
    cut = np.quantile(known, 0.05)
    assert np.mean(known < cut) == pytest.approx(0.05, abs=0.002)
    # the unseen below 2 - 1.645 standard deviations of the knowns: Phi(0.355) = 0.64
    assert oracle(runs, 0.05) == pytest.approx(0.64, abs=0.03)
    assert oracle(runs, 0.2) > oracle(runs, 0.05)


def test_the_summary_reports_the_oracle_beside_the_shipped_rule(tmp_path: Path) -> None:
    cache, _ = _emoji_cache(tmp_path)
    ref = emoji_sets(_args(cache))["emoji, 3 colour sets"]
    (tmp_path / "work").mkdir()
    runs = [one_memory(ref, seed, tmp_path / "work") for seed in range(2)]
    rows = summary(runs)
    for a in ("0.05", "0.1", "0.2"):
        assert 0.0 <= rows[a]["oracle_unseen_rejected"] <= 1.0
        assert rows[a]["known_rejected"] <= 1.0
    assert rows["0.2"]["oracle_unseen_rejected"] >= rows["0.05"]["oracle_unseen_rejected"]


def test_alike_or_pair_without_the_emoji_cache_says_to_give_it() -> None:
    # --alike 200 --pair noto:emojify without --emoji ran the other sets and said nothing
    args = argparse.Namespace(icons=None, emoji=None, glyphs=None, fashion=None)
    for alike, pair in ((200, []), (0, ["noto:emojify"])):
        with pytest.raises(SystemExit, match="give the emoji cache too"):
            reference_sets(argparse.Namespace(**vars(args), alike=alike, pair=pair))


@pytest.mark.parametrize("alike", [-5, 41])
def test_alike_beyond_the_things_in_the_cache_says_how_many_there_are(
    tmp_path: Path, alike: int
) -> None:
    # -5 kept all but the last 5 and 41 all 40, each row named "the N most alike"
    cache, _ = _emoji_cache(tmp_path)
    with pytest.raises(SystemExit, match="40 emoji things to keep, 1 to 40"):
        emoji_sets(_args(cache, alike=alike))


def test_the_summary_reports_the_groups_of_the_rejected_and_of_every_unseen_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check reported no novel groups, so how pure a one-example memory's groups are on
    colour drawings went unmeasured. Its summary now gives them for the queries rejected at
    ALPHA 0.05 and for every unseen query (as if all were rejected), at the memory's link:
    without a link nothing is grouped; with the encoder prior's, each unseen thing's
    drawings (far closer to each other than to any other thing) form one pure group."""
    cache, _ = _emoji_cache(tmp_path, rest=0.1)
    ref = emoji_sets(_args(cache))["emoji, 3 colour sets"]
    (tmp_path / "work").mkdir()
    unlinked = summary([one_memory(ref, seed, tmp_path / "work") for seed in range(2)])
    assert unlinked["groups_unseen"]["grouped_share"] == 0.0
    assert unlinked["groups_unseen"]["group_purity"] is None
    prior = EncoderPrior(
        fingerprint="vectors:emoji-test", encoder="synthetic", measured_on="nothing",
        alphas=[0.05], quantiles={"1": [-1.0]}, link=1.0, link_quantile=GROUP_QUANTILE,
    )  # fmt: skip
    monkeypatch.setattr(prior_mod, "_priors", lambda: {prior.fingerprint: prior})
    rows = summary([one_memory(ref, seed, tmp_path / "work") for seed in range(2)])
    unseen = rows["groups_unseen"]
    assert unseen["group_purity"] == 1.0 and unseen["grouped_share"] == 1.0
    assert unseen["groups_per_new_class"] == 1.0
    assert unseen["taught_right"] == 8 * 3 and unseen["taught_wrong"] == 0
    assert set(rows["groups"]) == set(unseen)
    said = line("emoji", {**rows, "categories": [24, 8]})
    assert "groups of the unseen (all): purity 100.0%, grouped 100.0%" in said
