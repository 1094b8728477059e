"""From retrieval candidates and what the ranker did to one :class:`RecognitionResult`,
with its verdict (:mod:`.verdict`) and its explanation (:mod:`.explain`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

from rar_agent.pipeline.explain import explain
from rar_agent.pipeline.verdict import is_unknown, verdict
from rar_agent.results import Candidate, RankingInfo, RecognitionResult, RejectionInfo

if TYPE_CHECKING:
    from rar_agent.ranking import RankingOutput

__all__ = ["Ranking", "failed_result", "ranked_result", "ranking_of"]

Ranking: TypeAlias = "tuple[RankingInfo, list[str] | None]"
"""What the ranking stage did for one item, and the order it chose (None: retrieval order)."""


def ranking_of(output: RankingOutput) -> Ranking:
    """The ranking record of one ranking-chain output (a skip keeps retrieval order)."""
    if output.status == "skipped":
        return RankingInfo(status="skipped", reason=output.reason, skip=output.skip), None
    info = RankingInfo(
        status=output.status,
        reason=output.reason,
        model=output.model,
        raw_reply=output.raw_reply,
        parsed_order=list(output.order),
        latency_ms=output.latency_ms,
    )
    return info, list(output.order)


def ranked_result(
    candidates: Sequence[Candidate],
    ranking: Ranking,
    timings_ms: dict[str, float],
    *,
    rejection: RejectionInfo | None = None,
    image: str | None = None,
    box: list[float] | None = None,
    box_id: str | None = None,
    encoder: str | None = None,
) -> RecognitionResult:
    """One result: candidates in the ranker's order (if any), the first as the answer.

    The result is *unknown* (no label; the candidates stay as the closest categories) when
    the retrieval verdict rejected it, or when rejection is on and the ranker said none fits.

    Args:
        candidates: Retrieval candidates, best first.
        ranking: What the ranking stage did and the order it chose.
        timings_ms: Per-stage timings; the ranking latency is added as ``rank``.
        rejection: The open-set check's verdict (:func:`.verdict.open_set_check`).
        image: Where the image came from.
        box: The region's pixel box (region recognition).
        box_id: The region's id (region recognition).
        encoder: The encoder used (its spec label or fingerprint).
    """
    info, order = ranking
    final = _reorder(candidates, order)
    decided = verdict(rejection, info)
    unknown = is_unknown(decided)
    label = final[0].label if final and not unknown else None
    return RecognitionResult(
        label=label,
        unknown=unknown,
        candidates=final,
        ranking=info,
        rejection=decided,
        explanation=explain(
            label=label,
            candidates=[(c.label, c.score) for c in final],
            ranking=info,
            rejection=decided,
            unknown=unknown,
            first=candidates[0] if candidates else None,
        ),
        timings_ms={**timings_ms, "rank": info.latency_ms or 0.0},
        image=image,
        box=box,
        box_id=box_id,
        encoder=encoder,
    )


def _reorder(candidates: Sequence[Candidate], order: Sequence[str] | None) -> list[Candidate]:
    if not order:
        return list(candidates)
    by_label = {c.label: c for c in candidates}
    final = [by_label[label] for label in order if label in by_label]
    seen = {c.label for c in final}
    return final + [c for c in candidates if c.label not in seen]


def failed_result(
    error: str,
    *,
    image: str | None = None,
    box: list[float] | None = None,
    box_id: str | None = None,
) -> RecognitionResult:
    """The result of an item that could not be recognized (a bad image or box)."""
    return RecognitionResult(
        label=None,
        image=image,
        box=box,
        box_id=box_id,
        error=error,
        explanation=explain(
            label=None,
            candidates=[],
            ranking=RankingInfo(),
            rejection=RejectionInfo(),
            unknown=False,
            error=error,
        ),
    )
