"""Stand-ins for categories with a single example: an augmented view of that example.

Leave-one-out cannot use a category's only example (its nearest other entry belongs to
another category), so a different look at the same image (crop, flip, brightness) is searched
instead: how close it comes to its own category is the stand-in (see
:mod:`rar_agent.memory.calibration`). Builders call :func:`add_view_standins` for the
categories a build leaves with one example.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rar_agent.memory.calibration import (
    MAX_STANDINS,
    SEARCH_LIMIT,
    Calibration,
    make_standin,
    update_calibration,
)

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.encoders.base import ImageTextEncoder
    from rar_agent.memory.core import CategoryMemory

__all__ = ["add_view_standins", "augmented_view"]


def augmented_view(image: Image.Image, seed: int) -> Image.Image:
    """Another look at an image: a random crop (70-100 % of each side), a flip half of the
    time, and brightness/contrast jitter of up to 20 %; deterministic for a seed."""
    from PIL import ImageEnhance, ImageOps

    rng = random.Random(seed)
    rgb = image.convert("RGB")
    w, h = rgb.size
    cw, ch = max(1, round(w * rng.uniform(0.7, 1.0))), max(1, round(h * rng.uniform(0.7, 1.0)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = rgb.crop((left, top, left + cw, top + ch)).resize((w, h))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast):
        out = enhancer(out).enhance(rng.uniform(0.8, 1.2))
    return out


def add_view_standins(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    examples: Iterable[tuple[str, Image.Image]],
) -> int:
    """Stand-ins for categories with a single example: an augmented view of it, searched.

    Call after the examples were added. Examples whose category has more than one entry are
    skipped (leave-one-out covers them).

    Args:
        memory: The memory holding the examples.
        encoder: The memory's encoder (embeds the views).
        examples: ``(label, image)`` of the examples just added.

    Returns:
        How many view stand-ins were recorded.
    """
    items = list(examples)
    if not items:
        return 0
    counts = memory.labels("image")
    single = [(label, img) for label, img in items if counts.get(label) == 1][:MAX_STANDINS]
    if not single:
        return 0
    views = [augmented_view(img, seed=i) for i, (_, img) in enumerate(single)]
    batches = memory.search_batch(encoder.embed_images(views), kind="image", limit=SEARCH_LIMIT)
    labels = {label for label, _ in single}
    found = [
        make_standin(hits, label, "view", None)
        for (label, _), hits in zip(single, batches, strict=True)
    ]

    def with_views(old: Calibration | None) -> Calibration:
        cal = old or Calibration(seen=sum(counts.values()))
        pool = [s for s in cal.standins if not (s[3] == "view" and s[0] in labels)]
        pool += [s for s in found if s is not None]
        cal.standins = pool[-MAX_STANDINS:]
        return cal.refit()

    update_calibration(memory, with_views)
    return len(single)
