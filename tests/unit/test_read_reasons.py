"""Every reader words why a path could not be read the same way (errors.unreadable_reason):
a folder where a file was wanted, a file where a folder was on the way, or nothing there,
in plain words, then "check the path" (the system said only "Is a directory" or "Not a
directory", and not of which path)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.options import EXIT_INPUT_FAILED, EXIT_USAGE
from rar_agent.errors import RarError
from rar_agent.ingest.from_vectors import read_labels, read_vectors
from rar_agent.memory.snapshot import read_snapshot_header
from rar_agent.regions.boxes import load_boxes
from rar_agent.registry import ImageRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.finetune_ranker import load_records  # noqa: E402

runner = CliRunner()

READERS: dict[str, Callable[[Path], Any]] = {
    "vectors": read_vectors,
    "labels": read_labels,
    "the snapshot": read_snapshot_header,
    "boxes file": load_boxes,
    "training data": load_records,
    "": lambda path: ImageRegistry().register(path),
}


@pytest.mark.parametrize("what", list(READERS))
def test_a_folder_where_a_file_is_wanted_is_named_as_one(tmp_path: Path, what: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(RarError) as caught:
        READERS[what](folder)
    said = str(caught.value)
    assert f"cannot read {what} {folder}".replace("  ", " ") in said, said
    assert said.endswith(": it is a folder, not a file: check the path"), said


@pytest.mark.parametrize("what", list(READERS))
def test_a_file_on_the_way_is_named_not_the_bare_not_a_directory(tmp_path: Path, what: str) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RarError) as caught:
        READERS[what](tmp_path / "a-file" / "x.npy")
    said = str(caught.value)
    assert f"{tmp_path / 'a-file'} is a file, not a folder: check the path" in said, said
    assert "Not a directory" not in said


def test_the_reason_for_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    from rar_agent.errors import unreadable_reason

    gone = tmp_path / "gone.txt"
    assert unreadable_reason(FileNotFoundError(2, "No such file"), gone) == "it does not exist"
    denied = PermissionError(13, "Permission denied")
    assert unreadable_reason(denied, gone) == "Permission denied"
    assert unreadable_reason(OSError(), gone) == "OSError"  # never an empty reason


def test_recognize_an_image_under_a_file_names_the_file(tiny_cli_env: Path) -> None:
    (tiny_cli_env / "a-file").write_text("x")
    done = runner.invoke(app, ["recognize", str(tiny_cli_env / "a-file" / "x.jpg")])
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    flat = re.sub(r"\s+", " ", done.output)
    assert f"{tiny_cli_env / 'a-file'} is a file, not a folder: check the path" in flat, flat


def test_a_names_file_that_is_a_folder_is_named_as_one(tiny_cli_env: Path) -> None:
    names = tiny_cli_env / "names"
    names.mkdir()
    done = runner.invoke(app, ["memory", "build", "--from-names", str(names),
                               "--memory", str(tiny_cli_env / "m")])  # fmt: skip
    assert done.exit_code == EXIT_USAGE, done.output
    flat = re.sub(r"\s+", " ", done.output)
    assert "it is a folder, not a file: check the path" in flat, flat
    assert not (tiny_cli_env / "m").exists()
