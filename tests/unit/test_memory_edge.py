"""Embedded (qdrant-edge) backend: persistence, one opener per process, busy errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rar_agent.errors import ConfigError, MemoryBusyError, MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry, MemoryLocation, default_memory_dir
from rar_agent.memory.edge import META_FILE, SHARD_DIR
from rar_agent.memory.record import RECORD_VERSION
from tests.helpers.counting_shard import counting_shard

DIM = 8
ROOT = Path(__file__).resolve().parents[2]


def _entries(label: str, n: int) -> list[MemoryEntry]:
    return [MemoryEntry(label, "image", f"{label}/{i}.png", f"h{label}{i}") for i in range(n)]


def _vectors(n: int, axis: int) -> np.ndarray:
    v = np.random.default_rng(axis).normal(0, 0.05, size=(n, DIM)).astype(np.float32)
    v[:, axis] += 1.0
    return v


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_layout_and_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "pets"
    with CategoryMemory.open(path, collection="pets") as mem:
        mem.bind_encoder("enc-A", DIM, description="household pets")
        ids = mem.add_entries(
            _entries("cat", 3) + _entries("dog", 2), np.vstack([_vectors(3, 0), _vectors(2, 1)])
        )
    assert (path / META_FILE).is_file() and (path / SHARD_DIR / "edge_config.json").is_file()
    meta = json.loads((path / META_FILE).read_text())
    assert (meta["fingerprint"], meta["dim"], meta["version"]) == ("enc-A", DIM, RECORD_VERSION)

    with CategoryMemory.open(path, collection="pets", create=False) as mem:
        assert mem.info.fingerprint == "enc-A"
        assert mem.info.description == "household pets"
        assert mem.labels() == {"cat": 3, "dog": 2}
        assert mem.existing_ids(ids) == set(ids)
        assert mem.search(_vectors(1, 1)[0], limit=1)[0].label == "dog"


def test_missing_memory_without_create(tmp_path: Path) -> None:
    with pytest.raises(MemoryStoreError, match="no category memory"):
        CategoryMemory.open(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MemoryStoreError, match="not a memory directory"):
        CategoryMemory.open(tmp_path / "afile")


def test_read_only_memory_reads_and_refuses_every_write(tmp_path: Path) -> None:
    with pytest.raises(MemoryStoreError, match="no category memory"):
        CategoryMemory.open(tmp_path / "missing", read_only=True, create=True)
    assert not (tmp_path / "missing").exists()
    with CategoryMemory.open(tmp_path / "m") as mem:
        mem.bind_encoder("enc", DIM)
        mem.add_entries(_entries("cat", 2), _vectors(2, 0))
    with CategoryMemory.open(tmp_path / "m", read_only=True) as ro:
        assert ro.read_only and ro.labels() == {"cat": 2}
        ro.bind_encoder("enc", DIM)  # the same encoder: a read, allowed
        assert ro.search(_vectors(1, 0)[0])[0].label == "cat"
        writes = [
            lambda: ro.add_entries(_entries("dog", 1), _vectors(1, 1)),
            lambda: ro.remove_label("cat"),
            lambda: ro.remove_ids(["00000000-0000-0000-0000-000000000000"]),
            lambda: ro.set_description("animals"),
            lambda: ro.bind_encoder("enc", DIM, description="animals"),
            lambda: ro.optimize(),
        ]
        for write in writes:
            with pytest.raises(MemoryStoreError, match="read-only"):
                write()
        assert ro.labels() == {"cat": 2} and ro.info.description is None


def test_default_location_is_under_rar_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rar_agent.config import Settings
    from rar_agent.memory import MemoryLocation

    monkeypatch.setenv("RAR_HOME", str(tmp_path))
    assert default_memory_dir("birds", tmp_path) == tmp_path / "memories" / "birds"
    where = MemoryLocation.from_settings(Settings(collection="birds"))
    with CategoryMemory.open(where) as mem:
        assert mem.info.location == str((tmp_path / "memories" / "birds").resolve())


def test_bad_open_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="collection name"):
        CategoryMemory.open(tmp_path, collection="../evil")
    with pytest.raises(ConfigError, match="only one"):
        MemoryLocation(path=tmp_path, url="http://localhost:6333")
    with pytest.raises(ConfigError, match="location"):
        CategoryMemory.open(42)  # type: ignore[arg-type]


def test_same_process_double_open_shares_the_shard(tmp_path: Path) -> None:
    a = CategoryMemory.open(tmp_path / "m")
    b = CategoryMemory.open(tmp_path / "m")
    a.bind_encoder("enc-A", DIM)
    a.add_entries(_entries("cat", 2), _vectors(2, 0))
    assert b.count() == 2
    assert b.info.fingerprint == "enc-A"
    b.bind_encoder("enc-A", DIM)
    b.add_entries(_entries("dog", 1), _vectors(1, 1))
    a.close()
    assert b.labels() == {"cat": 2, "dog": 1}
    b.close()
    with CategoryMemory.open(tmp_path / "m") as c:
        assert c.count() == 3


def test_concurrent_threads_share_one_memory(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    mem = CategoryMemory.open(tmp_path / "m")
    mem.bind_encoder("enc-A", DIM)

    def work(i: int) -> str:
        mem.add_entries(_entries(f"c{i}", 20), _vectors(20, i % DIM))
        return mem.search(_vectors(1, i % DIM)[0], limit=1)[0].label

    with ThreadPoolExecutor(4) as pool:
        labels = list(pool.map(work, range(8)))
    assert len(labels) == 8
    assert mem.count() == 160
    mem.close()


def test_second_process_gets_memory_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "busy"
    mem = CategoryMemory.open(path)
    mem.bind_encoder("enc-A", DIM)
    mem.add_entries(_entries("cat", 2), _vectors(2, 0))
    child = _run_child(
        f"""
        from rar_agent.memory import CategoryMemory
        from rar_agent.errors import MemoryBusyError
        try:
            CategoryMemory.open({str(path)!r})
        except MemoryBusyError as e:
            print("BUSY", e)
        else:
            print("OPENED")
        """
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("BUSY"), child.stdout + child.stderr
    assert "in use by process" in child.stdout and "--qdrant-url" in child.stdout
    import os

    assert str(os.getpid()) in child.stdout
    assert mem.count() == 2  # untouched
    mem.close()
    child = _run_child(
        f"""
        from rar_agent.memory import CategoryMemory
        with CategoryMemory.open({str(path)!r}) as m:
            print("COUNT", m.count())
        """
    )
    assert child.stdout.strip() == "COUNT 2", child.stderr


def test_entries_survive_a_process_that_dies_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "crash"
    child = _run_child(
        f"""
        import os
        import numpy as np
        from rar_agent.memory import CategoryMemory, MemoryEntry
        m = CategoryMemory.open({str(path)!r})
        m.bind_encoder("enc-A", {DIM})
        e = [MemoryEntry("cat", "image", str(i), "h" + str(i)) for i in range(5)]
        m.add_entries(e, np.eye({DIM}, dtype=np.float32)[:5])
        os._exit(0)
        """
    )
    assert child.returncode == 0, child.stderr
    with CategoryMemory.open(path, create=False) as mem:
        assert mem.count() == 5
        assert mem.info.fingerprint == "enc-A"


def test_busy_memory_from_engine_lock_is_reported(tmp_path: Path) -> None:
    """Without our lock file (e.g. another tool), Qdrant's own WAL lock still maps to busy."""
    from rar_agent.memory.edge import _engine

    with pytest.raises(MemoryBusyError, match="in use"), _engine("open the shard", tmp_path):
        raise Exception("Service runtime error: Can't init WAL: Kind(WouldBlock)")
    with (
        pytest.raises(MemoryStoreError, match="could not open the shard"),
        _engine("open the shard", tmp_path),
    ):
        raise Exception("boom")


