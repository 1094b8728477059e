"""Confidence gating: skip the ranker when retrieval is already sure of its answer.

Every skip decision is made here: the one-candidate rule, the rejected-image rule, the
margin rule, which settings mean a gate and which margins are valid. ``RankingChain`` asks
:func:`skip_reason` for each request; the pipeline hands its gate to its chain, marks the
images its open-set check rejected (``RankingInput.rejected``) and decides nothing itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rar_agent.errors import ConfigError

__all__ = [
    "DEFAULT_GATE_MARGIN",
    "REJECTED_SKIP_REASON",
    "parse_gate",
    "should_skip",
    "skip_in_plain_words",
    "skip_reason",
    "validate_margin",
]

DEFAULT_GATE_MARGIN = 0.05
"""Margin used for ``gate="on"``: a top-1 cosine lead over top-2 larger than this skips."""

REJECTED_SKIP_REASON = "unknown: the best match is below the memory's threshold"
"""Why an image the open-set check already judged unknown is not sent to the ranker."""

_ONE, _NONE = "only one candidate; nothing to rank", "no candidates to rank"
_CONFIDENT = re.compile(r"retrieval is confident: top score leads by (\S+) > gate (\S+)")
_PLAIN = {  # each reason as a person reads it (skip_in_plain_words)
    _ONE: "there was only one category to choose from",
    _NONE: "there was no category to choose from",
    REJECTED_SKIP_REASON: "it is like no category in memory, so there was nothing to check",
}

_OFF_WORDS = frozenset({"", "off", "none", "false", "no"})


def validate_margin(margin: float | None) -> float | None:
    """Return ``margin`` if it is a usable gate margin (None: no gate).

    Raises:
        ConfigError: ``margin`` is negative or not a finite number.
    """
    if margin is not None and not 0 <= margin < float("inf"):
        raise ConfigError(f"The gate margin must be a finite number >= 0, got {margin}.")
    return margin


def should_skip(scores: Sequence[float], margin: float | None) -> str | None:
    """Decide whether the ranking call can be skipped.

    The ranker cannot change a single candidate, so one (or no) candidate always skips. With
    two or more, the call is skipped when the first retrieval score leads the best of the
    others by more than ``margin``. ``margin=None`` turns the margin test off.

    Args:
        scores: Retrieval scores in retrieval order (best first).
        margin: Score lead above which ranking is skipped, or None for no gate.

    Returns:
        The reason for skipping, or None when the ranker should run.

    Raises:
        ConfigError: ``margin`` is negative or not a finite number.
    """
    validate_margin(margin)
    if len(scores) <= 1:
        return _too_few(len(scores))
    if margin is None:
        return None
    lead = float(scores[0]) - max(float(s) for s in scores[1:])
    if lead > margin:
        return f"retrieval is confident: top score leads by {lead:.4f} > gate {margin:.4f}"
    return None


def skip_in_plain_words(reason: str) -> str:
    """:func:`skip_reason`'s reason as a person reads it (who never heard of retrieval, a
    ranker or a gate); a reason it does not know is returned as it is."""
    confident = _CONFIDENT.fullmatch(reason)
    if confident:
        lead, margin = (float(x) for x in confident.groups())
        return (
            f"the closest category was clearly ahead: its similarity led the next one's by "
            f"{lead:.2f}, more than the {margin:.2f} below which a model double-checks"
        )
    return _PLAIN.get(reason, reason)


def skip_reason(
    n_candidates: int,
    scores: Sequence[float] | None,
    margin: float | None,
    *,
    rejected: bool = False,
) -> str | None:
    """The gate's decision for one ranking request: the one ranker-skip decision.

    In order: no or one candidate (nothing to rank), an image the open-set check rejected
    (no candidate fits, so ordering them buys nothing), a confident retrieval (margin).

    Args:
        n_candidates: How many candidates the request holds.
        scores: Their retrieval scores (best first), or None when unknown: then the margin
            test is off.
        margin: The gate margin, or None for no margin test.
        rejected: The open-set check already judged the image unknown.

    Returns:
        The reason for skipping the model call, or None when the model should rank.
    """
    if n_candidates <= 1:
        return _too_few(n_candidates)
    if rejected:
        return REJECTED_SKIP_REASON
    return None if scores is None else should_skip(scores, margin)


def _too_few(n: int) -> str:
    return _ONE if n else _NONE


def parse_gate(spec: str | float | None, calibrated: float | None = None) -> float | None:
    """Read a gate setting: ``off``/``none``, ``on``, ``auto`` or a number.

    Args:
        spec: The setting (e.g. from ``--gate``). None, ``off`` and ``none`` disable the gate;
            ``on`` uses :data:`DEFAULT_GATE_MARGIN`; ``auto`` uses ``calibrated``.
        calibrated: The margin chosen by the evaluation harness, for ``auto``.

    Returns:
        The margin, or None when gating is off.

    Raises:
        ConfigError: The setting is not understood, or ``auto`` has no calibrated value.
    """
    if spec is None or isinstance(spec, int | float):
        margin = None if spec is None else float(spec)
    else:
        word = spec.strip().lower()
        if word in _OFF_WORDS:
            return None
        if word == "on":
            margin = DEFAULT_GATE_MARGIN
        elif word == "auto":
            if calibrated is None:
                raise ConfigError(
                    "gate=auto needs a margin chosen on labelled images and kept in the memory, "
                    "and this memory has none: run `rar-agent eval --gate auto --memory DIR` "
                    "with your labelled images (--dataset or --memory-set/--test-set), or pass "
                    "a number such as --gate 0.05."
                )
            margin = float(calibrated)
        else:
            try:
                margin = float(word)
            except ValueError:
                raise ConfigError(
                    f"Unknown gate setting {spec!r}; use off, on, auto or a margin like 0.05."
                ) from None
    return validate_margin(margin)
