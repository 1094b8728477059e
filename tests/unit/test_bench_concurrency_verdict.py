"""The concurrency benchmark's verdict line: it says what it compared, how much the 1-thread
baseline moved and the load, and gives no verdict when the baseline itself was noisy (a
loaded machine printed 'target >= 1.5x: NOT met' as if the engine were to blame)."""

from __future__ import annotations

from tools.bench_concurrency import NOISE, verdict


def test_a_steady_baseline_gives_a_verdict_that_names_what_was_measured() -> None:
    met, line = verdict(1.62, [100.0, 104.0, 98.0], load=0.31)
    assert met is True
    assert line.startswith("target >= 1.5x: met: 8 threads through the read/write lock ran ")
    assert "1.62x the 1-thread rate" in line and "moved 6% between them" in line
    assert "load average 0.31 before the run" in line
    met, line = verdict(1.1, [100.0, 101.0, 99.0], load=0.2)
    assert met is False and line.startswith("target >= 1.5x: NOT met: ")


def test_a_noisy_baseline_gives_no_verdict_and_says_why() -> None:
    """Measured here on a loaded machine: 1-thread runs of 576, 493 and 869 queries/s."""
    met, line = verdict(0.80, [575.9, 492.8, 869.0], load=18.34)
    assert met is None
    assert line.startswith("target >= 1.5x: no verdict: ")
    assert "moved 65% between them" in line and "load average 18.34" in line
    assert "rerun on an idle machine or pinned" in line
    assert verdict(1.6, [100.0, 100.0 + 100 * NOISE], load=0.0)[0] is True  # at the edge
