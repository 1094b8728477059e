"""Region recognition: crop every box of one image, then run the stages over the crops.

The geometry (box checks, context window, crop + blur, the ranker's view) comes from
:mod:`rar_agent.regions`; the stages (encode, retrieve, reject, rank) are the one
:class:`~rar_agent.pipeline.stages.StageRunner` whole images use too.
"""

from __future__ import annotations

import asyncio
import math
import time
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
    square_resize,
)
from rar_agent.results import RecognitionResult

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.config import MemoryKind
    from rar_agent.images import ImageInput
    from rar_agent.pipeline.stages import Outcome, StageRunner
    from rar_agent.regions.geometry import Context

__all__ = ["arecognize_regions", "recognize_regions"]


@dataclass
class _Job:
    """One usable box: its parsed form, pixel coordinates and prepared crop."""

    box: Box
    coords: Coords
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


def recognize_regions(
    stages: StageRunner,
    image: ImageInput,
    boxes: BoxesInput,
    *,
    k: int | None = None,
    kind: MemoryKind = "text",
    context_image: bool = False,
    normalized: bool | None = None,
    context: Context = None,
    blur: float | None = DEFAULT_BLUR,
) -> list[RecognitionResult]:
    """Recognize each box of one image (see :meth:`Recognizer.recognize_regions`)."""
    prepared = _prepare_all(stages, image, boxes, context_image, normalized, context, blur)
    # Regions prefer class names: small crops embed poorly against image examples.
    outcomes = stages.run(prepared.crops, views=prepared.views, k=k, kind=kind, prefer="text")
    return _results(stages, prepared, outcomes)


async def arecognize_regions(
    stages: StageRunner,
    image: ImageInput,
    boxes: BoxesInput,
    *,
    k: int | None = None,
    kind: MemoryKind = "text",
    context_image: bool = False,
    normalized: bool | None = None,
    context: Context = None,
    blur: float | None = DEFAULT_BLUR,
) -> list[RecognitionResult]:
    """Async :func:`recognize_regions`: cropping in a worker thread, the stages'
    :meth:`~rar_agent.pipeline.stages.StageRunner.arun`."""
    prepared = await asyncio.to_thread(
        _prepare_all, stages, image, boxes, context_image, normalized, context, blur
    )
    outcomes = await stages.arun(
        prepared.crops, views=prepared.views, k=k, kind=kind, prefer="text"
    )
    return _results(stages, prepared, outcomes)


def _prepare_all(
    stages: StageRunner,
    image: ImageInput,
    boxes: BoxesInput,
    context_image: bool,
    normalized: bool | None,
    context: Context,
    blur: float | None,
) -> _Prepared:
    """Load the image, check and crop every box, and make the encoder's and ranker's views."""
    from rar_agent.images import load_image

    start = time.perf_counter()
    loaded = load_image(image)
    slots, jobs = _prepare(
        loaded.image,
        loaded.source,
        as_boxes(boxes, normalized=normalized),
        context=context,
        blur=blur,
    )
    side = encoder_input_size(stages.encoder)
    whole = loaded.image if context_image else None
    return _Prepared(
        source=loaded.source,
        slots=slots,
        jobs=jobs,
        crops=[square_resize(job.crop, side) for job in jobs],
        views=[ranker_view(job.crop, whole, job.coords) for job in jobs],
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


def _prepare(
    image: Image.Image,
    source: str,
    boxes: list[Box],
    *,
    context: Context,
    blur: float | None,
) -> tuple[list[RecognitionResult | None], list[_Job]]:
    """Check and crop every box: an error result for each unusable one, a job for the rest.

    Returns:
        One slot per box (its error result, or None where a job will answer) and the jobs.
    """
    width, height = image.size
    slots: list[RecognitionResult | None] = []
    jobs: list[_Job] = []
    for box in boxes:
        try:
            coords = check_box(box, width, height)
            crop = prepare_region(image, coords, size=None, context=context, blur=blur)
        except BoxError as e:
            pixels = box.to_pixels(width, height).xyxy
            shown = list(pixels) if all(math.isfinite(v) for v in pixels) else None
            slots.append(failed_result(str(e), image=source, box=shown, box_id=box.id))
            continue
        slots.append(None)
        jobs.append(_Job(box, coords, crop))
    return slots, jobs
