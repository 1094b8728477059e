"""Regions: boxes, their validation, the crop + context + blur pre-processing, and annotation.

The detection setting of the RAR method: each box is cropped with some context around it
(more for small boxes), everything outside the box is blurred, the crop is padded to a square
and resized for the encoder. Boxes are ``[x0, y0, x1, y1]`` in pixels or normalised to 0..1;
COCO-style ``bbox`` entries are ``[x, y, width, height]`` in pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.images import ImageInput
    from rar_agent.pipeline import Recognizer
    from rar_agent.results import RecognitionResult

__all__ = [
    "Box",
    "BoxError",
    "ContextCurve",
    "RegionGeometry",
    "DEFAULT_CONTEXT",
    "DEFAULT_BLUR",
    "PAD_COLOR",
    "parse_boxes",
    "load_boxes",
    "check_box",
    "context_scale",
    "region_geometry",
    "prepare_region",
    "annotate",
    "draw_box",
    "encoder_input_size",
    "as_boxes",
    "ranker_view",
    "run_regions",
    "RANKER_SIDE",
]

logger = logging.getLogger(__name__)

#: Default blur radius as a fraction of the crop window's longer side.
DEFAULT_BLUR = 0.04
#: Padding colour: the CLIP mean colour, which the encoder normalises to about zero.
PAD_COLOR = (122, 116, 104)
#: Smaller region crops are enlarged to this side before they are shown to the ranker.
RANKER_SIDE = 448

Coords = tuple[float, float, float, float]
IntBox = tuple[int, int, int, int]


class BoxError(ConfigError):
    """A box is unusable (not finite, inverted, zero area, outside the image, malformed)."""


@dataclass(frozen=True)
class Box:
    """One box: ``[x0, y0, x1, y1]`` in pixels, or in 0..1 when ``normalized``.

    Attributes:
        x0: Left edge.
        y0: Top edge.
        x1: Right edge (exclusive, like PIL's ``crop``).
        y1: Bottom edge.
        id: Optional caller id, echoed in the result as ``box_id``.
        normalized: Coordinates are fractions of the image width/height.
        category: A detector's class name, if the box came with one.
        score: A detector's confidence, if the box came with one.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    id: str | None = None
    normalized: bool = False
    category: str | None = None
    score: float | None = None

    @property
    def xyxy(self) -> Coords:
        """The four coordinates as a tuple."""
        return (self.x0, self.y0, self.x1, self.y1)

    def to_pixels(self, width: int, height: int) -> Box:
        """This box in pixel coordinates of a ``width`` x ``height`` image (not clipped)."""
        if not self.normalized:
            return self
        return replace(
            self,
            x0=self.x0 * width,
            y0=self.y0 * height,
            x1=self.x1 * width,
            y1=self.y1 * height,
            normalized=False,
        )


# ---------------------------------------------------------------------------------- parsing

_XYXY_KEYS = ("xyxy", "box", "bbox_xyxy")
_ID_KEYS = ("id", "box_id")
_CATEGORY_KEYS = ("category", "category_name", "label", "name")


def _number(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BoxError(
            f"{where}: coordinate {value!r} is not a number; write boxes as "
            "[x0, y0, x1, y1] with numbers"
        )
    return float(value)


def _four(values: Any, where: str) -> Coords:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) != 4:
        raise BoxError(f"{where}: expected four numbers [x0, y0, x1, y1], got {values!r}")
    a, b, c, d = (_number(v, where) for v in values)
    return (a, b, c, d)


def _parse_one(
    item: Any, index: int, categories: Mapping[Any, str]
) -> tuple[Coords, dict[str, Any], bool | None]:
    """Coordinates (xyxy), extra fields and the units when the entry fixes them.

    COCO ``bbox`` entries are pixels and :class:`Box` objects carry their own units; plain
    xyxy entries return ``None`` (decided for the whole set).
    """
    where = f"box {index}"
    extra: dict[str, Any] = {}
    if isinstance(item, Box):
        extra = {"id": item.id, "category": item.category, "score": item.score}
        return item.xyxy, extra, item.normalized
    if not isinstance(item, Mapping):
        return _four(item, where), {}, None
    box_id = next((item[key] for key in _ID_KEYS if item.get(key) is not None), None)
    where = f"box {box_id!r}" if box_id is not None else where
    extra["id"] = None if box_id is None else str(box_id)
    category = next((item[key] for key in _CATEGORY_KEYS if item.get(key) is not None), None)
    if category is None and item.get("category_id") is not None:
        category = categories.get(item["category_id"], str(item["category_id"]))
    extra["category"] = None if category is None else str(category)
    score = item.get("score")
    extra["score"] = None if score is None else _number(score, where)
    for key in _XYXY_KEYS:
        if key in item:
            return _four(item[key], where), extra, None
    if "bbox" in item:
        x, y, w, h = _four(item["bbox"], where)
        return (x, y, x + w, y + h), extra, False
    raise BoxError(
        f"{where}: no coordinates; give 'xyxy' (or 'box') as [x0, y0, x1, y1], or a "
        f"COCO 'bbox' as [x, y, width, height] (keys found: {sorted(item)})"
    )


def _entries(data: Any, image_id: Any) -> tuple[list[Any], dict[Any, str], bool | None]:
    """Box entries, a COCO category-id -> name map and an explicit ``normalized`` flag."""
    categories: dict[Any, str] = {}
    flag: bool | None = None
    if isinstance(data, Mapping):
        for cat in data.get("categories") or ():
            if isinstance(cat, Mapping) and "id" in cat and "name" in cat:
                categories[cat["id"]] = str(cat["name"])
        if isinstance(data.get("normalized"), bool):
            flag = data["normalized"]
        for key in ("boxes", "annotations", "detections"):
            if key in data:
                data = data[key]
                break
        else:
            raise BoxError(
                "a boxes JSON object needs a 'boxes', 'annotations' or 'detections' "
                f"list (keys found: {sorted(data)})"
            )
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise BoxError(f"boxes must be a list, got {type(data).__name__}")
    items = list(data)
    if image_id is not None:
        items = [
            it
            for it in items
            if isinstance(it, Mapping) and str(it.get("image_id")) == str(image_id)
        ]
    return items, categories, flag


def parse_boxes(
    data: Any,
    *,
    normalized: bool | None = None,
    image_id: Any = None,
    min_score: float | None = None,
) -> list[Box]:
    """Parse boxes from Python data or decoded JSON.

    Accepted shapes: a list of ``[x0, y0, x1, y1]``; a list of dicts with ``xyxy`` (or
    ``box``) and optional ``id``, ``label``/``category`` and ``score``; COCO-style dicts with
    ``bbox`` = ``[x, y, width, height]`` in pixels, ``category_id`` and ``score`` (a detection
    results list, or an object with ``annotations`` and ``categories``); an object
    ``{"boxes": [...], "normalized": true}``; or :class:`Box` objects.

    Coordinates that are not finite or are inverted are kept: :func:`check_box` reports them
    per box so that the other boxes still run.

    Args:
        data: The boxes.
        normalized: ``True`` for 0..1 coordinates, ``False`` for pixels, ``None`` to detect:
            xyxy boxes are normalised when every finite coordinate is within 0..1 (COCO
            ``bbox`` entries are always pixels).
        image_id: Keep only entries whose ``image_id`` matches (COCO files covering many images).
        min_score: Drop entries whose ``score`` is below this.

    Returns:
        The boxes in input order; boxes without an id get their index as id.

    Raises:
        BoxError: The data is not one of the accepted shapes.
    """
    items, categories, flag = _entries(data, image_id)
    if normalized is None:
        normalized = flag
    parsed = [_parse_one(item, i, categories) for i, item in enumerate(items)]
    if normalized is None:
        finite = [
            v for coords, _, fixed in parsed if fixed is None for v in coords if math.isfinite(v)
        ]
        normalized = bool(finite) and all(0.0 <= v <= 1.0 for v in finite)
    boxes = []
    for i, (coords, extra, fixed) in enumerate(parsed):
        score = extra.get("score")
        if min_score is not None and score is not None and score < min_score:
            continue
        box_id = extra.get("id") if extra.get("id") is not None else str(i)
        units = bool(normalized) if fixed is None else fixed
        boxes.append(
            Box(*coords, id=box_id, normalized=units, category=extra.get("category"), score=score)
        )
    return boxes


def load_boxes(
    path: str | Path,
    *,
    normalized: bool | None = None,
    image_id: Any = None,
    min_score: float | None = None,
) -> list[Box]:
    """Read boxes from a JSON file (any shape :func:`parse_boxes` accepts).

    Raises:
        BoxError: The file is missing, not JSON, or not a boxes shape.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BoxError(f"boxes file not found: {path}") from e
    except OSError as e:
        raise BoxError(f"cannot read boxes file {path}: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BoxError(
            f"boxes file {path} is not valid JSON ({e}): write a JSON list of "
            "[x0, y0, x1, y1] boxes or COCO-style detections"
        ) from e
    return parse_boxes(data, normalized=normalized, image_id=image_id, min_score=min_score)


def check_box(box: Box, width: int, height: int) -> Coords:
    """Validate ``box`` against a ``width`` x ``height`` image; return it in pixels, clipped.

    Raises:
        BoxError: Not finite, inverted, zero area, outside the image, or under one pixel
            once clipped to the image.
    """
    name = f"box {box.id!r}" if box.id is not None else "box"
    x0, y0, x1, y1 = box.xyxy
    if not all(math.isfinite(v) for v in box.xyxy):
        raise BoxError(
            f"{name} has coordinates that are not finite (NaN or infinity): "
            f"{list(box.xyxy)}; give four numbers x0, y0, x1, y1"
        )
    if x1 < x0 or y1 < y0:
        raise BoxError(
            f"{name} is inverted ({list(box.xyxy)}): boxes are [x0, y0, x1, y1] with "
            "x0 < x1 and y0 < y1 (COCO [x, y, width, height] goes under 'bbox')"
        )
    if x1 == x0 or y1 == y0:
        raise BoxError(f"{name} has zero area ({list(box.xyxy)}): give a box with width and height")
    px = box.to_pixels(width, height)
    cx0, cy0 = max(0.0, px.x0), max(0.0, px.y0)
    cx1, cy1 = min(float(width), px.x1), min(float(height), px.y1)
    if cx1 <= cx0 or cy1 <= cy0:
        unit = "normalised" if box.normalized else "pixel"
        raise BoxError(
            f"{name} {list(box.xyxy)} ({unit}) lies outside the {width}x{height} "
            "image: check the coordinate order and units (--normalized/--pixels)"
        )
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        raise BoxError(
            f"{name} covers less than one pixel of the {width}x{height} image "
            f"({[round(v, 3) for v in (cx0, cy0, cx1, cy1)]}): nothing to recognize"
        )
    return (cx0, cy0, cx1, cy1)


# --------------------------------------------------------------------------------- geometry


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
        box = Box(*_four(list(box), "box"))
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


def encoder_input_size(encoder: Any, default: int = 224) -> int:
    """The square input side an encoder expects, when it can be found; else ``default``."""
    paths = ("image_size", "model.visual.image_size", "model.config.vision_config.image_size")
    candidates = []
    for path in paths:
        value = encoder
        for attr in path.split("."):
            value = getattr(value, attr, None)
        candidates.append(value)
    for value in candidates:
        if isinstance(value, Sequence) and value:
            value = max(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


# ------------------------------------------------------------------------------- annotation

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (255, 225, 25),
]
_ERROR_COLOR = (200, 0, 0)


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_box(
    image: Image.Image,
    box: Sequence[float],
    text: str | None,
    color: tuple[int, int, int],
    *,
    line_width: int | None = None,
    font_size: int | None = None,
) -> None:
    """Draw one box with a filled caption (in place) on ``image``."""
    from PIL import ImageDraw, ImageFont

    width, height = image.size
    lw = line_width or max(2, round(min(width, height) / 200))
    fs = font_size or max(12, round(min(width, height) / 28))
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=lw)
    if not text:
        return
    font = ImageFont.load_default(size=fs)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * lw, bottom - top + 2 * lw
    tx = min(max(0.0, x0), max(0.0, width - tw))
    ty = y0 - th if y0 - th >= 0 else y0  # above the box, or inside its top when no room
    draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
    draw.text((tx + lw - left, ty + lw - top), text, fill=_text_color(color), font=font)


def annotate(
    image: Image.Image,
    results: Sequence[RecognitionResult],
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    show_score: bool = True,
) -> Image.Image:
    """Draw each result's box and ``label score`` on a copy of ``image``.

    Results without a drawable box (missing, not finite, empty or entirely outside the image)
    are skipped; results with an error are drawn in red with ``<id>: error`` as their caption.

    Args:
        image: The whole image the boxes refer to.
        results: Region results (``box`` in pixels, as :meth:`Recognizer.recognize_regions`
            returns them).
        line_width: Box outline width in pixels (default: relative to the image size).
        font_size: Caption size in pixels (default: relative to the image size).
        show_score: Append the winning candidate's retrieval score to the label.

    Returns:
        A new RGB image.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    for i, result in enumerate(results):
        if result.box is None or not all(math.isfinite(v) for v in result.box):
            continue
        x0, y0, x1, y1 = result.box
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]  # bad boxes may be inverted
        inside = box[0] < out.width and box[1] < out.height and box[2] > 0 and box[3] > 0
        if box[2] - box[0] < 1 or box[3] - box[1] < 1 or not inside:
            continue
        if result.error:
            color, text = _ERROR_COLOR, f"{result.box_id or i}: error"
        else:
            color = _PALETTE[i % len(_PALETTE)]
            text = result.label or "?"
            if show_score and result.candidates:
                text = f"{text} {result.candidates[0].score:.2f}"
        draw_box(out, box, text, color, line_width=line_width, font_size=font_size)
    return out


