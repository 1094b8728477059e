"""Regions: boxes, their validation, the crop + context + blur pre-processing, and annotation.

The detection setting of the RAR method: each box is cropped with some context around it
(more for small boxes), everything outside the box is blurred, the crop is padded to a square
and resized for the encoder. Boxes are ``[x0, y0, x1, y1]`` in pixels or normalised to 0..1;
COCO-style ``bbox`` entries are ``[x, y, width, height]`` in pixels.

The package is split by stage: :mod:`~rar_agent.regions.boxes` (the :class:`Box` type,
parsing and checking), :mod:`~rar_agent.regions.geometry` (context window and the crop
pre-processing), :mod:`~rar_agent.regions.annotate` (drawing results) and
:mod:`~rar_agent.regions.run` (recognizing every box of one image).
"""

from __future__ import annotations

import logging

from rar_agent.regions.annotate import annotate, draw_box
from rar_agent.regions.boxes import Box, BoxError, as_boxes, check_box, load_boxes, parse_boxes
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
)
from rar_agent.regions.run import RANKER_SIDE, ranker_view, run_regions

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
