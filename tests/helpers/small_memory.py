"""A small real category memory for tool, agent and chat-page tests.

Images are plain coloured pictures written to disk; each becomes one image entry (embedded
by the real encoder), and each label also gets a text entry. Querying with one of these very
images finds its own entry first (cosine 1.0), so tests know the right answer even with a
random encoder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["COLOURS", "make_images", "fill_memory", "small_recognizer"]

#: label -> RGB colour of its example picture.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red apple": (200, 30, 30),
    "green leaf": (40, 170, 60),
    "blue jay": (30, 60, 210),
    "yellow banana": (235, 215, 40),
    "black cat": (15, 15, 20),
}


def make_images(directory: Path, size: tuple[int, int] = (48, 40)) -> dict[str, Path]:
    """Write one PNG per label (a coloured picture with a small white mark) to ``directory``."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for i, (label, colour) in enumerate(COLOURS.items()):
        image = Image.new("RGB", size, colour)
        ImageDraw.Draw(image).rectangle((4 + 3 * i, 4, 14 + 3 * i, 14), fill=(255, 255, 255))
        path = directory / f"{label.replace(' ', '_')}.png"
        image.save(path)
        out[label] = path
    return out


def fill_memory(memory: Any, encoder: Any, images: dict[str, Path]) -> None:
    """Add one image entry per picture and one text entry per label."""
    from PIL import Image

    from rar_agent.memory import MemoryEntry

    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    labels = list(images)
    pictures = [Image.open(images[label]).convert("RGB") for label in labels]
    image_entries = [
        MemoryEntry(
            label,
            "image",
            str(images[label]),
            hashlib.sha256(images[label].read_bytes()).hexdigest(),
        )
        for label in labels
    ]
    memory.add_entries(image_entries, encoder.embed_images(pictures))
    text_entries = [MemoryEntry(label, "text", "name", f"name:{label}") for label in labels]
    memory.add_entries(text_entries, encoder.embed_texts([f"a photo of a {x}" for x in labels]))


def small_recognizer(directory: Path, encoder: Any, *, location: str | None = None) -> Any:
    """A ``Recognizer`` (no ranker) over a filled memory; images are written under directory.

    Args:
        directory: Scratch directory for the pictures (and the embedded memory).
        encoder: The encoder to use (the tiny test encoder).
        location: ``":memory:"`` for qdrant-client's local mode; default embedded.
    """
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    images = make_images(directory / "images")
    if location is not None:
        memory = CategoryMemory.open(location, collection="small")
    else:
        memory = CategoryMemory.open(directory / "memory", collection="small")
    fill_memory(memory, encoder, images)
    recognizer = Recognizer(memory, encoder, k=3)
    recognizer.example_images = images  # type: ignore[attr-defined]
    return recognizer
