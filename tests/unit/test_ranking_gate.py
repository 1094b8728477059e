"""Confidence gating: skip the ranker when retrieval's lead is large enough."""

from __future__ import annotations

import math

import pytest

from rar_agent.errors import ConfigError
from rar_agent.ranking import DEFAULT_GATE_MARGIN, parse_gate, should_skip


@pytest.mark.parametrize(
    ("scores", "margin", "skips"),
    [
        ([0.90, 0.70, 0.60], 0.1, True),
        ([0.75, 0.70, 0.60], 0.1, False),
        ([0.75, 0.50], 0.25, False),  # a lead equal to the margin does not skip
        ([0.90, 0.70], 0.0, True),
        ([0.70, 0.70], 0.0, False),
        ([0.90, 0.20, 0.85], 0.1, False),  # compared with the best of the others
        ([0.90, 0.10], None, False),  # gate off
    ],
)
def test_margin_threshold(scores: list[float], margin: float | None, skips: bool) -> None:
    reason = should_skip(scores, margin)
    assert (reason is not None) is skips
    if skips:
        assert reason and "leads by" in reason


@pytest.mark.parametrize("margin", [None, 0.0, 0.5])
def test_one_candidate_always_skips(margin: float | None) -> None:
    assert should_skip([0.3], margin) == "only one candidate; nothing to rank"
    assert should_skip([], margin) == "no candidates to rank"


@pytest.mark.parametrize("margin", [-0.01, math.inf, math.nan])
def test_bad_margin(margin: float) -> None:
    with pytest.raises(ConfigError, match="gate margin"):
        should_skip([0.9, 0.1], margin)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("off", None),
        ("none", None),
        ("on", DEFAULT_GATE_MARGIN),
        ("0.08", 0.08),
        (0.2, 0.2),
        (0, 0.0),
    ],
)
def test_parse_gate(spec: str | float | None, expected: float | None) -> None:
    assert parse_gate(spec) == expected


def test_parse_gate_auto_needs_a_calibrated_value() -> None:
    assert parse_gate("auto", calibrated=0.12) == 0.12
    with pytest.raises(
        ConfigError, match="this memory has none: run `rar-agent eval --gate auto --memory DIR`"
    ):
        parse_gate("auto")


@pytest.mark.parametrize("spec", ["maybe", "-1", "inf"])
def test_parse_gate_rejects_nonsense(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_gate(spec)
