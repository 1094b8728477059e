"""Confidence gating: skip the ranker when retrieval is already sure of its answer."""

from __future__ import annotations

from collections.abc import Sequence

from rar_agent.errors import ConfigError

__all__ = ["DEFAULT_GATE_MARGIN", "should_skip", "parse_gate"]

DEFAULT_GATE_MARGIN = 0.05
"""Margin used for ``gate="on"``: a top-1 cosine lead over top-2 larger than this skips."""


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
    if margin is not None and not 0 <= margin < float("inf"):
        raise ConfigError(f"The gate margin must be a finite number >= 0, got {margin}.")
    if len(scores) <= 1:
        return "only one candidate; nothing to rank" if scores else "no candidates to rank"
    if margin is None:
        return None
    lead = float(scores[0]) - max(float(s) for s in scores[1:])
    if lead > margin:
        return f"retrieval is confident: top score leads by {lead:.4f} > gate {margin:.4f}"
    return None


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
        if word in ("", "off", "none", "false", "no"):
            return None
        if word == "on":
            margin = DEFAULT_GATE_MARGIN
        elif word == "auto":
            if calibrated is None:
                raise ConfigError(
                    "gate=auto needs a calibrated margin; run the evaluation harness to choose "
                    "one, or pass a number such as --gate 0.05."
                )
            margin = float(calibrated)
        else:
            try:
                margin = float(word)
            except ValueError:
                raise ConfigError(
                    f"Unknown gate setting {spec!r}; use off, on, auto or a margin like 0.05."
                ) from None
    if margin is not None:
        should_skip([1.0, 0.0], margin)  # validates the range
    return margin
