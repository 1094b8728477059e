"""An encoder's built-in vocabulary (e.g. a classifier head) as text entries of a memory."""

from __future__ import annotations

import hashlib
import time

from rar_agent.encoders.base import BuiltinVocabulary, ImageTextEncoder
from rar_agent.errors import ConfigError
from rar_agent.ingest.builders import BuildReport, Progress
from rar_agent.ingest.encoder import bind_memory
from rar_agent.memory.core import CategoryMemory
from rar_agent.memory.entries import MemoryEntry

__all__ = ["add_builtin_vocabulary"]


def add_builtin_vocabulary(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    *,
    progress: Progress | None = None,
) -> BuildReport:
    """Store one text entry per class of the encoder's own vocabulary (resumable).

    For EfficientNet-Lite0 these are its 1000 ImageNet classifier rows, so retrieval ranks
    classes as its classifier does. Entry ids hash each row, so a rerun stores nothing twice.

    Args:
        memory: The memory to fill (bound to ``encoder`` here).
        encoder: An encoder that meets :class:`~rar_agent.encoders.BuiltinVocabulary`.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        The :class:`~rar_agent.ingest.builders.BuildReport`.

    Raises:
        ConfigError: The encoder has no built-in vocabulary.
    """
    start = time.perf_counter()
    if not isinstance(encoder, BuiltinVocabulary):
        raise ConfigError(
            f"encoder {encoder.fingerprint} has no built-in vocabulary: build the memory from "
            "class names or example images"
        )
    bind_memory(memory, encoder)
    names, rows = encoder.builtin_vocabulary()
    source = f"{encoder.fingerprint.split(':')[1]} classifier"
    entries = [
        MemoryEntry(
            name,
            "text",
            source,
            hashlib.sha256(row.tobytes()).hexdigest(),
            {"class_index": index},
        )
        for index, (name, row) in enumerate(zip(names, rows, strict=True))
    ]
    stored = memory.existing_ids(e.point_id for e in entries)
    todo = [i for i, e in enumerate(entries) if e.point_id not in stored]
    report = BuildReport(skipped_existing=len(entries) - len(todo))
    if todo:
        memory.add_entries([entries[i] for i in todo], rows[todo])
        report.added = len(todo)
        if progress:  # only a build reports: reopening a whole memory shows no bar
            progress(len(entries), len(entries))
    report.seconds = time.perf_counter() - start
    return report
