"""``rar-agent finetune-data``: ranking fine-tuning conversations from a labelled image set.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from rar_agent.cli.options import (
    ENCODER,
    EXIT_INPUT_FAILED,
    EXIT_USAGE,
    STORE,
    FromFolderOpt,
    FromManifestOpt,
    HintOpt,
    JsonOpt,
    ProgressOpt,
    load_settings_encoder,
    print_error,
    print_note,
    print_skipped,
    settings_command,
)
from rar_agent.cli.progress import progress_bar

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.finetune_data import FinetuneSummary

__all__ = ["HELP", "finetune_data"]

HELP = (
    "Write ranking conversations (true label first) for fine-tuning a ranker.\n\n"
    "For each labelled image the memory is searched with the image's own entry excluded; "
    "windows of k retrieved labels that contain the true label become conversations whose "
    "prompt is exactly the ranking chain's. Build the memory first, e.g. with "
    "`rar-agent memory build --from-folder DIR`."
)

OutOpt = Annotated[Path, typer.Option("--out", help="Output file (.json or .jsonl).")]
FormatOpt = Annotated[
    str, typer.Option("--format", help="llava (ShareGPT JSON) or openai (chat JSONL).")
]
KOpt = Annotated[  # 100: config.MAX_K (this module imports no library module at import)
    int,
    typer.Option(
        "--k",
        min=2,
        max=100,
        help="Candidates per conversation (2-100: the ranker's --k at inference).",
    ),
]
TopNOpt = Annotated[int, typer.Option("--top-n", min=1, help="Labels retrieved per image.")]
WindowsOpt = Annotated[int, typer.Option("--windows", min=1, help="Conversations per image.")]
ShuffleOpt = Annotated[
    bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle candidates in the prompt.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for windows and shuffling.")]
KindOpt = Annotated[
    Literal["auto", "image", "text"],
    typer.Option("--kind", help="Memory side: auto, image or text."),
]
MaxPerClassOpt = Annotated[
    int | None, typer.Option("--max-per-class", min=1, help="Cap conversations per class.")
]
DedupOpt = Annotated[
    bool, typer.Option("--dedup/--no-dedup", help="Skip repeated images/conversations.")
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Go on from a build of the same --out that stopped: the images it finished are "
        "kept and skipped (same images and options; none stopped: start from the beginning).",
    ),
]
ImageRootOpt = Annotated[
    Path | None, typer.Option("--image-root", help="LLaVA: image paths relative to this.")
]


@settings_command(STORE, ENCODER)
def finetune_data(
    settings: "Settings",
    out: OutOpt,
    from_folder: FromFolderOpt = None,
    from_manifest: FromManifestOpt = None,
    fmt: FormatOpt = "llava",
    k: KOpt = 5,
    top_n: TopNOpt = 20,
    windows: WindowsOpt = 1,
    shuffle: ShuffleOpt = False,
    seed: SeedOpt = 0,
    kind: KindOpt = "auto",
    max_per_class: MaxPerClassOpt = None,
    dedup: DedupOpt = True,
    hint: HintOpt = None,
    image_root: ImageRootOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Write ranking conversations (true label first) for fine-tuning a ranker (see HELP)."""
    from rar_agent.cli.recent import open_existing
    from rar_agent.errors import ConfigError
    from rar_agent.finetune_data import (
        FORMATS,
        FinetuneOptions,
        FinetuneSummary,
        build_finetune_data,
    )
    from rar_agent.ingest import builders

    if (from_folder is None) == (from_manifest is None):
        raise ConfigError("give exactly one of --from-folder and --from-manifest")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if top_n < k:  # FinetuneOptions refuses it too, in Python's names (top_n, k)
        raise ConfigError(
            f"invalid --top-n: {top_n} is less than --k ({k}); give --top-n {k} or more (each "
            "conversation's --k candidates are taken from the --top-n labels retrieved)"
        )
    options = FinetuneOptions(
        k=k, top_n=top_n, windows=windows, shuffle=shuffle, seed=seed,
        kind=kind, hint=hint, dedup=dedup, max_per_class=max_per_class,
    )  # fmt: skip
    items = list(
        builders.iter_image_folder(from_folder)
        if from_folder is not None
        else builders.iter_manifest(from_manifest)  # type: ignore[arg-type]
    )
    bar, update = progress_bar(progress, "writing conversations")
    summary = FinetuneSummary()
    with _interrupt_note(summary, items, out), open_existing(settings) as mem, bar:
        enc = load_settings_encoder(settings, mem)
        build_finetune_data(
            mem, enc, items, out, fmt=fmt, options=options,  # type: ignore[arg-type]
            image_root=image_root, progress=update, summary=summary, resume=resume,
        )  # fmt: skip
    if summary.resumed:
        print_note(f"resumed: the first {summary.resumed} of {len(items)} images were done")
    _print_summary(summary, out, as_json)
    if summary.conversations == 0:  # nothing to learn from: the memory or --top-n is wrong
        raise typer.Exit(EXIT_USAGE if not summary.failed else EXIT_INPUT_FAILED)
    if summary.failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


@contextlib.contextmanager
def _interrupt_note(summary: "FinetuneSummary", items: list[Any], out: Path) -> Iterator[None]:
    """On Ctrl+C, say how far the build got and that ``out`` was not written (the command
    then exits 130)."""
    try:
        yield
    except KeyboardInterrupt:
        stopped = (
            f"stopped after reading {summary.images} of {len(items)} images "
            f"({summary.conversations} conversations made): nothing was written to {out} (it "
            "is written only once complete; a previous file is kept as it was)"
        )
        if summary.kept:
            print_note(
                f"{stopped}; the conversations of the first {summary.kept} images are kept "
                "beside it: run the same command with --resume to go on from there (without "
                "it, the build starts over)"
            )
        else:
            print_note(f"{stopped}: run the same command again to start over")
        raise


def _print_summary(summary: "FinetuneSummary", out: Path, as_json: bool) -> None:
    """The summary as one JSON line, or a per-class table and a sentence."""
    import json
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if as_json:
        sys.stdout.write(json.dumps({"out": str(out), **summary.to_dict()}) + "\n")
        return
    console = Console(soft_wrap=True)  # the summary's path whole, for reading and grepping
    table = Table("class", "conversations", "true label not retrieved", title="per class")
    for label in sorted(set(summary.per_class) | set(summary.missed_per_class)):
        counts = (str(summary.per_class[label]), str(summary.missed_per_class[label]))
        table.add_row(escape(label), *counts)
    console.print(table)
    console.print(
        f"wrote {summary.conversations} conversations to {out} from {summary.images} images "
        f"in {summary.seconds:.1f} s; own entries excluded {summary.self_hits_excluded}, "
        f"true label not in the top-N {summary.not_retrieved}, duplicates skipped "
        f"{summary.duplicates}, capped {summary.capped}, failed {len(summary.failed)}",
        highlight=False,
        markup=False,
    )
    print_skipped(summary.failed)
    if summary.conversations == 0:
        print_error(
            "no conversations: is the memory built from these labels, and is --top-n large enough?"
        )
