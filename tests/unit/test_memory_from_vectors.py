"""Builds from precomputed vectors (``.npy`` + labels file): content, resume, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rar_agent.errors import ConfigError, LabelError
from rar_agent.ingest.builders import unfinished_build
from rar_agent.ingest.from_vectors import add_vectors, build_from_vectors, read_labels, read_vectors
from rar_agent.memory import CategoryMemory
from rar_agent.memory.storage import StorageSettings

DIM = 12


def _data(n: int, classes: int = 6) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(classes, DIM)).astype(np.float32)
    which = np.arange(n) % classes
    x = centres[which] + rng.normal(0, 0.05, size=(n, DIM)).astype(np.float32)
    return x, [f"class {k}" for k in which]


def _files(tmp_path: Path, x: np.ndarray, labels: list[str]) -> tuple[Path, Path]:
    vectors, names = tmp_path / "v.npy", tmp_path / "labels.txt"
    np.save(vectors, x)
    names.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return vectors, names


def test_build_from_files_stores_every_row_under_its_label(tmp_path: Path) -> None:
    x, labels = _data(300)
    vectors, names = _files(tmp_path, x, labels)
    seen: list[tuple[int, int]] = []
    with CategoryMemory.open(tmp_path / "m") as mem:
        report = build_from_vectors(
            mem, vectors, names, batch_size=64, progress=lambda d, t: seen.append((d, t))
        )
        assert (report.added, report.skipped_existing) == (300, 0)
        assert mem.info.fingerprint == "vectors:v.npy" and mem.info.dim == DIM
        assert mem.labels() == {f"class {k}": 50 for k in range(6)}
        hit = mem.search(x[7], limit=1)[0]
        assert hit.label == labels[7] and hit.source == "v.npy#7"
        assert mem.storage == StorageSettings()  # 300 entries: the small default
    assert seen[-1] == (300, 300) and len(seen) == 5


def test_a_resumed_build_writes_only_the_missing_rows(tmp_path: Path) -> None:
    x, labels = _data(200)
    with CategoryMemory.open(tmp_path / "m") as mem:
        first = add_vectors(mem, x[:120], labels[:120], fingerprint="enc")
        assert first.added == 120
        again = add_vectors(mem, x, labels, fingerprint="enc", batch_size=50)
        assert (again.added, again.skipped_existing) == (80, 120)
        assert mem.count() == 200


def test_explicit_storage_settings_apply_to_a_vectors_build(tmp_path: Path) -> None:
    x, labels = _data(60)
    settings = StorageSettings(quantization="int8", vectors_on_disk=True, hnsw_m=8)
    with CategoryMemory.open(tmp_path / "m", storage=settings) as mem:
        add_vectors(mem, x, labels, fingerprint="enc", kind="text")
        assert mem.storage == settings and mem.count("text") == 60


def test_rows_and_labels_must_pair_up(tmp_path: Path) -> None:
    x, labels = _data(10)
    with CategoryMemory.open(tmp_path / "m") as mem:
        with pytest.raises(ConfigError, match="10 vector rows but 9 labels"):
            add_vectors(mem, x, labels[:9], fingerprint="enc")
        bad = x.copy()
        bad[4] = np.nan
        with pytest.raises(ConfigError, match="NaN or infinity"):
            add_vectors(mem, bad, labels, fingerprint="enc")
        with pytest.raises(LabelError):
            add_vectors(mem, x, ["ok"] * 9 + ["bad\x07label"], fingerprint="enc")
        assert mem.count() == 0  # every bad batch was refused before writing


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda x: x.__setitem__((250, 3), np.nan), "row 250 contains NaN or infinity"),
        (lambda x: x.__setitem__((250, 0), np.inf), "row 250 contains NaN or infinity"),
        (lambda x: x.__setitem__(250, 0.0), "row 250 is all zeros"),
    ],
    ids=["nan", "inf", "zeros"],
)
def test_a_bad_row_past_the_first_batch_writes_nothing(
    tmp_path: Path, spoil: Any, said: str
) -> None:
    """A NaN at row 250 of a file said "vectors row 122 contains NaN or infinity: nothing was
    written" (the row within its batch) after 128 rows were written, and the memory was left
    as an unfinished build; an all-zero row there said only "a vector is all zeros"."""
    x, labels = _data(300)
    spoil(x)
    vectors, names = _files(tmp_path, x, labels)
    with CategoryMemory.open(tmp_path / "m") as mem:
        with pytest.raises(ConfigError, match=f"v.npy {said}.*: nothing was written"):
            build_from_vectors(mem, vectors, names)
        assert mem.count() == 0 and unfinished_build(mem) is None


def test_a_bad_label_past_the_first_batch_writes_nothing(tmp_path: Path) -> None:
    x, labels = _data(300)
    labels[260] = "bad\x07label"
    with CategoryMemory.open(tmp_path / "m") as mem:
        with pytest.raises(LabelError, match="control characters"):
            add_vectors(mem, x, labels, fingerprint="enc")
        assert mem.count() == 0 and unfinished_build(mem) is None


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(5, dtype=np.float32))
    with pytest.raises(ConfigError, match="2-D array"):
        read_vectors(flat)
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ConfigError, match="not floats"):
        read_vectors(ints)
    with pytest.raises(ConfigError, match="cannot read vectors .*missing.npy: .*check the path"):
        read_vectors(tmp_path / "missing.npy")
    text = tmp_path / "text.npy"
    text.write_text("0.1 0.2\n0.3 0.4\n")
    with pytest.raises(ConfigError, match="text.npy is not a .npy array: save the vectors with"):
        read_vectors(text)  # numpy spoke of pickled data
    with pytest.raises(ConfigError, match="cannot read labels .*nope.txt: .*check the path"):
        read_labels(tmp_path / "nope.txt")
    x, labels = _data(3)
    vectors, names = _files(tmp_path, x, labels)
    names.write_text("a\n\nc\n", encoding="utf-8")
    with CategoryMemory.open(tmp_path / "m") as mem, pytest.raises(ConfigError, match=":2: blank"):
        build_from_vectors(mem, vectors, names)


def test_a_resumed_build_that_adds_nothing_still_finishes_indexing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build killed during indexing left every entry stored: the rerun indexes them."""
    x, labels = _data(50)
    with CategoryMemory.open(tmp_path / "m") as mem:
        add_vectors(mem, x, labels, fingerprint="enc")
        calls: list[int] = []
        monkeypatch.setattr(mem, "optimize", lambda *, min_unindexed=0: calls.append(1) or True)
        again = add_vectors(mem, x, labels, fingerprint="enc")
        assert (again.added, again.skipped_existing) == (0, 50)
        assert calls == [1]
