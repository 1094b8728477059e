"""Zero-shot text prototypes: class names x CLIP prompt templates, averaged and normalised."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from rar_agent.encoders.base import ImageTextEncoder, l2_normalize
from rar_agent.errors import ConfigError

__all__ = [
    "build_text_prototypes",
    "default_templates",
    "default_vocabulary",
    "fill_template",
    "short_templates",
]

Template = str | Callable[[str], str]


@functools.cache
def _metadata() -> ModuleType:
    """open_clip's ``zero_shot_metadata`` module (class names and prompt templates).

    That file is plain data with no imports, while ``import open_clip`` loads the model code
    (2-5 s). Unless open_clip is already imported, the file is loaded on its own, so encoders
    that never touch open_clip (EfficientNet-Lite0) get ImageNet's class names at once.
    """
    if "open_clip" in sys.modules:
        return importlib.import_module("open_clip.zero_shot_metadata")
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "zero_shot_metadata.py" if folders else None
    if path is None or not path.is_file():
        return importlib.import_module("open_clip.zero_shot_metadata")
    file_spec = importlib.util.spec_from_file_location("_rar_open_clip_metadata", path)
    module = importlib.util.module_from_spec(file_spec)  # type: ignore[arg-type]
    file_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def default_vocabulary() -> list[str]:
    """open_clip's ImageNet-1k class names (1000 names, in class-index order)."""
    return list(_metadata().IMAGENET_CLASSNAMES)


def default_templates() -> list[Template]:
    """open_clip's copy of OpenAI's 80 ImageNet prompt templates (callables of a name)."""
    return list(_metadata().OPENAI_IMAGENET_TEMPLATES)


def short_templates() -> list[Template]:
    """open_clip's 7-template subset: close to the 80's zero-shot accuracy at 1/11 the cost.

    Used for the built-in 1000-class vocabulary, so its first build takes about a minute on a
    CPU instead of several.
    """
    return list(_metadata().SIMPLE_IMAGENET_TEMPLATES)


def fill_template(template: Template, name: str) -> str:
    """Fill a template: a callable is called; a string's ``{}``/``{c}`` is replaced by the name."""
    if callable(template):
        return str(template(name))
    if "{c}" in template:
        return template.replace("{c}", name)
    if "{}" in template:
        return template.replace("{}", name)
    raise ConfigError(f"prompt template {template!r} has no '{{}}' or '{{c}}' placeholder")


def build_text_prototypes(
    encoder: ImageTextEncoder,
    names: Sequence[str],
    templates: Sequence[Template] | None = None,
    *,
    names_per_batch: int | None = None,
) -> np.ndarray:
    """Embed each class name as the normalised mean of its prompt-template embeddings.

    This is CLIP's zero-shot classifier recipe. Prompts of several names go through the
    encoder together, so the encoder's batches stay full.

    Args:
        encoder: Any :class:`ImageTextEncoder` with a text side.
        names: Class names.
        templates: Strings with ``{}`` (or ``{c}``) or callables; default
            :func:`default_templates`.
        names_per_batch: Names embedded per encoder call (default: enough for ~512 prompts).

    Returns:
        float32 ``(len(names), encoder.dim)``, rows L2-normalised.
    """
    names = [str(n) for n in names]
    tmpl = list(templates) if templates is not None else default_templates()
    if not tmpl:
        raise ConfigError("templates is empty: give at least one prompt template such as '{}'")
    if not names:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    per = names_per_batch or max(1, 512 // len(tmpl))
    out = np.empty((len(names), encoder.dim), dtype=np.float32)
    for start in range(0, len(names), per):
        chunk = names[start : start + per]
        prompts = [fill_template(t, n) for n in chunk for t in tmpl]
        emb = np.asarray(encoder.embed_texts(prompts), dtype=np.float32)
        means = emb.reshape(len(chunk), len(tmpl), -1).mean(axis=1)
        out[start : start + len(chunk)] = l2_normalize(means)
    return out
