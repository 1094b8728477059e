"""Memories too small to calibrate themselves: the encoder prior, its stored form, where it
keeps the promise, where it cannot, and the switch to the memory's own conformal threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.cli.memory import _open_set_stats
from rar_agent.config import parse_reject
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.openset import prior as prior_mod
from rar_agent.openset.calibration import (
    GROUP_QUANTILE,
    MIN_CATEGORIES,
    MIN_LINK_PAIRS,
    group_link,
    load,
    min_standins,
)
from rar_agent.openset.groups import NovelGroupLog
from rar_agent.openset.prior import (
    PRIOR_DIR,
    EncoderPrior,
    MemoryScale,
    encoder_prior,
    prior_score,
    similarity_at,
)
from rar_agent.pipeline import Recognizer
from rar_agent.retrieval import CategoryRetriever
from rar_agent.tools import UnknownGroupsTool

DIM = 48
FINGERPRINT = "vectors:prior-test"
ALPHAS = [0.01, 0.02, 0.05, 0.1, 0.2]


def _world(seed: int, categories: int) -> np.ndarray:
    """Category centres of one synthetic "dataset" (every dataset from one generator, so a
    prior measured on some carries over to the others)."""
    return np.random.default_rng(seed).normal(size=(categories, DIM))


def _photos(centres: np.ndarray, category: int, n: int, rng: np.random.Generator) -> np.ndarray:
    x = centres[category] / np.sqrt(DIM) * 1.6 + rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fitted_prior(shots: tuple[int, ...] = (1, 2, 3)) -> EncoderPrior:
    """A prior measured the way ``tools/fit_encoder_prior.py`` measures one, on other
    synthetic datasets than the tests judge (seeds 100-139)."""
    rng = np.random.default_rng(5)
    quantiles = {}
    for m in shots:
        scores = []
        for seed in range(100, 140):
            centres = _world(seed, 8)
            memory = np.concatenate([_photos(centres, c, m, rng) for c in range(8)])
            labels = [str(c) for c in range(8) for _ in range(m)]
            scale = MemoryScale.measure(labels, memory)
            assert scale is not None
            queries = np.concatenate([_photos(centres, c, 30, rng) for c in range(8)])
            scores.append(prior_score((queries @ memory.T).max(axis=1), scale))
        quantiles[str(m)] = [float(np.quantile(np.concatenate(scores), a)) for a in ALPHAS]
    return EncoderPrior(
        fingerprint=FINGERPRINT,
        encoder="synthetic",
        measured_on="synthetic categories (seeds 100-139)",
        alphas=ALPHAS,
        quantiles=quantiles,
    )


@pytest.fixture
def with_prior(monkeypatch: pytest.MonkeyPatch) -> EncoderPrior:
    prior = _fitted_prior()
    monkeypatch.setattr(prior_mod, "_priors", lambda: {FINGERPRINT: prior})
    return prior


class _Vectors:
    fingerprint = FINGERPRINT
    dim = DIM


def _memory(tmp_path: Path, centres: np.ndarray, shots: list[int], seed: int = 0) -> CategoryMemory:
    """A memory of ``shots[c]`` examples of category ``c``, calibrated as every caller does."""
    rng = np.random.default_rng(seed + 1000)  # photo noise apart from the centres' draws
    memory = CategoryMemory.open(tmp_path / f"m{seed}-{'-'.join(map(str, shots))}", collection="p")
    memory.bind_encoder(FINGERPRINT, DIM)
    for c, n in enumerate(shots):
        entries = [MemoryEntry(f"c{c}", "image", f"c{c}-{i}", f"c{c}-{i}") for i in range(n)]
        openset.update(memory, added=memory.add_entries(entries, _photos(centres, c, n, rng)))
    return memory


def _judge(memory: CategoryMemory, queries: np.ndarray, alpha: float) -> list:
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=3)  # type: ignore[arg-type]
    cal = openset.load(memory)
    setting = parse_reject(f"auto:{alpha}")
    found = retriever.retrieve_vectors(queries)
    return [openset.judge(c, setting, cal, v) for c, v in zip(found, queries, strict=True)]


def _rejected(verdicts: list) -> float:
    return float(np.mean([bool(v.reasons) for v in verdicts]))


# ------------------------------------------------------------------ the stored form


def test_the_shipped_prior_is_keyed_by_the_encoder_and_well_formed() -> None:
    files = sorted(PRIOR_DIR.glob("*.json"))
    assert files, "no encoder prior ships with the package"
    for path in files:
        prior = EncoderPrior.model_validate(json.loads(path.read_text()))
        shipped = encoder_prior(prior.fingerprint)
        assert shipped is not None and shipped.quantiles == prior.quantiles
        assert prior.alphas == sorted(prior.alphas) and prior.shots()[0] == 1
        scale = MemoryScale(centre=0.6, spread=0.08, categories=24, examples=24, pair_spread=0.1)
        for key, row in prior.quantiles.items():
            slopes = prior.slopes.get(key, [0.0] * len(row))
            assert len(row) == len(prior.alphas) == len(slopes)
            at = [prior.threshold(a, int(key), scale) for a in prior.alphas]
            assert at == sorted(at)  # a larger ALPHA never lowers the threshold
        expected = prior.quantiles["1"][2] + prior.slopes.get("1", [0.0] * 3)[2] * 0.1
        assert prior.threshold(prior.alphas[2], 1, scale) == pytest.approx(expected)
        # above the grid its largest ALPHA's (rejecting less than promised, never nothing)
        top = prior.threshold(prior.alphas[-1], 1, scale)
        assert prior.threshold(prior.alphas[-1] * 1.5, 1, scale) == top
        assert prior.threshold(prior.alphas[0] / 2, 1, scale) is None  # below it: no promise
        assert prior.validated  # the held-out figures travel with it
    effnet = [p for p in files if "efficientnet-lite0" in p.name]
    assert effnet and encoder_prior(json.loads(effnet[0].read_text())["fingerprint"])


def test_the_far_threshold_rises_with_alpha_and_stays_within_the_grid() -> None:
    prior = _fitted_prior()
    assert prior.far_threshold(0.05) is None  # none fitted: the others' threshold judges
    prior.far = [0.3 + 0.01 * i for i in range(len(prior.alphas))]
    prior.far[3] = 0.2  # a dip in the fit never lets a larger ALPHA reject fewer
    at = [prior.far_threshold(a) for a in prior.alphas]
    assert at == sorted(at) and at[2] == pytest.approx(0.32) and at[3] == pytest.approx(0.32)
    assert prior.far_threshold(prior.alphas[-1] * 2) == pytest.approx(prior.far[-1])
    assert prior.far_threshold(prior.alphas[0] / 2) is None
    shipped = encoder_prior(json.loads(next(PRIOR_DIR.glob("efficientnet*.json")).read_text())
                            ["fingerprint"])  # fmt: skip
    assert shipped is not None and len(shipped.far) == len(shipped.alphas)


def test_a_prior_threshold_uses_the_largest_measured_shot_count_not_above() -> None:
    prior = _fitted_prior()
    assert prior.threshold(0.05, 2) == pytest.approx(prior.quantiles["2"][2])
    assert prior.threshold(0.05, 9) == pytest.approx(prior.quantiles["3"][2])
    between = prior.threshold(0.03, 1)
    assert between is not None and prior.quantiles["1"][1] < between < prior.quantiles["1"][2]
    assert encoder_prior("no:such-encoder") is None and encoder_prior(None) is None


def test_the_scale_is_the_mean_similarity_to_the_nearest_other_category() -> None:
    x = np.eye(6)[:, :6].copy()
    x[1] = [0.8, 0.6, 0, 0, 0, 0]  # category "b" lies 0.8 from "a"
    scale = MemoryScale.measure(list("abcdef"), x)
    assert scale is not None and scale.categories == 6 and scale.examples == 6
    nearest = np.array([0.8, 0.8, 0, 0, 0, 0])
    assert scale.centre == pytest.approx(nearest.mean(), abs=1e-6)
    assert scale.spread == pytest.approx(nearest.std(), abs=1e-6)
    assert MemoryScale.measure(list("abcd"), x[:4]) is None  # too few categories
    with pytest.raises(ValueError, match="labels for"):
        MemoryScale.measure(list("abc"), x)
    assert similarity_at(prior_score(0.7, scale), scale) == pytest.approx(0.7)


def test_the_pair_spread_is_the_spread_of_every_pair_and_shifts_a_sloped_prior() -> None:
    x = np.eye(6)
    x[1] = [0.8, 0.6, 0, 0, 0, 0]
    scale = MemoryScale.measure(list("abcdef"), x)
    assert scale is not None and scale.pair_spread is not None
    pairs = (x @ x.T)[np.triu_indices(6, 1)]  # 0.8 once, 0 fourteen times
    assert scale.pair_spread == pytest.approx(pairs.std(), abs=1e-6)
    flat = _fitted_prior()
    sloped = flat.model_copy(
        update={"slopes": {k: [-10.0] * len(v) for k, v in flat.quantiles.items()}}
    )
    base = flat.threshold(0.05, 1, scale)
    assert base is not None and flat.threshold(0.05, 1) == base  # no slopes: no scale needed
    # categories that form clusters (a wide pair spread) are judged at a lower quantile
    assert sloped.threshold(0.05, 1, scale) == pytest.approx(base - 10.0 * scale.pair_spread)
    even = scale.model_copy(update={"pair_spread": scale.pair_spread / 2})
    assert sloped.threshold(0.05, 1, even) == pytest.approx(base - 5.0 * scale.pair_spread)
    assert sloped.threshold(0.05, 1, None) is None  # slopes and nothing to apply them to
    assert sloped.threshold(0.05, 1, scale.model_copy(update={"pair_spread": None})) is None


# ------------------------------------------------------------------ every small memory


def test_without_a_prior_single_examples_still_say_they_cannot_calibrate(tmp_path: Path) -> None:
    centres = _world(0, 10)
    memory = _memory(tmp_path, centres, [1] * 8)
    rng = np.random.default_rng(1)
    verdicts = _judge(memory, _photos(centres, 0, 10, rng), 0.05)
    assert all(v.threshold is None and not v.reasons for v in verdicts)
    assert "cannot calibrate" in verdicts[0].note
    assert f"no encoder prior for {FINGERPRINT}" in verdicts[0].note
    cal = load(memory)
    assert cal is not None and cal.method == "none" and cal.summary()["cannot_calibrate"]
    # `memory stats` told only half of what the answers say: why no prior helps either
    shown = _open_set_stats(cal, parse_reject("auto"), memory.count("image"))
    assert shown["calibrated"] is False and f"no encoder prior for {FINGERPRINT}" in shown["note"]
    memory.close()


@pytest.mark.parametrize("shots", [1, 2, 3])
def test_each_small_memory_keeps_the_promise_with_the_prior(
    tmp_path: Path, with_prior: EncoderPrior, shots: int
) -> None:
    known, unseen, alphas = 8, 4, (0.01, 0.05, 0.2)
    rates: dict[float, list[float]] = {a: [] for a in alphas}
    unseen_rates: dict[float, list[float]] = {a: [] for a in alphas}
    for seed in range(6):
        centres = _world(seed, known + unseen)
        memory = _memory(tmp_path, centres, [shots] * known, seed=seed)
        rng = np.random.default_rng(seed + 50)
        queries = np.concatenate([_photos(centres, c, 25, rng) for c in range(known)])
        strangers = np.concatenate(
            [_photos(centres, c, 25, rng) for c in range(known, known + unseen)]
        )
        # the memory's own stand-ins judge where they can at the default ALPHA, at every
        # ALPHA (nothing rejected where they are too few), else the prior at every ALPHA
        own = shots > 1 and known * shots >= min_standins(0.05)
        for alpha in alphas:
            verdicts = _judge(memory, queries, alpha)
            assert all(v.alpha == alpha for v in verdicts)
            if own and known * shots >= min_standins(alpha):
                assert all(v.note is None and v.threshold is not None for v in verdicts)
            elif own:
                assert all(v.threshold is None for v in verdicts), (shots, alpha)
                assert all("nothing is rejected at this ALPHA" in str(v.note) for v in verdicts)
            else:
                assert all(v.threshold is not None for v in verdicts)
                assert all("encoder prior of synthetic" in str(v.note) for v in verdicts)
                assert all("not on this memory" in str(v.note) for v in verdicts)
            rates[alpha].append(_rejected(verdicts))
            unseen_rates[alpha].append(_rejected(_judge(memory, strangers, alpha)))
        memory.close()
    for alpha in alphas:
        assert np.mean(rates[alpha]) <= alpha + 0.025, (shots, alpha, rates[alpha])
        assert np.mean(unseen_rates[alpha]) >= np.mean(rates[alpha])
    assert np.mean(unseen_rates[0.2]) > np.mean(rates[0.2])


def test_a_mixed_memory_whose_stand_ins_cannot_calibrate_uses_the_prior(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    centres = _world(3, 10)
    shots = [1] * 5 + [10] * (MIN_CATEGORIES - 2)  # stand-ins from 3 categories only
    memory = _memory(tmp_path, centres, shots)
    rng = np.random.default_rng(4)
    one = _judge(memory, _photos(centres, 0, 5, rng), 0.05)
    many = _judge(memory, _photos(centres, 6, 5, rng), 0.05)
    assert all("encoder prior" in v.note and v.threshold is not None for v in one + many)
    cal = load(memory)
    assert cal is not None and cal.scale is not None
    # a 10-example category is judged at the largest shot count the prior measured
    assert many[0].threshold == pytest.approx(cal.prior_threshold(0.05, 3)[0], abs=1e-6)
    assert one[0].threshold == pytest.approx(cal.prior_threshold(0.05, 1)[0], abs=1e-6)
    # `memory stats` said the memory's own examples set the thresholds "where they
    # suffice" and promised 5% as if measured, while every answer above came from the prior
    shown = _open_set_stats(cal, parse_reject("auto:0.05"), memory.count("image"))
    assert shown["cannot_calibrate"] is None and shown["method"] == "prior"
    assert shown["source"].startswith("the encoder prior of synthetic")
    assert "own examples where they suffice" not in shown["source"]
    assert f"only {MIN_CATEGORIES - 2} categories have 2 or more examples" in shown["note"]
    assert shown["promise"].endswith(
        "as the encoder prior estimates; this memory cannot measure it yet"
    )
    memory.close()


def test_too_few_categories_for_a_scale_cannot_calibrate(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    centres = _world(0, 10)
    memory = _memory(tmp_path, centres, [1] * (MIN_CATEGORIES - 1))
    verdicts = _judge(memory, _photos(centres, 0, 5, np.random.default_rng(0)), 0.05)
    assert all(v.threshold is None and not v.reasons for v in verdicts)
    assert f"at least {MIN_CATEGORIES} categories" in verdicts[0].note
    cal = load(memory)
    assert cal is not None
    shown = _open_set_stats(cal, parse_reject("auto"), memory.count("image"))
    assert f"at least {MIN_CATEGORIES} categories" in shown["note"]
    memory.close()


def test_the_conformal_threshold_takes_over_at_its_minimum(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    """At the default ALPHA a conformal threshold needs 19 stand-ins from 5 categories: four
    categories of four examples, one of two and two single ones give 18, so the encoder prior
    judges, at every ALPHA (the choice is the memory's, not the ALPHA's); a third example of
    the fifth makes 19 and the memory's own stand-ins judge, at every ALPHA. (Until session
    21 this memory had four categories of two and was judged by its own at ALPHA 0.2 with 10
    stand-ins: built category by category, it had never measured the scale the prior is
    applied by.)"""
    assert min_standins(0.05) == 19
    centres = _world(2, 8)
    memory = _memory(tmp_path, centres, [4] * 4 + [2] + [1] * 2)
    query = _photos(centres, 0, 3, np.random.default_rng(9))
    for alpha in (0.05, 0.2):
        assert all("encoder prior" in (v.note or "") for v in _judge(memory, query, alpha))
    entry = MemoryEntry("c4", "image", "c4-extra", "c4-extra")
    extra = _photos(centres, 4, 1, np.random.default_rng(10))
    openset.update(memory, added=memory.add_entries([entry], extra))
    for alpha in (0.05, 0.2):
        after = _judge(memory, query, alpha)
        assert all(v.note is None and v.threshold is not None for v in after)
    cal = load(memory)
    assert cal is not None and cal.summary(0.2)["source"].startswith("this memory's own examples")
    memory.close()


def test_a_memory_first_fitted_with_too_few_categories_is_judged_by_the_prior_when_taught_more(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    """A memory fitted while it had four categories (of four photos) had no scale, so the
    prior could not judge it, and counted as judged by its own stand-ins: teaching three
    single-photo categories more never measured the scale (only a full calibration, when
    its entries doubled, did), and every query said 'cannot calibrate: only 4 categories
    have 2 or more examples' where the same memory built at once was judged by the prior.
    The scale is measured as soon as a category comes, whatever judged the memory before."""
    centres = _world(2, 8)
    memory = _memory(tmp_path, centres, [4] * 4 + [1] * 3)
    cal = load(memory)
    assert cal is not None and cal.full_at == 16 and cal.seen == 19  # taught since the fit
    assert cal.scale is not None and cal.scale.categories == 7
    query = _photos(centres, 0, 3, np.random.default_rng(9))
    assert all("encoder prior" in (v.note or "") for v in _judge(memory, query, 0.05))
    memory.close()


def test_teaching_a_single_example_keeps_the_scale_and_counts_exact(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    centres = _world(1, 10)
    memory = _memory(tmp_path, centres, [1] * 6)
    before = load(memory)
    assert before is not None and before.method == "prior" and before.scale is not None
    entry = MemoryEntry("c7", "image", "c7-0", "c7-0")
    vector = _photos(centres, 7, 1, np.random.default_rng(3))
    openset.update(memory, added=memory.add_entries([entry], vector))
    after = load(memory)
    assert after is not None and after.scale is not None
    assert after.scale.categories == 7 and after.categories.count_of("c7") == 1
    assert after.revision > before.revision
    stats = after.summary(0.05)
    assert stats["prior_thresholds"]["1"] is not None and stats["cannot_calibrate"] is None
    assert "not on this memory" in stats["source"]
    shown = _open_set_stats(after, parse_reject("auto"), memory.count("image"))  # as stats shows
    assert shown["calibrated"] is True and "encoder prior of synthetic" in shown["note"]
    # `memory stats` promised "at most 5% of known images rejected" as if measured
    assert shown["promise"] == (
        "--reject auto:0.05: at most 5% of known images rejected, as the encoder prior "
        "estimates; this memory cannot measure it yet"
    )
    memory.close()


def test_an_answer_judged_by_the_prior_says_so_in_its_own_words(
    tmp_path: Path, with_prior: EncoderPrior
) -> None:
    """A memory of one photo per category: the CLI said "at most 5% of known images rejected"
    as if measured, and an unknown photo "looks less like the c0 photos in memory than they look
    like each other" (one photo) with a "known-ness score" that was a cosine similarity."""
    from rar_agent.pipeline import explain
    from rar_agent.results import RankingInfo

    centres = _world(0, 12)
    memory = _memory(tmp_path, centres, [1] * 8)
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=3)  # type: ignore[arg-type]
    strangers = _photos(centres, 10, 20, np.random.default_rng(2))
    found = retriever.retrieve_vectors(strangers)
    verdicts = _judge(memory, strangers, 0.05)
    i = next(i for i, v in enumerate(verdicts) if v.reasons)
    verdict, top = verdicts[i], found[i][0]
    assert verdict.prior and verdict.similarity == pytest.approx(top.scores[0], abs=1e-5)
    said = explain(
        label=None,
        candidates=[(c.label, c.score) for c in found[i]],
        ranking=RankingInfo(status="disabled"),
        rejection=verdict,
        unknown=True,
    )
    assert said.promise is not None and "encoder prior" in said.promise
    [why] = said.why_unknown
    assert why.startswith(f"its closest example of {top.label} has similarity")
    assert "than they look like each other" not in why and "known-ness" not in why
    memory.close()


