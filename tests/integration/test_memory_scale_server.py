"""Storage settings, bulk loads and push/pull against a real Qdrant server (``QDRANT_URL``).

Skipped without ``QDRANT_URL``; start one with ``docker compose up -d qdrant`` (or the
``cluster`` profile and its URL, http://localhost:7333).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rar_agent.ingest.from_vectors import add_vectors
from rar_agent.memory import CategoryMemory, MemoryEntry, MemoryLocation
from rar_agent.memory.storage import StorageSettings
from rar_agent.memory.transfer import copy_memory

URL = os.environ.get("QDRANT_URL")
API_KEY = os.environ.get("QDRANT_API_KEY")


def _at(name: str) -> MemoryLocation:
    return MemoryLocation.server(str(URL), name, api_key=API_KEY)


pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not URL, reason="QDRANT_URL is not set: start `docker compose up -d qdrant` and set it"
    ),
    pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection"),
]

SETTINGS = StorageSettings(
    quantization="int8", vectors_on_disk=True, payload_on_disk=True, hnsw_m=12, search_ef=64
)


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Collection names to use; every one is deleted afterwards."""
    made: list[str] = []
    yield made
    from qdrant_client import QdrantClient

    client = QdrantClient(url=URL, api_key=API_KEY, check_compatibility=False)
    for name in made:
        if client.collection_exists(name):
            client.delete_collection(name)
    client.close()


def _name(names: list[str]) -> str:
    names.append(f"rar-test-{uuid.uuid4().hex[:12]}")
    return names[-1]


def test_storage_settings_become_the_collection_config(names: list[str]) -> None:
    name = _name(names)
    with CategoryMemory.open(_at(name), storage=SETTINGS) as mem:
        mem.bind_encoder("enc", 8)
    from qdrant_client import QdrantClient

    client = QdrantClient(url=URL, api_key=API_KEY, check_compatibility=False)
    try:
        config = client.get_collection(name).config
    finally:
        client.close()
    assert config.params.vectors["image"].on_disk is True
    assert config.params.on_disk_payload is True
    assert config.hnsw_config.m == 12
    assert config.quantization_config.scalar.type.value == "int8"
    with CategoryMemory.open(_at(name), create=False) as mem:
        assert mem.storage == SETTINGS


def test_bulk_load_restores_indexing_and_push_pull_round_trip(
    names: list[str], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12_000, 16)).astype(np.float32)
    labels = [f"l{i % 40}" for i in range(len(x))]
    with CategoryMemory.open(tmp_path / "src", storage=SETTINGS) as src:
        add_vectors(src, x, labels, fingerprint="enc")
        src.add_entries([MemoryEntry("words", "text", "t", "h")], np.ones((1, 16)))
        with CategoryMemory.open(_at(_name(names))) as server:
            report = copy_memory(src, server, batch_size=1000)
            assert report.copied == src.count() and server.storage == SETTINGS
            assert not server._backend.indexing_deferred()  # m restored after the bulk load
            assert server.search(x[5], limit=1)[0].id == src.search(x[5], limit=1)[0].id
            with CategoryMemory.open(tmp_path / "back") as back:
                copy_memory(server, back)
                assert back.labels() == src.labels() and back.info.fingerprint == "enc"
