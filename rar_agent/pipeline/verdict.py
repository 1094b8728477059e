"""The unknown verdict, decided in one place.

One rule in two steps. Before ranking, :func:`open_set_check` (the only caller of the
retrieval-side check in :mod:`rar_agent.openset.verdict`, so that check's internals can
change behind it) judges the retrieved candidates. After ranking, :func:`verdict` adds
the ranker's "none of these" when rejection is on. A result is unknown exactly when the
final verdict holds a reason (:func:`is_unknown`); the stage runner, the results and the
evaluation all ask here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rar_agent.openset import judge, with_ranker_verdict
from rar_agent.results import Candidate, RankingInfo, RejectionInfo

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.config import RejectSetting
    from rar_agent.openset.calibration import Calibration

__all__ = ["is_unknown", "open_set_check", "verdict"]


def open_set_check(
    candidates: Sequence[Candidate],
    setting: RejectSetting,
    calibration: Calibration | None,
    vector: ArrayLike | None = None,
) -> RejectionInfo:
    """The retrieval-side open-set check of one image's candidates (best first).

    Args:
        candidates: The retrieval candidates.
        setting: The reject setting (``off``, ``auto`` or ``fixed``).
        calibration: The memory's calibration (used by ``auto``).
        vector: The image's embedding (``auto`` scores it).
    """
    return judge(candidates, setting, calibration, vector)


def verdict(retrieval: RejectionInfo | None, ranking: RankingInfo) -> RejectionInfo:
    """The final verdict: the open-set check's, plus ``ranker_none`` when the ranker answered
    "none of these" and rejection is on (with rejection off the closest category stands).

    Args:
        retrieval: What :func:`open_set_check` said (None: no check ran).
        ranking: What the ranking stage did.
    """
    return with_ranker_verdict(retrieval, ranking)


def is_unknown(final: RejectionInfo) -> bool:
    """Whether a (final or retrieval-side) verdict makes the image unknown."""
    return bool(final.reasons)
