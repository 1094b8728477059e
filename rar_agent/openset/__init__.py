"""Open set: is a query a category the memory knows, and at what price?

The layer between retrieval and ranking. :mod:`~rar_agent.openset.statistic` defines the
known-ness statistic once; :mod:`~rar_agent.openset.calibration` fits what a known query of
each category scores from the memory's own examples and keeps it current (:func:`update`,
one policy for builds and taught examples); :mod:`~rar_agent.openset.verdict` turns one
query's candidates into a verdict. The calibration is stored as the memory record's extension
``"openset"`` (:mod:`~rar_agent.openset.store`); the memory stores it but never decides when
to recompute it: the callers that change a memory (builds, the teacher, the vector store)
call :func:`update`, and the recognizer factory :func:`ensure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rar_agent.openset.calibration import (
    CalibratedMemory,
    Calibration,
    current,
    fit,
    load,
    update,
    why_not_loaded,
    why_refit,
)
from rar_agent.openset.statistic import SUPPORT_ENTRIES, known_score
from rar_agent.openset.store import EXTENSION
from rar_agent.openset.verdict import RANKER_SKIP_REASON, judge, with_ranker_verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rar_agent.config import RejectSetting
    from rar_agent.results import Candidate, RejectionInfo

__all__ = [
    "EXTENSION",
    "RANKER_SKIP_REASON",
    "SUPPORT_ENTRIES",
    "CalibratedMemory",
    "Calibration",
    "Calibrator",
    "LeaveOneOutCalibrator",
    "current",
    "ensure",
    "fit",
    "judge",
    "known_score",
    "load",
    "update",
    "why_not_loaded",
    "why_refit",
    "with_ranker_verdict",
]


class Calibrator(Protocol):
    """What an open-set method provides: fit, update on add/remove, verdict."""

    def fit(self, memory: CalibratedMemory) -> Calibration:
        """Calibrate from scratch and store the result in the memory's record."""
        ...

    def update(
        self, memory: CalibratedMemory, *, added: Sequence[str] = (), removed: int = 0
    ) -> Calibration:
        """Keep the stored calibration current after entries were added or removed."""
        ...

    def verdict(
        self,
        candidates: Sequence[Candidate],
        setting: RejectSetting,
        calibration: Calibration | None,
    ) -> RejectionInfo:
        """The retrieval-side verdict for one query's candidates (best first)."""
        ...


class LeaveOneOutCalibrator:
    """The shipped method: leave-one-out stand-ins from the memory's own examples."""

    def fit(self, memory: CalibratedMemory) -> Calibration:
        """See :func:`rar_agent.openset.calibration.fit`."""
        return fit(memory)

    def update(
        self, memory: CalibratedMemory, *, added: Sequence[str] = (), removed: int = 0
    ) -> Calibration:
        """See :func:`rar_agent.openset.calibration.update`."""
        return update(memory, added=added, removed=removed)

    def verdict(
        self,
        candidates: Sequence[Candidate],
        setting: RejectSetting,
        calibration: Calibration | None,
    ) -> RejectionInfo:
        """See :func:`rar_agent.openset.verdict.judge`."""
        return judge(candidates, setting, calibration)


def ensure(memory: CalibratedMemory, image_entries: int) -> Calibration | None:
    """The stored calibration, fitted first when a memory with ``image_entries`` example
    images has none yet (one built before calibration existed) or its encoder's prior changed
    since (:func:`why_refit`); ``None`` for a memory without example images. A read-only
    memory is calibrated without storing the result."""
    cal = load(memory)
    if image_entries > 0 and (cal is None or cal.prior_changed()):
        cal = fit(memory)
    return cal
