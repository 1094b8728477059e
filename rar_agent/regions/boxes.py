"""Boxes: the :class:`Box` type, parsing from Python data, JSON files and COCO, and checking.

Boxes are ``[x0, y0, x1, y1]`` in pixels or normalised to 0..1; COCO-style ``bbox`` entries
are ``[x, y, width, height]`` in pixels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

from rar_agent.errors import ConfigError, unreadable_reason

__all__ = [
    "Box",
    "BoxError",
    "BoxesInput",
    "Coords",
    "as_boxes",
    "as_coords",
    "check_box",
    "coords_text",
    "load_boxes",
    "parse_boxes",
]

Coords = tuple[float, float, float, float]

BoxesInput: TypeAlias = "str | os.PathLike[str] | Iterable[object] | Mapping[str, object]"
"""Boxes in any accepted form: a JSON file path, or what :func:`parse_boxes` reads."""


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


def as_coords(values: object, where: str) -> Coords:
    """Four numbers ``[x0, y0, x1, y1]`` as floats (None becomes NaN, reported later).

    Raises:
        BoxError: Not a sequence of four numbers; ``where`` says which box.
    """
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
        return as_coords(item, where), {}, None
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
            return as_coords(item[key], where), extra, None
    if "bbox" in item:
        x, y, w, h = as_coords(item["bbox"], where)
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
        raise BoxError(
            f"boxes must be a list, got {type(data).__name__}: write a JSON list of "
            "[x0, y0, x1, y1] boxes or COCO-style detections"
        )
    items = list(data)
    if image_id is not None:
        items = [
            it
            for it in items
            if isinstance(it, Mapping) and str(it.get("image_id")) == str(image_id)
        ]
    else:
        _refuse_several_images(items)
    return items, categories, flag


def _refuse_several_images(items: list[Any]) -> None:
    """A COCO file covering many images gives no boxes for one until one image is picked."""
    ids = list(dict.fromkeys(str(it["image_id"]) for it in items if isinstance(it, Mapping)
                             and it.get("image_id") is not None))  # fmt: skip
    if len(ids) > 1:
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise BoxError(
            f"the boxes are detections of {len(ids)} images (image_id {shown}), and they "
            "are all drawn on the one image given: pick that image's with --image-id ID "
            "(in Python image_id=ID)"
        )


def parse_boxes(
    data: Iterable[object] | Mapping[str, object],
    *,
    normalized: bool | None = None,
    image_id: str | int | None = None,
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
    image_id: str | int | None = None,
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
        raise BoxError(f"boxes file {path} does not exist: check the path") from e
    except OSError as e:
        reason = unreadable_reason(e, path)
        raise BoxError(f"cannot read boxes file {path}: {reason}: check the path") from e
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
    name = f"box {box.id}" if box.id is not None else "the box"
    shown = coords_text(box.xyxy)
    x0, y0, x1, y1 = box.xyxy
    if not all(math.isfinite(v) for v in box.xyxy):
        raise BoxError(
            f"{name} has coordinates that are not finite numbers ({shown}): give four numbers "
            "[x0, y0, x1, y1]"
        )
    if x1 < x0 or y1 < y0:
        raise BoxError(
            f"{name} is inverted ({shown}): give [x0, y0, x1, y1] with x0 < x1 and y0 < y1 "
            "(in a boxes file, COCO [x, y, width, height] goes under 'bbox')"
        )
    if x1 == x0 or y1 == y0:
        raise BoxError(f"{name} has zero area ({shown}): give a box with width and height")
    px = box.to_pixels(width, height)
    cx0, cy0 = max(0.0, px.x0), max(0.0, px.y0)
    cx1, cy1 = min(float(width), px.x1), min(float(height), px.y1)
    if cx1 <= cx0 or cy1 <= cy0:
        unit = "normalised (fractions of the width and height)" if box.normalized else "pixel"
        raise BoxError(
            f"{name} {shown} lies outside the {width}x{height} image: it was read as {unit} "
            "coordinates x0, y0, x1, y1; check their order and units"
        )
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        inside = coords_text((cx0, cy0, cx1, cy1))
        raise BoxError(
            f"{name} covers less than one pixel of the {width}x{height} image ({inside}): "
            "give a box at least one pixel wide and high"
        )
    return (cx0, cy0, cx1, cy1)


def coords_text(coords: Sequence[float]) -> str:
    """A box's coordinates as every message writes them: ``[10, 20, 30.5, 40]`` (whole
    numbers without ``.0``, the rest to 3 decimals)."""
    shown = (float(v) for v in coords)  # a Box built in Python may hold ints
    return "[" + ", ".join(str(int(v)) if v.is_integer() else f"{round(v, 3)}" for v in shown) + "]"


def as_boxes(boxes: BoxesInput, *, normalized: bool | None = None) -> list[Box]:
    """Boxes from any accepted form: :class:`Box` objects, Python data or a JSON file path."""
    if isinstance(boxes, os.PathLike):
        return load_boxes(Path(boxes), normalized=normalized)
    if isinstance(boxes, str):
        return load_boxes(Path(boxes).expanduser(), normalized=normalized)
    return parse_boxes(boxes, normalized=normalized)