def test_optimize_skips_small_memories(tmp_path: Path) -> None:
    with CategoryMemory.open(tmp_path / "m") as mem:
        assert mem.optimize() is False  # nothing created yet
        mem.bind_encoder("enc-A", DIM)
        mem.add_entries(_entries("cat", 50), _vectors(50, 0))
        assert mem.optimize(min_unindexed=1000) is False
        assert mem.optimize() is True
        assert mem.search(_vectors(1, 0)[0], limit=3)[0].label == "cat"
        assert mem.stats()["storage_points"] == 50


def test_corrupt_metadata_is_a_clear_error(tmp_path: Path) -> None:
    with CategoryMemory.open(tmp_path / "m") as mem:
        mem.bind_encoder("enc-A", DIM)
    (tmp_path / "m" / META_FILE).write_text("{not json")
    with pytest.raises(MemoryStoreError, match="cannot read memory metadata"):
        CategoryMemory.open(tmp_path / "m")
    # The failed open released its lock: a fixed file opens again.
    (tmp_path / "m" / META_FILE).write_text(json.dumps({"fingerprint": "enc-A", "dim": DIM}))
    with CategoryMemory.open(tmp_path / "m") as mem:
        assert mem.info.fingerprint == "enc-A"


def test_an_empty_side_is_searched_again_after_any_write(tmp_path: Path) -> None:
    """Retrieval searches both sides of a memory that may hold one: a side a search found
    empty is not searched again until a write, through any handle, may have filled it."""
    path = tmp_path / "sides"
    text = [MemoryEntry("dog", "text", "templates:test", "h-dog")]
    with CategoryMemory.open(path, collection="sides") as mem:
        mem.bind_encoder("enc-sides", DIM)
        mem.add_entries(_entries("cat", 2), _vectors(2, 0))
        with counting_shard(mem) as counting:
            query = _vectors(1, 1)[0]
            assert mem.search(query, kind="text") == [] and mem.search(query, kind="text") == []
            assert counting.queries == 1  # the second search of the empty side asked nothing
            with CategoryMemory.open(path, collection="sides") as other:  # the same shard
                other.bind_encoder("enc-sides", DIM)
                [dog] = other.add_entries(text, _vectors(1, 1))
            assert [h.id for h in mem.search(query, kind="text")] == [dog]
            mem.remove_ids([dog])
            assert mem.search(query, kind="text") == []
            mem.add_entries(text, _vectors(1, 1))
            assert [h.label for h in mem.search(query, kind="text")] == ["dog"]
            mem.remove_label("dog")
            assert mem.search(query, kind="text") == []
            assert [h.label for h in mem.search(query, kind="image")] == ["cat", "cat"]


