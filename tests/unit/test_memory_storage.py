"""Storage settings: chosen at creation, stored with the memory, applied, reopened, shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent.errors import ConfigError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.memory.edge import META_FILE, SHARD_DIR
from rar_agent.memory.engine_settings import collection_config
from rar_agent.memory.server import ServerBackend
from rar_agent.memory.storage import (
    DISK_FROM_ENTRIES,
    QUANTIZE_FROM_ENTRIES,
    StorageSettings,
    estimate_footprint,
    footprint_from_parts,
)

DIM = 16
INT8 = StorageSettings(
    quantization="int8",
    vectors_on_disk=True,
    payload_on_disk=True,
    hnsw_m=8,
    hnsw_ef_construct=40,
    search_ef=64,
    oversampling=3.0,
)


def _clustered(n: int, dim: int = DIM) -> tuple[np.ndarray, list[MemoryEntry]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, dim)).astype(np.float32)
    which = rng.integers(0, 10, size=n)
    x = centres[which] + rng.normal(0, 0.3, size=(n, dim)).astype(np.float32)
    entries = [MemoryEntry(f"c{k}", "image", f"v{i}", f"h{i}") for i, k in enumerate(which)]
    return x / np.linalg.norm(x, axis=1, keepdims=True), entries


# ---------------------------------------------------------------------- the settings


def test_defaults_by_size_switch_to_int8_then_to_disk_at_the_thresholds() -> None:
    small = StorageSettings.for_entries(QUANTIZE_FROM_ENTRIES - 1)
    assert small == StorageSettings() == StorageSettings.for_entries(None)
    assert small.quantization == "none" and not small.vectors_on_disk
    mid = StorageSettings.for_entries(QUANTIZE_FROM_ENTRIES)
    assert (mid.quantization, mid.vectors_on_disk, mid.payload_on_disk) == ("int8", False, False)
    big = StorageSettings.for_entries(DISK_FROM_ENTRIES)
    assert (big.quantization, big.vectors_on_disk, big.payload_on_disk) == ("int8", True, True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantization": "pq"}, "quantization must be one of none, int8"),
        ({"hnsw_m": 2}, "hnsw_m must be an integer from 4 to 128"),
        ({"hnsw_ef_construct": 1.5}, "hnsw_ef_construct must be an integer"),
        ({"search_ef": 0}, "search_ef must be an integer from 1"),
        ({"oversampling": 0.5}, "oversampling must be a number from 1 to 16"),
        ({"vectors_on_disk": "yes"}, "vectors_on_disk must be true or false"),
    ],
)
def test_invalid_settings_are_refused_with_the_allowed_range(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        StorageSettings(**change)


def test_dict_round_trip_and_unknown_keys() -> None:
    assert StorageSettings.from_dict(INT8.to_dict()) == INT8
    assert StorageSettings.from_dict(None) == StorageSettings()
    assert StorageSettings.from_dict({"hnsw_m": 32}) == StorageSettings(hnsw_m=32)
    with pytest.raises(ConfigError, match="unknown storage settings"):
        StorageSettings.from_dict({"hnsw_mm": 32})
    assert INT8.replace(hnsw_m=None, search_ef=200) == INT8.replace(search_ef=200)
    assert "int8" in INT8.describe() and "m=8" in INT8.describe()


def test_footprint_model_shrinks_resident_vectors_with_int8_on_disk() -> None:
    plain = estimate_footprint(StorageSettings(), 1_000_000, 512)
    small = estimate_footprint(StorageSettings.for_entries(1_000_000), 1_000_000, 512)
    assert small.ram_cached < plain.ram_cached / 4  # the float32 originals left RAM
    assert small.ram_resident > plain.ram_resident  # the int8 copy lives on the heap
    assert small.disk > plain.disk  # originals and quantized copy both on disk


def test_measured_parts_are_sorted_by_where_the_settings_put_them() -> None:
    parts = {"quantized": 10, "ids_and_indexes": 5, "hnsw": 7, "vectors": 100, "payload": 20,
             "wal": 3}  # fmt: skip
    on_disk = footprint_from_parts(StorageSettings.for_entries(10**6), parts)
    assert (on_disk.ram_resident, on_disk.ram_cached, on_disk.disk) == (15, 7, 145)
    in_ram = footprint_from_parts(StorageSettings(), parts)
    assert in_ram.ram_cached == 127 and in_ram.computed is False


# ---------------------------------------------------------------------- embedded


def test_edge_settings_are_stored_applied_reopened_and_shown(tmp_path: Path) -> None:
    path = tmp_path / "m"
    # Just over the engine's 10 MB indexing threshold, so optimize quantizes and indexes.
    x, entries = _clustered(2600, dim=1024)
    with CategoryMemory.open(path, collection="m", storage=INT8) as mem:
        mem.bind_encoder("enc", 1024)
        mem.add_entries(entries, x)
        assert mem.optimize()
        top = mem.search(x[5], limit=3)
    assert top[0].id == entries[5].point_id
    meta = json.loads((path / META_FILE).read_text())
    assert meta["storage"] == INT8.to_dict()
    engine = json.loads((path / SHARD_DIR / "edge_config.json").read_text())
    assert engine["quantization_config"]["scalar"]["type"] == "int8"
    assert engine["hnsw_config"]["m"] == 8 and engine["hnsw_config"]["ef_construct"] == 40
    assert engine["vectors"]["image"]["memory"] == "cold"
    assert engine["payload_memory"] == "cold"

    with CategoryMemory.open(path, collection="m", create=False) as mem:
        assert mem.storage == INT8 and mem.info.storage == INT8
        assert [h.id for h in mem.search(x[5], limit=3)] == [h.id for h in top]
        stats = mem.stats()
    assert stats["storage"] == INT8.to_dict() and "int8" in stats["storage_summary"]
    footprint = stats["footprint"]
    assert footprint["computed"] is False and footprint["disk_mib"] > 0
    assert footprint["ram_resident_mib"] > 0  # the pinned int8 vectors
    assert stats["disk_mib_by_part"]["quantized"] > 0 and stats["storage_indexed_vectors"] == 2600


def test_reopening_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    with CategoryMemory.open(path, collection="m", storage=INT8) as mem:
        mem.bind_encoder("enc", DIM)
    with CategoryMemory.open(path, collection="m", storage=INT8) as mem:
        mem.bind_encoder("enc", DIM)  # the same settings: a resumed build
    with (
        CategoryMemory.open(path, collection="m", storage=StorageSettings()) as mem,
        pytest.raises(ConfigError, match="fixed at creation"),
    ):
        mem.bind_encoder("enc", DIM)


def test_size_of_the_first_build_picks_the_default(tmp_path: Path) -> None:
    with CategoryMemory.open(tmp_path / "big", collection="big") as mem:
        mem.bind_encoder("enc", DIM, expected_entries=DISK_FROM_ENTRIES)
        assert mem.storage == StorageSettings.for_entries(DISK_FROM_ENTRIES)
    with CategoryMemory.open(tmp_path / "small", collection="small") as mem:
        mem.bind_encoder("enc", DIM, expected_entries=10)
        assert mem.storage == StorageSettings()


def test_a_memory_from_before_storage_settings_reads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "old"
    with CategoryMemory.open(path, collection="old") as mem:
        mem.bind_encoder("enc", DIM)
    meta = json.loads((path / META_FILE).read_text())
    del meta["storage"]
    (path / META_FILE).write_text(json.dumps(meta))
    with CategoryMemory.open(path, collection="old", create=False) as mem:
        assert mem.storage == StorageSettings()
        assert mem.stats()["storage"] == StorageSettings().to_dict()


def test_open_refuses_a_storage_that_is_not_storage_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="StorageSettings"):
        CategoryMemory.open(tmp_path / "m", storage={"quantization": "int8"})  # type: ignore[arg-type]


# ---------------------------------------------------------------------- server


def test_server_collection_config_carries_the_settings_and_cluster_layout() -> None:
    from qdrant_client import models

    config = collection_config(
        DIM, INT8, shard_number=3, replication_factor=2, write_consistency_factor=2
    )
    image = config["vectors_config"]["image"]
    assert image.on_disk is True and image.size == DIM
    scalar = config["quantization_config"].scalar
    assert scalar.type == models.ScalarType.INT8 and scalar.always_ram is True
    assert (config["hnsw_config"].m, config["hnsw_config"].ef_construct) == (8, 40)
    assert config["on_disk_payload"] is True
    assert (config["shard_number"], config["replication_factor"]) == (3, 2)
    assert config["write_consistency_factor"] == 2
    assert collection_config(DIM, StorageSettings())["quantization_config"] is None


def test_server_settings_are_stored_in_the_collection_metadata() -> None:
    x, entries = _clustered(50)
    with CategoryMemory.open(":memory:", collection="m", storage=INT8) as mem:
        mem.bind_encoder("enc", DIM)
        mem.add_entries(entries, x)
        assert mem.record is not None and mem.record.storage == INT8
        assert mem.storage == INT8
        assert mem.search(x[3], limit=1)[0].id == entries[3].point_id
        stats = mem.stats()
    assert stats["footprint"]["computed"] is True  # a server reports no files
    assert stats["storage"]["quantization"] == "int8"


class _Recorder:
    """Wraps a qdrant client and records ``update_collection`` calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.updates: list[Any] = []

    def update_collection(self, name: str, **kwargs: Any) -> bool:
        self.updates.append(kwargs.get("hnsw_config"))
        return True

    def get_collection(self, name: str) -> Any:
        info = self.inner.get_collection(name)
        if self.updates and self.updates[-1] is not None:
            info.config.hnsw_config.m = self.updates[-1].m
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_server_bulk_load_defers_hnsw_and_restores_the_memorys_m() -> None:
    """A fresh big load sets m=0, then the memory's m, even when the load fails."""
    with CategoryMemory.open(":memory:", collection="m", storage=INT8) as mem:
        mem.bind_encoder("enc", DIM)
        backend = mem._backend
        assert isinstance(backend, ServerBackend)
        recorder = _Recorder(backend._client)
        backend._client, backend._local = recorder, False  # act as a server from here on
        try:
            with pytest.raises(RuntimeError), mem.bulk_load(50_000):
                assert backend.indexing_deferred()
                raise RuntimeError("killed mid-build")
            assert [u.m for u in recorder.updates] == [0, INT8.hnsw_m]
            assert not backend.indexing_deferred()
            with mem.bulk_load(5):  # small: indexing stays on
                pass
            assert len(recorder.updates) == 2
        finally:
            backend._client, backend._local = recorder.inner, True
