"""Confidence gating: skip the ranker when retrieval is already sure of its answer.

Every skip decision is made here: the one-candidate rule, the rejected-image rule, the
taught-example rule, the margin rule, which settings mean a gate and which margins are
valid. ``RankingChain`` asks :func:`skip_reason` for each request; the pipeline hands its
gate to its chain, marks the images its open-set check rejected (``RankingInput.rejected``)
and those a taught example leads (``RankingInput.taught``), and decides nothing itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rar_agent.errors import ConfigError
from rar_agent.results import GateSkip, SkipRule

__all__ = [
    "DEFAULT_GATE_MARGIN",
    "REJECTED_SKIP_REASON",
    "TAUGHT_SKIP_REASON",
    "parse_gate",
    "should_skip",
    "skip_in_plain_words",
    "skip_reason",
    "skip_text",
    "validate_margin",
]

DEFAULT_GATE_MARGIN = 0.05
"""Margin used for ``gate="on"``: a top-1 cosine lead over top-2 larger than this skips."""

REJECTED_SKIP_REASON = "unknown: the best match is below the memory's threshold"
"""Why an image the open-set check already judged unknown is not sent to the ranker."""
TAUGHT_SKIP_REASON = (
    "a taught example is the same thing as the image: it leads the class names, and a model "
    "knows those names, not what was taught"
)
"""Why an image whose taught example leads the class names is not sent to the ranker."""

_TEXT: dict[SkipRule, str] = {  # each rule's reason as stored in RankingInfo.reason (skip_text)
    "no_candidates": "no candidates to rank",
    "one_candidate": "only one candidate; nothing to rank",
    "rejected": REJECTED_SKIP_REASON,
    "taught": TAUGHT_SKIP_REASON,
}
_PLAIN: dict[SkipRule, str] = {  # each rule as a person reads it (skip_in_plain_words)
    "no_candidates": "there was no category to choose from",
    "one_candidate": "there was only one category to choose from",
    "rejected": "it is like no category in memory, so there was nothing to check",
    "taught": "it is the same thing as a photo you taught, whose name no model knows",
}
# A reason stored before results carried GateSkip (old artifacts and JSON Lines): read back.
_OLD_CONFIDENT = re.compile(r"retrieval is confident: top score leads by (\S+) > gate (\S+)")

_OFF_WORDS = frozenset({"", "off", "none", "false", "no"})


def validate_margin(margin: float | None) -> float | None:
    """Return ``margin`` if it is a usable gate margin (None: no gate).

    Raises:
        ConfigError: ``margin`` is negative or not a finite number.
    """
    if margin is not None and not 0 <= margin < float("inf"):
        raise ConfigError(f"The gate margin must be a finite number >= 0, got {margin}.")
    return margin


def should_skip(scores: Sequence[float], margin: float | None) -> GateSkip | None:
    """Decide whether the ranking call can be skipped.

    The ranker cannot change a single candidate, so one (or no) candidate always skips. With
    two or more, the call is skipped when the first retrieval score leads the best of the
    others by more than ``margin``. ``margin=None`` turns the margin test off.

    Args:
        scores: Retrieval scores in retrieval order (best first).
        margin: Score lead above which ranking is skipped, or None for no gate.

    Returns:
        Why ranking is skipped (:func:`skip_text` says it in text), or None when the ranker
        should run.

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
        return GateSkip(rule="confident", lead=lead, margin=margin)
    return None


def skip_text(skip: GateSkip) -> str:
    """The skip's reason as :class:`~rar_agent.results.RankingInfo` stores it (``reason``)."""
    if skip.rule == "confident":
        return (
            f"retrieval is confident: top score leads by {skip.lead or 0.0:.4f} > gate "
            f"{skip.margin or 0.0:.4f}"
        )
    return _TEXT[skip.rule]


def skip_in_plain_words(skip: GateSkip | str) -> str:
    """A skip as a person reads it (who never heard of retrieval, a ranker or a gate).

    Args:
        skip: The gate's decision, or the reason text of a result stored before results
            carried it (a text it does not know is returned as it is).
    """
    if isinstance(skip, str):
        old = _old_skip(skip)
        if old is None:
            return skip
        skip = old
    if skip.rule == "confident":
        return (
            f"the closest category was clearly ahead: its similarity led the next one's by "
            f"{skip.lead or 0.0:.2f}, more than the {skip.margin or 0.0:.2f} below which a "
            "model double-checks"
        )
    return _PLAIN[skip.rule]


def _old_skip(reason: str) -> GateSkip | None:
    """The decision a stored reason text records (results made before ``RankingInfo.skip``)."""
    confident = _OLD_CONFIDENT.fullmatch(reason)
    if confident:
        lead, margin = (float(x) for x in confident.groups())
        return GateSkip(rule="confident", lead=lead, margin=margin)
    rule = next((r for r, text in _TEXT.items() if text == reason), None)
    return GateSkip(rule=rule) if rule is not None else None


def skip_reason(
    n_candidates: int,
    scores: Sequence[float] | None,
    margin: float | None,
    *,
    rejected: bool = False,
    taught: bool = False,
) -> GateSkip | None:
    """The gate's decision for one ranking request: the one ranker-skip decision.

    In order: no or one candidate (nothing to rank), an image the open-set check rejected
    (no candidate fits, so ordering them buys nothing), a taught category that leads the
    class names (its example is the same thing as the image; a model, which knows the class
    names and not what was taught, would put a class name over it), a confident retrieval
    (margin).

    Args:
        n_candidates: How many candidates the request holds.
        scores: Their retrieval scores (best first), or None when unknown: then the margin
            test is off.
        margin: The gate margin, or None for no margin test.
        rejected: The open-set check already judged the image unknown.
        taught: A taught category leads the class names (the first candidate's
            ``leads_names``, marked by :func:`rar_agent.retrieval.lead_side`).

    Returns:
        Why the model call is skipped (:func:`skip_text` says it in text), or None when the
        model should rank.
    """
    if n_candidates <= 1:
        return _too_few(n_candidates)
    if rejected:
        return GateSkip(rule="rejected")
    if taught:
        return GateSkip(rule="taught")
    return None if scores is None else should_skip(scores, margin)


def _too_few(n: int) -> GateSkip:
    return GateSkip(rule="one_candidate" if n else "no_candidates")


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
