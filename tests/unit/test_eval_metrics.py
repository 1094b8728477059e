"""Evaluation metrics on hand-made query records with known answers."""

from __future__ import annotations

import io
import math

import pytest

from rar_agent.evaluation import metrics
from rar_agent.evaluation.metrics import QueryRecord, most_confused


def rec(
    label: str,
    candidates: list[str],
    scores: list[float] | None = None,
    ranked: list[str] | None = None,
    *,
    k: int = 3,
    status: str | None = None,
    error: str | None = None,
    timings: dict[str, float] | None = None,
) -> QueryRecord:
    return QueryRecord(
        source=f"{label}.png",
        label=label,
        candidates=candidates,
        scores=scores if scores is not None else [0.9 - 0.1 * i for i in range(len(candidates))],
        k=k,
        ranked=ranked,
        status=status or ("ranked" if ranked else "disabled"),
        timings_ms=timings or {},
        error=error,
    )


def test_recall_at_k_counts_the_true_label_within_the_first_k() -> None:
    records = [
        rec("a", ["a", "b", "c"]),  # position 0
        rec("b", ["a", "b", "c"]),  # position 1
        rec("c", ["a", "b", "c"]),  # position 2
        rec("d", ["a", "b", "c"]),  # absent
        rec("x", [], error="unreadable"),  # ignored
    ]
    assert metrics.recall_at_k(records, 4) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 0.75}
    assert metrics.top1(records) == 0.25
    assert metrics.recall_at_k([], 3) == {} and metrics.top1([]) is None


def test_helped_hurt_unchanged_and_final_accuracy() -> None:
    records = [
        rec("a", ["b", "a"], ranked=["a", "b"]),  # helped
        rec("a", ["a", "b"], ranked=["b", "a"]),  # hurt
        rec("a", ["a", "b"], ranked=["a", "b"]),  # unchanged (right)
        rec("a", ["b", "c"], ranked=None),  # unchanged (not ranked, wrong)
        rec("a", ["b", "c", "a"], ranked=["c", "b", "a"]),  # changed, still wrong
    ]
    o = metrics.outcomes(records)
    assert (o.helped, o.hurt, o.unchanged, o.changed_still_wrong) == (1, 1, 2, 1)
    assert metrics.top1(records) == pytest.approx(2 / 5)
    assert metrics.top1(records, final=True) == pytest.approx(2 / 5)
    assert metrics.status_counts(records) == {"disabled": 1, "ranked": 4}


def test_margin_uses_only_the_k_candidates_handed_to_the_ranker() -> None:
    r = rec("a", ["a", "b", "c"], scores=[0.9, 0.7, 0.85], k=2)
    assert r.margin == pytest.approx(0.2)
    assert rec("a", ["a", "b", "c"], scores=[0.9, 0.7, 0.85], k=3).margin == pytest.approx(0.05)
    assert math.isinf(rec("a", ["a"], scores=[0.9]).margin)
    assert math.isinf(rec("a", ["a", "b"], scores=[0.9, 0.1], k=1).margin)


def _gate_records() -> list[QueryRecord]:
    """Margins 0.05, 0.10, 0.20, 0.30; retrieval right on the confident half only.

    q1 margin .05: kNN wrong, ranked right   q2 margin .10: kNN wrong, ranked right
    q3 margin .20: kNN right, ranked right   q4 margin .30: kNN right, ranked wrong
    """
    return [
        rec("a", ["b", "a"], [0.80, 0.75], ["a", "b"]),
        rec("a", ["b", "a"], [0.80, 0.70], ["a", "b"]),
        rec("a", ["a", "b"], [0.80, 0.60], ["a", "b"]),
        rec("a", ["a", "b"], [0.80, 0.50], ["b", "a"]),
    ]


