"""Write an evaluation report: JSON, per-query JSONL, Markdown with PNG plots, a rich table.

matplotlib is imported (with the Agg backend) only when plots are drawn.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ConfigError
from rar_agent.evaluation.metrics import summarize_points
from rar_agent.evaluation.openset import open_set_markdown, open_set_rows, plot_roc

if TYPE_CHECKING:
    from rich.table import Table

    from rar_agent.evaluation.runner import EvalReport

__all__ = [
    "PLOT_FILES",
    "command_line",
    "most_confused",
    "render_markdown",
    "summary_table",
    "write_plots",
    "write_report",
]

logger = logging.getLogger(__name__)

PLOT_FILES = {
    "accuracy": "accuracy_vs_k.png",
    "gating": "gating_curve.png",
    "confusion": "confusion.png",
    "roc": "roc_open_set.png",
}


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}%"


def _loss_text(points: float | None) -> str:
    if points is None:
        return "-"
    if points < 0:
        return f"gains {-points:.2f} pt"
    return f"loses {points:.2f} pt"


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


# ---------------------------------------------------------------------------- plots


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
            label=f"kNN top-1 {_pct(report.knn_top1)}",
        )
    if report.ranker and report.final_top1 is not None:
        ax.axhline(
            100 * report.final_top1,
            color="tab:green",
            linestyle="-.",
            label=f"RAR top-1 {_pct(report.final_top1)}",
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


def _plot_gating(report: EvalReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    curve = report.gating_curve
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
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
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_confusion(report: EvalReport, path: Path, limit: int = 10) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    labels = most_confused(report.confusion, limit) or sorted(report.confusion)[:limit]
    matrix = np.array(
        [[report.confusion.get(t, {}).get(p, 0) for p in labels] for t in labels], dtype=float
    )
    size = 2.5 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=110)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(
                    j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=colour
                )
    ax.set_title("Most confused classes (final answer)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    }
    for name, (draw, has_data) in drawers.items():
        if has_data:
            path = out_dir / PLOT_FILES[name]
            draw(report, path)
            written[name] = path
    return written


# ---------------------------------------------------------------------------- text


def command_line(report: EvalReport) -> str:
    """The ``rar-agent eval`` command that reproduces this run."""
    c = report.config
    args = ["rar-agent", "eval"]
    options: list[tuple[str, Any]] = [
        ("--dataset", c.dataset),
        ("--memory-set", c.memory_set),
        ("--test-set", c.test_set),
        ("--shots", c.shots),
        ("--limit", c.limit),
        ("--encoder", c.encoder),
        ("--clip-pretrained", c.pretrained),
        ("--k", c.k),
        ("--max-k", c.max_k),
        ("--ranker", c.ranker or "none"),
        ("--hint", c.hint),
        ("--gate", c.gate),
        ("--open-set", c.open_set),
        ("--reject", None if c.reject == "auto" else c.reject),
        ("--seed", c.seed),
    ]
    if c.gate == "auto":
        options.append(("--max-loss", c.max_loss))
    for flag, value in options:
        if value is not None:
            args += [flag, str(value)]
    if c.text_memory:
        args.append("--text-memory")
    return shlex.join(args)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _summary_rows(report: EvalReport) -> list[tuple[str, str]]:
    rows = [
        ("queries evaluated", f"{report.queries_evaluated} of {report.queries_planned}"),
        (
            "memory",
            f"{report.memory.get('entries', 0)} {report.memory.get('kind', '')} entries, "
            f"{report.memory.get('labels', 0)} labels",
        ),
        ("encoder", report.encoder or "-"),
        ("ranker", report.ranker or "none"),
        ("kNN top-1 (retrieval; the paper's CLIP+KNN)", _pct(report.knn_top1)),
    ]
    shown = {3, 5, 10, max(report.recall_at_k, default=1)} - {1}
    for k in sorted(shown & set(report.recall_at_k)):
        rows.append((f"recall@{k}", _pct(report.recall_at_k[k])))
    if report.ranker:
        o = report.outcomes
        rows += [
            (f"RAR top-1 (k={report.k})", _pct(report.final_top1)),
            (
                "ranking helped / hurt / unchanged",
                f"{o.helped} / {o.hurt} / {o.unchanged} (+{o.changed_still_wrong} changed, wrong)",
            ),
            ("ranker calls", f"{report.ranker_calls} ({report.model_calls} model calls)"),
        ]
        if report.tokens:
            rows.append(
                (
                    "tokens (in / out)",
                    f"{report.tokens.get('input_tokens', 0)} / "
                    f"{report.tokens.get('output_tokens', 0)}",
                )
            )
    if report.gate_used is not None:
        rows.append(
            (
                f"top-1 with gate {report.gate_used:.4f}",
                f"{_pct(report.gated_top1)}, skips {_pct(report.gate_skip_share)}",
            )
        )
    choice = report.gate_choice
    if choice.threshold is not None:
        rows.append(
            (
                "auto gate",
                f"{choice.threshold:.4f}: skips {_pct(choice.skip_share)}, "
                + _loss_text(choice.loss_points),
            )
        )
    rows += open_set_rows(report)
    if report.status:
        rows.append(("ranking status", ", ".join(f"{k} {v}" for k, v in report.status.items())))
    for stage in ("load", "encode", "retrieve", "reject", "rank"):
        lat = report.latency_ms.get(stage)
        if lat:
            rows.append((f"{stage} ms p50 / p95", f"{lat['p50']:.2f} / {lat['p95']:.2f}"))
    if report.interrupted:
        rows.append(("status", "INTERRUPTED: partial results"))
    return rows


def summary_table(report: EvalReport) -> Table:
    """The headline figures as a rich table for the terminal."""
    from rich.table import Table

    title = "Evaluation" + (" [bold red](interrupted)[/]" if report.interrupted else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for name, value in _summary_rows(report):
        table.add_row(name, value)
    return table


def render_markdown(report: EvalReport, plots: dict[str, Path] | None = None) -> str:
    """The report as Markdown (plots referenced by file name, next to the report)."""
    plots = plots or {}
    lines = ["# rar-agent evaluation", ""]
    if report.interrupted:
        lines += [
            "> **Interrupted**: the figures cover only the queries measured before Ctrl-C.",
            "",
        ]
    lines += ["Reproduce with:", "", "```bash", command_line(report), "```", ""]
    lines += _md_table(["metric", "value"], _summary_rows(report))
    if report.recall_at_k:
        ks = sorted(report.recall_at_k)
        lines += ["## Recall@k (the ceiling any ranker of k candidates can reach)", ""]
        lines += _md_table(
            ["k", *map(str, ks)], [["recall", *(_pct(report.recall_at_k[k]) for k in ks)]]
        )
    if "accuracy" in plots:
        lines += [f"![accuracy vs k]({plots['accuracy'].name})", ""]
    lines += ["## Gating", ""]
    choice = report.gate_choice
    if choice.threshold is not None:
        lines += [
            f"`--gate auto` (budget {choice.max_loss_points} pt) picks **{choice.threshold:.4f}**: "
            f"skips {_pct(choice.skip_share)} of ranker calls at top-1 {_pct(choice.accuracy)} "
            f"({_loss_text(choice.loss_points)} vs always ranking). Use it with "
            f"`RAR_GATE={choice.threshold:.4f}` or `--gate {choice.threshold:.4f}`.",
            "",
        ]
    elif choice.reason:
        lines += [f"Automatic gate: {choice.reason}.", ""]
    if report.gating_curve:
        points = summarize_points(report.gating_curve, limit=11)
        lines += _md_table(
            ["threshold", "skips ranker", "kNN top-1 on skipped", "top-1 with gate"],
            [
                (f"{p['threshold']:.4f}", _pct(p["skip_share"]),
                 _pct(p["knn_accuracy_skipped"]), _pct(p["accuracy"]))
                for p in points
            ],
        )  # fmt: skip
    if "gating" in plots:
        lines += [f"![gating curve]({plots['gating'].name})", ""]
    lines += open_set_markdown(report, plots)
    lines += ["## Per class", ""]
    lines += _md_table(
        ["class", "n", "kNN top-1", "final top-1"],
        [(label, s.n, _pct(s.knn), _pct(s.final)) for label, s in report.per_class.items()],
    )
    if "confusion" in plots:
        lines += [f"![confusion matrix]({plots['confusion'].name})", ""]
    if report.latency_ms:
        lines += ["## Latency per image (ms)", ""]
        lines += _md_table(
            ["stage", "p50", "p95", "mean", "n"],
            [(s, v["p50"], v["p95"], v["mean"], int(v["n"])) for s, v in report.latency_ms.items()],
        )
    lines += ["## Run", ""]
    build = report.memory
    lines += [
        f"- memory build: {build.get('added', 0)} entries added in "
        f"{build.get('build_seconds', 0)} s ({build.get('items_per_s') or '-'} per s), "
        f"{build.get('failed', 0)} failed",
        f"- total time: {report.seconds:.1f} s; started {report.started_at}",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in report.machine.items()),
    ]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def write_report(report: EvalReport, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``predictions.jsonl``, ``report.md`` and the PNGs into a folder.

    Returns:
        Paths of the written files by kind (``json``, ``predictions``, ``markdown`` and
        the plot names).

    Raises:
        ConfigError: The folder cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "json": out / "report.json",
            "predictions": out / "predictions.jsonl",
            "markdown": out / "report.md",
        }
        data = report.model_dump(mode="json")
        files["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
        with files["predictions"].open("w", encoding="utf-8") as fh:
            for record in report.records:
                fh.write(record.model_dump_json() + "\n")
        drawn = write_plots(report, out) if plots else {}
        files["markdown"].write_text(render_markdown(report, drawn), encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the report to {out}: {e.strerror or e}") from e
    return {**files, **drawn}