# ------------------------------------------------------------------ novel groups


def _with_link(prior: EncoderPrior) -> EncoderPrior:
    """``prior`` with the link ``tools/fit_encoder_prior.py --update-link`` measures on other
    synthetic datasets (seeds 100-103) than the tests group."""
    from tools.fit_encoder_prior import fit_link, picture_set

    rng = np.random.default_rng(6)
    refs = []
    for seed in range(100, 104):
        centres = _world(seed, 8)
        x = np.concatenate([_photos(centres, c, 6, rng) for c in range(8)])
        refs.append(picture_set(f"world {seed}", x, [str(c) for c in range(8) for _ in range(6)]))
    link, _ = fit_link(refs, 20)
    return prior.model_copy(update={"link": link, "link_quantile": GROUP_QUANTILE})


def _six_sightings(
    centres: np.ndarray, new: tuple[int, ...], link: float | None
) -> list[list[str]]:
    """Six photos of each of the ``new`` categories, none in memory, grouped at ``link``:
    each one object seen again, its photos a little closer than a category's members."""
    rng = np.random.default_rng(9)
    log = NovelGroupLog()
    for i in range(6):
        for c in new:
            photo = centres[c] * 1.6 + 0.7 * rng.normal(size=DIM)
            log.add(photo / np.linalg.norm(photo), f"new{c}-{i}", link)
    return sorted(sorted(g.images) for g in log.groups())


