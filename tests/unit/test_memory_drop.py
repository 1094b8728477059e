"""A memory knows whether its handle created it, and deletes only what it created
(``CategoryMemory.created`` / ``drop``): what a failed first write uses to leave nothing
behind, on the embedded backend and on the server code path (qdrant-client's local mode,
its calls recorded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rar_agent.errors import MemoryStoreError
from rar_agent.memory import CategoryMemory, MemoryEntry, MemoryLocation

DIM = 4


def _fill(mem: CategoryMemory) -> None:
    mem.bind_encoder("enc", DIM)
    mem.add_entries([MemoryEntry("cat", "image", "a.png", "h")], np.eye(DIM, dtype=np.float32)[:1])


def test_an_embedded_memory_it_created_is_deleted_with_its_directory(tmp_path: Path) -> None:
    mem = CategoryMemory.open(tmp_path / "new" / "mem")
    assert mem.created
    _fill(mem)
    mem.drop()
    assert mem.closed and not (tmp_path / "new" / "mem").exists()
    with pytest.raises(MemoryStoreError, match="no category memory"):
        CategoryMemory.open(tmp_path / "new" / "mem", create=False)


def test_a_folder_the_user_made_keeps_its_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    mem = CategoryMemory.open(folder)
    assert mem.created  # no memory was there
    _fill(mem)
    mem.drop()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_memory_that_was_there_is_never_dropped(tmp_path: Path) -> None:
    with CategoryMemory.open(tmp_path / "old") as mem:
        _fill(mem)
    again = CategoryMemory.open(tmp_path / "old")
    assert not again.created
    with pytest.raises(MemoryStoreError, match="was there before"):
        again.drop()
    assert not again.closed and again.count() == 1  # refused: the handle still works
    again.close()


def test_a_second_handle_of_a_new_memory_did_not_create_it(tmp_path: Path) -> None:
    first = CategoryMemory.open(tmp_path / "m")
    second = CategoryMemory.open(tmp_path / "m")  # the same open shard, shared
    assert first.created and not second.created
    with pytest.raises(MemoryStoreError, match="open elsewhere in this process"):
        first.drop()
    second.close()
    assert (tmp_path / "m").is_dir()


def test_a_server_collection_it_created_is_deleted(
    recorded_collections: dict[str, list[str]],
) -> None:
    mem = CategoryMemory.open(MemoryLocation.in_process_store("birds"))
    assert not mem.created  # nothing is created on a server before an encoder is bound
    _fill(mem)
    assert mem.created
    mem.drop()
    assert recorded_collections == {"created": ["birds"], "deleted": ["birds"]} and mem.closed
