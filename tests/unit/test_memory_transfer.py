"""``memory push`` / ``pull``: embedded <-> server copies (qdrant-client local mode here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent import openset
from rar_agent.errors import EncoderMismatchError, MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.memory.storage import StorageSettings
from rar_agent.memory.transfer import copy_memory, verify_copy

DIM = 8
SETTINGS = StorageSettings(quantization="int8", vectors_on_disk=True, hnsw_m=12)


def _fill(mem: CategoryMemory, n: int = 130) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    entries = [
        MemoryEntry(f"l{i % 7}", "image" if i % 5 else "text", f"s{i}", f"h{i}", {"row": i})
        for i in range(n)
    ]
    mem.bind_encoder("enc-A", DIM, description="things")
    openset.update(mem, added=mem.add_entries(entries, x))  # the calibration is recorded too
    mem.set_encoder_spec({"model": "tiny", "pretrained": None})
    mem.update_extension("future_key", lambda _: {"kept": True})
    return x


@pytest.fixture
def source(tmp_path: Path) -> Any:
    with CategoryMemory.open(tmp_path / "src", collection="src", storage=SETTINGS) as mem:
        vectors = _fill(mem)
        yield mem, vectors


def test_push_copies_points_payloads_and_the_whole_record(source: Any) -> None:
    src, x = source
    with CategoryMemory.open(":memory:", collection="pushed") as dst:
        seen: list[tuple[int, int]] = []
        report = copy_memory(src, dst, batch_size=32, progress=lambda d, t: seen.append((d, t)))
        assert (report.copied, report.skipped_existing, report.entries) == (130, 0, 130)
        assert seen[-1] == (130, 130)
        record, src_record = dst.record, src.record
        assert record is not None and src_record is not None
        assert record.collection == "pushed"
        skip = {"collection", "revision"}
        assert record.model_dump(exclude=skip) == src_record.model_dump(exclude=skip)
        assert record.extensions[openset.EXTENSION]
        assert record.extensions[openset.EXTENSION] == src_record.extensions[openset.EXTENSION]
        assert record.encoder_spec is not None and record.encoder_spec.model == "tiny"
        assert dst.extension("future_key") == {"kept": True}
        assert dst.storage == SETTINGS and dst.info.description == "things"
        assert dst.labels() == src.labels() and dst.count("text") == src.count("text")
        for q in x[:5]:
            assert [h.id for h in dst.search(q, limit=3)] == [h.id for h in src.search(q, limit=3)]
        got = dst.get_entries([src.search(x[11], limit=1)[0].id])[0]
        assert got.payload["row"] == 11 and got.source == "s11"


def test_an_interrupted_push_resumes_and_verifies(source: Any, monkeypatch: Any) -> None:
    src, _ = source
    with CategoryMemory.open(":memory:", collection="pushed") as dst:
        real = dst.write_points
        calls = {"n": 0}

        def dying(points: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise MemoryStoreError("connection lost")
            real(points)

        monkeypatch.setattr(dst, "write_points", dying)
        with pytest.raises(MemoryStoreError, match="connection lost"):
            copy_memory(src, dst, batch_size=40)
        assert dst.count() == 80
        with pytest.raises(MemoryStoreError, match="source holds 130 entries"):
            verify_copy(src, dst)
        monkeypatch.setattr(dst, "write_points", real)
        report = copy_memory(src, dst, batch_size=40)
        assert (report.copied, report.skipped_existing) == (50, 80)
        assert dst.count() == 130


def test_pull_brings_a_server_memory_back_to_an_embedded_one(source: Any, tmp_path: Path) -> None:
    src, x = source
    with CategoryMemory.open(":memory:", collection="srv") as server:
        copy_memory(src, server)
        with CategoryMemory.open(tmp_path / "pulled", collection="pulled") as local:
            copy_memory(server, local, batch_size=64)
            assert local.storage == SETTINGS
            assert local.extension(openset.EXTENSION) == src.extension(openset.EXTENSION)
            assert local.search(x[3], limit=1)[0].id == src.search(x[3], limit=1)[0].id
    with CategoryMemory.open(tmp_path / "pulled", collection="pulled", create=False) as again:
        assert again.count() == 130 and again.storage == SETTINGS


def test_a_target_with_other_points_or_encoder_is_caught(source: Any, tmp_path: Path) -> None:
    src, _ = source
    with CategoryMemory.open(tmp_path / "other", collection="other") as other:
        other.bind_encoder("enc-B", DIM)
        with pytest.raises(EncoderMismatchError):
            copy_memory(src, other)
    with CategoryMemory.open(":memory:", collection="extra") as dst:
        copy_memory(src, dst)
        dst.add_entries([MemoryEntry("stray", "image", "s", "h")], np.ones((1, DIM)))
        with pytest.raises(MemoryStoreError, match="131"):
            verify_copy(src, dst)


def test_an_empty_source_has_nothing_to_copy(tmp_path: Path) -> None:
    from rar_agent.errors import ConfigError

    with (
        CategoryMemory.open(tmp_path / "empty") as src,
        CategoryMemory.open(":memory:", collection="x") as dst,
        pytest.raises(ConfigError, match="nothing to copy"),
    ):
        copy_memory(src, dst)
