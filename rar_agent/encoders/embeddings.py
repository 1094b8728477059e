"""The encoder as a LangChain ``Embeddings`` (text side), with ``embed_image`` for images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from rar_agent.encoders.base import ImageTextEncoder, input_size_of

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EncoderEmbeddings"]


def _open_rgb(uri: str, need: int | None = None) -> Image.Image:
    from rar_agent.images import load_image

    return load_image(uri, need=need).image


class EncoderEmbeddings(Embeddings):
    """LangChain embeddings backed by an :class:`ImageTextEncoder`.

    ``embed_documents`` / ``embed_query`` use the text tower; ``embed_image`` takes image
    paths (or URLs / data URIs, via :func:`rar_agent.images.load_image`) like LangChain's
    ``OpenCLIPEmbeddings``. Vectors are L2-normalised, so cosine and dot product agree.

    Args:
        encoder: An encoder object, or a spec for :func:`load_encoder`; ``None`` loads the
            default encoder. Nothing is read from the environment: an entry point passes
            ``Settings().clip_model`` / ``clip_pretrained`` here if it wants them.
        pretrained: Weights for a spec (ignored when ``encoder`` is an object).
        device: Torch device for a spec (ignored when ``encoder`` is an object).
    """

    def __init__(
        self,
        encoder: ImageTextEncoder | str | None = None,
        *,
        pretrained: str | None = None,
        device: str | None = None,
    ) -> None:
        if encoder is None or isinstance(encoder, str):
            from rar_agent.encoders.loader import load_encoder

            spec = encoder or None
            encoder = load_encoder(spec, pretrained=pretrained, device=device)
            self.model_spec: str | None = spec
        else:
            self.model_spec = None
        self.encoder: ImageTextEncoder = encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts with the encoder's text side."""
        return self.encoder.embed_texts(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one text with the encoder's text side."""
        return self.encoder.embed_texts([text])[0].tolist()

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images given as file paths, URLs or data URIs (validated and decoded)."""
        side = input_size_of(self.encoder)
        images = [_open_rgb(u, side) for u in uris]
        return self.encoder.embed_images(images).tolist()

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        """Async :meth:`embed_image` (runs in the default executor)."""
        from langchain_core.runnables.config import run_in_executor

        return await run_in_executor(None, self.embed_image, uris)
