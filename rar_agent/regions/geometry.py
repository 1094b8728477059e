"""Region geometry: the context window around a box, and the crop + blur + pad pre-processing.

Each box is cropped with some context around it (more for small boxes), everything outside
the box is blurred, the crop is padded to a square and resized for the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ConfigError
from rar_agent.regions.boxes import Box, Coords, as_coords, check_box

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_BLUR",
    "DEFAULT_CONTEXT",
    "PAD_COLOR",
    "ContextCurve",
    "RegionGeometry",
    "context_scale",
    "encoder_input_size",
    "prepare_region",
    "region_geometry",
    "square_resize",
]

#: Default blur radius as a fraction of the crop window's longer side.
DEFAULT_BLUR = 0.04
#: Padding colour: the CLIP mean colour, which the encoder normalises to about zero.
PAD_COLOR = (122, 116, 104)


IntBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class ContextCurve:
    """How much context a box gets: a crop side scale that grows as the box gets smaller.

    The scale is ``min_scale`` for boxes covering at least ``large_area`` of the image,
    ``max_scale`` for boxes covering at most ``small_area``, and log-linear in the area in
    between. The crop window is the box scaled by this factor about its centre.
    """

    min_scale: float = 1.0
    max_scale: float = 2.5
    small_area: float = 0.001
    large_area: float = 0.25

    def __post_init__(self) -> None:
        if not 1.0 <= self.min_scale <= self.max_scale:
            raise ConfigError(
                "context scales need 1 <= min_scale <= max_scale, got "
                f"{self.min_scale} and {self.max_scale}"
            )
        if not 0.0 < self.small_area < self.large_area <= 1.0:
            raise ConfigError(
                "context areas need 0 < small_area < large_area <= 1, got "
                f"{self.small_area} and {self.large_area}"
            )

    def __call__(self, relative_area: float) -> float:
        """Scale for a box covering ``relative_area`` (0..1] of the image."""
        if relative_area >= self.large_area:
            return self.min_scale
        if relative_area <= self.small_area:
            return self.max_scale
        t = math.log(self.large_area / relative_area) / math.log(self.large_area / self.small_area)
        return self.min_scale + t * (self.max_scale - self.min_scale)


DEFAULT_CONTEXT = ContextCurve()

Context = ContextCurve | float | Callable[[float], float] | None


def context_scale(box_area: float, image_area: float, context: Context = None) -> float:
    """The crop scale for a box of ``box_area`` pixels in an image of ``image_area`` pixels.

    Args:
        box_area: Box area in pixels (positive).
        image_area: Image area in pixels (positive).
        context: A :class:`ContextCurve` or any callable of the relative area, a fixed
            scale (``1.0`` = the box only), or ``None`` for :data:`DEFAULT_CONTEXT`.

    Raises:
        ConfigError: An area is not positive or the scale is below 1.
    """
    if not (box_area > 0 and image_area > 0):
        raise ConfigError(f"areas must be positive, got box {box_area} and image {image_area}")
    if context is None:
        context = DEFAULT_CONTEXT
    scale = (
        float(context)
        if isinstance(context, int | float)
        else float(context(min(1.0, box_area / image_area)))
    )
    if not (math.isfinite(scale) and scale >= 1.0):
        raise ConfigError(f"a context scale must be a number >= 1 (1 = the box only), got {scale}")
    return scale


@dataclass(frozen=True)
class RegionGeometry:
    """Where a region's pixels come from and where they land.

    Attributes:
        box: The box in image pixels, widened to whole pixels (``floor``/``ceil``).
        window: The crop window in image pixels (the box plus context, clamped to the image).
        scale: The context scale used.
        side: Side of the square canvas the window is padded to.
        offset: Where the window's top-left corner lands on the canvas.
    """

    box: IntBox
    window: IntBox
    scale: float
    side: int
    offset: tuple[int, int]

    @property
    def box_in_window(self) -> IntBox:
        """The box relative to the window's top-left corner."""
        wx, wy = self.window[0], self.window[1]
        return (self.box[0] - wx, self.box[1] - wy, self.box[2] - wx, self.box[3] - wy)


