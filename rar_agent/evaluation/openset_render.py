"""The open-set part of an evaluation report: summary rows, the ROC plot, the Markdown section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rar_agent.evaluation.metrics import percent

if TYPE_CHECKING:
    from rar_agent.evaluation.schema import EvalReport

__all__ = ["open_set_markdown", "open_set_rows", "plot_promise", "plot_roc", "promise_rows"]


def open_set_rows(report: EvalReport) -> list[tuple[str, str]]:
    """Headline open-set rows for the summary table (none for a closed-set run)."""
    o = report.open_set
    if o is None:
        return []
    auroc = "-" if o.auroc is None else f"{o.auroc:.3f}"
    raw = "-" if o.auroc_similarity is None else f"{o.auroc_similarity:.3f}"
    drop = "-" if o.top1_drop_points is None else f"{o.top1_drop_points:.2f} pt"
    promised = next((p for p in o.promise if _same(p.alpha, _alpha(report))), None)
    rows = [
        ("open set: queries known / unknown", f"{o.known_queries} / {o.unknown_queries}"),
        ("AUROC known-ness (raw statistic)", f"{auroc} ({raw})"),
        (
            f"known top-1 without / with --reject {report.config.reject}",
            f"{percent(o.known_top1)} / {percent(o.known_top1_rejecting)} (drop {drop})",
        ),
        ("unknown-class queries rejected", percent(o.unknown_rejected)),
        ("known-class queries rejected", percent(o.known_rejected)),
    ]
    if promised is not None:
        rows.append(
            (
                f"promise: at most {percent(promised.alpha)} of knowns rejected",
                f"delivered {percent(promised.known_rejected)}"
                + _cannot(promised.calibrated, report)
                + (f" ({PRIOR_PROMISE})" if _by_prior(report) else ""),
            )
        )
    for p in o.promise:
        rows.append(
            (
                f"auto:{p.alpha:g} promised / delivered",
                f"{percent(p.alpha)} / {percent(p.known_rejected)} of knowns rejected; "
                f"unknowns {percent(p.unknown_rejected)}" + _cannot(p.calibrated, report),
            )
        )
    return rows


def _alpha(report: EvalReport) -> float | None:
    """The ALPHA the run's ``--reject`` promised: None for ``off`` or a fixed threshold."""
    from rar_agent.config import parse_reject

    setting = parse_reject(report.config.reject)
    return setting.alpha if setting.mode == "auto" else None


def _same(a: float, b: float | None) -> bool:
    return b is not None and abs(a - b) < 1e-9


PRIOR_PROMISE = (
    "threshold from the encoder prior, not from this memory: kept on average over memories, "
    "one memory can miss it by far"
)
"""What a promise kept by the encoder prior means (docs/eval/open-set, the encoder prior)."""


def _by_prior(report: EvalReport) -> bool:
    """Whether the encoder prior, not the memory's own examples, set the run's thresholds."""
    return (report.calibration or {}).get("method") == "prior"


def _cannot(calibrated: float | None, report: EvalReport) -> str:
    if calibrated is None or calibrated >= 1.0:
        return ""
    return f" ({percent(1.0 - calibrated)} of queries met 'cannot calibrate': not rejected)"


def promise_rows(report: EvalReport) -> list[tuple[str, str, str, str]]:
    """``(ALPHA, known rejected, unknown rejected, with a threshold)`` per promised ALPHA."""
    o = report.open_set
    if o is None:
        return []
    return [
        (
            percent(p.alpha),
            percent(p.known_rejected),
            percent(p.unknown_rejected),
            percent(p.calibrated),
        )
        for p in o.promise
    ]


def plot_promise(report: EvalReport, path: Path) -> None:
    """Delivered vs promised share of known-class queries rejected, over ALPHA."""
    import matplotlib.pyplot as plt

    o = report.open_set
    assert o is not None
    alphas = [100 * p.alpha for p in o.promise]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    ax.plot(alphas, alphas, color="tab:gray", linestyle=":", label="promised (ALPHA)")
    ax.plot(
        alphas,
        [100 * (p.known_rejected or 0.0) for p in o.promise],
        marker="o",
        label="known-class queries rejected (delivered)",
    )
    ax.plot(
        alphas,
        [100 * (p.unknown_rejected or 0.0) for p in o.promise],
        marker="s",
        label="unknown-class queries rejected",
    )
    ax.set_xscale("log")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.set_xlabel("ALPHA in --reject auto:ALPHA (%)")
    ax.set_ylabel("queries rejected (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Open set: promised vs delivered")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        "positives, held-out-class queries negatives. The known-ness score is the memory's "
        "calibrated statistic (relative Mahalanobis in its principal subspace; the support, "
        "the mean similarity of the top category's 2 closest entries, where it has none) "
        "minus the memory's conformal threshold for the query"
        + ("" if o.calibrated else " (the memory cannot calibrate: raw statistic)")
        + ".",
        "",
    ]
    if _by_prior(report):
        lines += [
            f"Calibration: set by {(report.calibration or {}).get('source')}. Its promise is "
            "kept on average over memories: one memory can miss it by far.",
            "",
        ]
    elif report.calibration:
        cal = report.calibration
        lines += [
            f"Calibration: {cal.get('method')}, {cal.get('standins')} leave-one-out stand-in "
            f"queries over {cal.get('categories')} categories; smallest ALPHA it supports "
            f"{cal.get('smallest_alpha')}"
            + (f"; {cal['cannot_calibrate']}" if cal.get("cannot_calibrate") else ""),
            "",
        ]
    if o.promise:
        lines += [
            "Promise of `--reject auto:ALPHA` (at most ALPHA of known-class queries rejected) "
            "and what this run delivered:",
            "",
            "| ALPHA (promised) | known rejected (delivered) | unknown rejected | "
            "queries with a threshold |",
            "|---|---|---|---|",
            *(f"| {a} | {k} | {u} | {c} |" for a, k, u, c in promise_rows(report)),
            "",
        ]
        if "promise" in plots:
            lines += [f"![promised vs delivered]({plots['promise'].name})", ""]
    if o.ranker_none_known or o.ranker_none_unknown:
        lines += [
            f"The ranker answered 'none of these' for {o.ranker_none_unknown} unknown and "
            f"{o.ranker_none_known} known queries.",
            "",
        ]
    if "roc" in plots:
        lines += [f"![ROC curve]({plots['roc'].name})", ""]
    return lines
