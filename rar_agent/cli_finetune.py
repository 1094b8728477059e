"""``rar-agent finetune-data``: ranking fine-tuning conversations from a labelled image set.

Registered on the main app by :func:`register`; only typer is imported at module level.
The option types are evaluated when ``register`` runs (no ``from __future__ import
annotations`` here), so the shared option aliases can be imported inside it.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rar_agent.finetune_data import FinetuneSummary

__all__ = ["register"]

_HELP = (
    "Write ranking conversations (true label first) for fine-tuning a ranker.\n\n"
    "For each labelled image the memory is searched with the image's own entry excluded; "
    "windows of k retrieved labels that contain the true label become conversations whose "
    "prompt is exactly the ranking chain's. Build the memory first, e.g. with "
    "`rar-agent memory build --from-folder DIR`."
)


def register(app: typer.Typer) -> None:
    """Add the ``finetune-data`` command to ``app``."""
    from rar_agent.cli import (
        CollectionOpt,
        EncoderOpt,
        KeyOpt,
        MemoryOpt,
        ModelOpt,
        PretrainedOpt,
        ProgressOpt,
        UrlOpt,
    )

    @app.command("finetune-data", help=_HELP)
    def finetune_data(
        out: Annotated[Path, typer.Option("--out", help="Output file (.json or .jsonl).")],
        from_folder: Annotated[
            Path | None, typer.Option("--from-folder", help="ImageFolder root: DIR/<label>/*.jpg")
        ] = None,
        from_manifest: Annotated[
            Path | None, typer.Option("--from-manifest", help="CSV/JSONL of path,label.")
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", help="llava (ShareGPT JSON) or openai (chat JSONL).")
        ] = "llava",
        k: Annotated[int, typer.Option("--k", help="Candidates per conversation.")] = 5,
        top_n: Annotated[int, typer.Option("--top-n", help="Labels retrieved per image.")] = 20,
        windows: Annotated[int, typer.Option("--windows", help="Conversations per image.")] = 1,
        shuffle: Annotated[
            bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle candidates in the prompt.")
        ] = False,
        seed: Annotated[int, typer.Option("--seed", help="Seed for windows and shuffling.")] = 0,
        kind: Annotated[
            str, typer.Option("--kind", help="Memory side: auto, image or text.")
        ] = "auto",
        max_per_class: Annotated[
            int | None, typer.Option("--max-per-class", help="Cap conversations per class.")
        ] = None,
        dedup: Annotated[
            bool, typer.Option("--dedup/--no-dedup", help="Skip repeated images/conversations.")
        ] = True,
        hint: Annotated[
            str | None, typer.Option("--hint", help="Domain hint (default: the memory's).")
        ] = None,
        image_root: Annotated[
            Path | None, typer.Option("--image-root", help="LLaVA: image paths relative to this.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
        memory: MemoryOpt = None,
        qdrant_url: UrlOpt = None,
        api_key: KeyOpt = None,
        collection: CollectionOpt = None,
        clip_model: ModelOpt = None,
        clip_pretrained: PretrainedOpt = None,
        encoder: EncoderOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Write ranking conversations (true label first) for fine-tuning a ranker."""
        from rar_agent.cli import run_guarded

        def run() -> None:
            from rar_agent.cli import _progress_callback, settings_from_options
            from rar_agent.encoders import load_encoder
            from rar_agent.errors import ConfigError
            from rar_agent.finetune_data import FORMATS, FinetuneOptions, build_finetune_data
            from rar_agent.memory import builders, open_memory

            if (from_folder is None) == (from_manifest is None):
                raise ConfigError("give exactly one of --from-folder and --from-manifest")
            if fmt not in FORMATS:
                raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
            options = FinetuneOptions(
                k=k,
                top_n=top_n,
                windows=windows,
                shuffle=shuffle,
                seed=seed,
                kind=kind,  # type: ignore[arg-type]
                hint=hint,
                dedup=dedup,
                max_per_class=max_per_class,
            )
            items = (
                builders.iter_image_folder(from_folder)
                if from_folder is not None
                else builders.iter_manifest(from_manifest)  # type: ignore[arg-type]
            )
            settings = settings_from_options(
                memory=memory,
                qdrant_url=qdrant_url,
                api_key=api_key,
                collection=collection,
                clip_model=clip_model,
                clip_pretrained=clip_pretrained,
                encoder=encoder,
            )
            enc = load_encoder(
                settings.encoder_spec, pretrained=settings.clip_pretrained, device=settings.device
            )
            bar, update = _progress_callback(progress, "writing conversations")
            with open_memory(settings) as mem, bar:
                summary = build_finetune_data(
                    mem,
                    enc,
                    items,
                    out,
                    fmt=fmt,  # type: ignore[arg-type]
                    options=options,
                    image_root=image_root,
                    progress=update,
                )
            _print_summary(summary, out, as_json)
            if summary.conversations == 0:
                raise typer.Exit(1)

        run_guarded(run)


def _print_summary(summary: "FinetuneSummary", out: Path, as_json: bool) -> None:
    import json
    import sys

    from rich.console import Console
    from rich.table import Table

    if as_json:
        sys.stdout.write(json.dumps({"out": str(out), **summary.to_dict()}) + "\n")
        return
    console = Console()
    table = Table("class", "conversations", "true label not retrieved", title="per class")
    for label in sorted(set(summary.per_class) | set(summary.missed_per_class)):
        table.add_row(label, str(summary.per_class[label]), str(summary.missed_per_class[label]))
    console.print(table)
    console.print(
        f"wrote {summary.conversations} conversations to {out} from {summary.images} images "
        f"in {summary.seconds:.1f} s; own entries excluded {summary.self_hits_excluded}, "
        f"true label not in the top-N {summary.not_retrieved}, duplicates skipped "
        f"{summary.duplicates}, capped {summary.capped}, failed {len(summary.failed)}",
        highlight=False,
    )
    for source, reason in summary.failed[:20]:
        console.print(f"  [yellow]skipped[/] {source}: {reason}", highlight=False)
    if summary.conversations == 0:
        Console(stderr=True).print(
            "[bold red]error:[/] no conversations: is the memory built from these labels, "
            "and is --top-n large enough?",
            highlight=False,
        )
