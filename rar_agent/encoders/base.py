"""The encoder protocol every backend meets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_ASPECT",
    "BuiltinVocabulary",
    "ImageTextEncoder",
    "bound_aspect",
    "has_text_tower",
    "input_size_of",
    "l2_normalize",
]

MAX_ASPECT = 16.0


@runtime_checkable
class ImageTextEncoder(Protocol):
    """What the memory and the retriever need from an encoder.

    Attributes:
        dim: Length of every embedding.
        fingerprint: Identity of model + weights; a memory refuses other fingerprints.

    An encoder may also say which image size its transform needs: ``input_size``, the side
    its transform resizes an image's shorter side to (224 for most CLIP models). The built-in
    backends have it, and the loaders then decode photos no larger than that
    (:func:`input_size_of`); an encoder without it gets full-size images, as before. It is not
    a required member, so encoders written against the protocol before it keep working.
    """

    dim: int
    fingerprint: str

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images into a float32 ``(n, dim)`` array, rows L2-normalised."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings into a float32 ``(n, dim)`` array, rows L2-normalised.

        Image-only encoders raise :class:`rar_agent.errors.EncoderError`.
        """
        ...


@runtime_checkable
class BuiltinVocabulary(Protocol):
    """An encoder that brings its own class vocabulary (e.g. a classifier head)."""

    def builtin_vocabulary(self) -> tuple[list[str], np.ndarray]:
        """``(class names, float32 (n, dim) unit rows)`` in the encoder's embedding space."""
        ...


def input_size_of(encoder: object) -> int | None:
    """The side ``encoder``'s transform resizes an image's shorter side to, when it says.

    Reads the encoder's ``input_size`` (an int, or a sequence whose largest item counts);
    ``None`` when it has none, so that callers decode the full image.
    """
    value = getattr(encoder, "input_size", None)
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        value = max(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def has_text_tower(encoder: object) -> bool:
    """Whether ``encoder`` can embed text; image-only encoders set ``text_tower = False``."""
    return bool(getattr(encoder, "text_tower", True))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def bound_aspect(image: Image.Image, max_ratio: float = MAX_ASPECT) -> Image.Image:
    """Center-crop the long side so it is at most ``max_ratio`` times the short side.

    CLIP transforms resize the short side to the input size before a center crop, so a
    60000x1 strip would first become a multi-gigabyte image. The crop keeps the center, which
    is all a center-cropping transform would use anyway.
    """
    width, height = image.size
    short, long_ = min(width, height), max(width, height)
    limit = max(1, int(short * max_ratio))
    if long_ <= limit:
        return image
    if width > height:
        left = (width - limit) // 2
        return image.crop((left, 0, left + limit, height))
    top = (height - limit) // 2
    return image.crop((0, top, width, top + limit))
