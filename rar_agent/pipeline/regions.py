"""Region recognition: crop every box of one image, then run the stages over the crops.

The geometry (box checks, context window, crop + blur, the ranker's view) comes from
:mod:`rar_agent.regions`; the stages (encode, retrieve, reject, rank) are the one
:class:`~rar_agent.pipeline.stages.StageRunner` whole images use too. The image is decoded
only as large as the smallest box's crop needs (:func:`regions_need`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rar_agent.pipeline.ranked import failed_result
from rar_agent.regions import (
    DEFAULT_BLUR,
    Box,
    BoxError,
    BoxesInput,
    Coords,
    as_boxes,
    check_box,
    encoder_input_size,
    prepare_region,
    ranker_view,
    region_geometry,
    square_resize,
)
from rar_agent.results import RecognitionResult

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.config import MemoryKind
    from rar_agent.images import DecodeNeed, ImageInput
    from rar_agent.pipeline.stages import Outcome, StageRunner
    from rar_agent.regions.geometry import Context

__all__ = ["RegionOptions", "arecognize_regions", "recognize_regions", "regions_need"]


@dataclass
class _Job:
    """One usable box: its parsed form, its pixels in the full image and in the decoded one,
    and its prepared crop."""

    box: Box
    coords: Coords
    scaled: Coords
    crop: Image.Image


@dataclass
class _Prepared:
    """One image's boxes, ready for the stages."""

    source: str
    slots: list[RecognitionResult | None]
    jobs: list[_Job]
    crops: list[Image.Image]  # what the encoder sees, one per job
    views: list[Image.Image]  # what the ranker sees, one per job
    prepare_ms: float


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


@dataclass(frozen=True)
class RegionOptions:
    """How the boxes of one image are recognized (see :meth:`Recognizer.recognize_regions`).

    Attributes:
        k: Candidates per region (None: the retriever's).
        kind: Memory side to query: ``auto`` (both), ``text`` or ``image``; ``None``: the
            retriever's, as for whole images.
        context_image: Show the ranker the whole image with the box drawn next to the crop.
        normalized: Box units: True 0..1, False pixels, None to detect.
        context: The context curve or a fixed scale.
        blur: Blur radius outside the box, as a fraction of the crop; 0/None: no blur.
        decode_need: What a whole image needs (None: decode at full size), from which
            :func:`regions_need` sizes the decode.
        name: What to call the image (its results' ``image``, its errors).
    """

    k: int | None = None
    kind: MemoryKind | None = None
    context_image: bool = False
    normalized: bool | None = None
    context: Context = None
    blur: float | None = DEFAULT_BLUR
    decode_need: DecodeNeed | None = None
    name: str | None = None


def recognize_regions(
    stages: StageRunner, image: ImageInput, boxes: BoxesInput, options: RegionOptions
) -> list[RecognitionResult]:
    """Recognize each box of one image (boxes in the full image's coordinates)."""
    prepared = _prepare_all(stages, image, boxes, options)
    # in a memory of class names and examples, a crop is answered by an example only when it
    # is the same thing (retrieval.lead_side): small crops embed poorly against examples
    outcomes = stages.run(prepared.crops, views=prepared.views, k=options.k, kind=options.kind)
    return _results(stages, prepared, outcomes)


async def arecognize_regions(
    stages: StageRunner, image: ImageInput, boxes: BoxesInput, options: RegionOptions
) -> list[RecognitionResult]:
    """Async :func:`recognize_regions`: decoding and cropping in a worker thread, the
    stages' :meth:`~rar_agent.pipeline.stages.StageRunner.arun`."""
    prepared = await asyncio.to_thread(_prepare_all, stages, image, boxes, options)
    outcomes = await stages.arun(
        prepared.crops, views=prepared.views, k=options.k, kind=options.kind
    )
    return _results(stages, prepared, outcomes)


