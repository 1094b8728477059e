"""Open-set calibration: computed from the memory itself, stored, reloaded, kept current."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.config import RejectSetting, Settings, parse_reject
from rar_agent.errors import ConfigError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.memory.builders import add_images
from rar_agent.openset import calibration as cal_mod
from rar_agent.openset.calibration import MIN_STANDINS
from rar_agent.openset.calibration import fit as calibrate
from rar_agent.openset.calibration import load as load_calibration
from rar_agent.openset.store import EXTENSION
from tests.helpers.clusters import DIM, Clusters, make_clusters

LABELS = ["heron", "tabby cat", "lynx", "red fox"]


def _entries(clusters: Clusters, label: str, idx: range) -> tuple[list[MemoryEntry], np.ndarray]:
    entries = [MemoryEntry(label, "image", f"{label}-{i}", f"{label}-{i}") for i in idx]
    return entries, np.stack([clusters.vector(label, i) for i in idx])


def _add(memory: CategoryMemory, entries: list[MemoryEntry], vectors: np.ndarray) -> None:
    """Add entries the way every caller does: write, then update the calibration."""
    openset.update(memory, added=memory.add_entries(entries, vectors))


def _memory(tmp_path: Path, clusters: Clusters, per_class: int = 5) -> CategoryMemory:
    memory = CategoryMemory.open(tmp_path / "mem", collection="cal")
    memory.bind_encoder(clusters.encoder.fingerprint, DIM)
    for label in LABELS:
        _add(memory, *_entries(clusters, label, range(per_class)))
    return memory


def test_leave_one_out_calibration_is_stored_and_separates_known_from_unknown(
    tmp_path: Path,
) -> None:
    clusters = make_clusters([*LABELS, "bicycle"], 8)
    memory = _memory(tmp_path, clusters)
    cal = calibrate(memory)
    assert cal.calibrated and cal.method == "leave-one-out"
    assert len(cal.standins) == 5 * len(LABELS)
    assert cal.single_threshold is not None and cal.single_threshold < cal.global_mean
    assert set(cal.class_means()) == set(LABELS)
    stored = memory.get_meta(EXTENSION)
    assert stored["offset"] == pytest.approx(cal.offset)
    # Held-out examples of known categories mostly reach their category's threshold (the
    # threshold sits in the 5 % tail of the stand-ins, so a few may not) ...
    accepted = []
    for label in LABELS:
        for i in range(5, 8):
            sims = sorted(clusters.vector(label, i) @ clusters.vector(label, j) for j in range(5))
            accepted.append(float(np.mean(sims[-2:])) >= cal.threshold_for(label))
    assert sum(accepted) >= 10
    # ... while an image of a category the memory never saw is far below every threshold.
    stranger = clusters.vector("bicycle", 0)
    best = max(float(stranger @ clusters.vector(lb, i)) for lb in LABELS for i in range(5))
    assert best < min(cal.threshold_for(lb) for lb in LABELS)
    memory.close()


def test_calibration_survives_reopening(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 5)
    memory = _memory(tmp_path, clusters)
    first = load_calibration(memory)
    memory.close()
    with CategoryMemory.open(tmp_path / "mem", collection="cal") as again:
        reloaded = load_calibration(again)
    assert first is not None and reloaded is not None
    assert reloaded.offset == pytest.approx(first.offset)
    assert reloaded.threshold_for("lynx") == pytest.approx(first.threshold_for("lynx"))
    assert reloaded.standins == first.standins


def test_adding_examples_updates_the_calibration(tmp_path: Path) -> None:
    clusters = make_clusters([*LABELS, "bicycle"], 6)
    memory = _memory(tmp_path, clusters, per_class=5)
    before = load_calibration(memory)
    assert before is not None and "bicycle" not in before.class_means()
    _add(memory, *_entries(clusters, "bicycle", range(3)))
    after = load_calibration(memory)
    assert after is not None and after.revision > before.revision
    assert "bicycle" in after.class_means()  # the new category has stand-ins of its own
    assert after.seen == before.seen + 3


def test_growth_past_double_recalibrates_in_full(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 6)
    memory = CategoryMemory.open(tmp_path / "mem", collection="cal")
    memory.bind_encoder(clusters.encoder.fingerprint, DIM)
    for i in range(6):  # one example per category at a time
        for label in LABELS:
            _add(memory, *_entries(clusters, label, range(i, i + 1)))
    cal = load_calibration(memory)
    assert cal is not None and cal.calibrated
    # the last full calibration saw at least half of today's entries
    assert cal.full_at * 2 > memory.count("image")
    full = calibrate(memory)
    assert len(cal.standins) == len(full.standins) == 24


def test_reservoir_keeps_the_stand_ins_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cal_mod, "MAX_STANDINS", 8)
    clusters = make_clusters(LABELS, 12)
    memory = _memory(tmp_path, clusters, per_class=4)
    assert len(load_calibration(memory).standins) <= 8
    searched: list[int] = []
    real = memory.search_batch

    def counting(vectors, **kw):  # noqa: ANN001, ANN202
        searched.append(len(vectors))
        return real(vectors, **kw)

    monkeypatch.setattr(memory, "search_batch", counting)
    for label in LABELS:
        _add(memory, *_entries(clusters, label, range(4, 6)))
    cal = load_calibration(memory)
    assert cal is not None and len(cal.standins) <= 8 and cal.seen == 24
    # a sample, not every entry: never more searches than entries offered
    assert sum(searched) <= 8


def test_full_calibration_samples_a_bounded_number_of_entries(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 10)
    memory = _memory(tmp_path, clusters, per_class=10)
    cal = calibrate(memory, sample=12)
    assert len(cal.standins) <= 12 and cal.calibrated
    with pytest.raises(ConfigError):
        calibrate(memory, sample=0)


def test_the_memory_never_calibrates_itself(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 5)
    memory = CategoryMemory.open(tmp_path / "mem", collection="cal")
    memory.bind_encoder(clusters.encoder.fingerprint, DIM)
    for label in LABELS:
        memory.add_entries(*_entries(clusters, label, range(5)))
    assert load_calibration(memory) is None
    calibrate(memory)
    before = load_calibration(memory)
    memory.remove_label("lynx")
    assert load_calibration(memory) == before  # stored, untouched, until a caller updates it
    memory.close()


def test_a_taught_example_costs_no_full_calibration(tmp_path: Path, monkeypatch) -> None:
    clusters = make_clusters([*LABELS, "bicycle"], 8)
    memory = _memory(tmp_path, clusters, per_class=6)
    fits: list[int] = []
    real = cal_mod.fit
    monkeypatch.setattr(cal_mod, "fit", lambda m, **kw: fits.append(1) or real(m, **kw))
    before = load_calibration(memory)
    _add(memory, *_entries(clusters, "lynx", range(6, 7)))
    after = load_calibration(memory)
    assert not fits and after.revision == before.revision + 1 and after.seen == before.seen + 1
    memory.close()


def test_removing_a_category_recalibrates(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 5)
    memory = _memory(tmp_path, clusters)
    openset.update(memory, removed=memory.remove_label("lynx"))
    cal = load_calibration(memory)
    assert cal is not None and "lynx" not in cal.class_means()
    assert all(label != "lynx" and pred != "lynx" for label, pred, *_ in cal.standins)


def test_single_example_categories_cannot_calibrate_and_say_so(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 2)
    folder = tmp_path / "imgs"
    items = [(str(clusters.save(label, 0, folder / label)), label) for label in LABELS[:3]]
    memory = CategoryMemory.open(tmp_path / "mem", collection="cal")
    report = add_images(memory, clusters.encoder, items)
    cal = openset.update(memory, added=report.sample_ids)
    assert not cal.calibrated and cal.standins == []
    assert "cannot calibrate" in (cal.reason or "") and "two example" in (cal.reason or "")
    # a second example of a category gives it leave-one-out stand-ins
    more = add_images(memory, clusters.encoder, [(str(clusters.save("heron", 1, folder)), "heron")])
    cal = openset.update(memory, added=more.sample_ids)
    assert {s[0] for s in cal.standins} == {"heron"}
    memory.close()


def test_text_only_memory_has_no_threshold(tmp_path: Path) -> None:
    memory = CategoryMemory.open(tmp_path / "mem", collection="txt")
    memory.bind_encoder("text-only", 4)
    memory.add_entries([MemoryEntry(n, "text", "name", n) for n in ("cat", "dog")], np.eye(4)[:2])
    cal = calibrate(memory)
    assert not cal.calibrated and "text-only" in (cal.reason or "")
    assert cal.threshold_for("cat") is None
    memory.close()


def test_unreadable_or_old_calibration_is_ignored(tmp_path: Path) -> None:
    clusters = make_clusters(LABELS, 3)
    memory = _memory(tmp_path, clusters, per_class=3)
    memory.set_meta(EXTENSION, {"version": 99})
    assert load_calibration(memory) is None
    memory.set_meta(EXTENSION, {"version": 2, "standins": "nonsense"})
    assert load_calibration(memory) is None
    memory.close()


def test_too_few_stand_ins_give_no_threshold() -> None:
    cal = cal_mod._fit(
        [("a", "a", 0.9, "loo", 0.8)] * (MIN_STANDINS - 1), seen=4, full_at=4, revision=1
    )
    assert cal.offset is None and cal.threshold_for("a") is None
    assert cal.threshold_for("a", single=True) is None and not cal.calibrated
    pairs = [
        ("a", "a", 0.9, "loo", 0.85),
        ("b", "b", 0.7, "loo", 0.6),
        ("c", "c", None, "loo", 0.7),
    ]
    cal = cal_mod._fit(pairs * 3, seen=9, full_at=9, revision=1)
    assert cal.calibrated
    # tight category a gets a higher threshold than diverse b; unseen labels the global mean
    assert cal.threshold_for("a") > cal.threshold_for("zebra") > cal.threshold_for("b")
    # a category with one entry among the hits is judged by the pair similarities
    pair_values = np.array([0.85, 0.6, 0.7] * 3)
    expected = pair_values.mean() - 1.645 * pair_values.std()
    assert cal.threshold_for("zebra", single=True) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("spec", "mode", "threshold"),
    [(None, "auto", None), ("auto", "auto", None), ("OFF", "off", None), ("0.8", "fixed", 0.8),
     (0.25, "fixed", 0.25), ("-0.1", "fixed", -0.1)],
)  # fmt: skip
def test_parse_reject(spec, mode: str, threshold: float | None) -> None:  # noqa: ANN001
    parsed = parse_reject(spec)
    assert (parsed.mode, parsed.threshold) == (mode, threshold)
    assert parse_reject(parsed) is parsed
    assert parsed.enabled == (mode != "off")


@pytest.mark.parametrize("spec", ["maybe", "1.5", "nan", "-2"])
def test_parse_reject_refuses_nonsense(spec: str) -> None:
    with pytest.raises(ConfigError, match="reject"):
        parse_reject(spec)


def test_settings_read_rar_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().reject == "auto"
    monkeypatch.setenv("RAR_REJECT", "0.75")
    assert Settings().reject == "0.75"
    assert str(parse_reject(Settings().reject)) == "0.75"
    assert str(RejectSetting(mode="off")) == "off"
    monkeypatch.setenv("RAR_REJECT", "sometimes")
    with pytest.raises(ValueError, match="reject"):
        Settings()
