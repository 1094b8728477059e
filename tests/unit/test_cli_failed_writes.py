"""A write that stores nothing leaves nothing new behind, on an embedded memory and on a
server collection, and says what to do; a memory that was there stays as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.options import EXIT_INPUT_FAILED
from rar_agent.memory import CategoryMemory, MemoryLocation

runner = CliRunner()


@pytest.fixture()
def folder(tiny_cli_env: Path) -> Path:
    tmp_path = tiny_cli_env
    rng = np.random.default_rng(3)
    (tmp_path / "good" / "alpha").mkdir(parents=True)
    arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "good" / "alpha" / "0.png")
    for label in ("alpha", "beta"):
        (tmp_path / "bad" / label).mkdir(parents=True)
        (tmp_path / "bad" / label / "0.png").write_text(f"not an image of {label}")
    return tmp_path


def _build(folder: Path, images: str, memory: Path, *extra: str) -> Any:
    return runner.invoke(app, ["memory", "build", "--from-folder", str(folder / images),
                               "--memory", str(memory), "--no-progress", *extra])  # fmt: skip


def test_a_build_of_only_bad_images_leaves_no_new_memory_and_says_what_to_do(
    folder: Path,
) -> None:
    memory = folder / "fresh"
    done = _build(folder, "bad", memory)
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert not memory.exists()
    assert done.output.count("skipped:") == 2, done.output
    assert "none of the 2 images could be stored" in done.output
    assert "no memory was created" in done.output and "run the build again" in done.output
    assert "memory now holds" not in done.output  # no report of a memory that is gone
    # nothing points at it: memory list does not show a memory that is not there
    assert not (folder / "home" / "last-memory.json").exists()


def test_an_existing_memory_stays_as_it_was(folder: Path) -> None:
    memory = folder / "kept"
    assert _build(folder, "good", memory, "--description", "pets").exit_code == 0
    with CategoryMemory.open(memory, create=False) as mem:
        before = mem.record
    done = _build(folder, "bad", memory, "--description", "something else")
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert f"the memory at {memory} is as it was" in done.output
    with CategoryMemory.open(memory, create=False) as mem:
        assert mem.record == before and mem.count() == 1


def test_a_build_run_again_reports_what_it_kept_beside_what_still_fails(folder: Path) -> None:
    """A walk's second `memory build` of a folder with 24 good images and 2 bad ones said
    only 'error: none of the 2 images could be stored ... the memory is as it was', with no
    word of the 24 stored the first time: a resumed build now reports as the first did."""
    (folder / "good" / "beta").mkdir()
    (folder / "good" / "beta" / "0.png").write_text("not an image")
    memory = folder / "resumed"
    first = _build(folder, "good", memory)
    assert first.exit_code == EXIT_INPUT_FAILED and "added 1, already stored 0, failed 1" in (
        first.output
    ), first.output
    again = _build(folder, "good", memory)
    assert again.exit_code == EXIT_INPUT_FAILED, again.output
    assert "added 0, already stored 1, failed 1" in again.output, again.output
    assert again.output.count("skipped:") == 1 and "none of the" not in again.output


@pytest.fixture()
def server(
    folder: Path, recorded_collections: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[str]]:
    """``--qdrant-url`` reaches qdrant-client's local mode (the server code path); the
    collections created and deleted through it are recorded."""
    from rar_agent.memory import opening

    embedded = MemoryLocation.from_settings

    def from_settings(settings: Any, collection: str | None = None) -> MemoryLocation:
        if not settings.qdrant_url:
            return embedded(settings, collection)
        assert settings.qdrant_url == "http://qdrant.invalid:6333"
        return MemoryLocation.in_process_store(collection or settings.collection)

    monkeypatch.setattr(opening.MemoryLocation, "from_settings", from_settings)
    return recorded_collections


@pytest.mark.parametrize(
    "command",
    [
        ["memory", "build", "--from-folder", "{bad}", "--no-progress"],
        ["memory", "build", "--from-folder", "{bad}", "--strict", "--no-progress"],
        ["teach", "cat", "{bad}/alpha/0.png"],
        ["memory", "add", "cat", "{bad}/alpha/0.png"],
    ],
)
def test_a_failed_first_write_to_a_server_leaves_no_collection(
    folder: Path, server: dict[str, list[str]], command: list[str]
) -> None:
    args = [part.format(bad=folder / "bad") for part in command]
    done = runner.invoke(app, [*args, "--qdrant-url", "http://qdrant.invalid:6333",
                               "--collection", "birds"])  # fmt: skip
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert server["deleted"] == server["created"], server


def test_a_server_collection_that_takes_entries_is_kept(
    folder: Path, server: dict[str, list[str]]
) -> None:
    done = runner.invoke(app, ["memory", "build", "--from-folder", str(folder / "good"),
                               "--qdrant-url", "http://qdrant.invalid:6333", "--collection",
                               "birds", "--no-progress"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert server == {"created": ["birds"], "deleted": []}
    assert json.loads((folder / "home" / "last-memory.json").read_text())["collection"] == "birds"


def test_a_push_that_fails_before_storing_leaves_no_collection(
    folder: Path, server: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.errors import MemoryStoreError
    from rar_agent.memory import transfer

    assert _build(folder, "good", folder / "local").exit_code == 0

    def cut_off(source: CategoryMemory, target: CategoryMemory, **_: object) -> None:
        record = source.record
        assert record is not None
        target.bind_record(record)  # the collection is created, then the server goes away
        raise MemoryStoreError("the Qdrant server at http://qdrant.invalid:6333 is unreachable")

    monkeypatch.setattr(transfer, "copy_memory", cut_off)
    done = runner.invoke(app, ["memory", "push", "--memory", str(folder / "local"),
                               "--qdrant-url", "http://qdrant.invalid:6333"])  # fmt: skip
    assert done.exit_code == 2 and "unreachable" in done.output, done.output
    assert server == {"created": ["default"], "deleted": ["default"]}