def _prepare_all(
    stages: StageRunner, image: ImageInput, boxes: BoxesInput, options: RegionOptions
) -> _Prepared:
    """Decode the image as large as the boxes need, check and crop every box, and make the
    encoder's and the ranker's views."""
    from rar_agent.images import load_image

    start = time.perf_counter()
    parsed = as_boxes(boxes, normalized=options.normalized)
    context, whole_need = options.context, options.decode_need
    need = None
    if whole_need is not None:
        side_needed = max(whole_need.short, whole_need.long)

        def need(full: tuple[int, int]) -> DecodeNeed:
            return regions_need(
                parsed, full, side_needed, context=context, whole=options.context_image
            )

    loaded = load_image(image, need=need, name=options.name)
    slots, jobs = _prepare(
        loaded.image,
        loaded.source,
        parsed,
        full_size=loaded.full_size,
        context=context,
        blur=options.blur,
    )
    side = encoder_input_size(stages.encoder)
    whole = loaded.image if options.context_image else None
    return _Prepared(
        source=loaded.source,
        slots=slots,
        jobs=jobs,
        crops=[square_resize(job.crop, side) for job in jobs],
        views=[ranker_view(job.crop, whole, job.scaled) for job in jobs],
        prepare_ms=_ms(start),
    )


def _results(
    stages: StageRunner, prepared: _Prepared, outcomes: list[Outcome]
) -> list[RecognitionResult]:
    """One result per box, in input order: the error slots and the outcomes of the rest."""
    if not prepared.jobs:
        return [r for r in prepared.slots if r is not None]
    timings = {"prepare": round(prepared.prepare_ms / len(prepared.jobs), 3)}
    done = iter(zip(prepared.jobs, outcomes, strict=True))
    out: list[RecognitionResult] = []
    for slot in prepared.slots:
        if slot is None:
            job, outcome = next(done)
            slot = stages.result(
                outcome,
                image=prepared.source,
                box=[round(v, 3) for v in job.coords],
                box_id=job.box.id,
                timings_ms=timings,
            )
        out.append(slot)
    return out


def regions_need(
    boxes: Sequence[Box],
    full_size: tuple[int, int],
    side: int,
    *,
    context: Context = None,
    whole: bool = False,
) -> DecodeNeed:
    """The decode size that gives every usable box's crop ``side`` pixels (or all it has).

    A box's crop window (box plus context, padded to a square) may shrink by ``window / side``
    before the encoder loses detail (a thin box: until it is a pixel across); the image as a
    whole may shrink by the least of those.
    With ``whole``, the full image (the ranker's context view) keeps ``side`` pixels too.
    """
    from rar_agent.images import DecodeNeed

    width, height = full_size
    reduction = math.inf
    for box in boxes:
        try:
            x0, y0, x1, y1 = check_box(box, width, height)
            geo = region_geometry((x0, y0, x1, y1), full_size, context=context)
        except BoxError:
            continue  # answered with an error, decoded for nothing
        # the crop keeps ``side`` pixels, and a thin box at least one pixel across
        reduction = min(reduction, geo.side / side, x1 - x0, y1 - y0)
    need = DecodeNeed(long=side) if whole or math.isinf(reduction) else DecodeNeed()
    if math.isinf(reduction):
        return need
    short = math.ceil(min(width, height) / max(1.0, reduction))
    return need | DecodeNeed(short=short)


def _prepare(
    image: Image.Image,
    source: str,
    boxes: list[Box],
    *,
    full_size: tuple[int, int],
    context: Context,
    blur: float | None,
) -> tuple[list[RecognitionResult | None], list[_Job]]:
    """Check and crop every box: an error result for each unusable one, a job for the rest.

    Boxes are checked against ``full_size`` (the coordinates they are given in) and cropped
    from ``image``, which may be that image decoded smaller.

    Returns:
        One slot per box (its error result, or None where a job will answer) and the jobs.
    """
    width, height = full_size
    sx, sy = width / image.width, height / image.height
    slots: list[RecognitionResult | None] = []
    jobs: list[_Job] = []
    for box in boxes:
        try:
            coords = check_box(box, width, height)
            scaled = (coords[0] / sx, coords[1] / sy, coords[2] / sx, coords[3] / sy)
            crop = prepare_region(image, scaled, size=None, context=context, blur=blur)
        except BoxError as e:
            pixels = box.to_pixels(width, height).xyxy
            shown = list(pixels) if all(math.isfinite(v) for v in pixels) else None
            slots.append(failed_result(str(e), image=source, box=shown, box_id=box.id))
            continue
        slots.append(None)
        jobs.append(_Job(box, coords, scaled, crop))
    return slots, jobs
