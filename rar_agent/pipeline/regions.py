"""Region recognition: crop, encode, retrieve and rank every box of one image.

The geometry (box checks, context window, crop + blur, the ranker's view) comes from
:mod:`rar_agent.regions`; this module runs the recognizer's stages over the crops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rar_agent.pipeline.ranked import Ranking, ranked_result
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
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.images import DecodeNeed, ImageInput
    from rar_agent.regions.geometry import Context
    from rar_agent.results import Candidate, RejectionInfo
    from rar_agent.retrieval import CategoryRetriever

__all__ = ["Stages", "recognize_regions"]


class Stages(Protocol):
    """The recognizer stages region recognition runs (a :class:`Recognizer` has them)."""

    encoder: ImageTextEncoder
    encoder_name: str
    retriever: CategoryRetriever

    @property
    def decode_need(self) -> DecodeNeed | None:
        """How large a whole image must be decoded (None: full size)."""
        ...

    def judge_many(self, retrieved: Sequence[Sequence[Candidate]]) -> list[RejectionInfo]:
        """The open-set verdict for each candidate list."""
        ...

    def rank_many(
        self,
        images: Sequence[Image.Image],
        retrieved: Sequence[Sequence[Candidate]],
        verdicts: Sequence[RejectionInfo] | None = None,
    ) -> list[Ranking]:
        """Rank each (image, candidates) pair (not those judged unknown)."""
        ...


@dataclass
class _Job:
    """One usable box: its parsed form, its pixels in the full image and in the decoded one,
    and its prepared crop."""

    box: Box
    coords: Coords
    scaled: Coords
    crop: Image.Image


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def recognize_regions(
    recognizer: Stages,
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
    """Recognize each box of one image (see :meth:`Recognizer.recognize_regions`).

    Boxes are in the full image's coordinates. The image is decoded only as large as the
    smallest box's crop needs (:func:`regions_need`), and each box is scaled to it.
    """
    from rar_agent.images import load_image

    start = time.perf_counter()
    parsed = as_boxes(boxes, normalized=normalized)
    whole_need = recognizer.decode_need
    need = None
    if whole_need is not None:
        side = max(whole_need.short, whole_need.long)

        def need(full: tuple[int, int]) -> DecodeNeed:
            return regions_need(parsed, full, side, context=context, whole=context_image)

    loaded = load_image(image, need=need)
    slots, jobs = _prepare(
        loaded.image,
        loaded.source,
        parsed,
        full_size=loaded.full_size,
        context=context,
        blur=blur,
    )
    prepare_ms = _ms(start)
    if not jobs:
        return [r for r in slots if r is not None]
    side = encoder_input_size(recognizer.encoder)
    t0 = time.perf_counter()
    vectors = recognizer.encoder.embed_images([square_resize(job.crop, side) for job in jobs])
    encode_ms = _ms(t0)
    t1 = time.perf_counter()
    # Regions prefer class names: small crops embed poorly against image examples.
    retrieved = recognizer.retriever.retrieve_vectors(vectors, k=k, kind=kind, prefer="text")
    retrieve_ms = _ms(t1)
    whole = loaded.image if context_image else None
    verdicts = recognizer.judge_many(retrieved)
    views = [ranker_view(j.crop, whole, j.scaled) for j in jobs]
    rankings = recognizer.rank_many(views, retrieved, verdicts)
    n = len(jobs)
    timings = {
        "prepare": round(prepare_ms / n, 3),
        "encode": round(encode_ms / n, 3),
        "retrieve": round(retrieve_ms / n, 3),
    }
    done = iter(zip(jobs, retrieved, rankings, verdicts, strict=True))
    out: list[RecognitionResult] = []
    for slot in slots:
        if slot is None:
            job, candidates, ranking, verdict = next(done)
            box = [round(v, 3) for v in job.coords]
            slot = ranked_result(
                candidates,
                ranking,
                timings,
                rejection=verdict,
                image=loaded.source,
                box=box,
                box_id=job.box.id,
                encoder=recognizer.encoder_name,
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
            slots.append(
                RecognitionResult(label=None, image=source, box=shown, box_id=box.id, error=str(e))
            )
            continue
        slots.append(None)
        jobs.append(_Job(box, coords, scaled, crop))
    return slots, jobs
