"""Build a memory from precomputed vectors: a ``.npy`` matrix and one label per row.

For embeddings computed elsewhere (a GPU job, another service), and to test scale without
images. Like the other builders it is resumable: an entry's id is its kind, label and the
hash of its vector, so a rerun after an interruption writes only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rar_agent.config import positive_int
from rar_agent.errors import ConfigError, LabelError, unreadable_reason
from rar_agent.ingest.builders import BuildReport, Progress, finish_build, mark_build_started
from rar_agent.memory.core import UPSERT_BATCH
from rar_agent.memory.entries import EntryKind, MemoryEntry, check_kind, normalize_label

if TYPE_CHECKING:
    from rar_agent.memory.core import CategoryMemory

__all__ = ["add_vectors", "build_from_vectors", "read_labels", "read_vectors"]

logger = logging.getLogger(__name__)


def read_vectors(path: str | Path) -> np.ndarray:
    """Open a ``.npy`` matrix ``(n, dim)`` memory-mapped (rows are read as they are written).

    Raises:
        ConfigError: The file is missing, not a ``.npy`` array, or not a 2-D float matrix.
    """
    file = Path(path).expanduser()
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        reason = unreadable_reason(e, file)
        raise ConfigError(f"cannot read vectors {file}: {reason}: check the path") from e
    except ValueError as e:  # numpy takes any other file for pickled data
        raise ConfigError(
            f"{file} is not a .npy array: save the vectors with numpy.save (a float matrix of "
            "rows, dim)"
        ) from e
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ConfigError(f"vectors {file} must be a 2-D array (rows, dim), got shape {shape}")
    if array.dtype.kind != "f":
        raise ConfigError(f"vectors {file} hold {array.dtype}, not floats: save float32 rows")
    return array


def read_labels(path: str | Path) -> list[str]:
    """One label per line (UTF-8); blank lines are errors, since rows pair with lines.

    Raises:
        ConfigError: The file cannot be read or a line is blank.
    """
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        reason = unreadable_reason(e, file)
        raise ConfigError(f"cannot read labels {file}: {reason}: check the path") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"labels {file} are not UTF-8 text: write one label a line") from e
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ConfigError(f"{file}:{number}: blank label; write one label per vector row")
    return lines


def add_vectors(
    memory: CategoryMemory,
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    fingerprint: str,
    kind: EntryKind = "image",
    source: str = "vectors",
    batch_size: int = UPSERT_BATCH,
    progress: Progress | None = None,
) -> BuildReport:
    """Add one entry per row of ``vectors``, labelled by ``labels[row]``, in a bulk load.

    A fresh memory skips the stored-id checks; a memory that already holds entries (a
    resumed build) checks each batch and writes only the missing rows.

    Args:
        memory: The memory to fill; bound here to ``fingerprint`` and the vectors' length.
        vectors: ``(n, dim)`` floats (a memory-mapped array is read batch by batch).
        labels: ``n`` labels.
        fingerprint: The fingerprint of the encoder that made the vectors (queries must
            use that encoder).
        kind: ``"image"`` or ``"text"`` entries.
        source: Prefix of each entry's source (``<source>#<row>``).
        batch_size: Rows per upsert.
        progress: Optional ``progress(done, total)`` callback.

    Raises:
        ConfigError: Row and label counts differ, a label is unusable, a row is zero or not
            finite (nothing of that batch is written), or a bad batch size.
    """
    start = time.perf_counter()
    check_kind(kind)
    positive_int("batch_size", batch_size)
    if vectors.ndim != 2:
        raise ConfigError(f"vectors must be 2-D (rows, dim), got shape {vectors.shape}")
    n, dim = vectors.shape
    if len(labels) != n:
        raise ConfigError(f"{n} vector rows but {len(labels)} labels: give one label per row")
    _check_input(vectors, labels, source)  # all of it, before anything is written
    memory.bind_encoder(fingerprint, int(dim), expected_entries=n)
    resume = memory.count() > 0
    report = BuildReport()
    mark_build_started(memory, n, writes=-(-n // batch_size))
    with memory.bulk_load(n):
        for begin in range(0, n, batch_size):
            stop = min(n, begin + batch_size)
            rows = np.ascontiguousarray(vectors[begin:stop], dtype=np.float32)
            entries = _entries(rows, labels[begin:stop], kind, source, begin)
            if resume:
                stored = memory.existing_ids(e.point_id for e in entries)
                keep = [i for i, e in enumerate(entries) if e.point_id not in stored]
                report.skipped_existing += len(entries) - len(keep)
                entries, rows = [entries[i] for i in keep], rows[keep]
            if entries:
                report.note_added(memory.add_entries(entries, rows))
            if progress:
                progress(stop, n)
    finish_build(memory, report, start)
    return report


_CHECK_ROWS = 65_536  # rows read at a time by the up-front check (256 MiB of 1024-d floats)


def _check_input(vectors: np.ndarray, labels: Sequence[str], source: str) -> None:
    """Refuse a row that is not finite or all zeros, or an unusable label, naming its row.

    Checked over the whole input before the first write: a bad row in a later batch used to
    leave the batches before it stored and the build marked unfinished.
    """
    for label in dict.fromkeys(labels):  # each distinct label once
        try:
            normalize_label(label)
        except LabelError as e:
            raise LabelError(f"{source} row {list(labels).index(label)}: {e}") from e
    for begin in range(0, vectors.shape[0], _CHECK_ROWS):
        rows = np.asarray(vectors[begin : begin + _CHECK_ROWS], dtype=np.float32)
        for problem, bad in (
            ("contains NaN or infinity", ~np.isfinite(rows).all(axis=1)),
            ("is all zeros (it has no direction to compare by)", ~rows.any(axis=1)),
        ):
            if bad.any():
                row = begin + int(np.flatnonzero(bad)[0])
                raise ConfigError(
                    f"{source} row {row} {problem}: nothing was written; fix or remove that "
                    f"row and its label (line {row + 1}), then run the build again"
                )


def _entries(
    rows: np.ndarray, labels: Sequence[str], kind: EntryKind, source: str, first: int
) -> list[MemoryEntry]:
    """One entry per row: its label, ``<source>#<row number>``, the hash of its bytes."""
    return [
        MemoryEntry(
            label, kind, f"{source}#{first + i}", hashlib.sha256(row.tobytes()).hexdigest()[:32]
        )
        for i, (row, label) in enumerate(zip(rows, labels, strict=True))
    ]


def build_from_vectors(
    memory: CategoryMemory,
    vectors_path: str | Path,
    labels_path: str | Path,
    *,
    fingerprint: str | None = None,
    kind: EntryKind = "image",
    batch_size: int = UPSERT_BATCH,
    progress: Progress | None = None,
) -> BuildReport:
    """:func:`add_vectors` over a ``.npy`` file and a labels file (one line per row).

    ``fingerprint`` defaults to ``vectors:<file name>``: queries then need an encoder with
    that fingerprint, so give the real encoder's fingerprint to recognize images with it.
    """
    vectors = read_vectors(vectors_path)
    labels = read_labels(labels_path)
    name = Path(vectors_path).name
    return add_vectors(
        memory,
        vectors,
        labels,
        fingerprint=fingerprint or f"vectors:{name}",
        kind=kind,
        source=name,
        batch_size=batch_size,
        progress=progress,
    )
