"""Open-set calibration: a kept promise at every memory size, its stored form and updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.config import DEFAULT_ALPHA, RejectSetting, Settings, parse_reject
from rar_agent.errors import ConfigError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.openset import calibration as cal_mod
from rar_agent.openset.calibration import MIN_CATEGORIES, fit, load, min_standins
from rar_agent.openset.statistic import RANK, Whitening, encode_array
from rar_agent.openset.store import EXTENSION
from rar_agent.results import Candidate
from rar_agent.retrieval import CategoryRetriever

DIM = 48


class _Space:
    """Categories as random directions; each category has its own spread (some tight, some
    diverse), so the calibration has to cope with categories that differ."""

    def __init__(self, n_categories: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(n_categories, DIM))
        self.spread = np.linspace(0.6, 1.2, n_categories)
        self.rng = np.random.default_rng(seed + 1)

    def draw(self, category: int, n: int) -> np.ndarray:
        noise = self.rng.normal(size=(n, DIM)) * self.spread[category]
        x = self.centres[category] / np.sqrt(DIM) * 2.2 + noise / np.sqrt(DIM)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


class _Vectors:
    fingerprint = "vectors:test"
    dim = DIM


def _memory(tmp_path: Path, name: str = "mem") -> CategoryMemory:
    memory = CategoryMemory.open(tmp_path / name, collection="cal")
    memory.bind_encoder(_Vectors.fingerprint, DIM)
    return memory


def _add(memory: CategoryMemory, label: str, vectors: np.ndarray, start: int = 0) -> list[str]:
    """Add examples the way every caller does: write, then update the calibration."""
    entries = [
        MemoryEntry(label, "image", f"{label}-{start + i}", f"{label}-{start + i}")
        for i in range(len(vectors))
    ]
    ids = memory.add_entries(entries, vectors)
    openset.update(memory, added=ids)
    return ids


def _judge(memory: CategoryMemory, queries: np.ndarray, alpha: float) -> list:
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=3)  # type: ignore[arg-type]
    setting = parse_reject(f"auto:{alpha}")
    cal = openset.load(memory)
    found = retriever.retrieve_vectors(queries)
    return [openset.judge(c, setting, cal, v) for c, v in zip(found, queries, strict=True)]


def _fitted(memory: CategoryMemory) -> tuple[cal_mod.Calibration, Whitening]:
    """The memory's stored calibration and its statistic (both there)."""
    cal = load(memory)
    assert cal is not None
    model = cal.model()
    assert model is not None
    return cal, model


def _shots_memory(tmp_path: Path, space: _Space, shots: list[int], name: str) -> CategoryMemory:
    memory = _memory(tmp_path, name)
    for c, n in enumerate(shots):
        _add(memory, f"category {c}", space.draw(c, n))
    return memory


# ------------------------------------------------------------------ the promise, every size


@pytest.mark.parametrize("shots", [1, 2, 3, 5, 10, 50])
def test_every_memory_size_keeps_the_promise_or_says_it_cannot(tmp_path: Path, shots) -> None:  # noqa: ANN001
    space = _Space(8)
    memory = _shots_memory(tmp_path, space, [shots] * 8, f"m{shots}")
    known = np.concatenate([space.draw(c, 40) for c in range(8)])
    stranger = _Space(4, seed=7).draw(0, 40)
    for alpha in (0.05, 0.2):
        verdicts = _judge(memory, known, alpha)
        rejected = np.mean([bool(v.reasons) for v in verdicts])
        standins = 8 * shots if shots > 1 else 0
        if standins < min_standins(alpha):
            # too few examples to estimate anything: nothing is rejected, and it says why
            assert rejected == 0.0
            assert all(v.threshold is None and "cannot calibrate" in v.note for v in verdicts)
        else:
            assert rejected <= alpha + 0.05, (shots, alpha, rejected)
            assert all(v.threshold is not None and v.alpha == alpha for v in verdicts)
            assert np.mean([bool(v.reasons) for v in _judge(memory, stranger, alpha)]) > 0.5
    memory.close()


def test_a_mixed_memory_judges_single_example_categories_by_their_own_threshold(
    tmp_path: Path,
) -> None:
    space = _Space(11)
    shots = [1] * 6 + [10] * 5  # most categories taught from one photo, some from many
    memory = _shots_memory(tmp_path, space, shots, "mixed")
    cal = openset.load(memory)
    assert cal is not None
    assert {s[0] for s in cal.standins} == {f"category {c}" for c in range(6, 11)}
    one_shot = cal.threshold(DEFAULT_ALPHA, 1)[0]
    many = cal.threshold(DEFAULT_ALPHA, 5)[0]
    assert one_shot is not None and many is not None and one_shot < many
    known = np.concatenate([space.draw(c, 40) for c in range(11)])
    verdicts = _judge(memory, known, DEFAULT_ALPHA)
    assert np.mean([bool(v.reasons) for v in verdicts]) <= DEFAULT_ALPHA + 0.05
    singles = _judge(memory, np.concatenate([space.draw(c, 20) for c in range(6)]), 0.05)
    assert all(v.threshold == pytest.approx(one_shot, abs=1e-6) for v in singles)
    memory.close()