def test_category_counts_are_counted_once_and_follow_writes_through_any_handle(
    tmp_path: Path,
) -> None:
    """Retrieval of a memory with both sides asks for its categories per side on every
    query: they are counted once, and a write through any handle keeps them up to date."""
    path = tmp_path / "counts"
    text = [MemoryEntry(name, "text", "templates:test", f"h-{name}") for name in ("a", "b")]
    with CategoryMemory.open(path, collection="counts") as mem:
        mem.bind_encoder("enc-counts", DIM)
        mem.add_entries(_entries("cat", 2), _vectors(2, 0))
        with counting_shard(mem) as counting:
            assert mem.category_counts() == {"image": 1, "text": 0}
            asked = counting.facets
            assert mem.category_counts() == {"image": 1, "text": 0}
            assert counting.facets == asked  # kept: nothing asked again
            with CategoryMemory.open(path, collection="counts") as other:  # the same shard
                other.bind_encoder("enc-counts", DIM)
                other.add_entries(text, _vectors(2, 1))
            assert mem.category_counts() == {"image": 1, "text": 2}
            mem.remove_label("a")
            assert mem.category_counts() == {"image": 1, "text": 1}
            assert counting.facets == asked  # followed, not counted anew
            mem.add_entries(_entries("dog", 20), _vectors(20, 2))  # more than a write follows
            assert mem.category_counts() == {"image": 2, "text": 1}
            assert counting.facets > asked  # counted anew
