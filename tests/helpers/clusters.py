"""Clustered embeddings with a known answer, for open-set tests.

Each category is a direction in a 32-d space; its examples are that direction plus a little
noise, so examples of one category are close (cosine about 0.9) and categories are far apart
(cosine about 0). A query from a category that is not in memory is far from every entry: it
must come out *unknown*.

:class:`PaletteEncoder` turns these into images: every example is a plain picture of its own
colour, and the encoder maps a picture to the vector of the palette colour nearest its mean
colour. It meets the encoder protocol, is deterministic, and lets tests, the tools and the
agent handle real images whose embeddings are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rar_agent.errors import EncoderError

__all__ = [
    "DEMO_LABELS",
    "DIM",
    "KNOWN",
    "STRANGER",
    "Clusters",
    "PaletteEncoder",
    "demo_clusters",
    "demo_encoder",
    "example_items",
    "make_clusters",
]

DIM = 32
Colour = tuple[int, int, int]


class PaletteEncoder:
    """An image encoder that looks vectors up by colour (nearest palette entry)."""

    def __init__(self, palette: dict[Colour, np.ndarray], *, name: str = "palette") -> None:
        self._colours = np.array(list(palette), dtype=np.float32)
        self._vectors = np.stack([palette[c] for c in palette]).astype(np.float32)
        self.dim = self._vectors.shape[1]
        self.fingerprint = f"{name}:{self.dim}:{len(palette)}"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The vector of each image's nearest palette colour (by mean RGB)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        means = np.stack(
            [
                np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0)
                for im in images
            ]
        )
        nearest = ((means[:, None, :] - self._colours[None]) ** 2).sum(-1).argmin(1)
        return self._vectors[nearest]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Not available (an image-only encoder)."""
        raise EncoderError("the palette encoder is image-only")


class Clusters:
    """Categories with example colours and vectors; see :func:`make_clusters`."""

    def __init__(self, colours: dict[str, list[Colour]], vectors: dict[Colour, np.ndarray]):
        self.colours = colours
        self.vectors = vectors
        self.encoder = PaletteEncoder(vectors)

    def vector(self, label: str, i: int) -> np.ndarray:
        """The embedding of example ``i`` of ``label``."""
        return self.vectors[self.colours[label][i]]

    def image(self, label: str, i: int, size: int = 24) -> Image.Image:
        """Example ``i`` of ``label`` as a plain picture."""
        return Image.new("RGB", (size, size), self.colours[label][i])

    def save(self, label: str, i: int, directory: Path) -> Path:
        """Write example ``i`` of ``label`` as a PNG; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{label.replace(' ', '_')}_{i}.png"
        self.image(label, i).save(path)
        return path


def make_clusters(
    labels: Sequence[str],
    per_class: int,
    *,
    spread: float | Mapping[str, float] = 0.35,
    seed: int = 0,
) -> Clusters:
    """Well separated categories: ``per_class`` examples each, every one its own colour.

    Category ``c`` gets a base colour far from the others; its examples step away from it
    in small increments, so a picture's nearest palette colour is always one of its own
    category's. ``spread``: how far examples lie from their category's direction (per label
    when a mapping: e.g. one new thing seen again, closer than a category's members).
    """
    rng = np.random.default_rng(seed)
    colours: dict[str, list[Colour]] = {}
    vectors: dict[Colour, np.ndarray] = {}
    for c, label in enumerate(labels):
        direction = rng.standard_normal(DIM)
        direction /= np.linalg.norm(direction)
        base = ((c * 97) % 256, (c * 57 + 40) % 256, (c * 31 + 90) % 256)
        colours[label] = []
        for i in range(per_class):
            colour = (base[0], base[1], (base[2] + 2 * i) % 256)
            noise = rng.standard_normal(DIM)
            scale = spread[label] if isinstance(spread, Mapping) else spread
            vector = direction + scale * noise / np.linalg.norm(noise)
            vectors[colour] = (vector / np.linalg.norm(vector)).astype(np.float32)
            colours[label].append(colour)
    return Clusters(colours, vectors)


DEMO_LABELS = ("heron", "tabby cat", "lynx", "red fox", "barn owl", "bicycle")
"""The categories of :func:`demo_clusters` (and of the ``demo_encoder`` factory)."""


KNOWN = list(DEMO_LABELS[:5])
"""The demo categories a test memory holds (``tests/unit/conftest.py``)."""
STRANGER = DEMO_LABELS[5]
"""The demo category a test memory never sees: its pictures must come out unknown."""


def demo_clusters() -> Clusters:
    """Six categories of eight examples each (seed 0): the set the CLI tests use."""
    return make_clusters(DEMO_LABELS, 8)


def example_items(
    clusters: Clusters, labels: Sequence[str], root: Path, per_label: int = 5
) -> list[tuple[str, str]]:
    """``(path, label)`` of the first ``per_label`` examples of each label, saved as PNGs
    under ``root/<label>/`` (what a memory build takes)."""
    return [
        (str(clusters.save(label, i, root / label)), label)
        for label in labels
        for i in range(per_label)
    ]


def demo_encoder(pretrained: str | None = None, device: str | None = None) -> PaletteEncoder:
    """Encoder factory for ``--encoder tests.helpers.clusters:demo_encoder``."""
    return demo_clusters().encoder
