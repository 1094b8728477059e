"""Copy a memory to another backend: ``memory push`` (embedded -> server), ``memory pull``.

Everything the source records travels: points (ids, vectors, payloads) and its whole
record (encoder, storage settings, extensions such as the calibration, ...). The copy is
resumable: the target is filled page by page in id order, and a rerun writes only the
points it lacks.
At the end the counts are verified (all entries, per kind, per label).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory.core import OPTIMIZE_MIN_UNINDEXED, CategoryMemory

__all__ = ["PAGE_SIZE", "TransferReport", "copy_memory", "verify_copy"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called after each page."""

PAGE_SIZE = 512
"""Points read (and checked against the target) per page; writes go in ``UPSERT_BATCH``."""


@dataclass
class TransferReport:
    """What a copy did.

    Attributes:
        copied: Points written to the target.
        skipped_existing: Points the target already held (a resumed copy).
        entries: Entries in the source (and, verified, in the target).
        seconds: Wall time.
    """

    copied: int = 0
    skipped_existing: int = 0
    entries: int = 0
    seconds: float = 0.0


def copy_memory(
    source: CategoryMemory,
    target: CategoryMemory,
    *,
    batch_size: int = PAGE_SIZE,
    progress: Progress | None = None,
) -> TransferReport:
    """Copy ``source`` into ``target`` (created with the source's record), then verify.

    Args:
        source: The memory to copy (not changed).
        target: The memory to fill; new, or holding an interrupted copy of ``source``.
        batch_size: Points per page read and written.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        The :class:`TransferReport`.

    Raises:
        ConfigError: The source holds no encoder (nothing was built), or a bad batch size.
        EncoderMismatchError: The target exists with another encoder.
        MemoryStoreError: The counts differ after the copy.
    """
    start = time.perf_counter()
    positive_int("batch_size", batch_size)
    record = source.record
    if record is None:
        raise ConfigError(f"{source.described} records no encoder: there is nothing to copy")
    total = source.count()
    target.bind_record(record)
    report = TransferReport(entries=total)
    with target.bulk_load(total):
        _copy_pages(source, target, batch_size, report, progress)
    target.optimize(min_unindexed=OPTIMIZE_MIN_UNINDEXED)
    verify_copy(source, target)
    report.seconds = time.perf_counter() - start
    logger.info(
        "copied %d entries (%d already there) from %s to %s in %.1f s",
        report.copied,
        report.skipped_existing,
        source.info.location,
        target.info.location,
        report.seconds,
    )
    return report


def _copy_pages(
    source: CategoryMemory,
    target: CategoryMemory,
    batch_size: int,
    report: TransferReport,
    progress: Progress | None,
) -> None:
    """Every page of ``source`` in id order; a resumed copy writes only what is missing."""
    resume = target.count() > 0
    offset: str | None = None
    done = 0
    while True:
        page, offset = source.scroll(offset, batch_size)
        done += len(page)
        if resume and page:
            stored = target.existing_ids(p[0] for p in page)
            report.skipped_existing += len(stored)
            page = [p for p in page if p[0] not in stored]
        target.write_points(page)
        report.copied += len(page)
        if progress:
            progress(done, report.entries)
        if offset is None:
            return


def verify_copy(source: CategoryMemory, target: CategoryMemory) -> None:
    """Check that ``target`` holds as many entries as ``source``: all, per kind, per label.

    Raises:
        MemoryStoreError: A count differs (the message says which).
    """
    checks = [
        ("entries", source.count(), target.count()),
        ("image entries", source.count("image"), target.count("image")),
        ("text entries", source.count("text"), target.count("text")),
    ]
    for what, want, got in checks:
        if want != got:
            raise MemoryStoreError(
                f"copy check failed: the source holds {want} {what}, the target "
                f"{target.info.location} {got}; run the same command again to resume, or "
                "copy into an empty --collection"
            )
    want_labels, got_labels = source.labels(), target.labels()
    if want_labels != got_labels:
        differ = sorted(set(want_labels.items()) ^ set(got_labels.items()))[:3]
        raise MemoryStoreError(
            f"copy check failed: entries per label differ (e.g. {differ}); run the same "
            "command again to resume, or copy into an empty --collection"
        )
