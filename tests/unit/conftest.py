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


@pytest.fixture
def tiny_cli_env(tmp_path: Path, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The command line's environment for a test: ``RAR_HOME`` under ``tmp_path``, the tiny
    open_clip encoder, no memory or server named. Returns ``tmp_path``."""
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_MODEL", tiny_openclip_spec)
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    for name in ("RAR_QDRANT_URL", "RAR_MEMORY_PATH", "RAR_ENCODER", "RAR_COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def recorded_collections(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The collections created and deleted through qdrant-client (the server backend's
    calls), recorded by name as they pass through."""
    from qdrant_client import QdrantClient

    calls: dict[str, list[str]] = {"created": [], "deleted": []}
    create, delete = QdrantClient.create_collection, QdrantClient.delete_collection

    def create_collection(self: object, name: str, *args: object, **kwargs: object) -> object:
        calls["created"].append(name)
        return create(self, name, *args, **kwargs)  # type: ignore[arg-type]

    def delete_collection(self: object, name: str, *args: object, **kwargs: object) -> object:
        calls["deleted"].append(name)
        return delete(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(QdrantClient, "create_collection", create_collection)
    monkeypatch.setattr(QdrantClient, "delete_collection", delete_collection)
    return calls
