"""The open-set decision: is the best candidate close enough to count as *known*?

The memory's calibration (:mod:`rar_agent.openset.calibration`) says what a known image of
each category scores; this module compares one query's best candidate with it, and turns the
ranker's "none of these" into a reason. Pure functions: no search, a dict lookup a query. The
pipeline calls it only through :mod:`rar_agent.pipeline.verdict`, which holds the final verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rar_agent.openset.statistic import known_score
from rar_agent.results import Candidate, RankingInfo, RejectionInfo

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.config import RejectSetting
    from rar_agent.openset.calibration import Calibration

__all__ = ["RANKER_SKIP_REASON", "TEXT_ENTRIES_NOTE", "judge", "with_ranker_verdict"]

RANKER_SKIP_REASON = "unknown: the best match is below the memory's threshold"
"""Why an image retrieval already judged unknown is not sent to the ranker."""
TEXT_ENTRIES_NOTE = (
    "class-name (text) entries have no calibrated threshold: only the ranker's "
    "'none of these' or a fixed --reject threshold can reject"
)
"""Why a memory of class names only is never calibrated (its verdicts and `memory stats`)."""


def judge(
    candidates: Sequence[Candidate],
    setting: RejectSetting,
    calibration: Calibration | None,
    vector: ArrayLike | None = None,
) -> RejectionInfo:
    """The retrieval-side verdict for one image's candidates (best first).

    ``fixed``: the best candidate's support
    (:func:`~rar_agent.openset.statistic.known_score`) against the given threshold. ``auto``:
    the query's known-ness (:meth:`~rar_agent.openset.calibration.Calibration.judge_vector`,
    the calibrated statistic of its embedding, best over the candidates' categories: the
    check is about what retrieval answers) against the conformal threshold at the
    setting's ALPHA for that category's number of examples (image entries only:
    class-name entries have none); where the memory's own examples do not judge (they set
    no threshold at the default ALPHA), the encoder prior's threshold for the similarity of
    the answer's closest example, and the note says so
    (:meth:`~rar_agent.openset.calibration.Calibration.judge_query`). Where neither can
    support the promise, nothing is rejected and the note says why ("cannot calibrate ...").
    The answer stays retrieval's.

    Args:
        candidates: The retrieval candidates.
        setting: The reject setting (``off``, ``auto`` or ``fixed``).
        calibration: The memory's calibration (used by ``auto``).
        vector: The query's embedding (needed by ``auto`` on a calibrated image memory).

    Raises:
        ValueError: ``auto`` on a calibrated image memory without the query's embedding.
    """
    mode = setting.mode
    if mode == "off" or not candidates:
        return RejectionInfo(mode=mode)
    top = candidates[0]
    why: str | None = None
    prior = measured = False
    share: float | None = None
    statistic: float | None = None
    if mode == "fixed":
        threshold = setting.threshold
    elif calibration is not None and top.kind == "image":
        judged = calibration.judge_query(vector, candidates, setting.alpha)
        statistic = judged.statistic
        threshold, why, prior, share = judged.threshold, judged.note, judged.prior, judged.share
        measured = judged.measured
    else:
        threshold = None
    stat = _support(top) if statistic is None else statistic
    info = RejectionInfo(mode=mode, similarity=round(stat, 6))
    if mode == "auto" and calibration is not None and top.kind == "image":
        info.alpha = setting.alpha
    if threshold is None:
        info.note = why or _no_threshold_note(top.kind, calibration)
        return info
    info.threshold = round(threshold, 6)
    info.note = why
    info.prior, info.prior_measured = prior, measured
    info.known_share = None if share is None else round(share, 6)
    info.margin = round(stat - threshold, 6)
    if stat < threshold:
        info.reasons.append("below_threshold")
    return info


def with_ranker_verdict(verdict: RejectionInfo | None, ranking: RankingInfo) -> RejectionInfo:
    """The final verdict: the retrieval one, plus ``ranker_none`` when the ranker answered
    "none of these" and rejection is on."""
    out = (verdict or RejectionInfo()).model_copy(deep=True)
    if out.mode != "off" and ranking.status == "no_match" and "ranker_none" not in out.reasons:
        out.reasons.append("ranker_none")
    return out


def _support(top: Candidate) -> float:
    """The best candidate's support (:func:`~rar_agent.openset.statistic.known_score`)."""
    return (known_score(top.scores) or (top.score, True))[0]


def _no_threshold_note(kind: str | None, calibration: Calibration | None) -> str:
    if kind == "text":
        return TEXT_ENTRIES_NOTE
    if calibration is None:
        return "the memory is not calibrated yet"
    return calibration.reason or "no threshold"