def test_a_one_example_memory_groups_look_alike_unknowns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory of one example per category has no pair of examples of one category, so it
    had no link and its unknown photos formed no group: six sightings each of two new things
    were twelve questions, at the size the teaching loop starts from. Its link is the
    encoder prior's (the same quantile of such pairs in reference memories of one example per
    category, at the memory's scale): two groups, each of one thing."""
    prior = _with_link(_fitted_prior())
    monkeypatch.setattr(prior_mod, "_priors", lambda: {FINGERPRINT: prior})
    centres = _world(3, 10)
    with _memory(tmp_path, centres, [1] * 8) as memory:
        cal = load(memory)
    assert cal is not None and cal.statistic is None and cal.why_no_groups() is None
    assert prior.link is not None and cal.scale is not None
    assert cal.link == pytest.approx(similarity_at(prior.link, cal.scale), abs=1e-6)
    assert _six_sightings(centres, (8, 9), cal.link) == [
        [f"new8-{i}" for i in range(6)],
        [f"new9-{i}" for i in range(6)],
    ]
    # a prior measured at another quantile than the memory's groups use gives no link
    monkeypatch.setattr(
        prior_mod, "_priors", lambda: {FINGERPRINT: prior.model_copy(update={"link_quantile": 0.2})}
    )
    with _memory(tmp_path, centres, [1] * 8, seed=1) as memory:
        other = load(memory)
    assert other is not None and other.link is None
    assert other.why_no_groups() == (
        "no groups: no category has two example images, so nothing says how alike two photos "
        f"of one thing are; the encoder prior of synthetic measured no link at the "
        f"{GROUP_QUANTILE:g} quantile"
    )


