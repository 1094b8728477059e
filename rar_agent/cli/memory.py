"""``rar-agent memory``: build, add to, remove from and inspect a category memory.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import (
    ENCODER,
    EXIT_INPUT_FAILED,
    STORE,
    FromFolderOpt,
    FromManifestOpt,
    JsonOpt,
    ProgressOpt,
    ShotsOpt,
    load_settings_encoder,
    progress_bar,
    settings_command,
)

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.memory import CategoryMemory
    from rar_agent.memory.builders import BuildReport

__all__ = ["app", "memory_add", "memory_build", "memory_list", "memory_remove", "memory_stats"]

app = typer.Typer(help="Build and inspect category memories.", no_args_is_help=True)


@app.command("build")
@settings_command(STORE, ENCODER)
def memory_build(
    settings: "Settings",
    from_folder: FromFolderOpt = None,
    from_names: Annotated[
        Path | None, typer.Option("--from-names", help="Text file, one class name per line.")
    ] = None,
    from_manifest: FromManifestOpt = None,
    shots: ShotsOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --shots sampling.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad image.")] = False,
    description: Annotated[
        str | None, typer.Option("--description", help="Domain hint, e.g. 'aircraft variants'.")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Build (or resume building) a memory from images or class names."""
    from rar_agent.errors import ConfigError
    from rar_agent.memory import builders, open_memory

    if sum(s is not None for s in (from_folder, from_names, from_manifest)) != 1:
        raise ConfigError("give exactly one of --from-folder, --from-names, --from-manifest")
    # Read the sources first: a missing folder or an empty names file leaves no memory behind.
    names = _read_names(from_names) if from_names is not None else None
    items = None if names is not None else _labelled_images(from_folder, from_manifest, shots, seed)
    with open_memory(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        mem.bind_encoder(enc.fingerprint, enc.dim)
        if description is not None:
            mem.set_description(description)
        bar, update = progress_bar(progress, "building memory")
        with bar:
            if names is not None:
                report = builders.add_class_names(mem, enc, names, progress=update)
            else:
                report = builders.add_images(mem, enc, items or [], strict=strict, progress=update)
        _print_report(report, mem)
    if report.failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


def _labelled_images(
    folder: Path | None, manifest: Path | None, shots: int | None, seed: int
) -> list[tuple[str, str]]:
    """``--from-folder`` or ``--from-manifest``: the ``(path, label)`` pairs to store."""
    from rar_agent.memory import builders

    if folder is not None:
        return list(builders.iter_image_folder(folder, shots=shots, seed=seed))
    return list(builders.iter_manifest(manifest))  # type: ignore[arg-type]


def _read_names(path: Path) -> list[str]:
    """The class names in a text file: one a line, blank lines and ``#`` comments skipped."""
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


def _print_report(report: "BuildReport", mem: "CategoryMemory") -> None:
    """What a build or add did, and what the memory now holds."""
    from rich.console import Console

    console = Console(soft_wrap=True)  # whole paths and lines, for reading and grepping
    console.print(
        f"added {report.added}, already stored {report.skipped_existing}, "
        f"failed {len(report.failed)} in {report.seconds:.1f} s; "
        f"memory now holds {mem.count()} entries over {len(mem.labels())} labels",
        highlight=False,
    )
    for source, reason in report.failed[:20]:
        console.print(f"  [yellow]skipped[/] {source}: {reason}", highlight=False)
    if len(report.failed) > 20:
        console.print(f"  [yellow]and {len(report.failed) - 20} more skipped[/]", highlight=False)


@app.command("add")
@settings_command(STORE, ENCODER)
def memory_add(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="Category label.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Example images; none = add the class name.")
    ] = None,
) -> None:
    """Add one category: example images, or its name as a text entry."""
    from rar_agent.memory import builders, open_memory

    with open_memory(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        mem.bind_encoder(enc.fingerprint, enc.dim)
        if images:
            pairs = [(str(p), label) for p in images]
            report = builders.add_images(mem, enc, pairs, strict=True)
        else:
            report = builders.add_class_names(mem, enc, [label])
        _print_report(report, mem)


@app.command("remove")
@settings_command(STORE)
def memory_remove(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="Category label to remove (all its entries).")],
) -> None:
    """Remove a category and all its entries."""
    from rar_agent.memory import open_memory

    with open_memory(settings, create=False) as mem:
        removed = mem.remove_label(label)
    typer.echo(f"removed {removed} entries of {label!r}")


@app.command("list")
@settings_command(STORE)
def memory_list(settings: "Settings", as_json: JsonOpt = False) -> None:
    """List labels with their entry counts."""
    from rich.console import Console
    from rich.table import Table

    from rar_agent.memory import open_memory

    with open_memory(settings, create=False) as mem:
        counts = mem.labels()
    if as_json:
        typer.echo(json.dumps(counts, ensure_ascii=False))
        return
    table = Table("label", "entries")
    for name, count in sorted(counts.items()):
        table.add_row(name, str(count))
    Console().print(table)


@app.command("stats")
@settings_command(STORE)
def memory_stats(settings: "Settings") -> None:
    """Show the memory's size, encoder and backend as JSON."""
    from rar_agent.memory import open_memory

    with open_memory(settings, create=False) as mem:
        stats = mem.stats()
    typer.echo(json.dumps(stats, indent=2, default=str, ensure_ascii=False))
