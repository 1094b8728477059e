"""The known-ness statistic, defined once: how well a query matches its best category.

Retrieval hands every candidate category the similarities of its closest entries among the
hits (``Candidate.scores``, best first). The statistic of one category is the mean of its
``SUPPORT_ENTRIES`` closest similarities (its *support*), or the single similarity when only
one of its entries is among the hits (a category taught from one example). The calibration
computes it for its stand-in queries and the verdict for real queries through the same
function, so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SUPPORT_ENTRIES", "KnownScore", "known_score", "known_score_rows"]

SUPPORT_ENTRIES = 2
"""Closest entries of a category averaged into its support."""

KnownScore = tuple[float, bool]
"""``(value, single)``: the statistic and whether it rests on a single entry."""


def known_score(scores: Sequence[float]) -> KnownScore | None:
    """The known-ness statistic of one category from its entries' similarities.

    Args:
        scores: Similarities of the category's entries to the query, best first (any
            order is accepted).

    Returns:
        ``(support, False)`` with at least ``SUPPORT_ENTRIES`` entries, ``(similarity, True)``
        with one, ``None`` with none.
    """
    if not scores:
        return None
    top = sorted((float(s) for s in scores), reverse=True)[:SUPPORT_ENTRIES]
    if len(top) < SUPPORT_ENTRIES:
        return top[0], True
    return sum(top) / len(top), False


def known_score_rows(rows: np.ndarray) -> np.ndarray:
    """:func:`known_score` of many sets of similarities at once (the calibration's draws).

    Args:
        rows: ``(n, m)`` similarities, each row sorted best first, ``-inf`` where an entry
            is missing (a row of fewer than ``m`` entries).

    Returns:
        ``(n,)`` statistics, ``-inf`` for a row with no entry.
    """
    first = rows[:, 0]
    if rows.shape[1] < SUPPORT_ENTRIES:
        return first
    top = rows[:, :SUPPORT_ENTRIES]
    with np.errstate(invalid="ignore"):
        support = top.mean(axis=1)
    return np.where(np.isfinite(top[:, -1]), support, first)
