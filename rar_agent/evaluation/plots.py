"""The evaluation's PNG plots: accuracy vs k, the gating curve, the most confused classes.

matplotlib is imported (with the Agg backend) only when plots are drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rar_agent.evaluation.metrics import most_confused, percent
from rar_agent.evaluation.openset_render import plot_promise, plot_roc

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rar_agent.evaluation.schema import EvalReport

__all__ = ["PLOT_FILES", "legend_beside", "write_plots"]

PLOT_FILES = {
    "accuracy": "accuracy_vs_k.png",
    "gating": "gating_curve.png",
    "confusion": "confusion.png",
    "roc": "roc_open_set.png",
    "promise": "promise_open_set.png",
}


def _plot_accuracy(report: EvalReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ks = sorted(report.recall_at_k)
    ax.plot(ks, [100 * report.recall_at_k[k] for k in ks], marker="o", label="recall@k (ceiling)")
    if report.knn_top1 is not None:
        ax.axhline(
            100 * report.knn_top1,
            color="tab:gray",
            linestyle="--",
            label=f"kNN top-1 {percent(report.knn_top1)}",
        )
    if report.ranker and report.final_top1 is not None:
        ax.axhline(
            100 * report.final_top1,
            color="tab:green",
            linestyle="-.",
            label=f"RAR top-1 {percent(report.final_top1)}",
        )
    ax.axvline(report.k, color="tab:orange", alpha=0.4, label=f"k = {report.k}")
    ax.set_xlabel("k (retrieved labels)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(ks)
    ax.set_ylim(0, 101)
    ax.set_title("Accuracy vs k")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def legend_beside(ax: Axes, fontsize: float = 8) -> None:
    """The axes' legend to the right of the plot, top-aligned, off the curves (for curves
    that fill the plot; the figure needs ``layout="constrained"`` to make room for it)."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _plot_gating(report: EvalReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = _gating_figure(report)
    fig.savefig(path)
    plt.close(fig)


def _gating_figure(report: EvalReport) -> Figure:
    """The gating curve: its curves span the whole plot, so the legend stands beside it."""
    import matplotlib.pyplot as plt

    curve = report.gating_curve
    fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=110, layout="constrained")
    xs = [p.threshold for p in curve]
    ax.step(
        xs, [100 * p.skip_share for p in curve], where="post", label="queries skipping the ranker"
    )
    knn = [
        (p.threshold, 100 * p.knn_accuracy_skipped)
        for p in curve
        if p.knn_accuracy_skipped is not None
    ]
    if knn:
        ax.step(*zip(*knn, strict=True), where="post", label="kNN accuracy on skipped")
    if report.ranker:
        ax.step(xs, [100 * p.accuracy for p in curve], where="post", label="top-1 with this gate")
    chosen = report.gate_used if report.gate_used is not None else report.gate_choice.threshold
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", alpha=0.6, linestyle="--", label=f"gate {chosen:.4f}")
    ax.set_xlabel("gate threshold (top-1 minus top-2 score)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 101)
    ax.set_title("Gating curve: skip ranking when margin > threshold")
    ax.grid(alpha=0.3)
    legend_beside(ax)
    return fig


def _plot_confusion(report: EvalReport, path: Path, limit: int = 10) -> None:
    import matplotlib.pyplot as plt

    fig = _confusion_figure(report, limit)
    fig.savefig(path)
    plt.close(fig)


OTHER_COLUMN = "other classes"
"""The confusion picture's last column: answers outside the classes it shows."""


def _confusion_figure(report: EvalReport, limit: int = 10) -> Figure:
    """The most confused classes' rows, each whole: answers outside the shown classes count
    in a last column (:data:`OTHER_COLUMN`), so a row adds up to its class's queries."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    labels = most_confused(report.confusion, limit) or sorted(report.confusion)[:limit]
    rows = [report.confusion.get(t, {}) for t in labels]
    other = [sum(n for p, n in row.items() if p not in labels) for row in rows]
    extra = any(other)
    columns = labels + [OTHER_COLUMN] * extra
    cells = [
        [row.get(p, 0) for p in labels] + [o] * extra for row, o in zip(rows, other, strict=True)
    ]
    matrix = np.array(cells, dtype=float)
    size = 2.5 + 0.55 * len(columns)
    fig, ax = plt.subplots(figsize=(size + 1.5, 2.5 + 0.55 * len(labels)), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, ticks=MaxNLocator(integer=True))
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(columns)):
            if matrix[i, j]:
                colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(
                    j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=colour
                )
    ax.set_title("Most confused classes (final answer)")
    fig.tight_layout()
    return fig


def write_plots(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """Draw the accuracy-vs-k, gating and confusion plots as PNGs; returns their paths.

    Plots with no data (e.g. nothing evaluated) are left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    written: dict[str, Path] = {}
    drawers = {
        "accuracy": (_plot_accuracy, bool(report.recall_at_k)),
        "gating": (_plot_gating, bool(report.gating_curve)),
        "confusion": (_plot_confusion, bool(report.confusion)),
        "roc": (plot_roc, bool(report.open_set and report.open_set.roc)),
        "promise": (plot_promise, bool(report.open_set and report.open_set.promise)),
    }
    for name, (draw, has_data) in drawers.items():
        if has_data:
            path = out_dir / PLOT_FILES[name]
            draw(report, path)
            written[name] = path
    return written
