"""``rar-agent memory snapshot`` / ``memory restore``: one file that restores a memory.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import STORE, ProgressOpt, memory_to_write, settings_command
from rar_agent.cli.progress import progress_bar
from rar_agent.cli.through_server import TokenOpt, call_server_tool, text_of

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.memory.snapshot import SnapshotReport

__all__ = ["memory_restore", "memory_snapshot"]

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Ask the rar-agent MCP server at this URL (http://HOST:PORT/mcp) that holds the "
        "memory for the snapshot; OUT is then a file name in its snapshot folder. Needs a "
        "token with the admin scope (--token).",
    ),
]


@settings_command(STORE)
def memory_snapshot(
    settings: "Settings",
    out: Annotated[Path, typer.Argument(help="The snapshot file (replaced when complete).")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Write a consistent snapshot of the memory to OUT: every entry and its record.

    The memory is --memory / --collection, or the server collection at --qdrant-url (through
    Qdrant's snapshot API). Every entry and the memory's record (encoder, storage,
    calibration) go in one file; killing the command leaves the memory and an earlier OUT
    intact. While a rar-agent server holds an embedded memory, ask it with --server URL
    --token TOKEN.
    """
    from rar_agent.cli.recent import open_existing
    from rar_agent.errors import MemoryBusyError
    from rar_agent.memory import open_memory
    from rar_agent.memory.snapshot import write_qdrant_snapshot, write_snapshot

    if server:
        _through_server(server, token, _file_name(out))
        return
    if settings.qdrant_url:
        with open_memory(settings, read_only=True) as memory:
            report = write_qdrant_snapshot(
                memory, settings.qdrant_url, out, api_key=settings.qdrant_api_key
            )
        _print(report, "wrote the Qdrant snapshot")
        return
    try:
        memory = open_existing(settings, read_only=True)
    except MemoryBusyError as e:
        raise MemoryBusyError(
            f"{e}. If a rar-agent server holds it, ask the server: rar-agent memory snapshot "
            f"{out.name} --server http://HOST:PORT/mcp --token TOKEN (a token with --scope admin)"
        ) from None
    with memory:
        bar, update = progress_bar(progress, f"snapshot of {memory.collection}")
        with bar:
            report = write_snapshot(memory, out, progress=update)
    _print(report, "wrote the snapshot")


@settings_command(STORE)
def memory_restore(
    settings: "Settings",
    snapshot: Annotated[Path, typer.Argument(help="A file from rar-agent memory snapshot.")],
    progress: ProgressOpt = True,
) -> None:
    """Restore a snapshot into an empty memory; counts per kind and label are verified.

    The memory is --memory / --collection, or the server collection at --qdrant-url for a
    Qdrant snapshot."""
    from rich.console import Console

    from rar_agent.memory.snapshot import restore_qdrant_snapshot, restore_snapshot

    if settings.qdrant_url:
        header = restore_qdrant_snapshot(
            snapshot, settings.qdrant_url, settings.collection, api_key=settings.qdrant_api_key
        )
        Console(soft_wrap=True).print(
            f"restored {header['entries']} entries into {settings.collection!r} at "
            f"{settings.qdrant_url} (Qdrant snapshot of {header['created_at']})",
            highlight=False,
            markup=False,
        )
        return
    with memory_to_write(settings, keep_partial=False) as memory:
        bar, update = progress_bar(progress, f"restoring into {memory.collection}")
        with bar:
            report = restore_snapshot(snapshot, memory, progress=update)
        where = memory.info.location
    _print(report, f"restored into {where} from")


def _print(report: "SnapshotReport", what: str) -> None:
    from rich.console import Console

    Console(soft_wrap=True).print(
        f"{what} {report.path}: {report.entries} entries, {report.labels} labels, "
        f"{report.bytes:,} bytes in {report.seconds:.1f} s",
        highlight=False,
        markup=False,
    )


def _file_name(out: Path) -> str:
    """OUT as the server's snapshot folder takes it: a file name, no folder of this machine."""
    from rar_agent.errors import ConfigError

    if out.parent != Path("."):
        raise ConfigError(
            f"with --server, OUT is a file name in the server's snapshot folder (its "
            f"--snapshot-dir, default RAR_HOME/snapshots there), not a path: give {out.name}, "
            "and copy the file from that folder"
        )
    return out.name


def _through_server(url: str, token: str | None, name: str) -> None:
    from rar_agent.errors import MemoryStoreError

    result = call_server_tool(url, token, "snapshot_memory", {"name": name}, asking="the snapshot")
    if result.isError:
        raise MemoryStoreError(f"the server could not write the snapshot: {text_of(result)}")
    typer.echo(text_of(result))
