"""Image-text encoders: the protocol, the open_clip, transformers and offline EfficientNet-Lite0
backends, how to choose one, and helpers.

Heavy libraries (torch, open_clip, transformers, langchain_core) load only when a backend or
:class:`EncoderEmbeddings` is first used, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.base import (
    BuiltinVocabulary,
    ImageTextEncoder,
    has_text_tower,
    input_size_of,
    l2_normalize,
)
from rar_agent.encoders.same_thing import same_thing_bar
from rar_agent.encoders.spec import DEFAULT_CLIP, OFFLINE_ENCODER, EncoderSpec, spec_of

if TYPE_CHECKING:
    from rar_agent.encoders.effnet_backend import EfficientNetLite0Encoder
    from rar_agent.encoders.embeddings import EncoderEmbeddings
    from rar_agent.encoders.hf_backend import TransformersClipEncoder
    from rar_agent.encoders.loader import (
        DEFAULT_MODEL,
        DEFAULT_PRETRAINED,
        clear_encoder_cache,
        load_default_encoder,
        load_encoder,
    )
    from rar_agent.encoders.open_clip_backend import OpenClipEncoder
    from rar_agent.encoders.prototypes import (
        build_text_prototypes,
        default_templates,
        default_vocabulary,
        fill_template,
        short_templates,
    )
    from rar_agent.encoders.resolve import resolve_encoder

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "OFFLINE_ENCODER",
    "BuiltinVocabulary",
    "EfficientNetLite0Encoder",
    "EncoderEmbeddings",
    "EncoderSpec",
    "ImageTextEncoder",
    "OpenClipEncoder",
    "TransformersClipEncoder",
    "build_text_prototypes",
    "clear_encoder_cache",
    "default_templates",
    "default_vocabulary",
    "fill_template",
    "has_text_tower",
    "input_size_of",
    "l2_normalize",
    "load_default_encoder",
    "load_encoder",
    "resolve_encoder",
    "same_thing_bar",
    "short_templates",
    "spec_of",
]

_LAZY = {
    "DEFAULT_MODEL": "loader",
    "DEFAULT_PRETRAINED": "loader",
    "clear_encoder_cache": "loader",
    "load_encoder": "loader",
    "load_default_encoder": "loader",
    "resolve_encoder": "resolve",
    "EfficientNetLite0Encoder": "effnet_backend",
    "EncoderEmbeddings": "embeddings",
    "OpenClipEncoder": "open_clip_backend",
    "TransformersClipEncoder": "hf_backend",
    "build_text_prototypes": "prototypes",
    "default_templates": "prototypes",
    "default_vocabulary": "prototypes",
    "fill_template": "prototypes",
    "short_templates": "prototypes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