def test_stand_ins_from_too_few_categories_cannot_calibrate(tmp_path: Path) -> None:
    space = _Space(MIN_CATEGORIES + 1)
    memory = _shots_memory(tmp_path, space, [1] * 2 + [10] * (MIN_CATEGORIES - 1), "few")
    verdicts = _judge(memory, space.draw(0, 10), DEFAULT_ALPHA)
    assert all(not v.reasons and "cannot calibrate" in (v.note or "") for v in verdicts)
    assert "categories have 2 or more examples" in verdicts[0].note
    memory.close()


def test_a_memory_of_single_examples_says_it_cannot_calibrate(tmp_path: Path) -> None:
    space = _Space(5)
    memory = _shots_memory(tmp_path, space, [1] * 5, "singles")
    cal = openset.load(memory)
    assert cal is not None and cal.method == "none" and not cal.calibrated
    assert "cannot calibrate" in (cal.reason or "") and "two example" in (cal.reason or "")
    summary = cal.summary()
    assert summary["cannot_calibrate"] and summary["thresholds"]["1"] is None
    memory.close()


def _synthetic(standins: list[tuple[str, int, np.ndarray]]) -> cal_mod.Calibration:
    """A calibration holding hand-made stand-ins (draws ``(levels, DRAWS)`` each)."""
    space = _Space(2)
    x = np.concatenate([space.draw(0, 3), space.draw(1, 3)])
    model = Whitening.fit(x, ["a"] * 3 + ["b"] * 3)
    assert model is not None
    cal = cal_mod.Calibration(
        statistic=model.to_json(),
        standins=[(label, others, encode_array(d)) for label, others, d in standins],
    )
    return cal_mod._finish(cal)


def test_smaller_alpha_needs_more_stand_ins() -> None:
    assert min_standins(0.05) == 19 and min_standins(0.01) == 99 and min_standins(0.2) == 4
    draws = np.full((3, cal_mod.DRAWS), 1.0)
    cal = _synthetic([(f"c{i % 6}", 3, draws) for i in range(30)])
    assert cal.threshold(0.05, 3)[0] == 1.0
    threshold, why = cal.threshold(0.01, 3)
    assert threshold is None and "at least 99 needed" in (why or "")
    # a query whose category has more examples than any stand-in's others is judged at the
    # largest shot count the stand-ins support
    assert cal.threshold(0.05, 4)[0] is None


def test_thresholds_grow_with_the_shot_count() -> None:
    rng = np.random.default_rng(0)
    levels = np.arange(1, 10, dtype=float)[:, None]  # a category's mean better known: higher
    cal = _synthetic(
        [(f"c{i % 5}", 9, levels + rng.normal(0, 0.3, (9, cal_mod.DRAWS))) for i in range(100)]
    )
    values = [cal.threshold(0.1, m)[0] for m in range(1, 10)]
    assert all(v is not None for v in values)
    assert values == sorted(values) and values[0] < values[-1]
    assert cal.threshold(0.1, 50) == cal.threshold(0.1, len(cal_mod.SHOT_LEVELS))  # shared


# ------------------------------------------------------------------ stored form and updates


def test_the_calibration_is_stored_as_the_openset_extension(tmp_path: Path) -> None:
    space = _Space(4)
    memory = _shots_memory(tmp_path, space, [6] * 4, "stored")
    stored = memory.extension(EXTENSION)
    assert stored["version"] == cal_mod._VERSION == 17 and stored["method"] == "conformal"
    assert stored["encoder"] == _Vectors.fingerprint and stored["scale"] is None  # 4 categories
    assert len(stored["standins"]) == 24
    label, others, draws = stored["standins"][0]
    assert label.startswith("category") and others == 5
    assert cal_mod._draw_rows((label, others, draws)).shape == (5, cal_mod.DRAWS)
    # the statistic: mean, basis, two precisions (rank <= 24 examples - 2 folds' share) and
    # the weight of the distance off the subspace (negative: off it counts against known)
    statistic = stored["statistic"]
    rank = statistic["rank"]
    assert 1 <= rank <= min(RANK, 24) and statistic["dim"] == DIM
    model = Whitening.from_json(statistic)
    assert model.basis.shape == (rank, DIM) and model.width == rank + 1
    assert statistic["off"] < 0.0 and model.off == statistic["off"]
    # a direction added for an example taught far off the subspace (Whitening.extended) gets
    # the within precision off it, and the overall one: their difference is the weight off
    assert statistic["apart"] > 0.0 and model.apart == statistic["apart"]
    # how far off the subspace the examples held out of the fit lay; no direction added yet
    assert stored["reach"] > 0.0 and stored["directions"] == 0
    # per category: its number of examples and the sum of their coordinates (the principal
    # ones and the distance off the subspace)
    categories = stored["categories"]
    assert sorted(categories["labels"]) == [f"category {c}" for c in range(4)]
    assert categories["counts"] == [6] * 4
    assert cal_mod.CategorySums(**categories).matrix(rank + 1).shape == (4, rank + 1)
    assert stored["link"] is not None and -1.0 <= stored["link"] <= 1.0
    memory.close()
    with CategoryMemory.open(tmp_path / "stored", collection="cal") as again:
        reloaded = load(again)
        assert reloaded is not None and reloaded.threshold(0.05) == load(again).threshold(0.05)


