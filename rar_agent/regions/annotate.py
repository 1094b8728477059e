"""Drawing on images: region results (boxes and captions), and the ranker's view of a region."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.results import RecognitionResult

__all__ = ["PALETTE", "RANKER_SIDE", "annotate", "draw_box", "ranker_view"]

PALETTE: list[tuple[int, int, int]] = [
    (0, 130, 200),
    (60, 180, 75),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (255, 225, 25),
]
"""Box colours, one per region in turn (the first also marks the box in :func:`ranker_view`).

No red among them: red marks the boxes that could not be used, grey the unknown ones.
"""
_ERROR_COLOR = (200, 0, 0)
_UNKNOWN_COLOR = (128, 128, 128)

#: Smaller region crops are enlarged to this side before they are shown to the ranker.
RANKER_SIDE = 448


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _sizes(image: Image.Image) -> tuple[int, int]:
    """Default outline width and caption size for ``image`` (relative to its size)."""
    short = min(image.size)
    return max(2, round(short / 200)), max(12, round(short / 28))


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
    lw = line_width or _sizes(image)[0]
    _outline(image, box, color, lw)
    if text:
        _caption(image, box, text, color, lw, font_size or _sizes(image)[1])


def _outline(
    image: Image.Image, box: Sequence[float], color: tuple[int, int, int], lw: int
) -> None:
    from PIL import ImageDraw

    x0, y0, x1, y1 = (float(v) for v in box)
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=lw)


def _caption(
    image: Image.Image,
    box: Sequence[float],
    text: str,
    color: tuple[int, int, int],
    lw: int,
    fs: int,
) -> None:
    """The caption on a filled background above the box (inside its top when no room)."""
    from PIL import ImageDraw, ImageFont

    width, _ = image.size
    draw = ImageDraw.Draw(image)
    x0, y0 = float(box[0]), float(box[1])
    font = ImageFont.load_default(size=fs)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * lw, bottom - top + 2 * lw
    tx = min(max(0.0, x0), max(0.0, width - tw))
    ty = y0 - th if y0 - th >= 0 else y0
    draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
    draw.text((tx + lw - left, ty + lw - top), text, fill=_text_color(color), font=font)


def _fitted_size(image: Image.Image, box: Sequence[float], text: str, lw: int) -> int:
    """The default caption size, made smaller (to a floor of a third of it, 10 px at least)
    so that the caption is no wider than its box: many boxes keep their captions apart."""
    from PIL import ImageFont

    default = _sizes(image)[1]
    floor = min(default, max(10, round(default / 3)))
    room = float(box[2]) - float(box[0]) - 2 * lw
    wide = ImageFont.load_default(size=default).getlength(text)
    if wide <= room:
        return default
    return max(floor, int(default * room / wide))


def annotate(
    image: Image.Image,
    results: Sequence[RecognitionResult],
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    show_score: bool = True,
) -> Image.Image:
    """Draw each result's box and ``label score`` on a copy of ``image``.

    Outlines are drawn first and captions over them, each caption made smaller (down to a
    third of the default size) to fit its box's width, so that many boxes stay readable.
    Results without a drawable box (missing, not finite, empty or entirely outside the image)
    are skipped; results with an error are drawn in red with ``<id>: error`` as their caption,
    unknown ones (no label: the open-set check rejected them) in grey as ``unknown`` with the
    closest category's score.

    Args:
        image: The whole image the boxes refer to.
        results: Region results (``box`` in pixels, as :meth:`Recognizer.recognize_regions`
            returns them).
        line_width: Box outline width in pixels (default: relative to the image size).
        font_size: Caption size in pixels (default: relative to the image size, fitted to
            each box).
        show_score: Append the winning candidate's retrieval score to the label.

    Returns:
        A new RGB image.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    lw = line_width or _sizes(out)[0]
    drawn = []
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
            color = _UNKNOWN_COLOR if result.label is None else PALETTE[i % len(PALETTE)]
            text = result.label or "unknown"
            if show_score and result.candidates:
                text = f"{text} {result.candidates[0].score:.2f}"
        drawn.append((box, text, color))
    for box, _, color in drawn:  # every outline first: no box is drawn across a caption
        _outline(out, box, color, lw)
    for box, text, color in drawn:
        _caption(out, box, text, color, lw, font_size or _fitted_size(out, box, text, lw))
    return out


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
    draw_box(scaled, [v * factor for v in box], None, PALETTE[0], line_width=max(2, side // 100))
    gap = max(4, side // 50)
    canvas = PILImage.new("RGB", (region.width + gap + scaled.width, side), (255, 255, 255))
    canvas.paste(region, (0, 0))
    canvas.paste(scaled, (region.width + gap, (side - scaled.height) // 2))
    return canvas
