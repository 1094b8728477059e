"""Evaluation metrics computed from per-query records (pure functions, no models involved).

Accuracies are fractions in [0, 1]; the accuracy budget of the automatic gate is given in
percentage points, as people state it ("lose at most 0.5 point").
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "most_confused",
    "percent",
    "ClassScore",
    "GateChoice",
    "GatePoint",
    "Outcomes",
    "QueryRecord",
    "choose_gate",
    "confusion",
    "gating_curve",
    "BATCHED",
    "latency_summary",
    "outcomes",
    "per_class",
    "recall_at_k",
    "rejected_share",
    "status_counts",
    "summarize_points",
    "top1",
]


class QueryRecord(BaseModel):
    """What happened to one test image.

    Attributes:
        source: Where the image came from.
        label: Its true label.
        candidates: Retrieved labels in retrieval order (up to the evaluated ``K``).
        scores: Their retrieval scores.
        k: How many of the candidates were handed to the ranker.
        ranked: The ranker's order of those ``k`` candidates, or None when it did not run.
        status: Ranking status: ``ranked``, ``fallback``, ``skipped`` or ``disabled``.
        reason: Why ranking was skipped or fell back.
        timings_ms: Milliseconds per stage for this image (load, encode, retrieve, reject,
            rank); the :data:`BATCHED` stages' are its batch's time per image.
        batch: Which batch of the run it was encoded, retrieved and judged in (None: not
            known, each image counts as timed alone).
        error: Why the image could not be evaluated (it then counts in no metric).
        known: Whether its true label is in the memory (false for held-out classes in an
            open-set run).
        similarity: The known-ness statistic (:func:`rar_agent.openset.known_score` of the
            top candidate).
        threshold: The threshold the run's reject setting applied (None: none).
        auto_threshold: The memory's conformal threshold at the run's ALPHA for the top
            candidate (the known-ness score is ``similarity - auto_threshold``).
        shots: Entries of the top candidate's category among the hits (which threshold).
        alpha_thresholds: The conformal threshold at each ALPHA of the promise-vs-delivered
            curve (``str(alpha)`` -> threshold, None where the memory cannot calibrate).
        rejected: Whether the run answered "unknown" (below the threshold, or the ranker
            said none of the candidates fits while rejection was on).
    """

    source: str
    label: str
    candidates: list[str] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)
    k: int = 1
    ranked: list[str] | None = None
    status: str = "disabled"
    reason: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    known: bool = True
    similarity: float | None = None
    threshold: float | None = None
    auto_threshold: float | None = None
    shots: int | None = None
    alpha_thresholds: dict[str, float | None] | None = None
    rejected: bool = False
    batch: int | None = None

    @property
    def knn(self) -> str | None:
        """The retrieval answer (the paper's CLIP+KNN prediction)."""
        return self.candidates[0] if self.candidates else None

    @property
    def rar(self) -> str | None:
        """The final answer: the ranker's first choice, else the retrieval answer."""
        return self.ranked[0] if self.ranked else self.knn

    @property
    def margin(self) -> float:
        """The gate's score margin: first score minus the best other of the ``k`` handed on.

        Infinite when fewer than two candidates (the ranker never runs then).
        """
        top = self.scores[: max(self.k, 1)]
        if len(top) < 2:
            return math.inf
        return float(top[0]) - max(float(s) for s in top[1:])


def _valid(records: Sequence[QueryRecord]) -> list[QueryRecord]:
    return [r for r in records if r.error is None]


def _mean(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def top1(
    records: Sequence[QueryRecord], *, final: bool = False, rejecting: bool = False
) -> float | None:
    """Top-1 accuracy of retrieval (``final=False``) or of the final answer; None if empty.

    ``rejecting=True``: a query the run answered "unknown" counts as wrong (as a user of
    ``recognize`` with the same ``--reject`` would see it); otherwise it counts with its
    closest category, as the paper measures.
    """
    rows = _valid(records)
    return _mean(
        [(r.rar if final else r.knn) == r.label and not (rejecting and r.rejected) for r in rows]
    )


def rejected_share(records: Sequence[QueryRecord]) -> float | None:
    """Share of the evaluated queries the run answered "unknown"; None if none was evaluated."""
    return _mean([r.rejected for r in _valid(records)])


def recall_at_k(records: Sequence[QueryRecord], max_k: int) -> dict[int, float]:
    """Share of queries whose true label is among the first ``k`` retrieved, ``k = 1..max_k``.

    This is the ceiling any ranker of ``k`` candidates can reach. Empty when no record is
    valid.
    """
    rows = _valid(records)
    if not rows:
        return {}
    positions = [r.candidates.index(r.label) if r.label in r.candidates else math.inf for r in rows]
    return {k: sum(p < k for p in positions) / len(rows) for k in range(1, max_k + 1)}


class Outcomes(BaseModel):
    """How the final answer compares with the retrieval answer."""

    helped: int = Field(default=0, description="Retrieval wrong, final answer right.")
    hurt: int = Field(default=0, description="Retrieval right, final answer wrong.")
    unchanged: int = Field(default=0, description="Same answer as retrieval.")
    changed_still_wrong: int = Field(default=0, description="Changed, but both wrong.")


def outcomes(records: Sequence[QueryRecord]) -> Outcomes:
    """Count helped / hurt / unchanged / changed-but-still-wrong queries."""
    out = Outcomes()
    for r in _valid(records):
        knn_ok, rar_ok = r.knn == r.label, r.rar == r.label
        if r.rar == r.knn:
            out.unchanged += 1
        elif rar_ok and not knn_ok:
            out.helped += 1
        elif knn_ok and not rar_ok:
            out.hurt += 1
        else:
            out.changed_still_wrong += 1
    return out


def status_counts(records: Sequence[QueryRecord]) -> dict[str, int]:
    """Queries per ranking status (and ``error`` for images that failed to load)."""
    counts = Counter("error" if r.error else r.status for r in records)
    return dict(sorted(counts.items()))


class ClassScore(BaseModel):
    """Accuracy on one class."""

    n: int
    knn: float
    final: float


def per_class(records: Sequence[QueryRecord]) -> dict[str, ClassScore]:
    """Retrieval and final top-1 accuracy per true label, labels sorted."""
    groups: dict[str, list[QueryRecord]] = defaultdict(list)
    for r in _valid(records):
        groups[r.label].append(r)
    return {
        label: ClassScore(
            n=len(rows),
            knn=sum(r.knn == label for r in rows) / len(rows),
            final=sum(r.rar == label for r in rows) / len(rows),
        )
        for label, rows in sorted(groups.items())
    }


def confusion(records: Sequence[QueryRecord], *, final: bool = True) -> dict[str, dict[str, int]]:
    """Counts ``matrix[true][predicted]`` over valid queries (only non-zero cells)."""
    matrix: dict[str, dict[str, int]] = defaultdict(dict)
    for r in _valid(records):
        pred = (r.rar if final else r.knn) or "(none)"
        matrix[r.label][pred] = matrix[r.label].get(pred, 0) + 1
    return {label: dict(row) for label, row in sorted(matrix.items())}


def most_confused(confusion: dict[str, dict[str, int]], limit: int = 10) -> list[str]:
    """Classes with the most errors (as true label plus as wrong prediction), worst first.

    Only classes involved in at least one error are returned.
    """
    errors: dict[str, int] = {}
    for truth, row in confusion.items():
        for pred, count in row.items():
            if pred != truth:
                errors[truth] = errors.get(truth, 0) + count
                errors[pred] = errors.get(pred, 0) + count
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return [label for label, _ in ranked[:limit]]


BATCHED = ("encode", "retrieve", "reject")
"""Stages timed once per batch of images (one encoder pass, one batch search): each image of
a batch holds the batch's time per image, so their spread is the batches', not the images'."""


def latency_summary(records: Sequence[QueryRecord]) -> dict[str, dict[str, float]]:
    """p50 / p95 / mean milliseconds per image, per stage, over the queries that have the
    stage (``n``); a :data:`BATCHED` stage's p50 / p95 over its batches (``batches``: one
    figure each), its mean still over the images (a small last batch weighs as its images)."""
    import numpy as np

    stages: dict[str, list[float]] = defaultdict(list)
    batches: dict[str, dict[int, float]] = defaultdict(dict)
    for r in _valid(records):
        for stage, ms in r.timings_ms.items():
            stages[stage].append(ms)
            if stage in BATCHED and r.batch is not None:
                batches[stage].setdefault(r.batch, ms)
    summary: dict[str, dict[str, float]] = {}
    for stage, values in stages.items():
        timed = list(batches[stage].values()) if stage in batches else values
        summary[stage] = {
            "p50": round(float(np.percentile(timed, 50)), 3),
            "p95": round(float(np.percentile(timed, 95)), 3),
            "mean": round(float(np.mean(values)), 3),
            "n": len(values),
        }
        if stage in batches:
            summary[stage]["batches"] = len(timed)
    return summary


class GatePoint(BaseModel):
    """The effect of one gate threshold (skip ranking when margin > threshold)."""

    threshold: float
    skipped: int = Field(description="Queries whose ranking would be skipped.")
    skip_share: float = Field(description="skipped / all valid queries.")
    knn_accuracy_skipped: float | None = Field(
        description="Retrieval accuracy on the skipped queries (None when none skipped)."
    )
    accuracy: float = Field(description="Top-1 when skipped queries keep the retrieval answer.")


class GateChoice(BaseModel):
    """The threshold ``--gate auto`` picked, or why it picked none."""

    threshold: float | None = None
    skip_share: float | None = None
    accuracy: float | None = None
    loss_points: float | None = Field(
        default=None, description="Accuracy lost vs always ranking, pts."
    )
    max_loss_points: float = 0.5
    reason: str | None = None


def gating_curve(
    records: Sequence[QueryRecord], *, max_threshold: float | None = None
) -> list[GatePoint]:
    """The gate's effect at every threshold that changes which queries are skipped.

    Thresholds are ``0`` and each distinct finite margin, ascending (so the skip share
    falls). A query is skipped when its margin exceeds the threshold; skipped queries keep
    the retrieval answer, the others the final (ranked) answer.

    Args:
        records: Query records; those that were ranked (or could have been) matter.
        max_threshold: When the run itself gated at this margin, the queries it skipped were
            never ranked, so only thresholds at or below it can be evaluated.
    """
    rows = _valid(records)
    if not rows:
        return []
    margins = [r.margin for r in rows]
    knn_ok = [r.knn == r.label for r in rows]
    final_ok = [r.rar == r.label for r in rows]
    thresholds = sorted({0.0, *(m for m in margins if math.isfinite(m))})
    if max_threshold is not None:
        thresholds = sorted({max_threshold, *(t for t in thresholds if t <= max_threshold)})
    points = []
    for t in thresholds:
        skip = [m > t for m in margins]
        n_skip = sum(skip)
        knn_on_skipped = [ok for ok, s in zip(knn_ok, skip, strict=True) if s]
        correct = sum((k if s else f) for k, f, s in zip(knn_ok, final_ok, skip, strict=True))
        points.append(
            GatePoint(
                threshold=round(t, 6),
                skipped=n_skip,
                skip_share=n_skip / len(rows),
                knn_accuracy_skipped=_mean(knn_on_skipped),
                accuracy=correct / len(rows),
            )
        )
    return points


def choose_gate(
    curve: Sequence[GatePoint],
    baseline: float | None,
    *,
    max_loss_points: float = 0.5,
    ranker: bool = True,
    answered: int | None = None,
) -> GateChoice:
    """Pick the threshold that skips the most ranker calls within an accuracy budget.

    Among thresholds whose accuracy is at least ``baseline - max_loss_points / 100``, the
    one with the largest skip share wins; ties go to the higher accuracy, then the higher
    threshold (the more conservative gate).

    Args:
        curve: Output of :func:`gating_curve`.
        baseline: Top-1 accuracy when always ranking.
        max_loss_points: Accuracy the gate may cost, in percentage points.
        ranker: Whether a ranker ran; without one there is nothing to gate.
        answered: How many queries the ranker answered (ranked, or "none of these"), when
            known: with none, every call fell back to the retrieval order, and the curve
            says nothing about what ranking is worth.
    """
    choice = GateChoice(max_loss_points=max_loss_points)
    if not ranker:
        choice.reason = "no ranker configured: there are no ranker calls to save"
        return choice
    if baseline is None or not curve:
        choice.reason = "no query was evaluated"
        return choice
    if answered == 0:
        choice.reason = (
            "the ranker answered no query (every call fell back to the retrieval order: see "
            "the ranking status and its reasons), so there is no ranking to weigh a gate "
            "against; fix the ranker and run again"
        )
        return choice
    floor = baseline - max_loss_points / 100.0 - 1e-12
    feasible = [p for p in curve if p.accuracy >= floor]
    if not feasible:
        choice.reason = "no threshold keeps accuracy within the budget"
        return choice
    best = max(feasible, key=lambda p: (p.skip_share, p.accuracy, p.threshold))
    choice.threshold = best.threshold
    choice.skip_share = best.skip_share
    choice.accuracy = best.accuracy
    choice.loss_points = round((baseline - best.accuracy) * 100.0, 4)
    return choice


def summarize_points(curve: Sequence[GatePoint], limit: int = 101) -> list[dict[str, Any]]:
    """At most ``limit`` evenly spread points of a curve (first and last kept), as dicts."""
    if len(curve) <= limit:
        picks = list(range(len(curve)))
    else:
        picks = sorted({round(i * (len(curve) - 1) / (limit - 1)) for i in range(limit)})
    return [curve[i].model_dump() for i in picks]


def percent(value: float | None, digits: int = 1) -> str:
    """A share as the reports show it (``"87.5%"``; ``"-"`` for no value)."""
    return "-" if value is None else f"{100.0 * value:.{digits}f}%"
