"""The evaluation's plots keep their legends off the curves."""

from __future__ import annotations

from rar_agent.evaluation import EvalConfig
from rar_agent.evaluation.metrics import GatePoint
from rar_agent.evaluation.schema import EvalReport


def test_gating_legend_stays_off_the_curves() -> None:
    """The gating curve's lines span the plot (the skipped share falls from 100%, the
    accuracy on the skipped rises to it): the legend stands beside the plot, whole."""
    from rar_agent.evaluation.plots import _gating_figure

    points = [
        GatePoint(
            threshold=t / 100,
            skipped=100 - 4 * t,
            skip_share=1 - 0.04 * t,
            knn_accuracy_skipped=min(1.0, 0.75 + 0.05 * t),
            accuracy=0.75,
        )
        for t in range(25)
    ]
    report = EvalReport(config=EvalConfig(), started_at="2026-12-05T00:00:00+00:00",
                        gating_curve=points)  # fmt: skip
    figure = _gating_figure(report)
    figure.canvas.draw()
    (axes,) = figure.axes
    legend = axes.get_legend()
    box, plot, whole = legend.get_window_extent(), axes.get_window_extent(), figure.bbox
    assert [t.get_text() for t in legend.get_texts()] == [
        "queries skipping the ranker",
        "kNN accuracy on skipped",
    ]
    assert not box.overlaps(plot)
    assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
