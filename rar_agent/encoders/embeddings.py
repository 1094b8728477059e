"""The encoder as a LangChain ``Embeddings`` (text side), with ``embed_image`` for images."""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from rar_agent.encoders.base import ImageTextEncoder

__all__ = ["EncoderEmbeddings"]


def _open_rgb(uri: str):  # noqa: ANN202 - PIL is imported lazily
    try:
        from rar_agent.images import load_image
    except ImportError:  # pragma: no cover - images module is part of the package
        from PIL import Image

        with Image.open(uri) as im:
            return im.convert("RGB")
    return load_image(uri).image


class EncoderEmbeddings(Embeddings):
    """LangChain embeddings backed by an :class:`ImageTextEncoder`.

    ``embed_documents`` / ``embed_query`` use the text tower; ``embed_image`` takes image
    paths (or URLs / data URIs, via :func:`rar_agent.images.load_image`) like LangChain's
    ``OpenCLIPEmbeddings``. Vectors are L2-normalised, so cosine and dot product agree.

    Args:
        encoder: The encoder to wrap (e.g. ``load_encoder()``).
    """

    def __init__(self, encoder: ImageTextEncoder) -> None:
        self.encoder = encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts with the encoder's text side."""
        return self.encoder.embed_texts(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one text with the encoder's text side."""
        return self.encoder.embed_texts([text])[0].tolist()

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images given as file paths, URLs or data URIs."""
        images = [_open_rgb(u) for u in uris]
        return self.encoder.embed_images(images).tolist()
