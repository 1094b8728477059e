"""Region recognition: crop, encode, retrieve and rank every box of one image."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rar_agent.regions.annotate import _PALETTE, draw_box
from rar_agent.regions.boxes import Box, BoxError, Coords, as_boxes, check_box
from rar_agent.regions.geometry import (
    DEFAULT_BLUR,
    Context,
    _square,
    encoder_input_size,
    prepare_region,
)

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.images import ImageInput
    from rar_agent.pipeline import Recognizer
    from rar_agent.results import RecognitionResult

__all__ = ["RANKER_SIDE", "ranker_view", "run_regions"]

#: Smaller region crops are enlarged to this side before they are shown to the ranker.
RANKER_SIDE = 448


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
    from rar_agent.pipeline import ranked_result
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
    verdicts = recognizer.judge_many(retrieved)
    rankings = recognizer.rank_many(views, retrieved, verdicts)
    n = len(jobs)
    timings = {
        "prepare": round(prepare_ms / n, 3),
        "encode": round(encode_ms / n, 3),
        "retrieve": round(retrieve_ms / n, 3),
    }
    done = iter(zip(jobs, retrieved, rankings, verdicts, strict=True))
    out: list[RecognitionResult] = []
    for slot in results:
        if slot is not None:
            out.append(slot)
            continue
        (box, coords, _), candidates, ranking, verdict = next(done)
        out.append(
            ranked_result(
                candidates,
                ranking,
                timings,
                rejection=verdict,
                image=loaded.source,
                box=[round(v, 3) for v in coords],
                box_id=box.id,
            )
        )
    return out
