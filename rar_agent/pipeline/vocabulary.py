"""Vocabulary memories: a cached text memory of class names, or an encoder's own classes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rar_agent.encoders.spec import spec_of
from rar_agent.errors import EncoderError, LabelError
from rar_agent.ingest.encoder import bind_memory

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.encoders.prototypes import Template
    from rar_agent.ingest.builders import Progress
    from rar_agent.memory import CategoryMemory

__all__ = ["builtin_memory_name", "fill_builtin_memory", "vocabulary_memory"]


def vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    labels: Sequence[str] | None,
    *,
    progress: Progress | None = None,
) -> CategoryMemory:
    """A cached text memory of ``labels``, or of the encoder's built-in vocabulary when ``None``.

    The built-in vocabulary is the encoder's own (EfficientNet-Lite0: its ImageNet-1k
    classifier rows) or, for an encoder with a text tower, ImageNet-1k's class names as text
    prototypes. The collection name hashes the labels and the encoder fingerprint, so it is
    built once per (vocabulary, encoder) and reused; a resumed build skips what is stored. It
    lives where the settings keep memories (see :func:`rar_agent.memory.open_memory`).

    Raises:
        EncoderError: ``labels`` were given but the encoder has no text tower.
        LabelError: No usable label was given.
    """
    from rar_agent.encoders import BuiltinVocabulary, has_text_tower

    if labels is not None and not has_text_tower(encoder):
        spec = spec_of(encoder)
        raise EncoderError(
            "zero-shot labels (--labels) need an encoder with a text tower (CLIP), and "
            f"{spec.label if spec else encoder.fingerprint} has none: use a CLIP model "
            "(--clip-model local-dir:/path/to/open_clip_dir; in Python clip_model=...), build a "
            "few-shot memory from example images (rar-agent memory build --from-folder DIR; in "
            "Python rar_agent.ingest.add_images), or leave out the labels for its built-in "
            "ImageNet-1k classes"
        )
    if labels is None and isinstance(encoder, BuiltinVocabulary):
        return _builtin_vocabulary_memory(settings, encoder, progress)
    return _text_vocabulary_memory(settings, encoder, labels, progress)


def builtin_memory_name(encoder: ImageTextEncoder) -> str:
    """The collection name of an encoder's built-in memory: ``builtin-efficientnet-lite0-8838``.

    Readable (the encoder's name) and unique per encoder (a short hash of its fingerprint), so
    a person can type it: ``rar-agent memory list --collection builtin-...``.
    """
    spec = spec_of(encoder)
    name = spec.label if spec is not None else encoder.fingerprint.split(":", 1)[0]
    if ":" in name:  # local-dir:/path/to/model, hf-hub:org/repo...: the last part reads best
        name = name.rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "encoder"
    key = hashlib.sha256(encoder.fingerprint.encode()).hexdigest()
    return f"builtin-{slug}-{key[:4]}"


def _text_vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    labels: Sequence[str] | None,
    progress: Progress | None,
) -> CategoryMemory:
    from rar_agent.encoders import default_vocabulary, short_templates
    from rar_agent.memory import open_memory

    names = list(labels) if labels is not None else list(default_vocabulary())
    # The 1000-class vocabulary uses the short template set; a user's few labels get all 80.
    templates = short_templates() if labels is None else None
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise LabelError(
            "no labels given: pass class names, e.g. --labels 'cat,dog' (in Python "
            "labels=['cat', 'dog'])"
        )
    key = hashlib.sha256(("\n".join(names) + "\x00" + encoder.fingerprint).encode()).hexdigest()
    name = builtin_memory_name(encoder) if labels is None else f"labels-{key[:16]}"
    memory = open_memory(settings, collection=name)
    _store_names(memory, encoder, names, templates, progress)
    return memory


def _store_names(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    names: Sequence[str],
    templates: Sequence[Template] | None,
    progress: Progress | None,
) -> None:
    from rar_agent.ingest.builders import add_class_names

    bind_memory(memory, encoder)
    if memory.count("text") < len(set(names)):
        add_class_names(memory, encoder, names, templates=templates, progress=progress)


def _builtin_vocabulary_memory(
    settings: Settings, encoder: ImageTextEncoder, progress: Progress | None
) -> CategoryMemory:
    from rar_agent.memory import open_memory

    memory = open_memory(settings, collection=builtin_memory_name(encoder))
    try:
        fill_builtin_memory(memory, encoder, progress=progress)
    except BaseException:
        memory.close()
        raise
    return memory


def fill_builtin_memory(
    memory: CategoryMemory, encoder: ImageTextEncoder, *, progress: Progress | None = None
) -> None:
    """Store what ``memory`` lacks of the encoder's built-in vocabulary: its own classes
    (EfficientNet-Lite0's classifier rows), else ImageNet-1k's names as text prototypes. How
    the built-in memory is built: on its first use, or before a first teaching names it."""
    from rar_agent.encoders import BuiltinVocabulary, default_vocabulary, short_templates
    from rar_agent.ingest.vocabulary import add_builtin_vocabulary

    if isinstance(encoder, BuiltinVocabulary):
        add_builtin_vocabulary(memory, encoder, progress=progress)  # stores only what is missing
        return
    names = [n.strip() for n in default_vocabulary() if n.strip()]
    _store_names(memory, encoder, names, short_templates(), progress)
