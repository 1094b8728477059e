"""A mistyped image path is refused before a model loads (it took the encoder's load, and
on a first run the built-in memory's build, to hear that a file does not exist)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.options import EXIT_INPUT_FAILED
from rar_agent.images import MAX_FILE_BYTES, reference_problem

runner = CliRunner()


@pytest.fixture()
def no_model(tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Loading the recognizer or an encoder fails the test."""
    from rar_agent.cli import teach
    from rar_agent.pipeline import Recognizer

    def loaded(*_: object, **__: object) -> None:
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(Recognizer, "from_settings", loaded)
    monkeypatch.setattr(teach, "load_settings_encoder", loaded)
    return tiny_cli_env


def test_recognize_a_missing_file_is_refused_before_anything_loads(no_model: Path) -> None:
    done = runner.invoke(app, ["recognize", str(no_model / "cat.jgp")])
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert "cat.jgp does not exist: check the path" in done.output


def test_recognize_refuses_when_none_of_several_can_be_read(no_model: Path) -> None:
    big = no_model / "huge.jpg"
    with big.open("wb") as f:  # sparse: over the size limit without the bytes
        f.truncate(MAX_FILE_BYTES + 1)
    done = runner.invoke(app, ["recognize", str(no_model / "a.jpg"), str(big), "--json"])
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert "none of the 2 images can be read" in done.output
    assert "a.jpg does not exist" in done.output and "over the 64 MiB limit" in done.output


def test_teach_a_missing_file_teaches_nothing_and_loads_nothing(no_model: Path) -> None:
    memory = no_model / "mem"
    done = runner.invoke(app, ["teach", "cat", str(no_model / "nope.png"), "--memory",
                               str(memory)])  # fmt: skip
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert "nope.png does not exist" in done.output and "nothing was taught" in done.output
    assert not memory.exists()


def test_what_counts_as_a_file_reference(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"whatever: decoding says later whether it is an image")
    raw = base64.b64encode(b"x" * 90).decode()
    for fine in (str(photo), "https://example.org/a.jpg", "data:image/png;base64,AAAA", raw):
        assert reference_problem(fine) is None, fine
    assert "does not exist" in str(reference_problem(str(tmp_path / "gone.jpg")))
    assert "is a directory" in str(reference_problem(str(tmp_path)))