def test_the_memory_never_calibrates_itself(tmp_path: Path) -> None:
    space = _Space(4)
    memory = _memory(tmp_path)
    for c in range(4):
        memory.add_entries(
            [MemoryEntry(f"c{c}", "image", f"s{c}{i}", f"h{c}{i}") for i in range(5)],
            space.draw(c, 5),
        )
    assert load(memory) is None
    fit(memory)
    before = load(memory)
    memory.remove_label("c1")
    assert load(memory) == before  # stored, untouched, until a caller updates it
    memory.close()


def test_a_taught_example_is_a_reservoir_step_not_a_full_calibration(
    tmp_path: Path, monkeypatch
) -> None:
    space = _Space(5)
    memory = _shots_memory(tmp_path, space, [6] * 4 + [1], "teach")
    fits: list[int] = []
    real = cal_mod.fit
    monkeypatch.setattr(cal_mod, "fit", lambda m, **kw: fits.append(1) or real(m, **kw))
    before = load(memory)
    assert "category 4" not in {s[0] for s in before.standins}
    _add(memory, "category 4", space.draw(4, 1), start=1)  # its second example
    after = load(memory)
    assert not fits and after.revision == before.revision + 1 and after.seen == before.seen + 1
    assert "category 4" in {s[0] for s in after.standins}
    memory.close()


def test_an_example_far_off_gains_a_direction_and_a_small_memory_refits_past_the_last(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cal_mod, "MAX_DIRECTIONS", 1)
    space = _Space(5)
    memory = _memory(tmp_path, "far")
    entries = [MemoryEntry(f"category {c}", "image", f"{c}-{i}", f"{c}-{i}")
               for c in range(5) for i in range(6)]  # fmt: skip
    vectors = np.concatenate([space.draw(c, 6) for c in range(5)])
    openset.update(memory, added=memory.add_entries(entries, vectors))  # one full calibration
    fits: list[int] = []
    real = cal_mod.fit
    monkeypatch.setattr(cal_mod, "fit", lambda m, **kw: fits.append(1) or real(m, **kw))
    before = load(memory)
    assert before is not None and before.reach is not None and before.directions == 0
    far = np.random.default_rng(7).normal(size=(2, DIM))  # unlike every category
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    _add(memory, "far 0", far[:1])
    once = load(memory)
    assert not fits and once.directions == 1 and once.full_at == before.full_at
    assert once.model().rank == before.model().rank + 1
    _add(memory, "far 1", far[1:])  # no direction left: a memory this small refits
    again = load(memory)
    assert fits == [1] and again.full_at == memory.count("image") == 32
    assert again.directions == 0  # the fit's sample held both: its subspace has them
    # an example like the memory's own (a seventh of a category) gains no direction
    _add(memory, "category 0", space.draw(0, 1), start=6)
    assert load(memory).directions == 0 and fits == [1]
    memory.close()


