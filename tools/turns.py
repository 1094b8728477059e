"""Paired timing for the benchmarks: what is compared runs back to back, in turns.

A benchmark that reports a ratio of two timings measures them as pairs, close in time, so
that the machine's load (shared by several people here) moves both timings of a pair alike;
and it alternates which of the pair runs first, so that neither the first place (cold
caches) nor the second (the first one's leftovers in the caches) favours one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["in_turn"]


def in_turn(turn: int, probes: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each of ``probes`` once, back to back: in their order on an even ``turn``, the
    other way round on an odd one (A B, B A, A B...). Their results, in their order."""
    order = range(len(probes)) if turn % 2 == 0 else range(len(probes) - 1, -1, -1)
    results = {j: probes[j]() for j in order}
    return [results[j] for j in range(len(probes))]
