"""The ``rar-agent`` command line.

Only typer is imported at module level; everything heavy is imported inside commands so
``rar-agent --help`` answers fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.results import RecognitionResult

__all__ = ["app", "main", "settings_from_options", "run_guarded"]

app = typer.Typer(
    name="rar-agent",
    help="Retrieve-and-rank visual recognition: CLIP memory in Qdrant + multimodal LLM ranking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
memory_app = typer.Typer(help="Build and inspect category memories.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")

# Options shared by every command; each also reads its RAR_* environment variable.
MemoryOpt = Annotated[
    Path | None,
    typer.Option("--memory", help="Embedded memory directory.", envvar="RAR_MEMORY_PATH"),
]
UrlOpt = Annotated[
    str | None, typer.Option("--qdrant-url", help="Qdrant server URL.", envvar="RAR_QDRANT_URL")
]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", help="Qdrant API key.", envvar="RAR_QDRANT_API_KEY")
]
CollectionOpt = Annotated[
    str | None, typer.Option("--collection", help="Memory name.", envvar="RAR_COLLECTION")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-model",
        help="open_clip name, local-dir:/path, hf-hub:..., hf:<dir>.",
        envvar="RAR_CLIP_MODEL",
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-pretrained", help="Pretrained tag or checkpoint file.", envvar="RAR_CLIP_PRETRAINED"
    ),
]
EncoderOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder", help="Encoder factory as package.module:factory.", envvar="RAR_ENCODER"
    ),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


def settings_from_options(**options: Any) -> Settings:
    """Settings from ``RAR_*`` variables, overridden by the options given on the command line."""
    from pydantic import ValidationError

    from rar_agent.config import Settings
    from rar_agent.errors import ConfigError

    names = {"memory": "memory_path", "api_key": "qdrant_api_key"}
    update = {names.get(k, k): v for k, v in options.items() if v is not None}
    try:
        return Settings(**update)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(
            f"invalid setting ({problems}): fix the option or RAR_* variable"
        ) from None


def run_guarded(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``func``; a ``RarError`` becomes a one-line message and exit code 2."""
    from rar_agent.errors import RarError

    try:
        return func(*args, **kwargs)
    except RarError as e:
        _err(str(e))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)


def _progress_callback(enabled: bool, description: str) -> tuple[Any, Any]:
    """A (context manager, callback(done, total)) pair driving a rich progress bar."""
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


# ---------------------------------------------------------------------------- recognize


