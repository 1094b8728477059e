"""Encoder factories for the ``package.module:factory`` loading path (and fast test doubles).

``hashing_encoder`` is a real, deterministic, torch-free encoder: images are shrunk to 8x8
grey pixels and texts hashed into character-trigram counts, then both are projected with a
fixed random matrix. It meets :class:`rar_agent.encoders.ImageTextEncoder`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rar_agent.encoders.base import l2_normalize

__all__ = [
    "HashingEncoder",
    "MeetingEncoder",
    "broken_factory",
    "hashing_encoder",
    "not_an_encoder",
]

_BUCKETS = 256


class HashingEncoder:
    """A small deterministic image+text encoder without a neural network."""

    def __init__(self, dim: int = 16, *, seed: int = 0, pretrained: str | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.pretrained = pretrained
        self.device = "cpu"
        self._img_proj = rng.standard_normal((64, dim)).astype(np.float32)
        self._txt_proj = rng.standard_normal((_BUCKETS, dim)).astype(np.float32)
        self.fingerprint = f"hashing:{dim}:{seed}"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images from their 8x8 greyscale thumbnails."""
        rows = [
            np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255.0 - 0.5
            for im in images
        ]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack(rows) @ self._img_proj)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts from hashed character trigrams."""
        rows = np.zeros((len(texts), _BUCKETS), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for j in range(len(padded) - 2):
                h = hashlib.blake2b(padded[j : j + 3].encode(), digest_size=4).digest()
                rows[i, int.from_bytes(h, "little") % _BUCKETS] += 1.0
        return l2_normalize(rows @ self._txt_proj)


class MeetingEncoder:
    """An encoder whose image calls each wait until ``parties`` of them are inside at once
    (``threading.BrokenBarrierError`` after ``timeout`` s): a test's proof that callers encode
    side by side, not one after the other. Everything else is ``inner``'s."""

    def __init__(self, inner: Any, parties: int = 2, timeout: float = 20.0) -> None:
        self.inner = inner
        self.meeting = threading.Barrier(parties, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``inner``'s rows, once the other callers are encoding too."""
        self.meeting.wait()
        return np.asarray(self.inner.embed_images(images))


def hashing_encoder(pretrained: str | None = None, device: str | None = None) -> HashingEncoder:
    """Factory with the keywords ``load_encoder`` passes through."""
    return HashingEncoder(pretrained=pretrained)


def not_an_encoder() -> object:
    """A factory whose result does not meet the protocol."""
    return object()


def broken_factory() -> HashingEncoder:
    """A factory that fails while loading."""
    raise RuntimeError("weights file is corrupt")