def region_geometry(
    box: Coords, image_size: tuple[int, int], *, context: Context = None
) -> RegionGeometry:
    """Compute the crop window and square canvas for a checked pixel box.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels, inside the image (see :func:`check_box`).
        image_size: ``(width, height)`` of the image.
        context: The context curve or fixed scale (see :func:`context_scale`).
    """
    width, height = image_size
    x0, y0, x1, y1 = box
    ibox = (
        max(0, math.floor(x0)),
        max(0, math.floor(y0)),
        min(width, math.ceil(x1)),
        min(height, math.ceil(y1)),
    )
    w, h = x1 - x0, y1 - y0
    scale = context_scale(w * h, float(width * height), context)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half_w, half_h = w * scale / 2.0, h * scale / 2.0
    window = (
        max(0, min(ibox[0], math.floor(cx - half_w + 1e-9))),
        max(0, min(ibox[1], math.floor(cy - half_h + 1e-9))),
        min(width, max(ibox[2], math.ceil(cx + half_w - 1e-9))),
        min(height, max(ibox[3], math.ceil(cy + half_h - 1e-9))),
    )
    ww, wh = window[2] - window[0], window[3] - window[1]
    side = max(ww, wh)
    return RegionGeometry(
        box=ibox, window=window, scale=scale, side=side, offset=((side - ww) // 2, (side - wh) // 2)
    )


def prepare_region(
    image: Image.Image,
    box: Box | Sequence[float],
    *,
    size: int | None = 224,
    context: Context = None,
    blur: float | None = DEFAULT_BLUR,
    pad_color: tuple[int, int, int] = PAD_COLOR,
) -> Image.Image:
    """Crop a box with context, blur outside the box, pad to a square and resize.

    Args:
        image: The whole RGB image.
        box: A :class:`Box` (validated here) or pixel ``[x0, y0, x1, y1]``.
        size: Output side in pixels (the encoder's input size); ``None`` keeps the crop's
            own resolution.
        context: The context curve or a fixed scale (see :func:`context_scale`).
        blur: Gaussian blur radius outside the box, as a fraction of the window's longer
            side (at least one pixel); ``0``/``None`` disables blurring.
        pad_color: RGB colour of the padding that makes the crop square.

    Returns:
        A square RGB image; pixels inside the box are the original pixels (before resizing).

    Raises:
        BoxError: The box is unusable for this image.
    """
    from PIL import Image as PILImage
    from PIL import ImageFilter

    if not isinstance(box, Box):
        box = Box(*as_coords(list(box), "box"))
    coords = check_box(box, *image.size)
    geo = region_geometry(coords, image.size, context=context)
    if image.mode != "RGB":
        image = image.convert("RGB")
    crop = image.crop(geo.window)
    if blur:
        radius = max(1.0, blur * max(crop.size))
        blurred = crop.filter(ImageFilter.GaussianBlur(radius))
        inner = geo.box_in_window
        blurred.paste(crop.crop(inner), inner[:2])
        crop = blurred
    canvas = PILImage.new("RGB", (geo.side, geo.side), pad_color)
    canvas.paste(crop, geo.offset)
    if size is not None and size != geo.side:
        if size < 1:
            raise ConfigError(f"region size must be a positive pixel count, got {size}")
        canvas = canvas.resize((size, size), PILImage.Resampling.BICUBIC)
    return canvas


def encoder_input_size(encoder: object, default: int = 224) -> int:
    """The square input side an encoder expects, when it can be found; else ``default``."""
    paths = (
        "input_size",
        "image_size",
        "model.visual.image_size",
        "model.config.vision_config.image_size",
    )
    candidates = []
    for path in paths:
        value: Any = encoder
        for attr in path.split("."):
            value = getattr(value, attr, None)
        candidates.append(value)
    for value in candidates:
        if isinstance(value, Sequence) and value:
            value = max(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def square_resize(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized to ``side`` x ``side`` (bicubic), or itself when it already is."""
    from PIL import Image as PILImage

    if image.size == (side, side):
        return image
    return image.resize((side, side), PILImage.Resampling.BICUBIC)
