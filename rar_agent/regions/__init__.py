"""Regions: boxes, their validation, the crop + context + blur pre-processing, and annotation.

The detection setting of the RAR method: each box is cropped with some context around it
(more for small boxes), everything outside the box is blurred, the crop is padded to a square
and resized for the encoder. Boxes are ``[x0, y0, x1, y1]`` in pixels or normalised to 0..1;
COCO-style ``bbox`` entries are ``[x, y, width, height]`` in pixels.

Pure functions on boxes and images, split by stage: :mod:`~rar_agent.regions.boxes` (the
:class:`Box` type, parsing and checking), :mod:`~rar_agent.regions.geometry` (context window
and the crop pre-processing) and :mod:`~rar_agent.regions.annotate` (drawing results and the
ranker's view). Recognizing the boxes of an image is the pipeline's job:
:meth:`rar_agent.pipeline.Recognizer.recognize_regions`.
"""

from __future__ import annotations

from rar_agent.regions.annotate import PALETTE, RANKER_SIDE, annotate, draw_box, ranker_view
from rar_agent.regions.boxes import (
    Box,
    BoxError,
    BoxesInput,
    Coords,
    as_boxes,
    as_coords,
    check_box,
    coords_text,
    load_boxes,
    parse_boxes,
)
from rar_agent.regions.geometry import (
    DEFAULT_BLUR,
    DEFAULT_CONTEXT,
    PAD_COLOR,
    ContextCurve,
    RegionGeometry,
    context_scale,
    encoder_input_size,
    prepare_region,
    region_geometry,
    square_resize,
)

__all__ = [
    "Box",
    "BoxError",
    "BoxesInput",
    "ContextCurve",
    "Coords",
    "RegionGeometry",
    "DEFAULT_CONTEXT",
    "DEFAULT_BLUR",
    "PAD_COLOR",
    "PALETTE",
    "parse_boxes",
    "load_boxes",
    "check_box",
    "coords_text",
    "context_scale",
    "region_geometry",
    "prepare_region",
    "annotate",
    "draw_box",
    "encoder_input_size",
    "as_boxes",
    "as_coords",
    "ranker_view",
    "square_resize",
    "RANKER_SIDE",
]
