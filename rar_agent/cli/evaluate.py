"""``rar-agent eval``: measure kNN vs retrieve-and-rank accuracy on labelled images.

Its ``--k``, ``--ranker``, ``--gate``, ``--reject`` and ``--memory`` are its own: an evaluation
states what it measures, so they read no ``RAR_*`` variable, and ``--gate auto`` chooses a
margin here. ``--open-set`` holds classes out of the memory and measures their rejection.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import (
    EXIT_INTERRUPTED,
    GATE_HELP,
    RANKER_HELP,
    REJECT_HELP,
    ClipModelOpt,
    ClipPretrainedOpt,
    EncoderOpt,
    HintOpt,
    JsonOpt,
    ProgressOpt,
    RankerTimeoutOpt,
    error_guard,
    load_settings_encoder,
    print_skipped,
    settings_from_options,
)
from rar_agent.cli.progress import PRIOR_BAR, staged_progress

if TYPE_CHECKING:
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.evaluation import EvalConfig, EvalReport

__all__ = ["evaluate"]

DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="One labelled set (ImageFolder DIR or manifest) split by --shots, or "
        "'fashion-mnist' (Debian's dataset-fashion-mnist: memory from train, queries from test).",
    ),
]
MemorySetOpt = Annotated[
    str | None, typer.Option("--memory-set", help="Images to store (DIR or manifest).")
]
TestSetOpt = Annotated[
    str | None, typer.Option("--test-set", help="Query images (DIR or manifest).")
]
TextMemoryOpt = Annotated[
    bool, typer.Option("--text-memory", help="Memory of class names only (zero-shot).")
]
# the fashion-mnist defaults are evaluation.data's FASHION_MNIST_SHOTS and _QUERIES
EvalShotsOpt = Annotated[
    int | None,
    typer.Option(
        "--shots",
        help="Example images per class, sampled with --seed.",
        show_default="all; 10 with --dataset fashion-mnist; 1 with --stream",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        help="At most N test images (class-balanced).",
        show_default="all; 300 with --dataset fashion-mnist",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every sample.")]
EvalKOpt = Annotated[int, typer.Option("--k", help="Candidates handed to the ranker (1-100).")]
MaxKOpt = Annotated[int, typer.Option("--max-k", help="Largest k of recall@k (1-100).")]
EvalRankerOpt = Annotated[str, typer.Option("--ranker", help=RANKER_HELP)]
EvalGateOpt = Annotated[
    str | None,
    typer.Option(
        "--gate",
        help=f"{GATE_HELP}, or auto: choose the margin that skips the most ranker calls "
        "within --max-loss (kept in --memory for `recognize --gate auto`).",
        show_default="off",
    ),
]
MaxLossOpt = Annotated[
    float, typer.Option("--max-loss", help="Accuracy points --gate auto may lose.")
]
OpenSetOpt = Annotated[
    float | None,
    typer.Option(
        "--open-set",
        help="Hold this share of the classes out of the memory (seeded by --seed) and measure "
        "how their images are rejected: AUROC of the known-ness score, known-class top-1 with "
        "and without rejection, share of unknowns rejected, a ROC plot.",
    ),
]
EvalRejectOpt = Annotated[str, typer.Option("--reject", help=f"{REJECT_HELP}.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Folder for report.json/.md and the PNG plots (an earlier evaluation's files "
        "there are replaced).",
    ),
]
PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="Draw PNG plots.")]
StreamOpt = Annotated[
    bool,
    typer.Option(
        "--stream",
        help="Stream half the test images through recognize-then-teach (every wrong or "
        "unknown answer taught with the true label) and measure what teaching buys: online "
        "top-1, held-out top-1 before/after, a same-budget random control, a curve "
        "(--shots 0 allowed: initial examples per class, default 1).",
    ),
]
StreamShareOpt = Annotated[
    float, typer.Option("--stream-share", help="With --stream: share of test images streamed.")
]
FeatureCacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--feature-cache",
        help="Keep each image's vector in a cache file in this folder, so repeated runs "
        "(other seeds, the same images) encode each image once.",
    ),
]
EvalMemoryOpt = Annotated[
    Path | None,
    typer.Option("--memory", help="Keep the evaluation memory here.", show_default="temporary"),
]


def evaluate(
    dataset: DatasetOpt = None,
    memory_set: MemorySetOpt = None,
    test_set: TestSetOpt = None,
    shots: EvalShotsOpt = None,
    text_memory: TextMemoryOpt = False,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    k: EvalKOpt = 5,
    max_k: MaxKOpt = 10,
    ranker: EvalRankerOpt = "none",
    ranker_timeout: RankerTimeoutOpt = None,
    hint: HintOpt = None,
    gate: EvalGateOpt = None,
    max_loss: MaxLossOpt = 0.5,
    open_set: OpenSetOpt = None,
    reject: EvalRejectOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    out: OutOpt = Path("rar-eval"),
    plots: PlotsOpt = True,
    as_json: JsonOpt = False,
    memory: EvalMemoryOpt = None,
    stream: StreamOpt = False,
    stream_share: StreamShareOpt = 0.5,
    feature_cache: FeatureCacheOpt = None,
    clip_model: ClipModelOpt = None,
    clip_pretrained: ClipPretrainedOpt = None,
    encoder: EncoderOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Evaluate kNN (retrieval) vs retrieve-and-rank: top-1, recall@k, gating, latency.

    With --open-set, also how well images of categories missing from the memory are rejected.
    """
    with error_guard():
        from rar_agent.evaluation import EvalConfig, run_evaluation, write_report
        from rar_agent.evaluation.schema import check_config, check_sets
        from rar_agent.pipeline.prior import prior_dir

        settings = settings_from_options(
            clip_model=clip_model, clip_pretrained=clip_pretrained, encoder=encoder
        )
        config = EvalConfig(
            dataset=dataset, memory_set=memory_set, test_set=test_set, shots=shots,
            text_memory=text_memory, limit=limit, seed=seed, k=k, max_k=max_k,
            ranker=ranker, ranker_timeout=ranker_timeout, hint=hint, gate=gate,
            max_loss=max_loss, batch_size=batch_size,
            device=settings.device, memory=str(memory) if memory else None,
            open_set=open_set, reject=reject,
        )  # fmt: skip
        share = stream_share if stream else None
        check_config(config, stream_share=share)  # before any model
        check_sets(config, stream_share=share)  # lists the files: --shots, --open-set
        with _new_report_folder(out):
            enc = load_settings_encoder(settings)
            config = _recording_encoder(config, enc)
            with _feature_cache(enc, feature_cache) as enc:
                if stream:
                    _stream(config, enc, out, stream_share, plots=plots, as_json=as_json,
                            progress=progress, priors=prior_dir(settings.home))  # fmt: skip
                    return
                bar, update = staged_progress(progress, _EVAL_BARS)
                with bar:
                    report = run_evaluation(
                        config, encoder=enc, progress=update, priors=prior_dir(settings.home)
                    )
            _print_report(report, write_report(report, out, plots=plots), as_json=as_json)
    if report.interrupted:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"[yellow]interrupted:[/] partial report written to {out}", highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED)