def test_gating_curve_has_known_points() -> None:
    curve = metrics.gating_curve(_gate_records())
    got = [(p.threshold, p.skipped, p.knn_accuracy_skipped, p.accuracy) for p in curve]
    assert [t for t, *_ in got] == pytest.approx([0.0, 0.05, 0.10, 0.20, 0.30])
    # threshold 0: all four skipped -> kNN answers: 2 of 4 right
    # 0.05: q2..q4 skipped (kNN 2/3), q1 ranked right -> 3/4
    # 0.10: q3, q4 skipped (kNN 2/2), q1, q2 ranked right -> 4/4
    # 0.20: q4 skipped (kNN right), q1..q3 ranked right -> 4/4
    # 0.30: none skipped -> always ranking: 3/4
    assert [g[1:] for g in got] == [
        (4, 0.5, 0.5),
        (3, pytest.approx(2 / 3), 0.75),
        (2, 1.0, 1.0),
        (1, 1.0, 1.0),
        (0, None, 0.75),
    ]
    assert [p.skip_share for p in curve] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_auto_gate_skips_the_most_calls_within_the_budget() -> None:
    curve = metrics.gating_curve(_gate_records())
    baseline = metrics.top1(_gate_records(), final=True)
    assert baseline == 0.75
    choice = metrics.choose_gate(curve, baseline, max_loss_points=0.5)
    # 0.05 (75%, no loss) skips 3 of 4; threshold 0 (50%) loses 25 points
    assert choice.threshold == pytest.approx(0.05)
    assert choice.skip_share == 0.75 and choice.loss_points == 0.0
    loose = metrics.choose_gate(curve, baseline, max_loss_points=25.0)
    assert loose.threshold == 0.0 and loose.skip_share == 1.0 and loose.loss_points == 25.0
    none = metrics.choose_gate(curve, baseline, ranker=False)
    assert none.threshold is None and "no ranker" in (none.reason or "")
    assert metrics.choose_gate([], None).reason == "no query was evaluated"


def test_auto_gate_prefers_higher_accuracy_on_equal_skip_share() -> None:
    curve = [
        metrics.GatePoint(
            threshold=0.1, skipped=1, skip_share=0.5, knn_accuracy_skipped=1, accuracy=0.5
        ),
        metrics.GatePoint(
            threshold=0.2, skipped=1, skip_share=0.5, knn_accuracy_skipped=1, accuracy=0.9
        ),
    ]
    assert metrics.choose_gate(curve, 0.9, max_loss_points=50).threshold == 0.2


def test_fixed_gate_limits_the_curve_to_thresholds_it_can_evaluate() -> None:
    curve = metrics.gating_curve(_gate_records(), max_threshold=0.15)
    assert [p.threshold for p in curve] == pytest.approx([0.0, 0.05, 0.10, 0.15])


def test_per_class_confusion_and_latency() -> None:
    records = [
        rec("a", ["a", "b"], timings={"encode": 1.0}),
        rec("a", ["b", "a"], ranked=["a", "b"], timings={"encode": 3.0}),
        rec("b", ["a", "b"], timings={"encode": 5.0, "rank": 10.0}),
        rec("c", ["b", "c"], timings={"encode": 7.0}),
    ]
    per = metrics.per_class(records)
    assert per["a"].n == 2 and per["a"].knn == 0.5 and per["a"].final == 1.0
    assert per["b"].knn == 0.0 and per["c"].final == 0.0
    assert metrics.confusion(records) == {"a": {"a": 2}, "b": {"a": 1}, "c": {"b": 1}}
    assert metrics.confusion(records, final=False)["a"] == {"a": 1, "b": 1}
    lat = metrics.latency_summary(records)
    assert lat["encode"]["p50"] == 4.0 and lat["encode"]["n"] == 4
    assert lat["encode"]["p95"] == pytest.approx(6.7)
    assert lat["rank"] == {"p50": 10.0, "p95": 10.0, "mean": 10.0, "n": 1}
    # b and a are each in two errors... b->a (1) and c->b (1): b is involved twice
    assert most_confused(metrics.confusion(records)) == ["b", "a", "c"]


def test_summarize_points_keeps_ends_and_caps_length() -> None:
    curve = [
        metrics.GatePoint(
            threshold=i / 1000, skipped=0, skip_share=0, knn_accuracy_skipped=None, accuracy=0
        )
        for i in range(500)
    ]
    points = metrics.summarize_points(curve, limit=11)
    assert len(points) == 11
    assert points[0]["threshold"] == 0 and points[-1]["threshold"] == 0.499


