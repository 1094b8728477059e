"""EncoderEmbeddings (LangChain ``Embeddings``), text prototypes and default vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.unit_tests import EmbeddingsUnitTests
from PIL import Image

from rar_agent.encoders import (
    EncoderEmbeddings,
    build_text_prototypes,
    default_templates,
    default_vocabulary,
    fill_template,
    l2_normalize,
)
from rar_agent.errors import ConfigError, ImageError
from tests.helpers.tiny_models import TINY_DIM


class TestEncoderEmbeddingsStandard(EmbeddingsUnitTests):
    """LangChain's own conformance tests for Embeddings integrations."""

    spec: str = ""

    @pytest.fixture(autouse=True)
    def _tiny_spec(self, tiny_openclip_spec: str) -> None:
        type(self).spec = tiny_openclip_spec

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return EncoderEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"encoder": self.spec, "device": "cpu"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # Nothing is read from the environment (RAR_CLIP_MODEL is read by the entry points
        # and passed in), so LangChain's init-from-env test does not apply: empty = skipped.
        return {}, {}, {}


@pytest.fixture
def embeddings(tiny_encoder) -> EncoderEmbeddings:
    return EncoderEmbeddings(tiny_encoder)


def test_text_side(embeddings: EncoderEmbeddings, tiny_encoder) -> None:
    docs = embeddings.embed_documents(["a cat", "a dog"])
    assert len(docs) == 2 and all(len(v) == TINY_DIM for v in docs)
    assert all(isinstance(x, float) for x in docs[0])
    np.testing.assert_allclose(embeddings.embed_query("a cat"), docs[0], atol=1e-6)
    np.testing.assert_allclose(docs, tiny_encoder.embed_texts(["a cat", "a dog"]), atol=1e-6)
    assert embeddings.embed_documents([]) == []


async def test_async_variants(embeddings: EncoderEmbeddings, tmp_path: Path) -> None:
    docs = await embeddings.aembed_documents(["a cat"])
    np.testing.assert_allclose(docs, embeddings.embed_documents(["a cat"]), atol=1e-6)
    path = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (200, 0, 0)).save(path)
    np.testing.assert_allclose(
        await embeddings.aembed_image([str(path)]), embeddings.embed_image([str(path)]), atol=1e-6
    )


def test_embed_image_from_paths(embeddings: EncoderEmbeddings, tiny_encoder, tmp_path) -> None:
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"im{i}.png"
        Image.new("RGBA", (24, 30), (*color, 255)).save(path)
        paths.append(str(path))
    vecs = embeddings.embed_image(paths)
    assert len(vecs) == 2 and len(vecs[0]) == TINY_DIM
    direct = tiny_encoder.embed_images([Image.open(p).convert("RGB") for p in paths])
    np.testing.assert_allclose(vecs, direct, atol=1e-5)


def test_embed_image_bad_file(embeddings: EncoderEmbeddings, tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ImageError):
        embeddings.embed_image([str(bad)])


def test_prototypes_are_template_means(tiny_encoder) -> None:
    templates = ["a photo of a {}.", "a drawing of a {}.", lambda c: f"itap of a {c}."]
    protos = build_text_prototypes(tiny_encoder, ["cat", "red fox", "owl"], templates)
    assert protos.shape == (3, TINY_DIM) and protos.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-5)
    prompts = ["a photo of a red fox.", "a drawing of a red fox.", "itap of a red fox."]
    expected = l2_normalize(tiny_encoder.embed_texts(prompts).mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(protos[1], expected, atol=1e-5)
    one_by_one = build_text_prototypes(
        tiny_encoder, ["cat", "red fox", "owl"], templates, names_per_batch=1
    )
    np.testing.assert_allclose(one_by_one, protos, atol=1e-5)


def test_prototypes_edge_cases(tiny_encoder) -> None:
    assert build_text_prototypes(tiny_encoder, [], ["{}"]).shape == (0, TINY_DIM)
    with pytest.raises(ConfigError, match="templates"):
        build_text_prototypes(tiny_encoder, ["cat"], [])
    with pytest.raises(ConfigError, match="placeholder"):
        build_text_prototypes(tiny_encoder, ["cat"], ["no placeholder"])
    assert fill_template("a {c} here", "cat") == "a cat here"


def test_default_vocabulary_and_templates(tiny_encoder) -> None:
    vocab = default_vocabulary()
    assert len(vocab) == 1000 and len(set(vocab)) > 990
    assert all(isinstance(v, str) and v for v in vocab)
    templates = default_templates()
    assert len(templates) == 80
    assert "goldfish" in fill_template(templates[0], "goldfish")
    protos = build_text_prototypes(tiny_encoder, vocab[:3])
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-5)


def test_no_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAR_CLIP_MODEL is read by the entry points (Settings), not by the embeddings."""
    import rar_agent.encoders.loader as loader

    asked: list[tuple[str | None, str | None]] = []
    monkeypatch.setattr(
        loader, "load_encoder", lambda spec=None, **kw: asked.append((spec, kw.get("pretrained")))
    )
    monkeypatch.setenv("RAR_CLIP_MODEL", "ViT-L-14")
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "laion2b")
    EncoderEmbeddings()
    EncoderEmbeddings("hf:/some/dir")
    assert asked == [(None, None), ("hf:/some/dir", None)]
