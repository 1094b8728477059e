"""Encoders: shapes, dtype, normalisation, determinism, batching, loading paths, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rar_agent.encoders import ImageTextEncoder, load_encoder


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8), "RGB")
        for i in range(n)
    ]


def test_tiny_encoder_meets_protocol(tiny_encoder: ImageTextEncoder) -> None:
    assert isinstance(tiny_encoder, ImageTextEncoder)
    assert tiny_encoder.dim == 32
    vecs = tiny_encoder.embed_images(_images(3))
    assert vecs.shape == (3, 32)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
