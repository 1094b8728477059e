"""Ranking fine-tuning data (the RAR paper's section 3.3), built from a labelled image set.

For every labelled image: retrieve the top-N memory entries *excluding the image itself*
(same content hash or same point id; the paper's released code lets each query find itself,
which teaches the model to trust a perfect first hit), fold them into distinct labels, take
windows of ``k`` labels that contain the true label, and emit a conversation whose target is
the window with the true label first and the others in retrieval order (window 0 is the served
top-``k``; further windows pair the true label with the next negatives). The prompt comes from
:func:`rar_agent.ranking.build_ranking_messages` and the reply from
:func:`rar_agent.ranking.format_target`, exactly what the ranking chain sends at inference.

Formats: ``llava`` (LLaVA / ShareGPT JSON: image path, ``system`` and ``conversations`` with an
``<image>`` token) and ``openai`` (chat fine-tuning JSONL, the image as a ``data:`` URL).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rar_agent.finetune_data.formats import (
    FORMATS,
    Format,
    PartialOutput,
    to_llava,
    to_openai,
    write_samples,
)
from rar_agent.finetune_data.samples import (
    FinetuneOptions,
    FinetuneSummary,
    RankingSample,
    iter_samples,
    label_windows,
)

if TYPE_CHECKING:
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory

__all__ = [
    "FORMATS",
    "FinetuneOptions",
    "FinetuneSummary",
    "RankingSample",
    "build_finetune_data",
    "iter_samples",
    "label_windows",
    "to_llava",
    "to_openai",
    "write_samples",
]

logger = logging.getLogger(__name__)


def build_finetune_data(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    items: Iterable[tuple[str, str]],
    out: str | Path,
    *,
    fmt: Format = "llava",
    options: FinetuneOptions | None = None,
    image_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    summary: FinetuneSummary | None = None,
    resume: bool = False,
) -> FinetuneSummary:
    """Build the conversations and write them to ``out``; return the summary.

    ``out`` appears only once complete, and a previous ``out`` stays whole until then. A
    build that stops (an error, Ctrl-C) during its first batch leaves nothing of its own
    behind; after that it keeps the conversations of the batches it finished beside ``out``
    (``summary.kept`` images), and the same build with ``resume=True`` goes on from there,
    skipping those images: the file it completes is the one a build that never stopped
    writes.

    Args:
        summary: Filled in as the build goes (pass one to read the counts of a build that
            stopped); a new one otherwise.
        resume: Go on from a stopped build of the same ``out``, items and settings (none
            there: start from the beginning).

    Raises:
        ConfigError: Bad options, an unwritable output, or (``resume``) a stopped build of
            other items or settings.
        MemoryStoreError: The memory cannot be searched (empty, other encoder...).
    """
    summary = summary if summary is not None else FinetuneSummary()
    options = options or FinetuneOptions()
    todo = list(items)
    key = {
        "format": fmt,
        "options": asdict(options),
        "image_root": None if image_root is None else str(image_root),
        "items": hashlib.sha256(
            json.dumps([[str(s), str(lb)] for s, lb in todo]).encode()
        ).hexdigest(),
    }

    def batch_done(done: int, total: int) -> None:
        if done > summary.resumed:  # the batch's conversations are written: keep them
            part.checkpoint(done, summary.counts())
            summary.kept = done
        if progress:
            progress(done, total)

    with PartialOutput(out, fmt, image_root=image_root, key=key, resume=resume) as part:
        if part.done:
            summary.take_over(part.state)
            summary.resumed = summary.kept = part.done
        samples = iter_samples(
            memory, encoder, todo, options, summary=summary, progress=batch_done, done=part.done
        )
        for sample in samples:
            part.write(sample)
    if summary.conversations == 0:
        logger.warning("no conversations were written: see the summary for why")
    return summary
