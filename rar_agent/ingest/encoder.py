"""Where a memory meets its encoder: binding an encoder to a memory (with the spec it loads
by, passed explicitly) and choosing the encoder for a memory from the settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders.base import ImageTextEncoder
    from rar_agent.memory.core import CategoryMemory

__all__ = ["bind_memory", "memory_encoder"]


def bind_memory(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    *,
    expected_entries: int | None = None,
    description: str | None = None,
) -> None:
    """Bind ``encoder`` to ``memory``, recording how it loads again when that is known.

    The spec comes from the encoder itself (:func:`rar_agent.encoders.spec_of`: set by
    ``load_encoder``), never from process-wide state, and is handed to the memory.

    Raises:
        EncoderMismatchError: The memory was built with another encoder.
    """
    from rar_agent.encoders.spec import spec_of

    spec = spec_of(encoder)
    memory.bind_encoder(
        encoder.fingerprint,
        encoder.dim,
        encoder_spec=spec.to_meta() if spec is not None else None,
        description=description,
        expected_entries=expected_entries,
    )


def memory_encoder(
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

    Raises:
        ModelLoadError: The named or recorded encoder cannot be loaded.
    """
    from rar_agent.encoders import EncoderSpec, resolve_encoder

    named = settings.explicit_encoder
    explicit = EncoderSpec(*named) if named is not None else None
    stored = EncoderSpec.from_meta(memory.info.encoder_spec) if memory is not None else None
    return resolve_encoder(explicit, stored, device=settings.device, announce=announce)