def test_an_encoder_of_few_dimensions_teaches_without_full_calibrations(
    tmp_path: Path, monkeypatch
) -> None:
    """16-d vectors, 50 examples: the statistic's subspace spans every direction, so the
    distances off it are rounding alone, and an example like the memory's own lay "1.5 times
    the reach" off it by chance: 4 of 20 examples taught cost a full calibration each."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))

    def draw(c: int, n: int) -> np.ndarray:
        x = centres[c] + 0.5 * rng.normal(size=(n, 16))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    memory = CategoryMemory.open(tmp_path / "few", collection="few")
    memory.bind_encoder("vectors:16", 16)
    for c in range(5):
        _add(memory, f"category {c}", draw(c, 10))
    assert load(memory).model().apart == 0.0  # type: ignore[union-attr]  # nothing off it
    fits: list[int] = []
    real = cal_mod.fit
    monkeypatch.setattr(cal_mod, "fit", lambda m, **kw: fits.append(1) or real(m, **kw))
    for i in range(20):
        _add(memory, "category 0", draw(0, 1), start=10 + i)
    assert fits == [] and load(memory).directions == 0  # type: ignore[union-attr]
    memory.close()


def test_an_example_taught_while_another_writer_adds_a_direction_still_counts(
    tmp_path: Path, monkeypatch
) -> None:
    """Two processes teaching one server memory: a far photo taught by one extends the
    statistic between the other's read of the calibration and its write. The other's example
    was left out of its category's sums (a new category: no mean, never judged known by it)
    until the next full calibration; it is projected by the extended statistic and counted."""
    space = _Space(5)
    memory = _memory(tmp_path, "both")
    for c in range(5):
        _add(memory, f"category {c}", space.draw(c, 6))
    far = np.random.default_rng(7).normal(size=(1, DIM))
    far /= np.linalg.norm(far)
    before = load(memory)
    real = cal_mod._reservoir

    def meanwhile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        monkeypatch.setattr(cal_mod, "_reservoir", real)
        _add(memory, "far", far)  # the other writer: its update lands first
        return real(*args, **kwargs)

    monkeypatch.setattr(cal_mod, "_reservoir", meanwhile)
    late = space.draw(1, 1)
    _add(memory, "late", late)
    after = load(memory)
    assert after is not None and before is not None
    assert after.directions == before.directions + 1 and after.full_at == before.full_at
    assert after.categories.count_of("far") == 1 and after.categories.count_of("late") == 1
    model = after.model()
    labels, _, means = after.means()
    assert model is not None and model.rank == before.model().rank + 1  # type: ignore[union-attr]
    # its coordinates are the extended statistic's, as if it had been taught after the far one
    assert means[labels.index("late")] == pytest.approx(model.project(late)[0], abs=1e-4)
    memory.close()


def test_growth_past_double_recalibrates_in_full(tmp_path: Path) -> None:
    space = _Space(4)
    memory = _memory(tmp_path)
    for i in range(6):  # one example per category at a time
        for c in range(4):
            _add(memory, f"c{c}", space.draw(c, 1), start=i)
    cal = load(memory)
    assert cal is not None and cal.calibrated and cal.full_at * 2 > memory.count("image")
    assert len(fit(memory).standins) == 24
    memory.close()


def test_the_reservoir_keeps_the_stand_ins_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cal_mod, "MAX_STANDINS", 8)
    space = _Space(4)
    memory = _shots_memory(tmp_path, space, [4] * 4, "bounded")
    assert len(load(memory).standins) <= 8
    searched: list[int] = []
    real = memory.search_batch

    def counting(vectors, **kw):  # noqa: ANN001, ANN202
        searched.append(len(vectors))
        return real(vectors, **kw)

    monkeypatch.setattr(memory, "search_batch", counting)
    for c in range(4):
        _add(memory, f"category {c}", space.draw(c, 2), start=4)
    cal = load(memory)
    assert len(cal.standins) <= 8 and cal.seen == 24 and sum(searched) <= 8
    memory.close()


def test_an_example_not_drawn_into_the_reservoir_is_searched_for_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    """Teaching cost: a taught example is searched (and its stand-in made) only when the full
    reservoir drew it; it always joins its category's mean (one write); an update never
    counts every label (a facet over the whole memory)."""
    monkeypatch.setattr(cal_mod, "MAX_STANDINS", 8)
    space = _Space(4)
    memory = _shots_memory(tmp_path, space, [6] * 4, "quiet")
    monkeypatch.setattr(memory, "labels", lambda *a, **kw: pytest.fail("labels() counted"))
    writes: list[int] = []
    searches: list[int] = []
    real_write, real_search = memory.update_extension, memory.search_batch
    monkeypatch.setattr(
        memory, "update_extension", lambda *a, **kw: writes.append(1) or real_write(*a, **kw)
    )
    monkeypatch.setattr(
        memory, "search_batch", lambda v, **kw: searches.append(len(v)) or real_search(v, **kw)
    )
    changed = []
    for i in range(8):
        before = load(memory)
        entry = MemoryEntry(f"category {i % 4}", "image", f"late-{i}", f"late-{i}")
        cal = openset.update(memory, added=memory.add_entries([entry], space.draw(i % 4, 1)))
        after = load(memory)
        assert cal.seen == memory.count("image") and cal.standins == after.standins
        assert after.categories.count_of(f"category {i % 4}") == 7 + i // 4
        changed.append(after.standins != before.standins)
    assert True in changed and False in changed  # some were drawn into the full reservoir
    assert len(writes) == 8 and len(searches) == changed.count(True)
    memory.close()


def test_removing_a_category_recalibrates(tmp_path: Path) -> None:
    space = _Space(4)
    memory = _shots_memory(tmp_path, space, [5] * 4, "remove")
    cal = openset.update(memory, removed=memory.remove_label("category 2"))
    assert "category 2" not in {s[0] for s in cal.standins} and len(cal.standins) == 15
    memory.close()


def test_full_calibration_samples_a_bounded_number_of_entries(tmp_path: Path) -> None:
    space = _Space(4)
    memory = _shots_memory(tmp_path, space, [10] * 4, "sample")
    assert len(fit(memory, sample=12).standins) == 12
    with pytest.raises(ConfigError):
        fit(memory, sample=0)
    memory.close()


def test_text_only_memory_has_no_threshold(tmp_path: Path) -> None:
    memory = CategoryMemory.open(tmp_path / "txt", collection="txt")
    memory.bind_encoder("text-only", 4)
    memory.add_entries([MemoryEntry(n, "text", "name", n) for n in ("cat", "dog")], np.eye(4)[:2])
    cal = fit(memory)
    assert not cal.calibrated and "text-only" in (cal.reason or "")
    verdict = openset.judge(
        [Candidate(label="cat", score=0.3, retrieval_rank=1, kind="text", scores=[0.3])],
        parse_reject("auto"),
        cal,
    )
    assert verdict.threshold is None and "class-name (text) entries" in (verdict.note or "")
    memory.close()


def test_unreadable_or_old_calibration_is_ignored(tmp_path: Path) -> None:
    memory = _memory(tmp_path)
    memory.update_extension(EXTENSION, lambda _: {"version": 99})
    assert load(memory) is None
    memory.update_extension(EXTENSION, lambda _: {"version": 3, "standins": []})  # old form
    assert load(memory) is None
    memory.update_extension(EXTENSION, lambda _: {"version": 5, "standins": "nonsense"})
    assert load(memory) is None
    memory.close()


def test_a_calibration_without_the_pair_spread_is_refitted(tmp_path: Path) -> None:
    space = _Space(6)
    memory = _shots_memory(tmp_path, space, [1] * 6, "single")
    stored = memory.extension(EXTENSION)
    assert stored is not None and stored["scale"]["pair_spread"] is not None

    def version_6(data: dict | None) -> dict:  # the form before the scale's pair spread
        assert data is not None
        scale = {k: v for k, v in data["scale"].items() if k != "pair_spread"}
        return data | {"version": 6, "scale": scale}

    memory.update_extension(EXTENSION, version_6)
    assert load(memory) is None  # never judged by a scale without its pair spread
    _add(memory, "category 1", space.draw(1, 1), start=1)
    cal = load(memory)
    assert cal is not None and cal.version == cal_mod._VERSION
    assert cal.scale is not None and cal.scale.pair_spread is not None
    memory.close()


def test_a_calibration_stored_in_the_previous_form_is_refitted(tmp_path: Path) -> None:
    space = _Space(5)
    memory = _shots_memory(tmp_path, space, [4] * 5, "old")

    def version_4(data: dict | None) -> dict:  # the form before the distance off the subspace
        assert data is not None
        statistic = {k: v for k, v in data["statistic"].items() if k != "off"}
        rank = statistic["rank"]
        sums = cal_mod.CategorySums(**data["categories"]).matrix(rank + 1)[:, :rank]
        categories = data["categories"] | {"sums": encode_array(sums)}
        return data | {"version": 4, "statistic": statistic, "categories": categories}

    memory.update_extension(EXTENSION, version_4)
    assert load(memory) is None  # an old form is never read as the new one
    taught = _add(memory, "category 2", space.draw(2, 1), start=4)
    cal = load(memory)
    assert cal is not None and cal.version == cal_mod._VERSION and cal.calibrated
    assert cal.categories.count_of("category 2") == 5 and len(taught) == 1
    assert cal.statistic is not None and "off" in cal.statistic
    assert cal.full_at == 21 and cal.revision == 1  # refitted in full, from scratch
    memory.close()


def test_the_distance_off_the_subspace_counts_against_being_known() -> None:
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(DIM, 6)))[0].T  # the memory lies in 6 directions
    centres = rng.normal(size=(4, 6)) * 3.0
    labels = [f"c{c}" for c in range(4) for _ in range(8)]
    coords = np.repeat(centres, 8, axis=0) + rng.normal(size=(32, 6))
    x = coords @ basis + rng.normal(size=(32, DIM)) * 0.05  # and barely off them
    model = Whitening.fit(x, labels, rank=6)
    assert model is not None and model.rank == 6 and model.off < 0.0
    z = model.project(x)
    means = np.stack([z[[i for i, k in enumerate(labels) if k == c]].mean(axis=0)
                      for c in dict.fromkeys(labels)])  # fmt: skip
    # coordinates: the principal ones, then the squared distance off the subspace
    centred = x - model.mean
    assert z[:, -1] == pytest.approx((centred**2).sum(1) - (z[:, :6] ** 2).sum(1), abs=1e-9)
    # a query at a category's mean, moved off the memory's subspace: less known the farther
    fitted = model.basis.T
    off_axis = np.linalg.qr(np.concatenate([fitted, rng.normal(size=(DIM, 1))], 1))[0][:, -1]
    at_mean = model.mean + (means[0, :6] @ model.basis)
    steps = [model.known(model.project(at_mean + d * off_axis), means)[0] for d in (0, 1, 2)]
    assert steps[0] > steps[1] > steps[2]
    assert steps[0] - steps[1] == pytest.approx(-model.off, rel=1e-6)
    # moving along the subspace away from every category costs too (the Mahalanobis part)
    far = model.known(model.project(model.mean + 40.0 * basis[0]), means)[0]
    assert far < steps[0]
    # the stored form reads back to the same statistic
    again = Whitening.from_json(model.to_json())
    query = model.project(at_mean + off_axis)
    assert again.known(query, means)[0] == pytest.approx(model.known(query, means)[0], rel=1e-4)


# ------------------------------------------------------------------ the setting


@pytest.mark.parametrize(
    ("spec", "mode", "threshold", "alpha"),
    [(None, "auto", None, 0.05), ("auto", "auto", None, 0.05), ("auto:0.01", "auto", None, 0.01),
     (" AUTO:0.2 ", "auto", None, 0.2), ("OFF", "off", None, 0.05), ("0.8", "fixed", 0.8, 0.05),
     (0.25, "fixed", 0.25, 0.05), ("-0.1", "fixed", -0.1, 0.05)],
)  # fmt: skip
def test_parse_reject(spec, mode: str, threshold: float | None, alpha: float) -> None:  # noqa: ANN001
    parsed = parse_reject(spec)
    assert (parsed.mode, parsed.threshold, parsed.alpha) == (mode, threshold, alpha)
    assert parse_reject(parsed) is parsed
    assert parse_reject(str(parsed)) == parsed
    assert parsed.enabled == (mode != "off")


@pytest.mark.parametrize("spec", ["maybe", "1.5", "nan", "-2", "auto:0", "auto:0.9", "auto:x"])
def test_parse_reject_refuses_nonsense(spec: str) -> None:
    with pytest.raises(ConfigError, match="reject"):
        parse_reject(spec)


def test_a_threshold_setting_may_be_a_number() -> None:
    """`Recognizer.from_settings(reject=0.8)` was refused with "invalid setting reject=0.8:
    Input should be a valid string", though Recognizer, make_tools and the agent take 0.8."""
    from rar_agent.pipeline import Recognizer

    assert Settings(reject=0.8).reject == "0.8"
    assert Settings(reject=parse_reject("auto:0.01")).reject == "auto:0.01"
    with pytest.raises(ConfigError, match="reject=1.5: a reject threshold is a cosine"):
        Recognizer.from_settings(reject=1.5)  # checked as the number it is, before any load


