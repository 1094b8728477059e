"""One exit-code contract for every command (the README's): 0 all good, 1 some inputs failed
(each reported, the others still answered), 2 usage or configuration error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.options import EXIT_INPUT_FAILED, EXIT_OK, EXIT_USAGE

runner = CliRunner()


@pytest.fixture()
def folder(tiny_cli_env: Path) -> Path:
    tmp_path = tiny_cli_env
    rng = np.random.default_rng(2)
    for label in ("alpha", "beta"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / label / "0.png")
    (tmp_path / "bad.png").write_text("not an image")
    return tmp_path


def test_contract_values() -> None:
    assert (EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE) == (0, 1, 2)


def test_recognize_some_bad_inputs_exit_1_and_the_rest_are_answered(folder: Path) -> None:
    good = str(folder / "imgs" / "alpha" / "0.png")
    done = runner.invoke(app, ["recognize", good, str(folder / "bad.png"), "--labels", "a,b",
                               "--json"])  # fmt: skip
    assert done.exit_code == EXIT_INPUT_FAILED
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["label"] in {"a", "b"} and first["error"] is None
    assert "not an image" in second["error"]


def test_a_bad_image_is_named_once_in_its_error_line(folder: Path) -> None:
    bad = str(folder / "bad.png")
    done = runner.invoke(app, ["recognize", bad, "--labels", "a,b"])
    assert done.exit_code == EXIT_INPUT_FAILED
    (line,) = [ln for ln in done.output.splitlines() if ln.startswith("error:")]
    assert line.count(bad) == 1 and "not an image" in line, line


def test_one_bad_image_in_box_mode_exits_1(folder: Path) -> None:
    boxes = folder / "boxes.json"
    boxes.write_text("[[0, 0, 10, 10]]")
    done = runner.invoke(
        app, ["recognize", str(folder / "bad.png"), "--boxes", str(boxes), "--labels", "a,b"]
    )
    assert done.exit_code == EXIT_INPUT_FAILED and "not an image" in done.output


def test_usage_errors_exit_2_before_anything_loads(folder: Path) -> None:
    good = str(folder / "imgs" / "alpha" / "0.png")
    done = runner.invoke(app, ["recognize", good, good, "--boxes", str(folder / "b.json")])
    assert done.exit_code == EXIT_USAGE and "exactly one" in done.output
    done = runner.invoke(app, ["recognize", good, "--memory", str(folder / "no-such-memory")])
    assert done.exit_code == EXIT_USAGE and "no category memory" in done.output
    assert not (folder / "no-such-memory").exists()
    done = runner.invoke(app, ["recognize", good, "--k", "0"])
    assert done.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    "command",
    [["mcp", "--http", "--port", "99999"], ["mcp", "--http", "--port", "-1"],
     ["chat", "--port", "70000"], ["chat", "--port", "-1"]],
)  # fmt: skip
def test_a_port_out_of_range_is_a_usage_error(folder: Path, command: list[str]) -> None:
    """`mcp --http --port 99999` loaded the models, then died in bind() with a traceback
    (OverflowError, exit 1); chat alike. A port is 0-65535 (0 picks a free one)."""
    done = runner.invoke(app, [*command, "--labels", "a,b"])
    assert done.exit_code == EXIT_USAGE, done.output
    assert "invalid --port" in done.output
    assert isinstance(done.exception, SystemExit)  # no traceback


def test_memory_build_with_bad_items_exits_1_and_stores_the_rest(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / "imgs" / "beta" / "broken.png").write_text("not an image")
    memory = str(folder / "mem")
    caplog.set_level(logging.WARNING)  # what a terminal shows of the log (logging's last resort)
    done = runner.invoke(app, ["memory", "build", "--from-folder", str(folder / "imgs"),
                               "--memory", memory, "--no-progress"])  # fmt: skip
    assert done.exit_code == EXIT_INPUT_FAILED
    assert "added 2" in done.output
    shown = done.output + "".join(f"{r.getMessage()}\n" for r in caplog.records)
    assert shown.count("broken.png") == 1, shown  # reported once, its path named once
    assert "not an image" in shown
    strict = runner.invoke(app, ["memory", "build", "--from-folder", str(folder / "imgs"),
                                 "--memory", str(folder / "strict"), "--strict"])  # fmt: skip
    assert strict.exit_code == EXIT_INPUT_FAILED
    assert "skipped" not in strict.output and "broken.png" in strict.output


def test_memory_build_from_a_missing_folder_leaves_no_memory(folder: Path) -> None:
    memory = folder / "mem"
    done = runner.invoke(app, ["memory", "build", "--from-folder", str(folder / "nothing"),
                               "--memory", str(memory)])  # fmt: skip
    assert done.exit_code == EXIT_USAGE
    assert not memory.exists()


def test_retrieval_rank_is_1_based_in_json_and_tables(folder: Path) -> None:
    good = str(folder / "imgs" / "alpha" / "0.png")
    done = runner.invoke(app, ["recognize", good, "--labels", "a,b,c", "--k", "3", "--json"])
    ranks = [c["retrieval_rank"] for c in json.loads(done.stdout)["candidates"]]
    assert sorted(ranks) == [1, 2, 3]


@pytest.mark.parametrize(
    "command",
    [
        ["teach", "cat", "{bad}"],
        ["memory", "add", "cat", "{bad}"],
        ["memory", "build", "--from-folder", "{imgs}", "--strict", "--no-progress"],
    ],
)
def test_a_failed_write_leaves_no_new_memory_behind(folder: Path, command: list[str]) -> None:
    """A refused write keeps nothing it created: no empty memory, bound to the encoder used."""
    (folder / "imgs" / "beta" / "broken.png").write_text("not an image")
    args = [part.format(bad=folder / "bad.png", imgs=folder / "imgs") for part in command]
    memory = folder / "fresh"
    done = runner.invoke(app, [*args, "--memory", str(memory)])
    assert done.exit_code == EXIT_INPUT_FAILED, done.output
    assert not memory.exists()
    kept = folder / "kept"  # a memory that existed before is kept, whatever happens
    assert runner.invoke(app, ["teach", "alpha", str(folder / "imgs" / "alpha" / "0.png"),
                               "--memory", str(kept)]).exit_code == 0  # fmt: skip
    assert runner.invoke(app, [*args, "--memory", str(kept)]).exit_code == EXIT_INPUT_FAILED
    assert kept.is_dir()


def test_a_missing_names_file_says_to_check_the_path(folder: Path) -> None:
    memory = folder / "names-memory"
    done = runner.invoke(app, ["memory", "build", "--from-names", str(folder / "no.txt"),
                               "--memory", str(memory)])  # fmt: skip
    assert done.exit_code == EXIT_USAGE
    assert "cannot read names file" in done.output and "check the path" in done.output
    assert not memory.exists()
