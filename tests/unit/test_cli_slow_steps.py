"""Steps that show no progress of their own say what they are doing: building the search
index after a bulk load (minutes at a million entries), a calibration that takes long."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rar_agent.cli import app, progress


@pytest.fixture()
def vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """60 vectors of 6 classes; a build indexes from 40 unindexed entries (not 10k)."""
    from rar_agent.ingest import builders
    from rar_agent.memory import core

    monkeypatch.setattr(builders, "OPTIMIZE_MIN_UNINDEXED", 40)
    monkeypatch.setattr(core, "OPTIMIZE_MIN_UNINDEXED", 40)
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(60, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", rows)
    (tmp_path / "labels.txt").write_text("".join(f"c{i % 6}\n" for i in range(60)))
    return tmp_path / "v.npy", tmp_path / "labels.txt"


def test_a_build_says_when_it_indexes(vectors: tuple[Path, Path], tmp_path: Path) -> None:
    rows, labels = vectors
    done = CliRunner().invoke(app, ["memory", "build", "--from-vectors", str(rows), "--labels",
                                    str(labels), "--memory", str(tmp_path / "m"),
                                    "--no-progress"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "indexing 60 entries for fast search: no progress is shown" in done.stderr


def test_a_restore_and_a_small_build_say_it_only_when_they_index(
    vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    snap = tmp_path / "s.tar"
    rows, labels = vectors
    assert CliRunner().invoke(app, ["memory", "build", "--from-vectors", str(rows), "--labels",
                                    str(labels), "--memory", str(tmp_path / "m"),
                                    "--no-progress"]).exit_code == 0  # fmt: skip
    assert CliRunner().invoke(app, ["memory", "snapshot", str(snap), "--memory",
                                    str(tmp_path / "m")]).exit_code == 0  # fmt: skip
    restored = CliRunner().invoke(app, ["memory", "restore", str(snap), "--memory",
                                        str(tmp_path / "r"), "--no-progress"])  # fmt: skip
    assert restored.exit_code == 0, restored.output
    assert "indexing 60 entries" in restored.stderr
    np.save(rows, np.load(rows)[:10])  # 10 entries: below the threshold, nothing indexed
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    small = CliRunner().invoke(app, ["memory", "build", "--from-vectors", str(rows), "--labels",
                                     str(labels), "--memory", str(tmp_path / "s"),
                                     "--no-progress"])  # fmt: skip
    assert small.exit_code == 0 and "indexing" not in small.stderr


def test_a_slow_step_is_named_once_and_a_quick_one_not(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    heard = threading.Event()

    def say(message: str) -> None:
        said.append(message)
        heard.set()

    monkeypatch.setattr(progress, "say", say)
    with progress.note_if_slow("calibrating", after_s=0.0):
        assert heard.wait(30)  # the step runs on until it was named
    with progress.note_if_slow("quick", after_s=600.0):
        pass
    assert said == ["calibrating"]