def test_settings_read_rar_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().reject == "auto"
    monkeypatch.setenv("RAR_REJECT", "0.75")
    assert Settings().reject == "0.75"
    assert str(parse_reject(Settings().reject)) == "0.75"
    assert str(RejectSetting(mode="off")) == "off"
    monkeypatch.setenv("RAR_REJECT", "auto:0.01")
    assert parse_reject(Settings().reject).alpha == 0.01
    monkeypatch.setenv("RAR_REJECT", "sometimes")
    with pytest.raises(ValueError, match="reject"):
        Settings()


def test_the_statistic_is_one_definition_for_queries_and_stand_ins(tmp_path: Path) -> None:
    space = _Space(6)
    memory = _memory(tmp_path)
    first = space.draw(0, 4)
    _add(memory, "category 0", first)
    for c in range(1, 6):
        _add(memory, f"category {c}", space.draw(c, 4))
    taught = space.draw(0, 1)
    _add(memory, "category 0", taught, start=4)  # a reservoir step: a stand-in of its own
    cal, model = _fitted(memory)
    labels, counts, means = cal.means()
    # a query: the best category's statistic over the stored category means
    query = space.draw(2, 1)[0]
    stat, shots, _ = cal.judge_vector(query, 0.1)
    assert stat == pytest.approx(float(model.known(model.project(query), means)[0]))
    assert shots == 4
    # the taught example's stand-in, through the same function: its category's mean over its
    # 4 others (the top shot level), or the best other category's when that scores higher
    label, others, _ = cal.standins[-1]
    assert (label, others) == ("category 0", 4)
    z = model.project(taught)
    own = model.scores(z, model.project(first).mean(axis=0))[0, 0]
    rival = model.known(z, means[[i for i, k in enumerate(labels) if k != label]])[0]
    top = cal_mod._draw_rows(cal.standins[-1])[3]
    assert top == pytest.approx(np.full(cal_mod.DRAWS, max(own, rival)), rel=1e-5)
    memory.close()