# ---------------------------------------------------------------------------- recognition


def as_boxes(boxes: Any, *, normalized: bool | None = None) -> list[Box]:
    """Boxes from any accepted form: :class:`Box` objects, Python data or a JSON file path."""
    if isinstance(boxes, os.PathLike):
        return load_boxes(Path(boxes), normalized=normalized)
    if isinstance(boxes, str):
        return load_boxes(Path(boxes).expanduser(), normalized=normalized)
    return parse_boxes(boxes, normalized=normalized)


def ranker_view(
    region: Image.Image,
    whole: Image.Image | None = None,
    box: Sequence[float] | None = None,
    *,
    side: int = RANKER_SIDE,
) -> Image.Image:
    """The picture the ranking model sees for one region.

    The square region crop, enlarged to ``side`` when smaller. With ``whole`` and ``box``, the
    whole image with the box drawn (scaled to fit the same square) is placed to the right of
    it, as context: the ranking chain sends a single image, so both views travel as one
    picture (the chain downscales it to its ``image_max_side``; raise that for detail).
    """
    from PIL import Image as PILImage

    if region.width < side:
        region = region.resize((side, side), PILImage.Resampling.BICUBIC)
    if whole is None or box is None:
        return region
    side = region.height
    factor = side / max(whole.width, whole.height)  # the whole image fits a side x side square
    scaled = whole.resize(
        (max(1, round(whole.width * factor)), max(1, round(whole.height * factor))),
        PILImage.Resampling.BICUBIC,
    )
    draw_box(scaled, [v * factor for v in box], None, _PALETTE[0], line_width=max(2, side // 100))
    gap = max(4, side // 50)
    canvas = PILImage.new("RGB", (region.width + gap + scaled.width, side), (255, 255, 255))
    canvas.paste(region, (0, 0))
    canvas.paste(scaled, (region.width + gap, (side - scaled.height) // 2))
    return canvas


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def run_regions(
    recognizer: Recognizer,
    image: ImageInput,
    boxes: Any,
    *,
    k: int | None = None,
    kind: str = "text",
    context_image: bool = False,
    normalized: bool | None = None,
    context: Context = None,
    blur: float | None = DEFAULT_BLUR,
) -> list[RecognitionResult]:
    """Recognize each box of one image (see ``Recognizer.recognize_regions``)."""
    from rar_agent.images import load_image
    from rar_agent.pipeline import _reorder
    from rar_agent.results import RecognitionResult

    start = time.perf_counter()
    loaded = load_image(image)
    parsed = as_boxes(boxes, normalized=normalized)
    width, height = loaded.image.size
    results: list[RecognitionResult | None] = []
    jobs: list[tuple[Box, Coords, Image.Image]] = []
    for box in parsed:
        try:
            coords = check_box(box, width, height)
            crop = prepare_region(loaded.image, coords, size=None, context=context, blur=blur)
        except BoxError as e:
            pixels = box.to_pixels(width, height).xyxy
            shown = list(pixels) if all(math.isfinite(v) for v in pixels) else None
            results.append(
                RecognitionResult(
                    label=None, image=loaded.source, box=shown, box_id=box.id, error=str(e)
                )
            )
            continue
        results.append(None)
        jobs.append((box, coords, crop))
    prepare_ms = _ms(start)
    if not jobs:
        return [r for r in results if r is not None]
    side = encoder_input_size(recognizer.encoder)
    t0 = time.perf_counter()
    vectors = recognizer.encoder.embed_images([_square(crop, side) for _, _, crop in jobs])
    encode_ms = _ms(t0)
    t1 = time.perf_counter()
    # Regions prefer class names: small crops embed poorly against image examples.
    memory_side = "auto-text" if kind == "auto" else kind
    retrieved = recognizer.retriever.retrieve_vectors(vectors, k=k, kind=memory_side)  # type: ignore[arg-type]
    retrieve_ms = _ms(t1)
    views = [
        ranker_view(crop, loaded.image if context_image else None, coords)
        for _, coords, crop in jobs
    ]
    rankings = recognizer.rank_many(views, retrieved)
    n = len(jobs)
    done = iter(zip(jobs, retrieved, rankings, strict=True))
    out: list[RecognitionResult] = []
    for slot in results:
        if slot is not None:
            out.append(slot)
            continue
        (box, coords, _), candidates, (info, order) = next(done)
        final = _reorder(candidates, order)
        out.append(
            RecognitionResult(
                label=final[0].label if final else None,
                candidates=final,
                ranking=info,
                image=loaded.source,
                box=[round(v, 3) for v in coords],
                box_id=box.id,
                timings_ms={
                    "prepare": round(prepare_ms / n, 3),
                    "encode": round(encode_ms / n, 3),
                    "retrieve": round(retrieve_ms / n, 3),
                    "rank": info.latency_ms or 0.0,
                },
            )
        )
    return out


def _square(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image as PILImage

    if image.size == (side, side):
        return image
    return image.resize((side, side), PILImage.Resampling.BICUBIC)
