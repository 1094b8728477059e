"""The CategoryMemory contract against a real Qdrant server (``QDRANT_URL``).

Runs every test of ``tests/unit/test_memory_contract.py`` on the server backend. Start a
server with ``docker compose up -d qdrant`` and set ``QDRANT_URL`` (and ``QDRANT_API_KEY``
if it needs one); without ``QDRANT_URL`` the tests are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rar_agent.memory import CategoryMemory, MemoryLocation

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


def _load_contract() -> object:
    path = Path(__file__).resolve().parents[1] / "unit" / "test_memory_contract.py"
    spec = importlib.util.spec_from_file_location("_memory_contract_for_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_contract = _load_contract()
# Collect the same contract tests here; they use this module's ``make_memory`` fixture.
globals().update(
    {name: getattr(_contract, name) for name in dir(_contract) if name.startswith("test_")}
)


@pytest.fixture
def make_memory() -> Iterator[Callable[[], CategoryMemory]]:
    """Fresh collections on the server, deleted after the test."""
    opened: list[CategoryMemory] = []

    def make() -> CategoryMemory:
        name = f"rar-test-{uuid.uuid4().hex[:12]}"
        mem = CategoryMemory.open(MemoryLocation.server(URL, name, api_key=API_KEY, timeout=30))
        opened.append(mem)
        return mem

    yield make
    from qdrant_client import QdrantClient

    client = QdrantClient(url=URL, api_key=API_KEY, check_compatibility=False)
    for mem in opened:
        mem.close()
        if client.collection_exists(mem.collection):
            client.delete_collection(mem.collection)
    client.close()


def test_server_collection_options_and_reopen() -> None:
    """A collection created with shard options keeps its encoder across clients."""
    import numpy as np

    from rar_agent.memory import MemoryEntry

    name = f"rar-test-{uuid.uuid4().hex[:12]}"
    try:
        with CategoryMemory.open(
            MemoryLocation.server(URL, name, api_key=API_KEY, shard_number=2, replication_factor=1)
        ) as mem:
            mem.bind_encoder("enc-A", 4, description="pets")
            mem.add_entries([MemoryEntry("cat", "image", "a.png", "h")], np.eye(4)[:1])
        with CategoryMemory.open(_at(name), create=False) as mem:
            assert mem.info.fingerprint == "enc-A" and mem.info.description == "pets"
            assert mem.labels() == {"cat": 1}
            assert mem.stats()["storage_payload_indexes"] == ["kind", "label"]
    finally:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=URL, api_key=API_KEY, check_compatibility=False)
        client.delete_collection(name)
        client.close()


def test_a_calibration_another_process_writes_is_judged_by(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two handles on one collection, as two processes would hold them: what one teaches,
    the other's verdicts use once its copy is ``MAX_AGE_S`` old (0 here), and a copy whose
    record has not changed is kept as it is."""
    import numpy as np

    from rar_agent import openset
    from rar_agent.memory import MemoryEntry
    from rar_agent.openset import calibration as cal_mod

    name = f"rar-test-{uuid.uuid4().hex[:12]}"
    rng = np.random.default_rng(0)
    entries = [
        MemoryEntry(f"c{c}", "image", f"{c}-{i}", f"h{c}-{i}") for c in range(6) for i in range(3)
    ]
    try:
        with CategoryMemory.open(_at(name)) as here:
            here.bind_encoder("enc-R", 8)
            here.add_entries(entries, rng.normal(size=(18, 8)))
            openset.fit(here)
            monkeypatch.setattr(cal_mod, "MAX_AGE_S", 0.0)
            held = openset.current(here)
            assert held is not None and openset.current(here) is held
            with CategoryMemory.open(_at(name), create=False) as there:
                more = [MemoryEntry("c0", "image", f"0-{i}", f"h0-more-{i}") for i in range(3)]
                openset.update(there, added=there.add_entries(more, rng.normal(size=(3, 8))))
                stored = openset.load(there)
            now = openset.current(here)
            assert stored is not None and now is not None
            assert now.model_dump() == stored.model_dump() != held.model_dump()
    finally:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=URL, api_key=API_KEY, check_compatibility=False)
        if client.collection_exists(name):
            client.delete_collection(name)
        client.close()