def test_one_query_scores_as_it_does_in_a_batch_ties_included() -> None:
    # a query is judged alone (its product in numpy's own loop, see statistic._times) and
    # stand-ins in batches (BLAS): one statistic, to rounding, over a memory of 600
    # categories (large enough for OpenBLAS's threads), two of them tied exactly
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(600, DIM))
    labels = [f"c{c}" for c in range(600) for _ in range(3)]
    x = np.repeat(centres, 3, axis=0) + rng.normal(size=(1800, DIM)) * 0.3
    model = Whitening.fit(x, labels, rank=40)
    assert model is not None
    z = model.project(x)
    means = z.reshape(600, 3, -1).mean(axis=1)
    means[9] = means[4]  # an exact tie: the first of the two is the best
    terms = model.centre_terms(means)
    at_tie = model.mean + means[4, : model.rank] @ model.basis  # at the tied categories' mean
    queries = np.concatenate([x[::97], at_tie[None, :]])
    batch = model.scores_of(queries, terms)
    for query, row in zip(queries, batch, strict=True):
        alone = model.scores_of(query, terms)[0]
        assert alone == pytest.approx(row, rel=1e-12, abs=1e-9)
        assert int(np.argmax(alone)) == int(np.argmax(row))
        assert alone[9] == alone[4]
    assert int(np.argmax(model.scores_of(queries[-1], terms)[0])) == 4