def test_no_gate_is_learnt_from_a_ranker_that_never_answered() -> None:
    """Every call fell back (a dead endpoint): 'skip it always, lose nothing' is no finding."""
    from rar_agent.evaluation.schema import EvalConfig, build_report

    records = [
        rec(r.label, r.candidates, r.scores, ranked=r.candidates, status="fallback")
        for r in _gate_records()
    ]
    config = EvalConfig(dataset="x", ranker="openai:gpt-4o-mini", gate="auto")
    report = build_report(config, records, started_at="t", ranker_on=True)
    choice = report.gate_choice
    assert choice.threshold is None and report.gate_used is None
    assert "the ranker answered no query" in (choice.reason or "")
    assert "fell back" in (choice.reason or "")
    from rar_agent.evaluation.report import summary_table

    report.ranker = "openai:gpt-4o-mini"
    table = summary_table(report)
    rows = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert str(rows["auto gate"]).startswith("none: the ranker answered no query")

    answered = [*records[:3], rec("a", ["a", "b"], ranked=["a", "b"], status="ranked")]
    assert build_report(config, answered, started_at="t", ranker_on=True).gate_used is not None


def test_the_summary_shows_a_long_encoder_name_whole_at_80_columns() -> None:
    """A walk: `rar-agent eval --dataset fashion-mnist` on an 80-column terminal printed
    the encoder as 'effnet:efficientnet-lite0/imagenet-f…', cut where it names its weights;
    a value too long for its cell is folded onto the next line, whole."""
    from rich.console import Console

    from rar_agent.evaluation.report import summary_table
    from rar_agent.evaluation.schema import EvalConfig, EvalReport

    name = "effnet:efficientnet-lite0/imagenet-fc:999755eaea0b74f7"
    report = EvalReport(config=EvalConfig(), started_at="t", encoder=name)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(summary_table(report))
    shown = console.export_text()
    assert "…" not in shown
    cells = "".join(line.split("│")[2].strip() for line in shown.splitlines() if "│" in line)
    assert name in cells, shown


def test_a_closed_set_run_says_how_many_queries_it_answered_unknown() -> None:
    """`eval` runs with --reject auto by default and rejected queries silently: the report
    counted them with their closest category and never said 7% of the answers would be
    "unknown". It now says how many, and the top-1 counting them wrong."""
    from rar_agent.evaluation.report import render_markdown, summary_table
    from rar_agent.evaluation.schema import EvalConfig, build_report

    records = [rec("a", ["a", "b"]), rec("b", ["b", "a"]), rec("a", ["b", "a"])]
    records += [rec("b", ["b", "a"]).model_copy(update={"rejected": True})]
    report = build_report(EvalConfig(dataset="x"), records, started_at="t", ranker_on=False)
    assert report.final_top1 == 0.75  # the paper's measure: the closest category counts
    assert report.rejected_share == 0.25
    assert report.rejecting_top1 == 0.5
    table = summary_table(report)
    rows = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert rows["answered unknown (--reject auto)"].startswith("25.0% (1 of 4; the top-1 rows")
    assert rows["kNN top-1 with --reject auto (unknown = wrong)"] == "50.0%"
    assert "| answered unknown (--reject auto) | 25.0% (1 of 4;" in render_markdown(report)

    off = build_report(EvalConfig(dataset="x", reject="off"), records[:3], started_at="t",
                       ranker_on=False)  # fmt: skip
    table = summary_table(off)
    assert not any("unknown" in str(c) for c in table.columns[0].cells)


def test_a_report_names_the_queries_it_could_not_evaluate_and_why_none_was_rejected() -> None:
    """'17 of 18' with 'error 1' among the ranking statuses was all the report said of a
    corrupt test image; and a memory that cannot calibrate showed '0.0% answered unknown'
    as if the check had run."""
    from rar_agent.evaluation.report import failed_queries, render_markdown, summary_table
    from rar_agent.evaluation.schema import EvalConfig, build_report

    broken = rec("b", [], error="b/3.png could not be decoded, it may be truncated")
    records = [rec("a", ["a", "b"]), rec("b", ["b", "a"]), broken]
    report = build_report(EvalConfig(dataset="x"), records, started_at="t", ranker_on=False)
    assert failed_queries(report) == [
        ("b.png", "b/3.png could not be decoded, it may be truncated")
    ]
    markdown = render_markdown(report)
    assert "## Queries that could not be evaluated\n\n- b.png: b/3.png could not be decoded" in (
        markdown
    )
    report.calibration = {"cannot_calibrate": "cannot calibrate: only 2 categories have 2"}
    table = summary_table(report)
    rows = dict(zip(table.columns[0].cells, table.columns[1].cells, strict=True))
    assert rows["answered unknown (--reject auto)"] == (
        "none: the memory cannot calibrate: only 2 categories have 2"
    )
    assert not any("unknown = wrong" in str(c) for c in table.columns[0].cells)
