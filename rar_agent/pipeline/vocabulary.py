"""Zero-shot vocabularies: a cached text memory of class names for one encoder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rar_agent.errors import LabelError

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.memory.builders import Progress

__all__ = ["vocabulary_memory"]


def vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    labels: Sequence[str] | None,
    *,
    progress: Progress | None = None,
) -> CategoryMemory:
    """A cached text memory of ``labels`` (ImageNet-1k when ``None``) for this encoder.

    The collection name hashes the labels and the encoder fingerprint, so it is built once
    per (vocabulary, encoder) and reused; a resumed build skips what is stored. It lives
    where the settings keep memories (see :func:`rar_agent.memory.open_memory`).

    Raises:
        LabelError: No usable label was given.
    """
    from rar_agent.encoders import default_vocabulary, short_templates
    from rar_agent.memory import open_memory
    from rar_agent.memory.builders import add_class_names

    names = list(labels) if labels is not None else list(default_vocabulary())
    # The 1000-class vocabulary uses the short template set; a user's few labels get all 80.
    templates = short_templates() if labels is None else None
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise LabelError("no labels given: pass comma-separated names, e.g. --labels 'cat,dog'")
    key = hashlib.sha256(("\n".join(names) + "\x00" + encoder.fingerprint).encode()).hexdigest()
    prefix = "imagenet" if labels is None else "labels"
    memory = open_memory(settings, collection=f"{prefix}-{key[:16]}")
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    if memory.count("text") < len(set(names)):
        add_class_names(memory, encoder, names, templates=templates, progress=progress)
    return memory