@app.command()
def recognize(
    images: Annotated[list[str], typer.Argument(help="Image files, URLs or data URIs.")],
    k: Annotated[int | None, typer.Option("--k", help="Candidates to retrieve/rank.")] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated labels (zero-shot).")
    ] = None,
    ranker: Annotated[
        str | None,
        typer.Option(
            "--ranker", help="none | provider:model | hf:<repo|dir>.", envvar="RAR_RANKER"
        ),
    ] = None,
    gate: Annotated[
        str | None,
        typer.Option(
            "--gate",
            help="off | on | auto (as chosen by eval) | a margin: skip ranking above it.",
            envvar="RAR_GATE",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    boxes: Annotated[
        Path | None,
        typer.Option("--boxes", help="JSON boxes (xyxy or COCO detections), one result each."),
    ] = None,
    normalized: Annotated[
        bool | None,
        typer.Option("--normalized/--pixels", help="Box units (default: detect from values)."),
    ] = None,
    annotate: Annotated[
        Path | None, typer.Option("--annotate", help="With --boxes: save a picture with labels.")
    ] = None,
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
    clip_model: ModelOpt = None,
    clip_pretrained: PretrainedOpt = None,
    encoder: EncoderOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Recognize what is in each image (retrieve top-k, then rank), or in each box of one image."""

    def run() -> None:
        from rar_agent.pipeline import Recognizer

        settings = settings_from_options(
            memory=memory,
            qdrant_url=qdrant_url,
            api_key=api_key,
            collection=collection,
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            encoder=encoder,
            k=k,
            ranker=ranker,
            gate=gate,
        )
        label_list = labels.split(",") if labels is not None else None
        bar, update = _progress_callback(progress, "building vocabulary memory")
        with bar:
            recognizer = Recognizer.from_settings(settings, labels=label_list, progress=update)
        if recognizer.ranker is None and not as_json:
            _err_note("ranking is disabled (--ranker none): showing retrieval order")
        with recognizer:
            if boxes is not None or annotate is not None:
                results = _recognize_boxes(recognizer, images, boxes, normalized, annotate)
            else:
                results = recognizer.recognize_batch(images)
        _print_results(results, as_json)
        if any(r.error for r in results):
            raise typer.Exit(1)

    run_guarded(run)


def _recognize_boxes(
    recognizer: Any,
    images: list[str],
    boxes: Path | None,
    normalized: bool | None,
    annotate: Path | None,
) -> list[RecognitionResult]:
    """``recognize --boxes``: every box of one image, optionally drawn into ``annotate``."""
    from rar_agent.errors import ConfigError
    from rar_agent.images import load_image
    from rar_agent.regions import annotate as draw_results
    from rar_agent.regions import load_boxes

    if boxes is None:
        raise ConfigError("--annotate draws region labels: give the regions with --boxes FILE")
    if len(images) != 1:
        raise ConfigError(f"--boxes applies to one image, got {len(images)}: pass exactly one")
    parsed = load_boxes(boxes, normalized=normalized)
    if not parsed:
        raise ConfigError(f"{boxes} holds no boxes: write a JSON list of [x0, y0, x1, y1]")
    loaded = load_image(images[0])
    results = recognizer.recognize_regions(loaded.image, parsed, kind="auto")
    for result in results:
        result.image = loaded.source
    if annotate is not None:
        picture = draw_results(loaded.image, results)
        try:
            picture.save(annotate)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot write {annotate}: {e}; use a .png or .jpg path") from e
    return results


def _err_note(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[dim]{message}[/]", highlight=False)


def _print_results(results: list[RecognitionResult], as_json: bool) -> None:
    if as_json:
        for r in results:
            sys.stdout.write(r.model_dump_json() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in results:
        if r.error:
            where = r.image if r.box_id is None else f"{r.image} box {r.box_id}"
            console.print(f"[bold]{where}[/]: [red]{r.error}[/]", highlight=False, soft_wrap=True)
            continue
        where = r.image if r.box_id is None else f"{r.image} box {r.box_id} {r.box}"
        table = Table(title=f"{where}: [bold green]{r.label}[/]", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("retrieval rank", justify="right")
        for i, c in enumerate(r.candidates, 1):
            table.add_row(str(i), c.label, f"{c.score:.4f}", str(c.retrieval_rank + 1))
        console.print(table)
        reason = f" ({r.ranking.reason})" if r.ranking.reason else ""
        timings = ", ".join(f"{k} {v:.1f} ms" for k, v in r.timings_ms.items())
        console.print(f"ranking: {r.ranking.status}{reason}; {timings}", highlight=False)


# ---------------------------------------------------------------------------- memory


def _open(settings: Settings, *, create: bool = True) -> Any:
    from rar_agent.pipeline import open_memory

    return open_memory(settings, create=create)


def _load_encoder(settings: Settings) -> Any:
    from rar_agent.encoders import load_encoder

    return load_encoder(
        settings.encoder_spec, pretrained=settings.clip_pretrained, device=settings.device
    )


@memory_app.command("build")
def memory_build(
    from_folder: Annotated[
        Path | None, typer.Option("--from-folder", help="ImageFolder root: DIR/<label>/*.jpg")
    ] = None,
    from_names: Annotated[
        Path | None, typer.Option("--from-names", help="Text file, one class name per line.")
    ] = None,
    from_manifest: Annotated[
        Path | None, typer.Option("--from-manifest", help="CSV/JSONL of path,label.")
    ] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="Examples per class.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --shots sampling.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad image.")] = False,
    description: Annotated[
        str | None, typer.Option("--description", help="Domain hint, e.g. 'aircraft variants'.")
    ] = None,
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
    clip_model: ModelOpt = None,
    clip_pretrained: PretrainedOpt = None,
    encoder: EncoderOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Build (or resume building) a memory from images or class names."""

    def run() -> None:
        from rar_agent.errors import ConfigError
        from rar_agent.memory import builders

        sources = [s for s in (from_folder, from_names, from_manifest) if s is not None]
        if len(sources) != 1:
            raise ConfigError("give exactly one of --from-folder, --from-names, --from-manifest")
        settings = settings_from_options(
            memory=memory,
            qdrant_url=qdrant_url,
            api_key=api_key,
            collection=collection,
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            encoder=encoder,
        )
        enc = _load_encoder(settings)
        with _open(settings) as mem:
            mem.bind_encoder(enc.fingerprint, enc.dim)
            if description is not None:
                mem.set_description(description)
            bar, update = _progress_callback(progress, "building memory")
            with bar:
                if from_names is not None:
                    names = _read_names(from_names)
                    report = builders.add_class_names(mem, enc, names, progress=update)
                else:
                    items = (
                        builders.iter_image_folder(from_folder, shots=shots, seed=seed)
                        if from_folder is not None
                        else builders.iter_manifest(sources[0])
                    )
                    report = builders.add_images(mem, enc, items, strict=strict, progress=update)
            _print_report(report, mem)

    run_guarded(run)


def _read_names(path: Path) -> list[str]:
    from rar_agent.errors import ConfigError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read names file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"names file {path} is not UTF-8 text") from e
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise ConfigError(f"names file {path} has no names: write one class name per line")
    return names


def _print_report(report: Any, mem: Any) -> None:
    from rich.console import Console

    console = Console()
    console.print(
        f"added {report.added}, already stored {report.skipped_existing}, "
        f"failed {len(report.failed)} in {report.seconds:.1f} s; "
        f"memory now holds {mem.count()} entries over {len(mem.labels())} labels",
        highlight=False,
    )
    for source, reason in report.failed[:20]:
        console.print(f"  [yellow]skipped[/] {source}: {reason}", highlight=False)


@memory_app.command("add")
def memory_add(
    label: Annotated[str, typer.Argument(help="Category label.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Example images; none = add the class name.")
    ] = None,
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
    clip_model: ModelOpt = None,
    clip_pretrained: PretrainedOpt = None,
    encoder: EncoderOpt = None,
) -> None:
    """Add one category: example images, or its name as a text entry."""

    def run() -> None:
        from rar_agent.memory import builders

        settings = settings_from_options(
            memory=memory,
            qdrant_url=qdrant_url,
            api_key=api_key,
            collection=collection,
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            encoder=encoder,
        )
        enc = _load_encoder(settings)
        with _open(settings) as mem:
            mem.bind_encoder(enc.fingerprint, enc.dim)
            if images:
                report = builders.add_images(
                    mem, enc, [(str(p), label) for p in images], strict=True
                )
            else:
                report = builders.add_class_names(mem, enc, [label])
            _print_report(report, mem)

    run_guarded(run)


@memory_app.command("remove")
def memory_remove(
    label: Annotated[str, typer.Argument(help="Category label to remove (all its entries).")],
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Remove a category and all its entries."""

    def run() -> None:
        settings = settings_from_options(
            memory=memory, qdrant_url=qdrant_url, api_key=api_key, collection=collection
        )
        with _open(settings, create=False) as mem:
            removed = mem.remove_label(label)
        typer.echo(f"removed {removed} entries of {label!r}")

    run_guarded(run)


@memory_app.command("list")
def memory_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """List labels with their entry counts."""

    def run() -> None:
        settings = settings_from_options(
            memory=memory, qdrant_url=qdrant_url, api_key=api_key, collection=collection
        )
        with _open(settings, create=False) as mem:
            counts = mem.labels()
        if as_json:
            typer.echo(json.dumps(counts, ensure_ascii=False))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("label", "entries")
        for name, count in sorted(counts.items()):
            table.add_row(name, str(count))
        Console().print(table)

    run_guarded(run)


@memory_app.command("stats")
def memory_stats(
    memory: MemoryOpt = None,
    qdrant_url: UrlOpt = None,
    api_key: KeyOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Show the memory's size, encoder and backend as JSON."""

    def run() -> None:
        settings = settings_from_options(
            memory=memory, qdrant_url=qdrant_url, api_key=api_key, collection=collection
        )
        with _open(settings, create=False) as mem:
            stats = mem.stats()
        typer.echo(json.dumps(stats, indent=2, default=str, ensure_ascii=False))

    run_guarded(run)


# Commands that live in their own modules register themselves here (one line each).
# Each module imports only typer at module level.
__import__("rar_agent.cli_eval", fromlist=["register"]).register(app)
__import__("rar_agent.cli_finetune").cli_finetune.register(app)
__import__("rar_agent.cli_chat", fromlist=["register"]).register(app)
__import__("rar_agent.cli_mcp", fromlist=["register"]).register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
