"""The transformers backend: CLIP and SigLIP models from a hub repo or a local folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.base import bound_aspect
from rar_agent.encoders.hub import hub_access
from rar_agent.encoders.open_clip_backend import describe_load_failure, model_load_help
from rar_agent.encoders.torch_base import (
    TorchEncoderBase,
    placement,
    weights_digest,
)
from rar_agent.errors import EncoderError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["TransformersClipEncoder"]

logger = logging.getLogger(__name__)


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output (projected ``pooler_output``); 4.x a tensor."""
    if hasattr(out, "pooler_output"):
        return out.pooler_output
    if isinstance(out, tuple):
        return out[1] if len(out) > 1 else out[0]
    return out


class TransformersClipEncoder(TorchEncoderBase):
    """A transformers dual encoder (``CLIPModel``, ``SiglipModel``...) with its processor.

    Build one with :meth:`load` (or ``load_encoder("hf:<repo or dir>")``).

    Args:
        model: A model with ``get_image_features`` and ``get_text_features``.
        image_processor: The model's image processor.
        tokenizer: The model's tokenizer.
        identity: Readable model label, part of the fingerprint.
        device: Torch device.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Images or texts per forward pass.
        digest: Weight digest computed before casting; computed here when omitted.
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        *,
        identity: str,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
        digest: str | None = None,
    ) -> None:
        for attr in ("get_image_features", "get_text_features"):
            if not hasattr(model, attr):
                raise ModelLoadError(
                    f"{identity} is a {type(model).__name__}, which has no {attr}: use a CLIP or "
                    "SigLIP dual-encoder checkpoint, or plug your own encoder in with "
                    "--encoder package.module:factory."
                )
        digest = digest or weights_digest(model)
        self.model = self._place(model, device, precision, batch_size)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.identity = identity
        model_type = str(getattr(model.config, "model_type", ""))
        self._pad_max = model_type.startswith("siglip")
        self._max_len = self._text_max_length()
        self.fingerprint = f"hf:{identity}:{digest}"
        self.dim = self._probe_dim()

    @property
    def input_size(self) -> int | None:
        """The largest side the image processor resizes or crops to (224 for most CLIPs)."""
        sides: list[int] = []
        for attr in ("size", "crop_size"):
            value = getattr(self.image_processor, attr, None)
            if isinstance(value, dict):
                sides += [v for v in value.values() if isinstance(v, int)]
            elif isinstance(value, int):
                sides.append(value)
        if not sides:
            vision = getattr(self.model.config, "vision_config", None)
            side = getattr(vision, "image_size", None)
            sides = [side] if isinstance(side, int) else []
        return max(sides) if sides and max(sides) > 0 else None

    def _probe_dim(self) -> int:
        if self.tokenizer is not None:
            return int(self.embed_texts(["a"]).shape[1])
        cfg = self.model.config
        dim = getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size
        return int(dim)

    def _text_max_length(self) -> int:
        text_cfg = getattr(self.model.config, "text_config", None)
        n = getattr(text_cfg, "max_position_embeddings", None)
        if n:
            return int(n)
        m = getattr(self.tokenizer, "model_max_length", 77)
        return int(m) if m and m < 10_000 else 77

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str | None = None,
        precision: str | None = None,
        batch_size: int = 64,
    ) -> TransformersClipEncoder:
        """Load a CLIP/SigLIP model and its processor from a hub repo id or a local folder.

        Raises:
            ModelLoadError: The folder or repo could not be read (or downloaded).
        """
        from transformers import AutoModel

        local = Path(source).expanduser()
        is_dir = local.is_dir()
        what = f"hf:{source}"
        if not is_dir and (source.startswith((".", "/", "~")) or local.exists()):
            raise ModelLoadError(model_load_help(what, f"{local} is not a folder"))
        dev, prec = placement(device, precision)
        where = str(local) if is_dir else source
        try:
            with nullcontext() if is_dir else hub_access(what):
                model = AutoModel.from_pretrained(where).float()
                image_processor, tokenizer = _load_processors(where)
        except Exception as exc:  # OSError, hub errors, ValueError for unknown configs
            raise ModelLoadError(model_load_help(what, describe_load_failure(exc))) from exc
        identity = local.name if is_dir else source
        return cls(
            model,
            image_processor,
            tokenizer,
            identity=identity,
            device=dev,
            precision=prec,
            batch_size=batch_size,
            digest=weights_digest(model),
        )

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Run the model's image processor over the images; returns ``pixel_values``."""
        bounded = [bound_aspect(im) for im in images]
        return self.image_processor(images=bounded, return_tensors="pt")["pixel_values"]

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise EncoderError(f"{self.fingerprint} has no tokenizer, so it cannot embed text.")
        inputs = self.tokenizer(
            texts,
            padding="max_length" if self._pad_max else True,
            truncation=True,
            max_length=self._max_len,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return _features(self.model.get_text_features(**inputs))


def _load_processors(where: str) -> tuple[Any, Any]:
    """The image processor and tokenizer saved with the model (AutoProcessor first)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(where)
        image_processor = getattr(proc, "image_processor", None)
        tokenizer = getattr(proc, "tokenizer", None)
    except Exception as exc:
        logger.debug("AutoProcessor failed for %s (%s); trying the parts", where, exc)
        image_processor, tokenizer = None, None
    if image_processor is None:
        image_processor = AutoImageProcessor.from_pretrained(where)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except Exception as exc:
            logger.warning("no tokenizer for %s (%s): text embedding disabled", where, exc)
    return image_processor, tokenizer
