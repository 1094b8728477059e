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


def test_confusion_rows_add_up_with_answers_outside_the_shown_classes() -> None:
    """With more classes than the picture shows, a row lost the answers that went to classes
    not shown (a class of 10 queries drew as 3): they now count in a last column, and the
    colour bar counts in whole queries."""
    from rar_agent.evaluation.plots import OTHER_COLUMN, _confusion_figure

    # 12 classes; "c0".."c10" each confuse 2 of 10 queries with the next; "c11" 5 with "c0"
    confusion = {f"c{i}": {f"c{i}": 8, f"c{(i + 1) % 12}": 2} for i in range(11)}
    confusion["c11"] = {"c11": 5, "c0": 5}
    report = EvalReport(config=EvalConfig(), started_at="2026-12-05T00:00:00+00:00",
                        confusion=confusion)  # fmt: skip
    figure = _confusion_figure(report, limit=4)
    axes, colorbar = figure.axes
    shown = [t.get_text() for t in axes.get_yticklabels()]
    columns = [t.get_text() for t in axes.get_xticklabels()]
    assert len(shown) == 4 and columns == [*shown, OTHER_COLUMN]
    matrix = axes.images[0].get_array()
    for i, label in enumerate(shown):
        assert matrix[i].sum() == sum(confusion[label].values())  # each row whole
    ticks = colorbar.get_yticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)

    few = EvalReport(config=EvalConfig(), started_at="t", confusion={"a": {"a": 3, "b": 1},
                                                                     "b": {"b": 4}})  # fmt: skip
    (axes, _) = _confusion_figure(few).axes
    assert [t.get_text() for t in axes.get_xticklabels()] == ["a", "b"]  # no empty column
