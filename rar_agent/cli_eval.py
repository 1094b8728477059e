"""``rar-agent eval``: measure kNN vs retrieve-and-rank accuracy on labelled images.

Only typer is imported at module level. The command is defined inside :func:`register` so
this module can reuse ``rar_agent.cli``'s option aliases without a circular import. (No
``from __future__ import annotations`` here: typer reads the annotations at definition time.)
"""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _progress(enabled: bool) -> tuple[Any, Any]:
    """A rich progress display (on stderr, only on a terminal) and its ``(stage, done, total)``."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}
    names = {"memory": "building memory", "queries": "evaluating queries"}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, update


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``rar-agent`` application."""
    from rar_agent.cli import (
        EncoderOpt,
        ModelOpt,
        PretrainedOpt,
        ProgressOpt,
        run_guarded,
        settings_from_options,
    )

    @app.command("eval")
    def eval_command(
        dataset: Annotated[
            str | None,
            typer.Option(
                "--dataset",
                help="One labelled set (ImageFolder DIR or manifest) split by --shots, or "
                "'fashion-mnist' (Debian's dataset-fashion-mnist: memory from train, queries "
                "from test).",
            ),
        ] = None,
        memory_set: Annotated[
            str | None, typer.Option("--memory-set", help="Images to store (DIR or manifest).")
        ] = None,
        test_set: Annotated[
            str | None, typer.Option("--test-set", help="Query images (DIR or manifest).")
        ] = None,
        shots: Annotated[
            int | None, typer.Option("--shots", help="Memory images per class (seeded).")
        ] = None,
        text_memory: Annotated[
            bool,
            typer.Option("--text-memory", help="Memory of class names only (zero-shot)."),
        ] = False,
        limit: Annotated[
            int | None, typer.Option("--limit", help="At most N test images (class-balanced).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of every sample.")] = 0,
        k: Annotated[int, typer.Option("--k", help="Candidates handed to the ranker.")] = 5,
        max_k: Annotated[int, typer.Option("--max-k", help="Largest k of recall@k.")] = 10,
        ranker: Annotated[
            str,
            typer.Option("--ranker", help="none | provider:model | hf:<repo|dir> | local."),
        ] = "none",
        hint: Annotated[
            str | None,
            typer.Option("--hint", help="Domain hint for the ranker, e.g. 'clothing items'."),
        ] = None,
        gate: Annotated[
            str | None,
            typer.Option(
                "--gate",
                help="off, a margin (e.g. 0.05), or auto: pick the margin that skips the most "
                "ranker calls within --max-loss.",
            ),
        ] = None,
        max_loss: Annotated[
            float, typer.Option("--max-loss", help="Accuracy points --gate auto may lose.")
        ] = 0.5,
        open_set: Annotated[
            float | None,
            typer.Option(
                "--open-set",
                help="Hold this share of the classes out of the memory (seeded by --seed) and "
                "measure rejection of their images: AUROC, known top-1 with and without "
                "rejection, share of unknowns rejected, ROC plot.",
            ),
        ] = None,
        reject: Annotated[
            str,
            typer.Option(
                "--reject",
                help="off | auto (the memory's calibrated thresholds + the ranker's 'none of "
                "these') | a top-1 similarity threshold.",
                envvar="RAR_REJECT",
            ),
        ] = "auto",
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 32,
        out: Annotated[
            Path, typer.Option("--out", help="Folder for report.json/.md and the PNG plots.")
        ] = Path("rar-eval"),
        plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw PNG plots.")] = True,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the report as JSON instead of a table.")
        ] = False,
        memory: Annotated[
            Path | None,
            typer.Option("--memory", help="Keep the evaluation memory here (default: temporary)."),
        ] = None,
        clip_model: ModelOpt = None,
        clip_pretrained: PretrainedOpt = None,
        encoder: EncoderOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Evaluate kNN (retrieval) vs retrieve-and-rank: top-1, recall@k, gating, latency.

        With --open-set, also how well unknown categories are rejected.
        """

        def run() -> None:
            from rich.console import Console

            from rar_agent.evaluation import EvalConfig, run_evaluation, summary_table, write_report

            settings = settings_from_options(
                clip_model=clip_model, clip_pretrained=clip_pretrained, encoder=encoder
            )
            spec = settings.encoder_spec
            pretrained = clip_pretrained if settings.encoder else settings.clip_pretrained
            config = EvalConfig(
                dataset=dataset, memory_set=memory_set, test_set=test_set, shots=shots,
                text_memory=text_memory, limit=limit, seed=seed, k=k, max_k=max_k,
                ranker=ranker, hint=hint, gate=gate, max_loss=max_loss, batch_size=batch_size,
                open_set=open_set, reject=reject,
                encoder=spec, pretrained=pretrained, device=settings.device,
                memory=str(memory) if memory else None,
            )  # fmt: skip
            bar, update = _progress(progress)
            with bar:
                report = run_evaluation(config, progress=update)
            files = write_report(report, out, plots=plots)
            if as_json:
                sys.stdout.write(report.model_dump_json(indent=2) + "\n")
            else:
                console = Console()
                console.print(summary_table(report))
                console.print(f"report: {files['markdown']}", highlight=False)
            if report.interrupted:
                Console(stderr=True).print(
                    f"[yellow]interrupted:[/] partial report written to {out}", highlight=False
                )
                raise typer.Exit(130)

        run_guarded(run)
