"""``memory build --from-vectors`` with storage flags, ``memory stats``, ``push`` / ``pull``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.memory import _storage
from rar_agent.cli.progress import LineProgress
from rar_agent.memory.storage import StorageSettings

runner = CliRunner()


@pytest.fixture()
def vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAR_QDRANT_URL", raising=False)
    x = np.random.default_rng(0).normal(size=(700, 24)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "labels.txt").write_text("".join(f"class {i % 7}\n" for i in range(700)))
    return tmp_path / "v.npy", tmp_path / "labels.txt"


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_build_from_vectors_with_storage_flags_then_stats(
    vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    v, labels = vectors
    mem = str(tmp_path / "m")
    code, out = _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                     "--memory", mem, "--quantization", "int8", "--vectors-on-disk",
                     "--hnsw-m", "12", "--search-ef", "96", "--fingerprint", "enc:x",
                     "--no-progress")  # fmt: skip
    assert code == 0, out
    assert "added 700" in out and "7 labels" in out
    code, out = _run("memory", "stats", "--memory", mem, "--json")
    assert code == 0, out
    stats = json.loads(out)
    assert stats["fingerprint"] == "enc:x" and stats["entries"] == 700
    assert (
        stats["storage"]
        == StorageSettings(
            quantization="int8", vectors_on_disk=True, hnsw_m=12, search_ef=96
        ).to_dict()
    )
    assert stats["footprint"]["disk_mib"] > 0 and "ram_resident_mib" in stats["footprint"]
    # a resumed build with the same flags adds nothing; other flags are refused
    code, out = _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                     "--memory", mem, "--quantization", "int8", "--vectors-on-disk",
                     "--hnsw-m", "12", "--search-ef", "96", "--fingerprint", "enc:x",
                     "--no-progress")  # fmt: skip
    assert code == 0 and "added 0, already stored 700" in out, out
    code, out = _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                     "--memory", mem, "--hnsw-m", "32", "--fingerprint", "enc:x")  # fmt: skip
    assert code == 2 and "fixed at creation" in out


def test_vector_builds_need_labels_and_valid_flags(vectors: tuple[Path, Path]) -> None:
    v, labels = vectors
    code, out = _run("memory", "build", "--from-vectors", str(v))
    assert code == 2 and "--labels" in out
    code, out = _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                     "--quantization", "int4")  # fmt: skip
    assert code == 2 and "--quantization must be one of none, int8" in out
    # each named the Python setting ("hnsw_m must be ..."), not the option the user typed
    for flag, value, says in [
        ("--hnsw-m", "2", "--hnsw-m must be an integer from 4 to 128, not 2"),
        ("--hnsw-ef-construct", "5000", "--hnsw-ef-construct must be an integer from 4 to 4096"),
        ("--search-ef", "0", "--search-ef must be an integer from 1 to 4096, not 0"),
        ("--oversampling", "30", "--oversampling must be a number from 1 to 16, not 30"),
    ]:
        code, out = _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                         flag, value)  # fmt: skip
        assert code == 2 and says in out and "_" not in out.split("must")[0], out


def test_push_to_an_unreachable_server_fails_cleanly(
    vectors: tuple[Path, Path], tmp_path: Path
) -> None:
    v, labels = vectors
    mem = str(tmp_path / "m")
    assert _run("memory", "build", "--from-vectors", str(v), "--labels", str(labels),
                "--memory", mem, "--no-progress")[0] == 0  # fmt: skip
    code, out = _run("memory", "push", "--memory", mem, "--qdrant-url", "http://127.0.0.1:9")
    assert code == 2 and "unreachable" in out
    code, out = _run("memory", "push", "--memory", str(tmp_path / "none"), "--qdrant-url", "x")
    assert code == 2 and "no category memory" in out
    code, out = _run("memory", "push", "--memory", mem)
    assert code == 2 and "--qdrant-url" in out


@pytest.mark.parametrize("flag", ["--shards", "--replicas", "--write-acks", "--batch-size"])
def test_copy_counts_below_one_are_refused_by_their_flag(flag: str, tmp_path: Path) -> None:
    """`memory push --shards 0` said "shard_number must be a positive integer, got 0" (a name
    the user never typed), and `--batch-size 0` first tried to reach the server."""
    code, out = _run("memory", "push", "--memory", str(tmp_path / "m"), "--qdrant-url",
                     "http://127.0.0.1:9", flag, "0")  # fmt: skip
    assert code == 2 and f"invalid {flag}" in out, out
    assert "unreachable" not in out and "no category memory" not in out


def test_storage_flags_fill_the_rest_from_the_size_default() -> None:
    assert _storage(10, {"quantization": None, "hnsw_m": None}) is None
    big = _storage(500_000, {"hnsw_m": 32, "quantization": None})
    assert big == StorageSettings.for_entries(500_000).replace(hnsw_m=32)
    small = _storage(10, {"quantization": "int8"})
    assert small is not None and small.vectors_on_disk is False
    mid = _storage(50_000, {"hnsw_m": 8})
    assert mid is not None and mid.quantization == "int8"


def test_line_progress_reports_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = LineProgress("quick", every_s=3600.0)
    quiet(10, 10)  # done before the first line was due: nothing printed
    assert capsys.readouterr().err == ""
    progress = LineProgress("building", every_s=0.0)
    progress(500, 1000)
    progress(1000, 1000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("building: 500/1,000 (50%), ") and "/s, eta " in lines[0]
    assert lines[-1].startswith("building: 1,000/1,000 (100%)") and "eta 0 s" in lines[-1]