def test_a_taught_example_joins_its_category_mean_exactly(tmp_path: Path) -> None:
    space = _Space(5)
    memory = _shots_memory(tmp_path, space, [3] * 5, "means")
    before = load(memory)
    taught = space.draw(1, 2)
    _add(memory, "category 1", taught, start=3)
    after = load(memory)
    assert after is not None and before is not None and after.statistic == before.statistic
    model = after.model()
    assert model is not None
    labels, counts, means = after.means()
    i = labels.index("category 1")
    old = before.means()[2][before.means()[0].index("category 1")]
    expected = (3 * old + model.project(taught).sum(axis=0)) / 5
    assert counts[i] == 5 and means[i] == pytest.approx(expected, abs=1e-4)
    # a new category gets its mean the same way
    _add(memory, "category 9", space.draw(4, 1))
    assert load(memory).categories.count_of("category 9") == 1
    memory.close()


def test_summary_says_calibrated_when_fewer_shots_carry_the_promise(tmp_path: Path) -> None:
    space = _Space(6)
    memory = _shots_memory(tmp_path, space, [5] * 6, "summary")
    cal = load(memory)
    summary = cal.summary(0.1)
    # 30 stand-ins of 4 others each: thresholds up to 4 shots, a 5-example category is
    # judged at 4, so the memory as a whole keeps the promise
    assert summary["cannot_calibrate"] is None and summary["thresholds"]["1"] is not None
    assert summary["statistic"].startswith("relative")
    # and `memory stats` shows that threshold for 5 and 10 examples: it said null there, as
    # if such categories were not checked, while their queries were judged at 4 shots
    at_four = round(cal.threshold(0.1, 4)[0], 4)
    assert summary["thresholds"]["5"] == summary["thresholds"]["10"] == at_four
    memory.close()


def test_too_few_categories_counts_the_categories_the_memory_holds(tmp_path: Path) -> None:
    # Two categories taught one photo at a time, then a second photo each: both hold two
    # examples, but cross-fitting a 3-entry memory made no stand-in of the first one. The
    # note said "only 1 category has 2 or more examples" beside a list showing two.
    space = _Space(2)
    memory = _memory(tmp_path)
    for step, (label, c) in enumerate((("cat", 0), ("coffee", 1), ("cat", 0), ("coffee", 1))):
        _add(memory, label, space.draw(c, 1), start=step)
    assert sorted(memory.labels().values()) == [2, 2]
    why = openset.load(memory).threshold(DEFAULT_ALPHA, 1)[1]
    assert why is not None
    assert "only 2 categories have 2 or more examples" in why, why
    memory.close()


def test_a_category_of_two_examples_is_not_called_none(tmp_path: Path) -> None:
    # The built-in memory's walk: 'my cat' taught from one photo, 'my cup' from two; memory
    # stats (and every answer's note) said "cannot calibrate: no category has two example
    # images" beside `memory list` showing my cup with 2. Three examples fit no statistic,
    # so no stand-in was scored, and that default reason was the wrong one.
    space = _Space(2)
    memory = _memory(tmp_path)
    _add(memory, "my cat", space.draw(0, 1))
    _add(memory, "my cup", space.draw(1, 2), start=1)
    cal = openset.load(memory)
    assert cal is not None and not cal.calibrated
    said = [cal.reason or "", cal.summary()["cannot_calibrate"] or ""]
    said.append(_judge(memory, space.draw(1, 1), DEFAULT_ALPHA)[0].note or "")
    for why in said:
        assert "no category has two" not in why, why
        assert "only 1 category has 2 or more examples" in why, why


