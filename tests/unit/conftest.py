"""Fixtures shared by the unit tests: the demo clusters and a calibrated memory of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rar_agent import openset
from rar_agent.ingest.builders import add_images
from rar_agent.memory import CategoryMemory
from tests.helpers.clusters import KNOWN, Clusters, demo_clusters, example_items


@pytest.fixture(scope="module")
def clusters() -> Clusters:
    """The demo categories (:data:`~tests.helpers.clusters.KNOWN` and the stranger), eight
    examples each."""
    return demo_clusters()


@pytest.fixture
def calibrated_memory(tmp_path: Path, clusters: Clusters) -> Iterator[CategoryMemory]:
    """Five examples of each known category, calibrated as a build leaves a memory (the
    Recognizer's constructor never calibrates)."""
    memory = CategoryMemory.open(tmp_path / "mem", collection="known")
    add_images(memory, clusters.encoder, example_items(clusters, KNOWN, tmp_path / "examples"))
    openset.fit(memory)
    yield memory
    memory.close()
