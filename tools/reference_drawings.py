"""What the colour reference sets share (``icon_reference.py``, ``emoji_reference.py``):
drawings rasterised and centred on white, and their vectors cached on disk as
``<stem>_x.npy`` (float32 rows) beside ``<stem>.json`` (the encoder's fingerprint, each row's
label and the group it was drawn by: a theme, an emoji set)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENCODE_BATCH = 64
"""Drawings per encoder call."""


def rasterize_svg(svg: bytes | Path, size: int) -> Any:
    """An SVG (its bytes, or its file: references relative to it then resolve) drawn by
    ``rsvg-convert`` (Debian ``librsvg2-bin``) to fit ``size`` px, as a Pillow image.

    Raises:
        OSError, subprocess.SubprocessError: It cannot be drawn.
    """
    import io

    from PIL import Image

    command = ["rsvg-convert", "-w", str(size), "-h", str(size), "--keep-aspect-ratio"]
    if isinstance(svg, Path):
        command, data = [*command, str(svg)], None
    else:
        data = svg
    png = subprocess.run(
        command,
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return Image.open(io.BytesIO(png))


def centred_on_white(image: Any, size: int) -> Any:
    """An RGBA drawing (at most ``size`` px a side) in the middle of a white ``size`` px RGB
    square: photos have no transparency."""
    from PIL import Image

    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


def save_encoded(
    cache: Path,
    stem: str,
    encoder: Any,
    images: Sequence[Any],
    labels: list[str],
    groups: tuple[str, list[str]],
) -> None:
    """Encode ``images`` and cache their vectors with ``labels`` and ``groups`` (the JSON key
    and each image's group) under ``stem``."""
    rows = [
        encoder.embed_images(images[i : i + ENCODE_BATCH])
        for i in range(0, len(images), ENCODE_BATCH)
    ]
    np.save(cache / f"{stem}_x.npy", np.concatenate(rows).astype(np.float32))
    key, names = groups
    info = {"fingerprint": encoder.fingerprint, "labels": labels, key: names}
    (cache / f"{stem}.json").write_text(json.dumps(info))


def load_encoded(cache: Path, stem: str, key: str) -> tuple[np.ndarray, list[str], list[str], str]:
    """``(vectors, labels, groups, fingerprint)`` cached by :func:`save_encoded` (``key``:
    the groups' JSON key)."""
    info = json.loads((cache / f"{stem}.json").read_text())
    return np.load(cache / f"{stem}_x.npy"), info["labels"], info[key], info["fingerprint"]
