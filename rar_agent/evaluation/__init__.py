"""The evaluation harness: kNN vs retrieve-and-rank accuracy, recall@k, gating, latency.

``run_evaluation(EvalConfig(...))`` measures; ``write_report(report, out_dir)`` writes JSON,
Markdown and PNG plots. ``rar-agent eval`` is the command-line front end.
"""

from rar_agent.evaluation.data import FASHION_MNIST, EvalSets, resolve_sets
from rar_agent.evaluation.metrics import (
    GateChoice,
    GatePoint,
    Outcomes,
    QueryRecord,
    choose_gate,
    gating_curve,
    outcomes,
    recall_at_k,
)
from rar_agent.evaluation.report import render_markdown, summary_table, write_report
from rar_agent.evaluation.runner import run_evaluation
from rar_agent.evaluation.schema import EvalConfig, EvalReport, build_report

__all__ = [
    "FASHION_MNIST",
    "EvalConfig",
    "EvalReport",
    "EvalSets",
    "GateChoice",
    "GatePoint",
    "Outcomes",
    "QueryRecord",
    "build_report",
    "choose_gate",
    "gating_curve",
    "outcomes",
    "recall_at_k",
    "render_markdown",
    "resolve_sets",
    "run_evaluation",
    "summary_table",
    "write_report",
]
