"""Confidence gating: skip the ranker when retrieval's lead is large enough."""

from __future__ import annotations

import math

import pytest

from rar_agent.errors import ConfigError
from rar_agent.pipeline import explanation_of
from rar_agent.ranking import (
    DEFAULT_GATE_MARGIN,
    parse_gate,
    should_skip,
    skip_in_plain_words,
    skip_reason,
    skip_text,
)


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
    skip = should_skip(scores, margin)
    assert (skip is not None) is skips
    if skip is not None:
        assert skip.rule == "confident" and skip.margin == margin
        assert skip.lead == pytest.approx(scores[0] - max(scores[1:]))
        assert "leads by" in skip_text(skip)


@pytest.mark.parametrize("margin", [None, 0.0, 0.5])
def test_one_candidate_always_skips(margin: float | None) -> None:
    one, none = should_skip([0.3], margin), should_skip([], margin)
    assert one is not None and skip_text(one) == "only one candidate; nothing to rank"
    assert none is not None and skip_text(none) == "no candidates to rank"


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


def test_a_skip_is_data_where_it_is_made_and_rendered_without_reading_its_text() -> None:
    """``skip_in_plain_words`` read the lead and margin back out of the reason text with a
    regex mirroring ``should_skip``'s format: the decision now carries them as fields."""
    skip = skip_reason(3, [0.9, 0.5, 0.1], 0.05)
    assert skip is not None and (skip.rule, skip.margin) == ("confident", 0.05)
    assert skip.lead == pytest.approx(0.4)
    result = {
        "label": "osprey",
        "candidates": [{"label": "osprey", "score": 0.9}, {"label": "kite", "score": 0.5}],
        # a reason worded otherwise (another version, a translation): the fields decide
        "ranking": {"status": "skipped", "reason": "sure enough", "skip": skip.model_dump()},
    }
    how = explanation_of(result).how
    assert "its similarity led the next one's by 0.40, more than the 0.05" in how
    assert "sure enough" not in how


@pytest.mark.parametrize(
    ("scores", "margin", "rejected"),
    [([0.9, 0.5], 0.05, False), ([0.9], None, False), ([], None, False), ([0.9, 0.5], 0.0, True)],
)
def test_a_stored_reason_without_fields_reads_as_a_new_one(
    scores: list[float], margin: float | None, rejected: bool
) -> None:
    """Results stored before ``RankingInfo.skip`` (JSON Lines, tool artifacts) carry the
    reason text only: they still read in plain words, the same as a new result's."""
    skip = skip_reason(len(scores), scores, margin, rejected=rejected)
    assert skip is not None
    assert skip_in_plain_words(skip_text(skip)) == skip_in_plain_words(skip)
    assert skip_in_plain_words("a reason of another kind") == "a reason of another kind"
