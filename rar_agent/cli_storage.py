"""Storage options of ``memory build`` and the ``memory push`` / ``memory pull`` commands.

Only typer is imported at module level (the commands import the memory code when they run).
No ``from __future__ import annotations``: typer reads the annotations at definition time.
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "CLUSTER_HELP",
    "EfConstructOpt",
    "HnswMOpt",
    "OversamplingOpt",
    "PayloadDiskOpt",
    "QuantizationOpt",
    "SearchEfOpt",
    "VectorsDiskOpt",
    "progress_reporter",
    "register",
    "storage_from_options",
]

QuantizationOpt = Annotated[
    str | None,
    typer.Option(
        "--quantization",
        help="none | int8 (int8 copy searched, float32 rescoring). Default: int8 from 10k entries.",
    ),
]
VectorsDiskOpt = Annotated[
    bool | None,
    typer.Option(
        "--vectors-on-disk/--vectors-in-ram",
        help="Float32 originals on disk or in RAM. Default: on disk from 100k entries.",
    ),
]
PayloadDiskOpt = Annotated[
    bool | None,
    typer.Option("--payload-on-disk/--payload-in-ram", help="Payloads on disk or in RAM."),
]
HnswMOpt = Annotated[int | None, typer.Option("--hnsw-m", help="HNSW edges per node (16).")]
EfConstructOpt = Annotated[
    int | None, typer.Option("--hnsw-ef-construct", help="HNSW build beam width (100).")
]
SearchEfOpt = Annotated[int | None, typer.Option("--search-ef", help="HNSW search beam (128).")]
OversamplingOpt = Annotated[
    float | None, typer.Option("--oversampling", help="int8: candidates per result rescored.")
]
CLUSTER_HELP = "Server collections only, fixed when the collection is created."


def storage_from_options(entries: int | None, **options: Any) -> Any:
    """Storage settings for a new memory from the flags given (``None``: none given).

    Flags left out take the default for a memory of ``entries`` entries.
    """
    from rar_agent.memory.storage import StorageSettings

    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return None
    return StorageSettings.for_entries(entries).replace(**given)


def progress_reporter(enabled: bool, description: str) -> tuple[Any, Callable[[int, int], None]]:
    """A (context manager, ``update(done, total)``) pair showing rate and time left.

    On a terminal: a rich bar. Otherwise (a log file, a pipe): one line on stderr at most
    every 10 seconds, so a long build in the background still says how far it is.
    """
    import contextlib

    if not enabled:
        return contextlib.nullcontext(), lambda done, total: None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            "{task.fields[rate]}",
            TimeElapsedColumn(),
            "eta",
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed or 0:,.0f}/s")

        return bar, update
    return contextlib.nullcontext(), _LineProgress(description)


class _LineProgress:
    """``update(done, total)`` printing ``description: done/total (p%), rate/s, eta``."""

    def __init__(self, description: str, every_s: float = 10.0) -> None:
        self.description = description
        self.every_s = every_s
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = f"{(total - done) / rate:,.0f} s" if rate > 0 else "?"
        share = 100.0 * done / total if total else 100.0
        print(
            f"{self.description}: {done:,}/{total:,} ({share:.0f}%), {rate:,.0f}/s, eta {eta}",
            file=sys.stderr,
            flush=True,
        )


def register(memory_app: typer.Typer) -> None:
    """Add ``memory push`` and ``memory pull`` to the ``memory`` command group."""
    from rar_agent.cli import CollectionOpt, KeyOpt, MemoryOpt, ProgressOpt, run_guarded

    url_opt = Annotated[str, typer.Option("--qdrant-url", help="The Qdrant server (or cluster).")]
    batch_opt = Annotated[int, typer.Option("--batch-size", help="Points per page.")]

    @memory_app.command("push")
    def memory_push(
        qdrant_url: url_opt,
        api_key: KeyOpt = None,
        collection: CollectionOpt = None,
        to_collection: Annotated[
            str | None, typer.Option("--to-collection", help="Server collection (default: same).")
        ] = None,
        shard_number: Annotated[int | None, typer.Option(help=CLUSTER_HELP)] = None,
        replication_factor: Annotated[int | None, typer.Option(help=CLUSTER_HELP)] = None,
        write_consistency_factor: Annotated[int | None, typer.Option(help=CLUSTER_HELP)] = None,
        batch_size: batch_opt = 512,
        memory: MemoryOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Copy an embedded memory to a Qdrant server collection (resumable, verified)."""

        def run() -> None:
            from rar_agent.memory import CategoryMemory

            source_settings = _settings(memory, collection)
            with _open_embedded(source_settings, create=False) as source:
                target = CategoryMemory.open(
                    url=qdrant_url,
                    api_key=api_key,
                    collection=to_collection or source_settings.collection,
                    shard_number=shard_number,
                    replication_factor=replication_factor,
                    write_consistency_factor=write_consistency_factor,
                )
                with target:
                    _copy(source, target, batch_size, progress)

        run_guarded(run)

    @memory_app.command("pull")
    def memory_pull(
        qdrant_url: url_opt,
        api_key: KeyOpt = None,
        collection: CollectionOpt = None,
        to_collection: Annotated[
            str | None, typer.Option("--to-collection", help="Local memory name (default: same).")
        ] = None,
        batch_size: batch_opt = 512,
        memory: MemoryOpt = None,
        progress: ProgressOpt = True,
    ) -> None:
        """Copy a Qdrant server collection to an embedded memory (resumable, verified)."""

        def run() -> None:
            from rar_agent.memory import CategoryMemory

            settings = _settings(memory, collection)
            source = CategoryMemory.open(
                url=qdrant_url, api_key=api_key, collection=settings.collection, create=False
            )
            local = _settings(memory, to_collection or settings.collection)
            with source, _open_embedded(local, create=True) as target:
                _copy(source, target, batch_size, progress)

        run_guarded(run)


def _settings(memory: Path | None, collection: str | None) -> Any:
    from rar_agent.cli import settings_from_options

    # The embedded side: a server URL in the environment must not redirect it.
    return settings_from_options(memory=memory, collection=collection).model_copy(
        update={"qdrant_url": None}
    )


def _open_embedded(settings: Any, *, create: bool) -> Any:
    from rar_agent.pipeline import open_memory

    return open_memory(settings, create=create)


def _copy(source: Any, target: Any, batch_size: int, progress: bool) -> None:
    from rich.console import Console

    from rar_agent.memory.transfer import copy_memory

    where = f"{source.info.location} -> {target.info.location}"
    bar, update = progress_reporter(progress, f"copying {where}")
    with bar:
        report = copy_memory(source, target, batch_size=batch_size, progress=update)
    Console().print(
        f"copied {report.copied} entries ({report.skipped_existing} already there) in "
        f"{report.seconds:.1f} s: {where}; counts verified ({report.entries} entries, "
        f"{len(target.labels())} labels), storage: {target.storage.describe()}",
        highlight=False,
    )
