"""Accuracy harness (kNN vs RAR, recall@k, gating): see :mod:`rar_agent.evaluation`.

This module re-exports the public names so ``from rar_agent.eval import run_evaluation`` works.
"""

from rar_agent.evaluation import (
    FASHION_MNIST,
    EvalConfig,
    EvalReport,
    QueryRecord,
    choose_gate,
    gating_curve,
    recall_at_k,
    render_markdown,
    run_evaluation,
    summary_table,
    write_report,
)

__all__ = [
    "FASHION_MNIST",
    "EvalConfig",
    "EvalReport",
    "QueryRecord",
    "choose_gate",
    "gating_curve",
    "recall_at_k",
    "render_markdown",
    "run_evaluation",
    "summary_table",
    "write_report",
]
