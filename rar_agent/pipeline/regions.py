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
    square_resize,
)
from rar_agent.results import RecognitionResult

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.config import MemoryKind
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.images import ImageInput
    from rar_agent.regions.geometry import Context
    from rar_agent.results import Candidate, RejectionInfo
    from rar_agent.retrieval import CategoryRetriever

__all__ = ["Stages", "recognize_regions"]


class Stages(Protocol):
    """The recognizer stages region recognition runs (a :class:`Recognizer` has them)."""

    encoder: ImageTextEncoder
    encoder_name: str
    retriever: CategoryRetriever

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
    """One usable box: its parsed form, pixel coordinates and prepared crop."""

    box: Box
    coords: Coords
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
    """Recognize each box of one image (see :meth:`Recognizer.recognize_regions`)."""
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
    views = [ranker_view(j.crop, whole, j.coords) for j in jobs]
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
            slots.append(
                RecognitionResult(label=None, image=source, box=shown, box_id=box.id, error=str(e))
            )
            continue
        slots.append(None)
        jobs.append(_Job(box, coords, crop))
    return slots, jobs
