"""Open-set metrics: does the known-ness score tell held-out classes from known ones?

Known-class queries are positives, unknown-class queries negatives. The known-ness score is
the memory's calibrated statistic (``Calibration.judge_vector``; the support
:func:`rar_agent.openset.known_score` where the memory has no statistic) minus the memory's
conformal threshold for the query (or the raw statistic when the memory cannot calibrate).
The promise of ``--reject auto:ALPHA`` is checked at every ALPHA of ``PROMISE_ALPHAS``: the share of
known-class queries rejected (delivered) next to ALPHA (promised). Pure functions over query
records; :mod:`~rar_agent.evaluation.openset_render`
draws them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from rar_agent.evaluation.metrics import QueryRecord, rejected_share, top1

__all__ = [
    "PROMISE_ALPHAS",
    "OpenSetReport",
    "PromisePoint",
    "RocPoint",
    "auroc",
    "known_score",
    "open_set_report",
    "roc_curve",
]


PROMISE_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2)
"""The ALPHAs of the promise-vs-delivered curve."""


class PromisePoint(BaseModel):
    """``--reject auto:ALPHA``: what was promised and what was delivered."""

    alpha: float = Field(description="Promised: at most this share of knowns rejected.")
    known_rejected: float | None = Field(
        default=None, description="Delivered: share of known-class queries rejected."
    )
    unknown_rejected: float | None = Field(
        default=None, description="Share of unknown-class queries rejected."
    )
    calibrated: float | None = Field(
        default=None,
        description="Share of queries that had a threshold (the rest met 'cannot calibrate' "
        "and were not rejected).",
    )


class RocPoint(BaseModel):
    """One threshold of the ROC curve (reject when the score is below ``threshold``)."""

    threshold: float
    unknown_rejected: float = Field(description="True positive rate: unknowns rejected.")
    known_rejected: float = Field(description="False positive rate: knowns rejected.")


class OpenSetReport(BaseModel):
    """Open-set figures of one run."""

    known_queries: int = 0
    unknown_queries: int = 0
    unknown_classes: list[str] = Field(default_factory=list)
    auroc: float | None = Field(default=None, description="AUROC of the known-ness score.")
    auroc_similarity: float | None = Field(
        default=None, description="AUROC of the raw statistic (no per-shot threshold)."
    )
    known_top1: float | None = Field(default=None, description="Known classes, no rejection.")
    known_top1_rejecting: float | None = Field(
        default=None, description="Known classes: right and not rejected."
    )
    top1_drop_points: float | None = None
    unknown_rejected: float | None = Field(default=None, description="Share of unknowns.")
    known_rejected: float | None = Field(default=None, description="Share of knowns.")
    ranker_none_known: int = 0
    ranker_none_unknown: int = 0
    calibrated: bool = False
    roc: list[RocPoint] = Field(default_factory=list)
    promise: list[PromisePoint] = Field(
        default_factory=list, description="Promised vs delivered over PROMISE_ALPHAS."
    )


def known_score(record: QueryRecord) -> float | None:
    """``similarity - auto_threshold`` (or the similarity when uncalibrated)."""
    if record.similarity is None:
        return None
    if record.auto_threshold is None:
        return record.similarity
    return record.similarity - record.auto_threshold


def auroc(known: Sequence[float], unknown: Sequence[float]) -> float | None:
    """P(score of a known query > score of an unknown one), ties counting half."""
    if not known or not unknown:
        return None
    scores = np.concatenate([np.asarray(known, float), np.asarray(unknown, float)])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):
        ranks[order[start : start + n]] = start + (n + 1) / 2.0
    n_k, n_u = len(known), len(unknown)
    return float((ranks[:n_k].sum() - n_k * (n_k + 1) / 2.0) / (n_k * n_u))


def roc_curve(known: Sequence[float], unknown: Sequence[float], limit: int = 201) -> list[RocPoint]:
    """Rejection rates at up to ``limit`` thresholds spread over the observed scores."""
    if not known or not unknown:
        return []
    k, u = np.asarray(known, float), np.asarray(unknown, float)
    values = np.unique(np.concatenate([k, u]))
    picks = values[np.linspace(0, len(values) - 1, min(limit, len(values))).round().astype(int)]
    ends = [float(values[0]) - 1e-6, float(values[-1]) + 1e-6]
    thresholds = sorted({round(t, 6) for t in [*map(float, picks), *ends]})
    return [
        RocPoint(
            threshold=t,
            unknown_rejected=float((u < t).mean()),
            known_rejected=float((k < t).mean()),
        )
        for t in thresholds
    ]


def open_set_report(
    records: Sequence[QueryRecord], unknown_classes: Sequence[str]
) -> OpenSetReport:
    """AUROC, known top-1 with and without rejection, shares rejected, the ROC curve."""
    rows = [r for r in records if r.error is None]
    known = [r for r in rows if r.known]
    unknown = [r for r in rows if not r.known]
    out = OpenSetReport(
        known_queries=len(known),
        unknown_queries=len(unknown),
        unknown_classes=list(unknown_classes),
        calibrated=any(r.auto_threshold is not None for r in rows),
        ranker_none_known=sum(r.status == "no_match" for r in known),
        ranker_none_unknown=sum(r.status == "no_match" for r in unknown),
    )
    ks = [s for r in known if (s := known_score(r)) is not None]
    us = [s for r in unknown if (s := known_score(r)) is not None]
    out.auroc = auroc(ks, us)
    out.auroc_similarity = auroc(
        [r.similarity for r in known if r.similarity is not None],
        [r.similarity for r in unknown if r.similarity is not None],
    )
    out.roc = roc_curve(ks, us)
    if known:
        out.known_top1 = top1(known, final=True)
        out.known_top1_rejecting = top1(known, final=True, rejecting=True)
        drop = (out.known_top1 or 0.0) - (out.known_top1_rejecting or 0.0)
        out.top1_drop_points = round(100.0 * drop, 4)
        out.known_rejected = rejected_share(known)
    if unknown:
        out.unknown_rejected = rejected_share(unknown)
    out.promise = promise_curve(rows)
    return out


def promise_curve(rows: Sequence[QueryRecord]) -> list[PromisePoint]:
    """Known and unknown queries rejected by the conformal threshold at each ALPHA (from the
    records' ``alpha_thresholds``; empty when the run recorded none)."""
    usable = [r for r in rows if r.alpha_thresholds is not None and r.similarity is not None]
    if not usable:
        return []
    points = []
    for alpha in PROMISE_ALPHAS:
        key = f"{alpha:g}"

        def rejected(r: QueryRecord, key: str = key) -> bool:
            t = (r.alpha_thresholds or {}).get(key)
            return t is not None and (r.similarity or 0.0) < t

        known = [r for r in usable if r.known]
        unknown = [r for r in usable if not r.known]
        with_threshold = [r for r in usable if (r.alpha_thresholds or {}).get(key) is not None]
        points.append(
            PromisePoint(
                alpha=alpha,
                known_rejected=sum(map(rejected, known)) / len(known) if known else None,
                unknown_rejected=sum(map(rejected, unknown)) / len(unknown) if unknown else None,
                calibrated=len(with_threshold) / len(usable),
            )
        )
    return points
