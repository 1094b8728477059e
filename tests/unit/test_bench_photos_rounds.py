"""The phone-photo benchmark's paired rounds, on made-up clocks and times (the ratio the
closing notes quote against the 1.5x target must not swing with the machine's load)."""

from __future__ import annotations

import statistics

import pytest

from tools import bench_photos
from tools.bench_photos import in_rounds, paired


def test_a_busy_spell_that_slows_both_sides_of_its_rounds_leaves_the_ratio() -> None:
    # the machine slows by half after round 5: the 12 MP photo and the small one alike,
    # except round 5, where only the 12 MP photo met the busy spell
    figures = [30.0] * 5 + [45.0] * 6
    bases = [20.0] * 6 + [30.0] * 5
    got = paired(figures, bases)
    assert got.ratio == 1.5
    assert statistics.median(figures) / statistics.median(bases) == 2.25  # separate medians
    assert (got.value, got.base, got.rounds) == (45.0, 20.0, 11)


def test_the_quartiles_show_the_spread_of_the_rounds() -> None:
    got = paired([12.0, 15.0, 18.0, 21.0, 24.0], [10.0] * 5)
    assert got.ratio == 1.8
    assert got.low < 1.8 < got.high
    assert (got.low, got.high) == pytest.approx((1.35, 2.25))
    assert "median of 5 per-round ratios" in got.says("CPU")


def test_rounds_without_their_baselines_are_refused() -> None:
    with pytest.raises(ValueError, match="as many baselines"):
        paired([30.0, 31.0], [20.0])
    with pytest.raises(ValueError, match="at least one"):
        paired([], [])


def test_rounds_reverse_their_order_and_time_each_probe_per_image_on_both_clocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = {"CPU": 0.0, "wall": 0.0}
    calls: list[str] = []

    def probe(name: str, cpu: float, wall: float) -> bench_photos.Probe:
        def run() -> None:
            calls.append(name)
            now["CPU"] += cpu
            now["wall"] += wall

        return (run, 2)  # two images a call

    monkeypatch.setattr(bench_photos, "CLOCKS", {c: (lambda c=c: now[c]) for c in now})
    samples = in_rounds({"big": probe("big", 0.06, 0.08), "small": probe("small", 0.04, 0.05)}, 3)
    # a warm-up round (not kept), then A B, B A, A B
    assert calls == ["small", "big", "big", "small", "small", "big", "big", "small"]
    assert samples["CPU"]["big"] == pytest.approx([30.0] * 3)  # ms per image
    assert samples["CPU"]["small"] == pytest.approx([20.0] * 3)
    assert samples["wall"]["big"] == pytest.approx([40.0] * 3)
    assert samples["wall"]["small"] == pytest.approx([25.0] * 3)
