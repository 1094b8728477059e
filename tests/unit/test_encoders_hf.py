"""transformers backend: a tiny CLIPModel saved with save_pretrained, loaded via ``hf:<dir>``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_agent.encoders import (
    ImageTextEncoder,
    TransformersClipEncoder,
    build_text_prototypes,
    load_encoder,
)
from rar_agent.errors import ModelLoadError
from tests.helpers.tiny_models import TINY_DIM, make_tiny_hf_clip


@pytest.fixture(scope="module")
def hf_encoder(tiny_hf_clip_spec: str) -> TransformersClipEncoder:
    enc = load_encoder(tiny_hf_clip_spec, device="cpu")
    assert isinstance(enc, TransformersClipEncoder)
    return enc


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (50, 30 + i, 3), dtype=np.uint8)) for i in range(n)
    ]


def test_protocol_and_metadata(hf_encoder: TransformersClipEncoder) -> None:
    assert isinstance(hf_encoder, ImageTextEncoder)
    assert hf_encoder.dim == TINY_DIM
    assert hf_encoder.fingerprint.startswith("hf:tiny_hf_clip")
    assert not hf_encoder.model.training


def test_shapes_dtype_norm_and_determinism(hf_encoder: TransformersClipEncoder) -> None:
    ims = _images(4)
    vecs = hf_encoder.embed_images(ims)
    assert vecs.shape == (4, TINY_DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vecs, hf_encoder.embed_images(ims))
    texts = ["a photo of the cat", "an owl", "x"]
    tv = hf_encoder.embed_texts(texts)
    assert tv.shape == (3, TINY_DIM) and tv.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tv, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(tv, hf_encoder.embed_texts(texts))
    assert hf_encoder.embed_images([]).shape == (0, TINY_DIM)
    assert hf_encoder.embed_texts([]).shape == (0, TINY_DIM)


def test_batching_invariance(tiny_hf_clip_spec: str, hf_encoder) -> None:
    small = load_encoder(tiny_hf_clip_spec, device="cpu", batch_size=1)
    ims = _images(3)
    np.testing.assert_allclose(small.embed_images(ims), hf_encoder.embed_images(ims), atol=1e-5)
    texts = ["short", "a much longer text than the other", "mid length"]
    np.testing.assert_allclose(small.embed_texts(texts), hf_encoder.embed_texts(texts), atol=1e-5)


def test_reload_and_other_weights(tiny_hf_clip_spec: str, hf_encoder, tmp_path: Path) -> None:
    again = TransformersClipEncoder.load(tiny_hf_clip_spec.removeprefix("hf:"), device="cpu")
    assert again.fingerprint == hf_encoder.fingerprint
    np.testing.assert_allclose(again.embed_texts(["cat"]), hf_encoder.embed_texts(["cat"]))
    other = load_encoder(make_tiny_hf_clip(tmp_path / "tiny_hf_clip", seed=7), device="cpu")
    assert other.fingerprint != hf_encoder.fingerprint


def test_text_prototypes(hf_encoder) -> None:
    protos = build_text_prototypes(hf_encoder, ["cat", "dog"], ["a photo of a {}.", "{}"])
    assert protos.shape == (2, TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-5)


def test_offline_repo_id_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("hf:rar-agent-tests/no-such-clip")
    assert time.monotonic() - start < 20
    msg = str(info.value)
    assert "hf:rar-agent-tests/no-such-clip" in msg
    assert "hf:/path/to/dir" in msg and "RAR_CLIP_MODEL" in msg


def test_bad_local_folders(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_encoder(f"hf:{file}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="hf:/path/to/dir"):
        load_encoder(f"hf:{empty}")
