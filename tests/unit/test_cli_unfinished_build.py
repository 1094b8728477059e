"""`memory stats` says when the last build stopped part-way (Ctrl+C, a kill) and what to do;
a build that runs to the end clears it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app


def _folder(root: Path, per_label: int) -> Path:
    rng = np.random.default_rng(3)
    for label in ("alpha", "beta"):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _stats() -> tuple[dict, str]:
    done = CliRunner().invoke(app, ["memory", "stats", "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout), done.stderr


def test_stats_flags_a_build_interrupted_after_its_first_batch(
    tiny_cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_agent.ingest import builders

    images = _folder(tiny_cli_env / "imgs", 20)  # 40 images: two batches of 32 and 8
    write = builders._write
    calls: list[int] = []

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - Ctrl+C in batch two
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    build = ["memory", "build", "--from-folder", str(images), "--no-progress"]
    with monkeypatch.context() as patch:
        patch.setattr(builders, "_write", interrupted)
        done = CliRunner().invoke(app, build)
    assert done.exit_code == 130, done.output
    assert "the memory keeps the 32 entries stored so far: run the same command again" in (
        done.stderr
    )

    stats, note = _stats()
    unfinished = stats["unfinished_build"]
    assert stats["entries"] == 32
    assert unfinished["items"] == 40 and unfinished["entries_before"] == 0
    assert unfinished["started_at"].endswith("+00:00")
    assert "did not finish" in note and "run the same `rar-agent memory build`" in note

    done = CliRunner().invoke(app, build)  # run again: it finishes, and says nothing more
    assert done.exit_code == 0 and "added 8, already stored 32" in done.output, done.output
    stats, note = _stats()
    assert stats["unfinished_build"] is None and stats["entries"] == 40
    assert "did not finish" not in note


def test_one_batch_build_writes_no_marker(tiny_cli_env: Path) -> None:
    """A build of one batch stores all or nothing: no record write is spent on it."""
    from rar_agent.memory import CategoryMemory

    images = _folder(tiny_cli_env / "imgs", 2)
    revisions = []
    for _ in range(2):
        done = CliRunner().invoke(
            app, ["memory", "build", "--from-folder", str(images), "--no-progress"]
        )
        assert done.exit_code == 0, done.output
        home = tiny_cli_env / "home" / "memories" / "default"
        with CategoryMemory.open(home, collection="default") as memory:
            revisions.append(memory.record.revision)
            assert memory.extension("build") is None
    assert revisions[0] == revisions[1]  # the second (nothing new) wrote no record
