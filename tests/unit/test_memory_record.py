"""The memory record: typed, migrated from the flat JSON of before, changed atomically."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.errors import ConfigError, MemoryBusyError, MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry, MemoryRecord
from rar_agent.memory.edge import META_FILE, is_busy_error
from rar_agent.memory.record import LEGACY_EXTENSION, RECORD_VERSION
from rar_agent.memory.storage import StorageSettings
from rar_agent.openset import EXTENSION as CALIBRATION_KEY
from rar_agent.openset import fit as calibrate
from rar_agent.openset import load as load_calibration
from tests.helpers.clusters import DIM, make_clusters

V1_RECORD = {
    "version": 1,
    "fingerprint": "enc-A",
    "dim": 4,
    "collection": "old",
    "description": "pets",
    "created_at": "2025-01-02T03:04:05+00:00",
    "encoder_spec": {"model": "ViT-B-16", "pretrained": "openai"},
    "storage": {"quantization": "int8"},
    "gate_margin": 0.12,
    "calibration": {"version": 1, "seen": 7},
    "future_key": {"kept": True},
    "a_number": 3,
}


def _bound(where: Any, collection: str = "rec") -> CategoryMemory:
    mem = CategoryMemory.open(where, collection=collection)
    mem.bind_encoder("enc-A", 4)
    return mem


@pytest.fixture(params=["edge", "server"])
def memory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    where = tmp_path / "m" if request.param == "edge" else ":memory:"
    with _bound(where) as mem:
        yield mem


def test_a_flat_v1_record_is_read_as_fields_and_extensions(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / META_FILE).write_text(json.dumps(V1_RECORD))
    with CategoryMemory.open(tmp_path / "old", collection="old") as mem:
        rec = mem.record
        assert rec is not None and rec.revision == 0 and rec.version == RECORD_VERSION
        assert (rec.fingerprint, rec.dim, rec.description, rec.gate_margin) == (
            "enc-A",
            4,
            "pets",
            0.12,
        )
        assert rec.encoder_spec is not None and rec.encoder_spec.label == "ViT-B-16/openai"
        assert rec.storage == StorageSettings(quantization="int8")
        assert rec.extensions == {
            "calibration": {"version": 1, "seen": 7},
            "future_key": {"kept": True},
            LEGACY_EXTENSION: {"a_number": 3},
        }
        assert mem.info.encoder_spec == {"model": "ViT-B-16", "pretrained": "openai"}
        mem.set_description("house pets")  # the first write stores the new layout
    stored = json.loads((tmp_path / "old" / META_FILE).read_text())
    assert stored["version"] == RECORD_VERSION and stored["revision"] == 1
    assert stored["extensions"]["future_key"] == {"kept": True} and "calibration" not in stored
    assert MemoryRecord.from_stored(stored).description == "house pets"


def test_an_unreadable_record_says_so(tmp_path: Path) -> None:
    with pytest.raises(MemoryStoreError, match="not readable.*rebuild"):
        MemoryRecord.from_stored({"fingerprint": "", "dim": -1}, where="/x")


def test_every_change_bumps_the_revision(memory: CategoryMemory) -> None:
    start = memory.record
    assert start is not None
    memory.set_description("birds")
    memory.set_gate_margin(0.2)
    memory.update_extension("notes", lambda _: {"a": 1})
    after = memory.record
    assert after is not None and after.revision == start.revision + 3
    assert (after.description, after.gate_margin) == ("birds", 0.2)
    assert memory.info.description == "birds"


def test_extension_update_and_delete(memory: CategoryMemory) -> None:
    assert memory.extension("notes") is None
    assert memory.update_extension("notes", lambda cur: {"n": (cur or {}).get("n", 0) + 1})
    assert memory.update_extension("notes", lambda cur: {"n": cur["n"] + 1}) == {"n": 2}
    assert memory.extension("notes") == {"n": 2}
    revision = memory.record.revision  # type: ignore[union-attr]
    assert memory.update_extension("notes", lambda cur: None) is None
    assert memory.extension("notes") is None
    assert memory.record.revision == revision + 1  # type: ignore[union-attr]
    # Deleting what is absent, or writing back the same value, writes nothing.
    memory.update_extension("notes", lambda cur: None)
    memory.update_extension("other", lambda cur: {"x": 1})
    memory.update_extension("other", lambda cur: cur)
    assert memory.record.revision == revision + 2  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="returned list"):
        memory.update_extension("bad", lambda cur: [1])  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="extension name"):
        memory.update_extension("", lambda cur: {})


def test_extension_writes_are_refused_read_only_and_before_binding(tmp_path: Path) -> None:
    with CategoryMemory.open(tmp_path / "m") as mem:
        with pytest.raises(MemoryStoreError, match="no encoder bound"):
            mem.update_extension("notes", lambda cur: {"a": 1})
        mem.bind_encoder("enc-A", 4)
        mem.update_extension("notes", lambda cur: {"a": 1})
    with CategoryMemory.open(tmp_path / "m", read_only=True) as ro:
        assert ro.extension("notes") == {"a": 1}
        with pytest.raises(MemoryStoreError, match="read-only"):
            ro.update_extension("notes", lambda cur: {"a": 2})


def test_concurrent_updates_are_never_lost(memory: CategoryMemory) -> None:
    start = memory.record.revision  # type: ignore[union-attr]

    def bump(cur: dict[str, Any] | None) -> dict[str, Any]:
        n = (cur or {}).get("n", 0)
        time.sleep(0.0005)  # widen the read-modify-write window
        return {"n": n + 1}

    def worker() -> None:
        for _ in range(25):
            memory.update_extension("counter", bump)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert memory.extension("counter") == {"n": 200}
    assert memory.record.revision == start + 200  # type: ignore[union-attr]


def test_two_handles_compare_and_set_and_retry(tmp_path: Path) -> None:
    """Handles of one embedded memory serialise nothing between them: the revision does."""
    a, b = _bound(tmp_path / "m"), _bound(tmp_path / "m")
    calls = []

    def outer(cur: dict[str, Any] | None) -> dict[str, Any]:
        calls.append(cur)
        if len(calls) == 1:  # another writer gets in between this read and the write
            b.update_extension("log", lambda c: {"items": [*(c or {}).get("items", []), "b"]})
        return {"items": [*(cur or {}).get("items", []), "a"]}

    try:
        assert a.update_extension("log", outer) == {"items": ["b", "a"]}
        assert calls == [None, {"items": ["b"]}]  # the first try lost, the second saw b's
        assert b.extension("log") == {"items": ["b", "a"]}
    finally:
        a.close()
        b.close()


def test_concurrent_teaching_counts_every_added_image(tmp_path: Path) -> None:
    """Bug: 4 threads adding 20 images each grew the calibration's ``seen`` by 44, not 80."""
    labels = ["heron", "tabby cat", "lynx", "red fox"]
    clusters = make_clusters(labels, 45)
    memory = CategoryMemory.open(tmp_path / "mem", collection="cal")
    memory.bind_encoder(clusters.encoder.fingerprint, DIM)
    for label in labels:
        entries = [MemoryEntry(label, "image", f"{label}-{i}", f"{label}-{i}") for i in range(25)]
        memory.add_entries(entries, np.stack([clusters.vector(label, i) for i in range(25)]))
    before = calibrate(memory)
    assert before.seen == 100 and before.full_at == 100  # 80 more stay below a full redo

    def teach(label: str) -> None:
        for i in range(25, 45):
            entry = MemoryEntry(label, "image", f"{label}-{i}", f"{label}-{i}")
            openset.update(
                memory, added=memory.add_entries([entry], clusters.vector(label, i)[None, :])
            )

    threads = [threading.Thread(target=teach, args=(label,)) for label in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = load_calibration(memory)
    assert after is not None and after.seen == before.seen + 80
    assert memory.count("image") == 180
    assert memory.extension(CALIBRATION_KEY) is not None
    memory.close()


class _SlowFlush:
    """A shard whose flush takes a while, to catch a reopen during close."""

    def __init__(self, shard: Any) -> None:
        self._shard = shard
        self.flushing = threading.Event()

    def flush(self) -> None:
        self.flushing.set()
        time.sleep(0.5)
        self._shard.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


def test_reopening_while_the_last_handle_flushes_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    """Bug: close dropped the shard from the registry before flushing, so an immediate reopen
    found the directory locked by its own process ("in use by process <own pid>")."""
    mem = _bound(tmp_path / "m")
    mem.add_entries([MemoryEntry("cat", "image", "a", "a")], np.eye(4)[:1])
    shared = mem._backend._shared  # type: ignore[attr-defined]
    slow = shared.shard = _SlowFlush(shared.shard)
    closer = threading.Thread(target=mem.close)
    closer.start()
    assert slow.flushing.wait(30)  # the close is flushing now (not "100 ms later, probably")
    with CategoryMemory.open(tmp_path / "m") as again:  # before the fix: MemoryBusyError
        assert again.count() == 1 and again.info.fingerprint == "enc-A"
    closer.join()


def test_engine_busy_errors_are_classified_in_one_place() -> None:
    wal = Exception("Service runtime error: failed to open WAL /x/wal: Kind(WouldBlock)")
    assert is_busy_error(wal)
    assert is_busy_error(BlockingIOError(11, "Resource temporarily unavailable"))
    assert not is_busy_error(Exception("Service runtime error: no such file"))
    assert not is_busy_error(ValueError("WouldBlock"))  # only the engine's plain errors


def test_a_busy_shard_is_a_memory_busy_error(tmp_path: Path) -> None:
    from qdrant_edge import EdgeShard

    from rar_agent.memory import edge

    busy = pytest.raises(MemoryBusyError, match="in use by another process")
    with _bound(tmp_path / "m"), busy:
        edge._load_shard(tmp_path / "m" / edge.SHARD_DIR)
    EdgeShard.load(str(tmp_path / "m" / edge.SHARD_DIR)).close()  # closed: free again


def test_the_recorded_encoder_spec_comes_from_the_encoder_not_the_process(
    tmp_path: Path,
) -> None:
    """Before: a module-level table in encoders/loader.py gave every encoder with a loaded
    one's fingerprint that one's spec, whatever the memory was bound with."""
    from rar_agent.encoders import load_encoder, spec_of
    from rar_agent.ingest import bind_memory
    from tests.helpers.encoder_factories import hashing_encoder

    factory = Path(__file__).resolve().parents[1] / "helpers" / "encoder_factories.py"
    loaded = load_encoder(f"{factory}:hashing_encoder")
    made = hashing_encoder()
    assert made.fingerprint == loaded.fingerprint and spec_of(made) is None
    with CategoryMemory.open(tmp_path / "a") as a:
        bind_memory(a, made)
        assert a.info.encoder_spec is None
    with CategoryMemory.open(tmp_path / "b") as b:
        bind_memory(b, loaded)
        spec = spec_of(loaded)
        assert spec is not None and b.info.encoder_spec == spec.to_meta()


def test_the_shard_lock_lets_readers_overlap_and_writers_exclude() -> None:
    from rar_agent.memory.edge import ReadWriteLock

    lock, inside, peak = ReadWriteLock(), [0], [0]
    both_in = threading.Barrier(2, timeout=5)

    def reader() -> None:
        with lock.read():
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            both_in.wait()  # only passes when two readers hold the lock at once
            inside[0] -= 1

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    assert peak[0] == 2
    order: list[str] = []
    with lock.write():
        with lock.read(), lock.write():  # the writer may re-enter
            order.append("writer")

        def late_reader() -> None:
            with lock.read():
                order.append("reader")

        late = threading.Thread(target=late_reader)
        late.start()
        late.join(0.2)
        assert late.is_alive() and order == ["writer"]  # a reader waits for the writer
    late.join(5)
    assert order == ["writer", "reader"]


def test_a_stale_revision_is_refused_by_both_backends(memory: CategoryMemory) -> None:
    backend = memory._backend  # type: ignore[attr-defined]
    stored = backend.read_meta(refresh=True)
    assert backend.replace_meta({**stored, "description": "x"}, stored["revision"] + 5) is False
    assert memory.info.description is None
    assert backend.replace_meta({**stored, "revision": stored["revision"] + 1}, stored["revision"])


def test_a_record_write_lets_searches_through_while_it_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A taught example rewrites the record (the calibration with it): searches wait only for
    the rename, not while the new file is written and synced."""
    import rar_agent.memory.edge_files as files

    syncing, release = threading.Event(), threading.Event()
    real_fsync = files.os.fsync

    def slow_fsync(fd: int) -> None:
        syncing.set()
        assert release.wait(30)
        real_fsync(fd)

    with _bound(tmp_path / "m") as mem:
        mem.add_entries([MemoryEntry("cat", "image", "a.jpg", "h1")], np.eye(4)[:1])
        monkeypatch.setattr(files.os, "fsync", slow_fsync)
        writer = threading.Thread(target=mem.update_extension, args=("x", lambda _: {"a": 1}))
        writer.start()
        assert syncing.wait(30)  # the writer is inside its sync
        found: list[Any] = []
        reader = threading.Thread(target=lambda: found.append(mem.search_batch(np.eye(4)[:1])))
        reader.start()
        reader.join(30)  # before the change it waited for the sync, held back here
        done_during_sync = not reader.is_alive() and not release.is_set()
        release.set()
        writer.join(30)
        reader.join(30)
        assert done_during_sync and found[0][0][0].label == "cat"
        assert mem.extension("x") == {"a": 1}
    assert not [p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_a_refused_record_write_leaves_no_file_behind(tmp_path: Path) -> None:
    with _bound(tmp_path / "m") as mem:
        backend = mem._backend  # type: ignore[attr-defined]
        stored = backend.read_meta(refresh=True)
        assert backend.replace_meta({**stored, "description": "x"}, stored["revision"] + 1) is False
        on_disk = json.loads((tmp_path / "m" / META_FILE).read_text())
        assert on_disk.get("description") is None and mem.info.description is None
    assert not [p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]