def _own_link(memory: CategoryMemory) -> float | None:
    """The link of the memory's own pairs (every image entry it holds)."""
    page, _ = memory.scroll(None, limit=1000)
    labels = [str(payload["label"]) for _, kind, _, payload in page if kind == "image"]
    x = np.asarray([vector for _, kind, vector, _ in page if kind == "image"])
    return group_link(labels, x)


def _teach(memory: CategoryMemory, centres: np.ndarray, category: int, name: str) -> None:
    rng = np.random.default_rng(len(name) + category)
    entry = MemoryEntry(f"c{category}", "image", name, name)
    openset.update(memory, added=memory.add_entries([entry], _photos(centres, category, 1, rng)))


def test_a_memory_of_too_few_pairs_takes_the_prior_s_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory of single examples but for one category of two took its link from that one
    pair: the link was that pair's similarity, however alike or unlike the two photos
    happened to be (on Fashion-MNIST it scattered twice as far as the prior's, and its
    groups were less pure and fewer). Below ``MIN_LINK_PAIRS`` pairs the link is the encoder
    prior's at the memory's scale, and follows it as single examples are taught; with that
    many pairs, the memory's own. Without a prior, one pair's link beats none."""
    prior = _with_link(_fitted_prior())
    monkeypatch.setattr(prior_mod, "_priors", lambda: {FINGERPRINT: prior})
    assert prior.link is not None
    centres = _world(3, 12)
    with _memory(tmp_path, centres, [2] + [1] * 7) as memory:
        cal = load(memory)
        assert cal is not None and cal.statistic is not None and cal.scale is not None
        assert cal.link == pytest.approx(similarity_at(prior.link, cal.scale), abs=1e-6)
        assert cal.link is not None and abs(cal.link - (_own_link(memory) or 0.0)) > 0.01
        _teach(memory, centres, 8, "c8-0")  # one more single example: a new scale
        now = load(memory)
        assert now is not None and now.scale is not None and now.scale != cal.scale
        assert now.link == pytest.approx(similarity_at(prior.link, now.scale), abs=1e-6)
    few = [2] * (MIN_LINK_PAIRS - 1) + [1] * 6
    with _memory(tmp_path, centres, few, seed=2) as memory:
        cal = load(memory)
        assert cal is not None and cal.scale is not None
        assert cal.link == pytest.approx(similarity_at(prior.link, cal.scale), abs=1e-6)
    enough = [2] * MIN_LINK_PAIRS + [1] * 5
    with _memory(tmp_path, centres, enough, seed=3) as memory:
        cal = load(memory)
        assert cal is not None and cal.link == pytest.approx(_own_link(memory), abs=1e-6)
    monkeypatch.setattr(prior_mod, "_priors", lambda: {})
    with _memory(tmp_path, centres, [2] + [1] * 7, seed=1) as memory:
        alone = load(memory)
        assert alone is not None and alone.link == pytest.approx(_own_link(memory), abs=1e-6)


def test_without_a_prior_a_one_example_memory_says_why_it_forms_no_groups(tmp_path: Path) -> None:
    """No pair of its own and no prior: unknown photos stay ungrouped, and the groups tool
    says why instead of 'no group yet', which promised groups that never come."""
    centres = _world(0, 10)
    with _memory(tmp_path, centres, [1] * 8) as memory:
        cal = load(memory)
        assert cal is not None and cal.link is None
        assert _six_sightings(centres, (8, 9), cal.link) == []
        recognizer = Recognizer(memory, _Vectors(), k=3)  # type: ignore[arg-type]
        message = UnknownGroupsTool(recognizer=recognizer).invoke(
            {"type": "tool_call", "id": "c", "name": "list_unknown_groups", "args": {}}
        )
    why = (
        "no groups: no category has two example images, so nothing says how alike two photos "
        f"of one thing are; no encoder prior for {FINGERPRINT} yet (none ships with "
        "rar-agent; `rar-agent memory prior` or the first recognition with this memory "
        "measures one on the 200 Fashion-MNIST garments shipped with it, once per machine)"
    )
    assert message.artifact["no_groups"] == why
    assert message.content == f"N{why[1:]} (0 unknown images seen lately)."


def test_a_memory_of_class_names_says_it_holds_no_example_images_to_group_by(
    tmp_path: Path,
) -> None:
    """A memory of class names only (as the built-in one is) answered list_unknown_groups
    with "no category has two example images ...; an encoder prior needs at least 5
    categories to measure how far they lie apart", though it has 20 categories: it holds no
    example image at all, and says so."""
    centres = _world(0, 20)
    with CategoryMemory.open(tmp_path / "names", collection="names") as memory:
        memory.bind_encoder(FINGERPRINT, DIM)
        entries = [MemoryEntry(f"c{c}", "text", "class names", f"t{c}") for c in range(20)]
        names = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        openset.update(memory, added=memory.add_entries(entries, names))
        recognizer = Recognizer(memory, _Vectors(), k=3)  # type: ignore[arg-type]
        why = recognizer.unknown_groups().no_groups
    assert why == (
        "no groups: the memory holds no example images, only class names, so nothing says how "
        "alike two photos of one thing are (teach a few photos of a category)"
    )
