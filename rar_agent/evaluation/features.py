"""A feature cache for evaluations: each image is encoded once, across runs and seeds.

:class:`CachedEncoder` wraps an encoder; an image's vector is looked up by the hash of its
pixels (and size), so the same image exported again by another seed, or encoded again by the
teacher after the stream encoded it, costs a lookup. The cache of one encoder (by its
fingerprint) is one ``.npz`` file in a folder (``rar-agent eval --feature-cache DIR``),
written by :meth:`CachedEncoder.save`. Everything else (text, the encoder's attributes)
passes through unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rar_agent.errors import ConfigError, unwritable_reason

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.encoders import ImageTextEncoder

__all__ = ["CachedEncoder"]

logger = logging.getLogger(__name__)


def _key(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    digest = hashlib.sha1(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


class CachedEncoder:
    """An encoder whose image vectors are cached by pixel content (module docstring).

    Args:
        encoder: The encoder to wrap.
        folder: Where the cache file lives (created when saved).

    Attributes:
        hits: Images answered from the cache.
        misses: Images encoded.
    """

    def __init__(self, encoder: ImageTextEncoder, folder: str | Path) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.fingerprint = encoder.fingerprint
        name = hashlib.sha1(encoder.fingerprint.encode()).hexdigest()[:16]
        self.path = Path(folder) / f"features-{name}.npz"
        try:  # now, not when the run ends
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._cannot_keep(e) from e
        self.hits = 0
        self.misses = 0
        self._rows: dict[str, np.ndarray] = self._load()
        self._dirty = False

    def _load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path) as data:
                keys, rows = data["keys"], data["rows"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                f"the feature cache {self.path} is unreadable ({e}): delete it to start afresh"
            ) from e
        if rows.ndim != 2 or rows.shape[1] != self.dim or len(keys) != len(rows):
            raise ConfigError(
                f"the feature cache {self.path} holds {rows.shape} vectors, not {self.dim}-d "
                "ones for this encoder: delete it to start afresh"
            )
        return {str(k): row for k, row in zip(keys.astype("U40"), rows, strict=True)}

    def __len__(self) -> int:
        return len(self._rows)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The images' vectors: cached ones looked up, the others encoded (in one batch)."""
        keys = [_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self._rows]
        if todo:
            fresh = np.asarray(self.encoder.embed_images([images[i] for i in todo]), np.float32)
            for i, row in zip(todo, fresh, strict=True):
                self._rows[keys[i]] = row
            self._dirty = True
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._rows[k] for k in keys]).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Passed through (text is not cached)."""
        return self.encoder.embed_texts(texts)

    def save(self) -> Path | None:
        """Write the cache (atomically) if it gained vectors; return its path if written."""
        if not self._dirty:
            return None
        keys = np.array(list(self._rows), dtype="S40")
        rows = np.stack(list(self._rows.values())).astype(np.float32)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, keys=keys, rows=rows)
            os.replace(tmp, self.path)
        except OSError as e:
            raise self._cannot_keep(e) from e
        self._dirty = False
        logger.info("feature cache %s: %d vectors", self.path, len(rows))
        return self.path

    def _cannot_keep(self, error: OSError) -> ConfigError:
        return ConfigError(
            f"cannot keep the feature cache in {self.path.parent}: "
            f"{unwritable_reason(error, self.path)}: "
            "pick another --feature-cache folder"
        )

    def __getattr__(self, name: str) -> Any:
        # the wrapped encoder's other attributes (input_size, spec, builtin_vocabulary, ...)
        if name == "encoder":
            raise AttributeError(name)
        return getattr(self.encoder, name)
