"""Which memory and which encoder the settings mean, and the cached vocabulary memories."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rar_agent.encoders.loader import spec_for

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory.core import CategoryMemory

__all__ = ["configured_memory", "open_memory", "settings_encoder", "vocabulary_memory"]

logger = logging.getLogger(__name__)


def open_memory(
    settings: Settings, collection: str | None = None, *, create: bool = True
) -> CategoryMemory:
    """Open the configured memory: the Qdrant server if ``qdrant_url`` is set, else embedded.

    With ``create=False`` a memory that does not exist yet is an error, not a new empty one.
    """
    from rar_agent.memory.core import CategoryMemory

    name = collection or settings.collection
    if settings.qdrant_url:
        return CategoryMemory.open(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            collection=name,
            create=create,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
        )
    if settings.memory_path is not None and collection is None:
        path = settings.memory_path
    else:
        path = settings.home / "memories" / name
    return CategoryMemory.open(path, collection=name, create=create)


def configured_memory(settings: Settings) -> CategoryMemory | None:
    """The memory the settings name; ``None`` when it is the default one and missing or empty.

    A memory named explicitly (path, collection or server) that does not exist is an error,
    as in ``rar-agent memory list``, and so is one with no entries.
    """
    from rar_agent.errors import EmptyMemoryError, MemoryBusyError, MemoryStoreError

    named = bool(settings.qdrant_url) or bool(
        {"memory_path", "collection"} & settings.model_fields_set
    )
    try:
        memory = open_memory(settings, create=False)
    except MemoryBusyError:
        raise
    except MemoryStoreError:
        if named:
            raise
        return None
    if memory.count() > 0:
        return memory
    where = memory.info.location
    memory.close()
    if named:
        raise EmptyMemoryError(
            f"memory {settings.collection!r} at {where} holds no entries: add some (rar-agent "
            "memory build / memory add), or pass --labels for a zero-shot memory"
        )
    logger.info("memory %r is empty: using the built-in vocabulary", settings.collection)
    return None


def settings_encoder(
    settings: Settings,
    memory: CategoryMemory | None = None,
    *,
    announce: Callable[[str], None] | None = None,
) -> ImageTextEncoder:
    """The encoder to use: the one the settings name, else ``memory``'s own, else the default.

    Args:
        settings: ``encoder`` / ``clip_model`` / ``clip_pretrained`` name one explicitly.
        memory: An open memory whose recorded encoder spec applies when none is named.
        announce: Receives the note when the default falls back to the offline encoder.
    """
    from rar_agent.encoders import EncoderSpec, resolve_encoder

    named = settings.explicit_encoder
    explicit = EncoderSpec(*named) if named is not None else None
    stored = EncoderSpec.from_meta(memory.info.encoder_spec) if memory is not None else None
    return resolve_encoder(explicit, stored, device=settings.device, announce=announce)


def vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    labels: Sequence[str] | None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CategoryMemory:
    """A cached text memory of ``labels``, or of the encoder's built-in vocabulary when ``None``.

    The built-in vocabulary is the encoder's own (EfficientNet-Lite0: its ImageNet-1k
    classifier rows) or, for an encoder with a text tower, ImageNet-1k's class names as text
    prototypes. The collection name hashes the labels and the encoder fingerprint, so it is
    built once per (vocabulary, encoder) and reused; a resumed build skips what is stored.

    Raises:
        EncoderError: ``labels`` were given but the encoder has no text tower.
        LabelError: ``labels`` holds no usable name.
    """
    from rar_agent.encoders import BuiltinVocabulary, has_text_tower

    if labels is not None and not has_text_tower(encoder):
        from rar_agent.errors import EncoderError

        spec = spec_for(encoder.fingerprint)
        raise EncoderError(
            f"zero-shot --labels needs an encoder with a text tower (CLIP), and "
            f"{spec.label if spec else encoder.fingerprint} has none: pass a CLIP model with "
            "--clip-model (e.g. local-dir:/path/to/open_clip_dir), build a few-shot memory from "
            "example images (rar-agent memory build --from-folder DIR), or leave out --labels "
            "for its built-in ImageNet-1k classes"
        )
    if labels is None and isinstance(encoder, BuiltinVocabulary):
        return _builtin_vocabulary_memory(settings, encoder, progress)
    from rar_agent.encoders import default_vocabulary, short_templates
    from rar_agent.memory.builders import add_class_names

    names = list(labels) if labels is not None else list(default_vocabulary())
    # The 1000-class vocabulary uses the short template set; a user's few labels get all 80.
    templates = short_templates() if labels is None else None
    names = [n.strip() for n in names if n.strip()]
    if not names:
        from rar_agent.errors import LabelError

        raise LabelError("no labels given: pass comma-separated names, e.g. --labels 'cat,dog'")
    key = hashlib.sha256(("\n".join(names) + "\x00" + encoder.fingerprint).encode()).hexdigest()
    prefix = "imagenet" if labels is None else "labels"
    memory = open_memory(settings, collection=f"{prefix}-{key[:16]}")
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    if memory.count("text") < len(set(names)):
        add_class_names(memory, encoder, names, templates=templates, progress=progress)
    return memory


def _builtin_vocabulary_memory(
    settings: Settings,
    encoder: ImageTextEncoder,
    progress: Callable[[int, int], None] | None,
) -> CategoryMemory:
    from rar_agent.memory.vocabulary import add_builtin_vocabulary

    key = hashlib.sha256(encoder.fingerprint.encode()).hexdigest()
    memory = open_memory(settings, collection=f"builtin-{key[:16]}")
    try:
        add_builtin_vocabulary(memory, encoder, progress=progress)  # stores only what is missing
    except BaseException:
        memory.close()
        raise
    return memory
