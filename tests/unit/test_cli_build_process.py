"""`memory build` sets its process up as a batch job before it encodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app


def test_memory_build_keeps_freed_memory_and_one_blas_thread(
    tmp_path: Path, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freed forward-pass memory stays in the heap and numpy's BLAS runs one thread, both
    set before the build encodes anything."""
    from rar_agent.encoders import torch_base
    from rar_agent.ingest import builders

    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_MODEL", tiny_openclip_spec)
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    monkeypatch.delenv("RAR_QDRANT_URL", raising=False)
    rng = np.random.default_rng(2)
    for label in ("alpha", "beta"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    calls: list[str] = []

    def recorder(name: str):  # noqa: ANN202 - a stand-in for a torch_base setting
        def setting() -> bool:
            calls.append(name)
            return True

        return setting

    for name in ("keep_freed_memory", "one_blas_thread"):
        monkeypatch.setattr(torch_base, name, recorder(name))
    add_images = builders.add_images

    new: list[bool] = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("add_images")
        new.append(args[0].info.fingerprint is None)  # the builder creates the memory
        return add_images(*args, **kwargs)

    monkeypatch.setattr(builders, "add_images", recording)
    done = CliRunner().invoke(
        app, ["memory", "build", "--from-folder", str(tmp_path / "imgs"), "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    assert "added 4" in done.output
    assert sorted(calls[:2]) == ["keep_freed_memory", "one_blas_thread"]
    assert calls[2:] == ["add_images"] and new == [True]
    # with a description, the memory is created (and the description recorded) first
    done = CliRunner().invoke(app, ["memory", "build", "--from-folder", str(tmp_path / "imgs"),
                                    "--description", "two letters", "--no-progress",
                                    "--collection", "described"])  # fmt: skip
    assert done.exit_code == 0 and "added 4" in done.output, done.output
    assert new == [True, False]
    from rar_agent.memory import CategoryMemory

    with CategoryMemory.open(
        tmp_path / "home" / "memories" / "described", collection="described"
    ) as memory:
        assert memory.info.description == "two letters"
