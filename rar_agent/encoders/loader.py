"""``load_encoder``: one entry point for every encoder, loaded once per process."""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import threading
from typing import Any

from rar_agent.encoders.base import ImageTextEncoder
from rar_agent.errors import ConfigError, ModelLoadError

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "clear_encoder_cache", "load_encoder"]

logger = logging.getLogger(__name__)

#: The RAR paper's encoder.
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_CACHE: dict[tuple[str, str | None, str | None, str | None, int], ImageTextEncoder] = {}
_LOCK = threading.Lock()


def load_encoder(
    spec: str | None = None,
    *,
    pretrained: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int = 64,
) -> ImageTextEncoder:
    """Load an encoder by name; the same arguments return the same (cached) instance.

    Args:
        spec: Which encoder:

            - ``None``: the default, ``ViT-B-16`` with ``openai`` weights (as in the RAR paper);
            - an open_clip name (``ViT-B-16``; ``pretrained`` a tag or a checkpoint file),
              ``hf-hub:org/repo`` or ``local-dir:/path`` -> :class:`OpenClipEncoder`;
            - ``hf:<repo or dir>`` -> :class:`TransformersClipEncoder` (CLIP / SigLIP);
            - ``package.module:factory`` -> whatever the factory returns, called with
              ``pretrained``/``device`` keywords when it accepts them; it must meet
              :class:`ImageTextEncoder`.
        pretrained: Weights for a built-in open_clip name (tag or file path); ignored by the
            other kinds. ``None`` with an explicit built-in name means random weights.
        device: ``cuda``/``mps``/``cpu``; ``None`` picks cuda, then mps, then cpu.
        precision: ``fp32``/``fp16``/``bf16``; ``None`` = fp16 on GPU, fp32 on CPU.
        batch_size: Images or texts per forward pass.

    Raises:
        ModelLoadError: Weights or config could not be loaded (the message says what to pass).
        ConfigError: The spec is malformed or a factory returned something unusable.
    """
    if spec is None or not spec.strip():
        spec = DEFAULT_MODEL
        pretrained = pretrained or DEFAULT_PRETRAINED
    spec = spec.strip()
    key = (spec, pretrained, device, precision, int(batch_size))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        encoder = _create(spec, pretrained, device, precision, batch_size)
        _CACHE[key] = encoder
        logger.info("loaded encoder %s", getattr(encoder, "fingerprint", spec))
        return encoder


def clear_encoder_cache() -> None:
    """Forget every cached encoder (the next ``load_encoder`` loads again)."""
    with _LOCK:
        _CACHE.clear()


def _create(
    spec: str, pretrained: str | None, device: str | None, precision: str | None, batch_size: int
) -> ImageTextEncoder:
    if spec.startswith("hf:"):
        from rar_agent.encoders.hf_backend import TransformersClipEncoder

        source = spec[3:].strip()
        if not source:
            raise ConfigError("'hf:' needs a repo id or a folder, e.g. hf:/path/to/clip_dir")
        return TransformersClipEncoder.load(
            source, device=device, precision=precision, batch_size=batch_size
        )
    if _FACTORY.match(spec) and not spec.startswith(("local-dir:", "hf-hub:")):
        return _from_factory(spec, pretrained=pretrained, device=device)
    from rar_agent.encoders.open_clip_backend import OpenClipEncoder

    if spec.startswith("local-dir:"):
        return OpenClipEncoder.load(spec, device=device, precision=precision, batch_size=batch_size)
    if not spec.startswith("hf-hub:"):
        _check_open_clip_name(spec)
    return OpenClipEncoder.load(
        spec, pretrained, device=device, precision=precision, batch_size=batch_size
    )


def _check_open_clip_name(name: str) -> None:
    import open_clip

    if name.replace("/", "-") not in open_clip.list_models():
        raise ConfigError(
            f"unknown encoder {name!r}: use an open_clip architecture (e.g. ViT-B-16; see "
            "open_clip.list_models()), local-dir:/path, hf-hub:org/repo, hf:<repo or dir>, "
            "or package.module:factory."
        )


def _add_working_dir_to_path() -> None:
    """Let ``module:factory`` name modules in the working directory, as ``python -m`` does.

    Console scripts start with their own bin directory on ``sys.path``, not the working
    directory, so ``--encoder scripts.effnet_encoder:create`` would otherwise fail from a checkout.
    """
    import os
    import sys

    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _from_factory(spec: str, *, pretrained: str | None, device: str | None) -> ImageTextEncoder:
    module_name, _, attr_path = spec.partition(":")
    _add_working_dir_to_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} for encoder factory {spec!r}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr_path!r} ({spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"encoder factory {spec!r} is not callable")
    kwargs = _accepted_kwargs(obj, {"pretrained": pretrained, "device": device})
    try:
        encoder = obj(**kwargs)
    except (ModelLoadError, ConfigError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"encoder factory {spec!r} failed: {exc}") from exc
    _check_protocol(encoder, spec)
    return encoder


def _accepted_kwargs(func: Any, candidates: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {k: v for k, v in candidates.items() if v is not None}
    return {k: v for k, v in candidates.items() if k in params and v is not None}


def _check_protocol(encoder: Any, spec: str) -> None:
    missing = [
        name
        for name in ("dim", "fingerprint", "embed_images", "embed_texts")
        if not hasattr(encoder, name)
    ]
    if missing or not isinstance(encoder, ImageTextEncoder):
        raise ConfigError(
            f"encoder factory {spec!r} returned {type(encoder).__name__}, which lacks "
            f"{', '.join(missing) or 'the protocol'}; it must provide dim, fingerprint, "
            "embed_images and embed_texts (see rar_agent.encoders.ImageTextEncoder)."
        )
    if not isinstance(encoder.dim, int) or encoder.dim <= 0:
        raise ConfigError(f"encoder factory {spec!r}: dim must be a positive int")
    if not isinstance(encoder.fingerprint, str) or not encoder.fingerprint:
        raise ConfigError(f"encoder factory {spec!r}: fingerprint must be a non-empty string")
