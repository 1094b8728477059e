"""The open-set decision: is the best candidate close enough to count as *known*?

The memory's calibration (:mod:`rar_agent.memory.calibration`) says what a known image of
each category scores; this module compares one query's best candidate with it. Pure
functions: no search, a dict lookup a query. The pipeline calls it only through
:func:`rar_agent.pipeline.verdict.open_set_check`, which also holds the final verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rar_agent.results import Candidate, RejectionInfo

if TYPE_CHECKING:
    from rar_agent.config import RejectSetting
    from rar_agent.memory.calibration import Calibration

__all__ = ["judge"]


def judge(
    candidates: Sequence[Candidate], setting: RejectSetting, calibration: Calibration | None
) -> RejectionInfo:
    """The retrieval-side verdict for one image's candidates (best first).

    The statistic is the best candidate's support (mean similarity of its category's two
    closest entries), or its similarity when only one entry of that category was retrieved;
    the threshold is the fixed one, or the calibrated one for that category (image entries
    only: class-name entries have none).

    Args:
        candidates: The retrieval candidates.
        setting: The reject setting (``off``, ``auto`` or ``fixed``).
        calibration: The memory's calibration (used by ``auto``).
    """
    mode = setting.mode
    if mode == "off" or not candidates:
        return RejectionInfo(mode=mode)
    top = candidates[0]
    single = top.support is None
    stat = top.score if top.support is None else top.support
    info = RejectionInfo(mode=mode, similarity=round(stat, 6))
    if mode == "fixed":
        threshold = setting.threshold
    elif calibration is not None and top.kind == "image":
        threshold = calibration.threshold_for(top.label, single=single)
    else:
        threshold = None
    if threshold is None:
        info.note = _no_threshold_note(top.kind, calibration)
        return info
    info.threshold = round(threshold, 6)
    info.margin = round(stat - threshold, 6)
    if stat < threshold:
        info.reasons.append("below_threshold")
    return info


def _no_threshold_note(kind: str | None, calibration: Calibration | None) -> str:
    if kind == "text":
        return (
            "class-name (text) entries have no calibrated threshold: only the ranker's "
            "'none of these' or a fixed --reject threshold can reject"
        )
    if calibration is None:
        return "the memory is not calibrated yet"
    return calibration.reason or "no threshold"
