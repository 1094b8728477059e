"""Open-set metrics: does the known-ness score tell held-out classes from known ones?

Known-class queries are positives, unknown-class queries negatives. The known-ness score is
the top category's support (mean similarity of its closest entries, up to 2) minus the
memory's calibrated threshold for that category (or the raw support when the memory has no
calibration). Pure functions over query records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from rar_agent.evaluation.metrics import QueryRecord, percent

if TYPE_CHECKING:
    from rar_agent.evaluation.schema import EvalReport

__all__ = [
    "OpenSetReport",
    "RocPoint",
    "auroc",
    "known_score",
    "open_set_markdown",
    "open_set_report",
    "open_set_rows",
    "plot_roc",
    "roc_curve",
]


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
        default=None, description="AUROC of the raw support (no per-category threshold)."
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
        out.known_top1 = sum(r.rar == r.label for r in known) / len(known)
        hits = sum(r.rar == r.label and not r.rejected for r in known)
        out.known_top1_rejecting = hits / len(known)
        out.top1_drop_points = round(100.0 * (out.known_top1 - out.known_top1_rejecting), 4)
        out.known_rejected = sum(r.rejected for r in known) / len(known)
    if unknown:
        out.unknown_rejected = sum(r.rejected for r in unknown) / len(unknown)
    return out


# ---------------------------------------------------------------------------- rendering


def open_set_rows(report: EvalReport) -> list[tuple[str, str]]:
    """Headline open-set rows for the summary table (none for a closed-set run)."""
    o = report.open_set
    if o is None:
        return []
    auroc = "-" if o.auroc is None else f"{o.auroc:.3f}"
    raw = "-" if o.auroc_similarity is None else f"{o.auroc_similarity:.3f}"
    drop = "-" if o.top1_drop_points is None else f"{o.top1_drop_points:.2f} pt"
    return [
        ("open set: queries known / unknown", f"{o.known_queries} / {o.unknown_queries}"),
        ("AUROC known-ness (raw support)", f"{auroc} ({raw})"),
        (
            f"known top-1 without / with --reject {report.config.reject}",
            f"{percent(o.known_top1)} / {percent(o.known_top1_rejecting)} (drop {drop})",
        ),
        ("unknown-class queries rejected", percent(o.unknown_rejected)),
        ("known-class queries rejected", percent(o.known_rejected)),
    ]


def plot_roc(report: EvalReport, path: Path) -> None:
    """Draw the ROC curve of the known-ness score with the run's operating point."""
    import matplotlib.pyplot as plt

    o = report.open_set
    assert o is not None
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    ax.plot(
        [100 * p.known_rejected for p in o.roc],
        [100 * p.unknown_rejected for p in o.roc],
        label=f"known-ness score (AUROC {o.auroc:.3f})" if o.auroc is not None else "score",
    )
    ax.plot([0, 100], [0, 100], color="tab:gray", linestyle=":", label="chance")
    if o.known_rejected is not None and o.unknown_rejected is not None:
        ax.scatter(
            [100 * o.known_rejected],
            [100 * o.unknown_rejected],
            color="tab:red",
            zorder=3,
            label=f"--reject {report.config.reject}",
        )
    ax.set_xlabel("known-class queries rejected (%)")
    ax.set_ylabel("unknown-class queries rejected (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_title("Open set: rejecting unknown categories")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def open_set_markdown(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    """The report's "Open set" section (empty for a closed-set run)."""
    o = report.open_set
    if o is None:
        return []
    lines = ["## Open set", ""]
    lines += [
        f"Held out of the memory: {', '.join(o.unknown_classes) or '-'}. Known-class queries are "
        "positives, held-out-class queries negatives. The known-ness score is the top "
        "category's support (mean similarity of its 2 closest entries) minus the memory's "
        "calibrated threshold for that category"
        + ("" if o.calibrated else " (the memory is not calibrated: raw support)")
        + ".",
        "",
    ]
    if report.calibration:
        cal = report.calibration
        lines += [
            f"Calibration: {cal.get('method')}, {cal.get('standins')} stand-in queries "
            f"({cal.get('leave_one_out')} leave-one-out, {cal.get('views')} augmented views), "
            f"offset {cal.get('offset')}" + (f"; {cal['reason']}" if cal.get("reason") else ""),
            "",
        ]
    if o.ranker_none_known or o.ranker_none_unknown:
        lines += [
            f"The ranker answered 'none of these' for {o.ranker_none_unknown} unknown and "
            f"{o.ranker_none_known} known queries.",
            "",
        ]
    if "roc" in plots:
        lines += [f"![ROC curve]({plots['roc'].name})", ""]
    return lines
