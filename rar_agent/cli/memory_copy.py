"""``rar-agent memory push`` / ``memory pull``: copy a memory between the embedded store and a
Qdrant server (or cluster), resumable and verified.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import STORE, ProgressOpt, memory_to_write, settings_command
from rar_agent.cli.progress import progress_bar

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.memory import CategoryMemory

__all__ = ["memory_pull", "memory_push"]

_CLUSTER = "Server collections only, fixed when the collection is created"
ToCollectionOpt = Annotated[
    str | None,
    typer.Option("--to-collection", help="Name of the copy (default: the same --collection)."),
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Points per page read and written.")
]


@settings_command(STORE)
def memory_push(
    settings: "Settings",
    to_collection: ToCollectionOpt = None,
    shard_number: Annotated[
        int | None, typer.Option("--shards", min=1, help=f"Shards of the collection. {_CLUSTER}.")
    ] = None,
    replication_factor: Annotated[
        int | None, typer.Option("--replicas", min=1, help=f"Copies of each shard. {_CLUSTER}.")
    ] = None,
    write_consistency_factor: Annotated[
        int | None,
        typer.Option("--write-acks", min=1, help=f"Replicas that acknowledge a write. {_CLUSTER}."),
    ] = None,
    batch_size: BatchOpt = 512,
    progress: ProgressOpt = True,
) -> None:
    """Copy the embedded memory (--memory / --collection) to the server at --qdrant-url.

    Points, payloads and the memory's whole record (encoder, storage settings, calibration)
    are copied; the counts are verified. Run it again after an interruption: it resumes. A
    copy that fails before it stores anything leaves no new collection.
    """
    from rar_agent.cli.recent import open_existing

    layout = {
        "shard_number": shard_number,
        "replication_factor": replication_factor,
        "write_consistency_factor": write_consistency_factor,
    }
    server = _server(settings, "push").model_copy(
        update={k: v for k, v in layout.items() if v is not None}
    )
    source = open_existing(_embedded(settings))
    with source, memory_to_write(server, to_collection) as target:
        _copy(source, target, batch_size, progress)


@settings_command(STORE)
def memory_pull(
    settings: "Settings",
    to_collection: ToCollectionOpt = None,
    batch_size: BatchOpt = 512,
    progress: ProgressOpt = True,
) -> None:
    """Copy the server collection --collection at --qdrant-url to an embedded memory.

    The copy goes to --memory, or to the default place of --to-collection (or the same
    name). Resumable and verified like `memory push`.
    """
    from rar_agent.memory import open_memory

    source = open_memory(_server(settings, "pull"), create=False)
    local = _embedded(settings)
    if to_collection:
        local = local.model_copy(update={"collection": to_collection})
    with source, memory_to_write(local) as target:
        _copy(source, target, batch_size, progress)


def _server(settings: "Settings", verb: str) -> "Settings":
    """The same settings naming the server side (the embedded path is the other side)."""
    from rar_agent.errors import ConfigError

    if not settings.qdrant_url:
        raise ConfigError(
            f"memory {verb} needs the server: give --qdrant-url (or set RAR_QDRANT_URL)"
        )
    return settings.model_copy(update={"memory_path": None})


def _embedded(settings: "Settings") -> "Settings":
    """The same settings naming the embedded memory (the server URL is the other side)."""
    return settings.model_copy(update={"qdrant_url": None})


def _copy(
    source: "CategoryMemory", target: "CategoryMemory", batch_size: int, progress: bool
) -> None:
    from rich.console import Console

    from rar_agent.memory.transfer import copy_memory

    where = f"{source.info.location} -> {target.info.location}"
    bar, update = progress_bar(progress, f"copying {where}")
    with bar:
        report = copy_memory(source, target, batch_size=batch_size, progress=update)
    Console(soft_wrap=True).print(
        f"copied {report.copied} entries ({report.skipped_existing} already there) in "
        f"{report.seconds:.1f} s: {where}; counts verified ({report.entries} entries, "
        f"{len(target.labels())} labels); storage: {target.storage.describe()}",
        highlight=False,
        markup=False,
    )