def test_the_verdict_judges_the_categories_retrieval_returned(tmp_path: Path) -> None:
    # a query of category 0 (10 examples) whose candidates are other categories (3 examples
    # each): it was judged by category 0's statistic, the best over every category, and at
    # 10 examples' threshold, while the answer was another category; now by the candidates'
    space = _Space(6)
    memory = _shots_memory(tmp_path, space, [10, 3, 3, 3, 3, 3], "among")
    cal, model = _fitted(memory)
    labels, counts, means = cal.means()
    query = space.draw(0, 1)[0]
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=3)  # type: ignore[arg-type]
    found = retriever.retrieve_vectors(query[None, :])[0]
    assert found[0].label == "category 0"
    others = found[1:]  # as if retrieval had not returned category 0
    scores = model.scores(model.project(query), means)[0]
    rows = [labels.index(c.label) for c in others]
    best = rows[int(np.argmax(scores[rows]))]
    assert scores[best] < scores[labels.index("category 0")]
    setting = parse_reject("auto:0.1")
    verdict = openset.judge(others, setting, cal, query)
    assert verdict.similarity == pytest.approx(scores[best], rel=1e-5)
    assert verdict.threshold == pytest.approx(cal.judge_vector(query, 0.1, [others[0].label])[2][0])
    assert cal.judge_vector(query, 0.1, [c.label for c in others])[1] == counts[best] == 3
    # the whole candidate list: category 0's statistic, at its own number of examples
    whole = openset.judge(found, setting, cal, query)
    assert whole.similarity == pytest.approx(scores[labels.index("category 0")], rel=1e-5)
    assert cal.judge_vector(query, 0.1, [c.label for c in found])[1] == 10
    # a category the calibration does not hold (a class name) is not judged at all
    assert cal.judge_vector(query, 0.1, ["not held"])[0] == -np.inf
    memory.close()


def test_a_query_whose_candidates_the_calibration_lacks_says_so_and_what_to_do(
    tmp_path: Path,
) -> None:
    # Examples written with add_entries and no openset.update, then a query of them among
    # one candidate: the check said "no candidate's category is in the memory's calibration,
    # or ask for auto:0.0271 or more" at auto (0.05), an ALPHA too small as the reason.
    space = _Space(7)
    memory = _memory(tmp_path)
    for c in range(6):
        _add(memory, f"c{c}", space.draw(c, 6))
    zebra = [MemoryEntry("zebra", "image", f"z{i}", f"z{i}") for i in range(3)]
    memory.add_entries(zebra, space.draw(6, 3))  # the calibration not updated
    cal = openset.load(memory)
    assert cal is not None and cal.judged_by_own()
    retriever = CategoryRetriever(memory=memory, encoder=_Vectors(), k=1)  # type: ignore[arg-type]
    query = space.draw(6, 1)
    [found] = retriever.retrieve_vectors(query)
    assert [c.label for c in found] == ["zebra"]
    for alpha in (0.01, DEFAULT_ALPHA, 0.2):
        verdict = openset.judge(found, parse_reject(f"auto:{alpha}"), cal, query[0])
        note = str(verdict.note)
        assert verdict.threshold is None and not verdict.reasons, note
        assert "ask for auto:" not in note and "nothing is rejected" in note, note
        assert "'zebra'" in note and "openset.update(memory, added=ids)" in note, note
    memory.close()


def test_a_read_only_memory_calibrated_again_says_so_until_a_writer_stores_it(
    tmp_path: Path, tiny_encoder: object
) -> None:
    """A memory whose calibration an earlier version stored (form 10) was calibrated again,
    silently, at every start of a read-only server (``rar-agent mcp`` without
    --allow-learning): 6-7 s at 10k entries (load 13). Each such start says why, what it cost,
    that nothing was stored and what stores it; once a writer has, nothing is said."""
    from rar_agent.pipeline import Recognizer
    from tests.helpers.small_memory import small_recognizer

    rec = small_recognizer(tmp_path, tiny_encoder)
    fit(rec.memory)
    rec.memory.update_extension(EXTENSION, lambda stored: {**(stored or {}), "version": 10})
    rec.close()

    def start(read_only: bool) -> list[str]:
        notes: list[str] = []
        memory = CategoryMemory.open(tmp_path / "memory", collection="small", read_only=read_only)
        with memory:
            Recognizer.from_memory(memory, tiny_encoder, announce=notes.append)
        return notes

    for _ in range(2):  # every read-only start, as the stored form stays 10
        [note] = start(read_only=True)
        assert note.startswith(
            "memory 'small': the stored open-set calibration is in another rar-agent version's "
            f"form (10; this version reads {cal_mod._VERSION}), so it was calibrated for this run ("
        ), note
        assert "not stored, as the memory is open read-only" in note
        assert "`rar-agent recognize` of any photo with it" in note
    from typer.testing import CliRunner

    from rar_agent.cli import app

    shown = CliRunner().invoke(
        app, ["memory", "stats", "--memory", str(tmp_path / "memory"), "--collection", "small"]
    )
    assert "another rar-agent version's form (10; this version reads" in shown.stdout, shown.output
    assert start(read_only=False) == []  # a writer stores it
    assert start(read_only=True) == []