_EVAL_BARS = {
    "memory": "building memory",
    "prior": PRIOR_BAR,
    "queries": "evaluating queries",
}
"""The progress bars of an evaluation (:func:`evaluate`)."""


def _recording_encoder(config: EvalConfig, enc: ImageTextEncoder) -> EvalConfig:
    """``config`` naming the encoder as it was resolved, so the report reproduces it."""
    from rar_agent.encoders import spec_of

    loaded = spec_of(enc)
    if loaded is None:
        return config
    return config.model_copy(update={"encoder": loaded.model, "pretrained": loaded.pretrained})


@contextlib.contextmanager
def _feature_cache(enc: ImageTextEncoder, folder: Path | None) -> Iterator[ImageTextEncoder]:
    """``enc``; with ``--feature-cache``, through the cache in ``folder``, saved when the run
    ends (a stopped or failed run too: what was encoded stays encoded)."""
    if folder is None:
        yield enc
        return
    from rar_agent.evaluation.features import CachedEncoder

    cached = CachedEncoder(enc, folder)
    try:
        yield cached
    finally:
        cached.save()


def _print_report(report: EvalReport, files: dict[str, Path], *, as_json: bool) -> None:
    """The report on stdout: its JSON, or a summary table, the queries that failed, the notes
    and the Markdown report's path."""
    from rich.console import Console

    from rar_agent.evaluation import summary_table
    from rar_agent.evaluation.report import failed_queries

    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    Console().print(summary_table(report))
    print_skipped(failed_queries(report))
    for note in report.notes:  # what the report's Run section says, where it is read first
        Console(soft_wrap=True).print(
            note if note.startswith("warning: ") else f"note: {note}", highlight=False, markup=False
        )
    Console(soft_wrap=True).print(  # whole paths, for reading and grepping
        f"report: {files['markdown']}", highlight=False, markup=False
    )


@contextlib.contextmanager
def _new_report_folder(out: Path) -> Iterator[None]:
    """The report folder, made before the run (a wrong --out costs no run) and removed again
    when the run fails with nothing written into it (a ranker that cannot load, Ctrl+C
    while the encoder loads): no empty ``rar-eval/`` is left behind."""
    from rar_agent.evaluation.report import report_folder

    new = not out.exists()
    report_folder(out)
    try:
        yield
    except BaseException:
        if new and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _stream(
    config: EvalConfig,
    enc: ImageTextEncoder,
    out: Path,
    share: float,
    *,
    plots: bool,
    as_json: bool,
    progress: bool,
    priors: Path | None = None,
) -> None:
    """``eval --stream``: run the stream, write report.json (its "stream" object), the plot."""
    import json
    import tempfile

    from rich.console import Console

    from rar_agent.evaluation.stream import run_stream, write_stream_report

    bar, update = staged_progress(
        progress, {"stream": "streaming and teaching", "prior": _EVAL_BARS["prior"]}
    )
    with tempfile.TemporaryDirectory(prefix="rar-stream-") as tmp, bar:
        report = run_stream(config, encoder=enc, workdir=Path(tmp), stream_share=share,
                            progress=update, priors=priors)  # fmt: skip
    files = write_stream_report(report, config, out, plots=plots)
    if as_json:
        sys.stdout.write(json.dumps({"stream": report.model_dump(mode="json")}, indent=2) + "\n")
        return
    console = Console(soft_wrap=True)  # whole lines and paths, for reading and grepping
    for rule, r in report.rules.items():
        console.print(
            f"{rule}: held-out top-1 {r.start_shown} -> {r.heldout_top1_end:.3f}, "
            f"control {r.control_top1:.3f} ({r.vs_control_points:+.1f} pts)",
            highlight=False,
        )
    after = report.next_right_after_teaching
    console.print(
        f"online top-1 {report.online_top1:.3f}; taught {report.taught} of {report.steps}"
        + ("" if after is None else f"; the next image of a class taught right {after:.1%}")
        + f"; report: {files['markdown']}",
        highlight=False,
        markup=False,
    )
