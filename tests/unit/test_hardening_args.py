"""Bad-input catalogue, arguments: bad ``k``, unknown image ids, boxes outside the image,
malformed JSON, another encoder, missing/locked/unusable data directories, a Qdrant server that
refuses, hangs or rejects the API key. Each gives a clear ``RarError`` (or a tool error text)
and leaves the memory exactly as it was."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.errors import (
    ConfigError,
    EncoderMismatchError,
    ImageError,
    MemoryBusyError,
    MemoryStoreError,
    RarError,
)
from rar_agent.ingest.builders import add_images, iter_manifest
from rar_agent.memory import CategoryMemory, MemoryLocation
from rar_agent.memory.edge import META_FILE
from rar_agent.pipeline import Recognizer
from rar_agent.regions import BoxError, load_boxes
from rar_agent.tools import ImageRegistry, RecognizeTool
from tests.helpers.http_server import LocalHTTPServer, Route, closed_port
from tests.helpers.small_memory import fill_memory, make_images

ROOT = Path(__file__).resolve().parents[2]


def _state(memory: CategoryMemory) -> tuple[Any, ...]:
    probe = np.ones(memory.info.dim or 1, dtype=np.float32)
    hits = memory.search(probe, kind="image", limit=100) + memory.search(
        probe, kind="text", limit=100
    )
    return memory.count(), memory.labels(), sorted((h.id, round(h.score, 5)) for h in hits)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Iterator[Recognizer]:
    """One memory shared by the module: no test here may change it (each checks that)."""
    tmp_path = tmp_path_factory.mktemp("args")
    memory = CategoryMemory.open(tmp_path / "memory", collection="args")
    images = make_images(tmp_path / "examples")
    fill_memory(memory, tiny_encoder, images)
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    recognizer.example_images = images  # type: ignore[attr-defined]
    recognizer.before = _state(memory)  # type: ignore[attr-defined]
    yield recognizer
    memory.close()


def _unchanged(rec: Recognizer) -> bool:
    return _state(rec.memory) == rec.before  # type: ignore[attr-defined]


def _picture(rec: Recognizer) -> Path:
    return next(iter(rec.example_images.values()))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- k


@pytest.mark.parametrize("k", [0, -1, 101, True, 2.5, "3", None], ids=repr)
def test_bad_k_is_refused(rec: Recognizer, k: object) -> None:
    if k is None:  # None means "the recognizer's default": not an error
        assert len(rec.recognize(_picture(rec), k=k).candidates) == 3
        return
    with pytest.raises(ConfigError, match="k must be a whole number from 1 to 100"):
        rec.recognize(_picture(rec), k=k)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be"):
        Recognizer(rec.memory, rec.encoder, k=k)  # type: ignore[arg-type]
    assert _unchanged(rec)


@pytest.mark.parametrize(
    ("value", "shown"), [("0", "0"), ("101", "101"), ("abc", "'abc'"), ("2.5", "'2.5'")]
)
def test_a_bad_rar_k_says_what_k_is_and_what_to_give(
    value: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RAR_K=0`` (or ``--k 0``) answered pydantic's 'Input should be greater than or equal
    to 1' (and 'unable to parse string as an integer' for text)."""
    from rar_agent.cli.options import settings_from_options

    monkeypatch.setenv("RAR_K", value)
    with pytest.raises(ConfigError) as caught:
        settings_from_options(k=None)  # a command with --k, not given
    assert str(caught.value) == (
        "invalid --k (RAR_K): k must be a whole number from 1 to 100 (how many candidate "
        f"categories to retrieve and rank; 5 when not given), not {shown}"
    )
    monkeypatch.setenv("RAR_K", " 7 ")
    assert settings_from_options().k == 7


def test_k_larger_than_the_memory_returns_every_label(rec: Recognizer) -> None:
    result = rec.recognize(_picture(rec), k=100)
    assert len(result.candidates) == 5 == len(rec.memory.labels())
    assert len({c.label for c in result.candidates}) == 5
    assert _unchanged(rec)


def test_bad_k_through_the_tool_is_a_tool_error_not_a_crash(rec: Recognizer) -> None:
    registry = ImageRegistry()
    image_id = registry.register(_picture(rec).read_bytes())
    tool = RecognizeTool(recognizer=rec, registry=registry)
    for k in (0, -5, 10_000):
        call = {"type": "tool_call", "id": "c1", "name": tool.name, "args": {"image": image_id}}
        call["args"]["k"] = k
        message = tool.invoke(call)
        assert message.status == "error", message
    assert _unchanged(rec)


# ---------------------------------------------------------------------------- image ids


@pytest.mark.parametrize(
    "ref", ["img-000000000000", "img-ffffffffffff", "[image id img-abcdef123456]"]
)
def test_unknown_image_id(rec: Recognizer, ref: str) -> None:
    registry = ImageRegistry()
    registry.register(_picture(rec).read_bytes())
    with pytest.raises(ImageError, match="no image with id"):
        registry.get("img-000000000000")
    tool = RecognizeTool(recognizer=rec, registry=registry)
    out = tool.invoke({"image": ref})
    assert "no image with id" in out and "upload" in out
    assert _unchanged(rec)


# ---------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("box", "says"),
    [
        ([100, 100, 200, 200], "outside"),
        ([-50, -50, -10, -10], "outside"),
        ([30, 30, 10, 10], "inverted"),
        ([5, 5, 5, 20], "zero area"),
        ([float("nan"), 0, 10, 10], "not finite"),
        ([0, 0, float("inf"), 10], "not finite"),
    ],
    ids=["right-below", "left-above", "inverted", "zero-width", "nan", "inf"],
)
def test_box_outside_or_broken_is_a_per_box_error(
    rec: Recognizer, box: list[float], says: str
) -> None:
    good = [2, 2, 30, 30]
    results = rec.recognize_regions(_picture(rec), [box, good])
    assert results[0].error and says in results[0].error and results[0].label is None
    assert results[1].error is None and results[1].label is not None
    assert _unchanged(rec)


def test_box_partly_outside_is_clipped(rec: Recognizer) -> None:
    [result] = rec.recognize_regions(_picture(rec), [[-20, -20, 30, 30]])
    assert result.error is None and result.box == [0, 0, 30, 30]


# ---------------------------------------------------------------------------- JSON


def test_malformed_json_manifest_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_text('{"path": "a.png", "label": "cat"}\n{"path": "b.png", "label": \n')
    with pytest.raises(ConfigError, match=r"items.jsonl:2: not valid JSON"):
        iter_manifest(manifest)
    manifest.write_text('["a.png", "cat"]\n')
    with pytest.raises(ConfigError, match="expected an object"):
        iter_manifest(manifest)


def test_malformed_json_boxes_file(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[0, 0, 10, 10], [1, 2")
    with pytest.raises(BoxError, match="not valid JSON"):
        load_boxes(boxes)
    boxes.write_text('{"unexpected": true}')
    with pytest.raises(BoxError):
        load_boxes(boxes)


def test_malformed_json_metadata_of_a_memory(tmp_path: Path, tiny_encoder: Any) -> None:
    path = tmp_path / "memory"
    with CategoryMemory.open(path) as memory:
        memory.bind_encoder(tiny_encoder.fingerprint, tiny_encoder.dim)
    meta = (path / META_FILE).read_text()
    (path / META_FILE).write_text(meta[: len(meta) // 2])
    with pytest.raises(MemoryStoreError, match="cannot read memory metadata"):
        CategoryMemory.open(path)
    # the failed open released the lock: fixing the file makes it usable again
    (path / META_FILE).write_text(meta)
    with CategoryMemory.open(path) as memory:
        assert memory.info.fingerprint == tiny_encoder.fingerprint


def test_malformed_json_as_tool_input_is_a_clear_tool_error(rec: Recognizer) -> None:
    tool = RecognizeTool(recognizer=rec, registry=ImageRegistry())
    out = tool.invoke('{"image": "img-12')
    assert isinstance(out, str) and "reading files is disabled" in out
    assert _unchanged(rec)


# ---------------------------------------------------------------------------- another encoder


def test_memory_built_with_another_encoder(rec: Recognizer, tmp_path: Path) -> None:
    from rar_agent.encoders import load_encoder
    from tests.helpers.tiny_models import make_tiny_openclip

    other = load_encoder(make_tiny_openclip(tmp_path / "other", seed=1), device="cpu")
    assert other.dim == rec.encoder.dim and other.fingerprint != rec.encoder.fingerprint
    with pytest.raises(EncoderMismatchError, match="use the same --clip-model"):
        Recognizer(rec.memory, other, k=3)
    with pytest.raises(EncoderMismatchError):
        add_images(rec.memory, other, [(str(_picture(rec)), "new")])
    with pytest.raises(EncoderMismatchError, match="dimensions"):
        rec.memory.search(np.ones(rec.encoder.dim + 1, np.float32))
    assert _unchanged(rec)
    assert rec.memory.info.fingerprint == rec.encoder.fingerprint


# ---------------------------------------------------------------------------- data directory


def test_missing_data_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "memory"
    with pytest.raises(MemoryStoreError, match="no category memory at"):
        CategoryMemory.open(missing, create=False)
    assert not missing.exists()


def test_data_directory_that_is_a_file_or_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "memory"
    blocker.write_text("I am a file")
    with pytest.raises(MemoryStoreError, match="is a file"):
        CategoryMemory.open(blocker)
    with pytest.raises(MemoryStoreError, match="cannot create the memory directory") as info:
        CategoryMemory.open(blocker / "inside")
    assert "give a folder you can write (--memory DIR, or RAR_HOME" in str(info.value)
    # which folder is in the way, not the system's "(Not a directory)" that names none
    assert f"({blocker} is a file, not a folder)" in str(info.value)
    # a folder that cannot be looked into (no search permission, a name too long) is the
    # same one line, not an OSError traceback
    with pytest.raises(MemoryStoreError, match="cannot look into the memory directory") as info:
        CategoryMemory.open(tmp_path / ("a" * 300) / "memory")
    assert "(File name too long): give a folder you can write" in str(info.value)
    assert blocker.read_text() == "I am a file"


def _holder(path: Path, *args: str) -> subprocess.Popen[str]:
    code = f"""
        import sys, time
        from rar_agent.memory import CategoryMemory
        m = CategoryMemory.open({str(path)!r})
        print("READY", flush=True)
        time.sleep(120)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "READY", line + (child.stderr.read() if child.stderr else "")
    return child


def test_locked_data_directory(rec: Recognizer, tmp_path: Path) -> None:
    path = tmp_path / "shared"
    with CategoryMemory.open(path) as memory:
        fill_memory(memory, rec.encoder, rec.example_images)  # type: ignore[attr-defined]
    child = _holder(path, "--api-key", "s3cret-key", "--token=rar_s3cret", "--collection", "c")
    try:
        with pytest.raises(MemoryBusyError) as err:
            CategoryMemory.open(path)
        assert f"in use by process {child.pid}" in str(err.value)
        assert "--qdrant-url" in str(err.value)
        # a walk: teach while `rar-agent mcp --memory X` ran (a desktop client starts one
        # unseen) was told only "in use by process 9430": the holder's command is named
        if sys.platform == "linux":
            assert f"in use by process {child.pid} (`python -c import sys, time" in str(
                err.value
            ), err.value
            # a secret on its command line (memory push --api-key KEY) is not shown
            assert "s3cret" not in str(err.value), err.value
            assert "--api-key *** --token=*** --collection c`)" in str(err.value), err.value
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # a killed holder leaves no stale lock behind
    with CategoryMemory.open(path, create=False) as memory:
        assert memory.count() == 10


# ---------------------------------------------------------------------------- Qdrant server


def test_qdrant_url_that_refuses() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(MemoryStoreError, match="unreachable.*Connection refused"):
        CategoryMemory.open(MemoryLocation.server(url, "pets", timeout=2))
    assert time.monotonic() - start < 10


def test_qdrant_url_that_times_out() -> None:
    # 4 s of silence: only the 1 s asked for can time it out (qdrant-client's default is 5 s).
    with LocalHTTPServer(default=Route(delay_s=4, body=b"{}")) as server:
        with pytest.raises(MemoryStoreError, match="timed out"):
            CategoryMemory.open(MemoryLocation.server(server.url(), "pets", timeout=1))
        assert server.wait_for_requests(1)
        assert len(server.requests) == 1  # one request, no retries


@pytest.mark.parametrize("status", [401, 403])
def test_qdrant_wrong_api_key(status: int) -> None:
    body = json.dumps({"status": {"error": "Invalid api-key"}}).encode()
    with LocalHTTPServer(
        default=Route(status=status, body=body, content_type="application/json")
    ) as server:
        # On loopback the key over http:// is not warned of (test_memory_server_client).
        with pytest.raises(MemoryStoreError, match=f"refused the API key \\({status}\\)"):
            CategoryMemory.open(MemoryLocation.server(server.url(), "pets", api_key="wrong-key"))
        assert server.requests and server.requests[0][2].get("api-key") == "wrong-key"


def test_cli_reports_server_problems_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"http://127.0.0.1:{closed_port()}"
    result = runner.invoke(app, ["memory", "list", "--qdrant-url", url])
    assert result.exit_code == 2
    assert "error:" in result.output and "unreachable" in result.output
    assert "Traceback" not in result.output
    with LocalHTTPServer(default=Route(status=401, body=b"{}")) as server:
        result = runner.invoke(
            app, ["memory", "stats", "--qdrant-url", server.url(), "--api-key", "nope"]
        )
    assert result.exit_code == 2 and "refused the API key" in result.output


def test_every_argument_error_is_a_rar_error() -> None:
    for cls in (ConfigError, EncoderMismatchError, MemoryBusyError, MemoryStoreError, BoxError):
        assert issubclass(cls, RarError)


def test_recognizing_a_picture_not_in_memory_never_writes(rec: Recognizer, tmp_path: Path) -> None:
    path = tmp_path / "new.png"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(path)
    for _ in range(3):
        rec.recognize(path)
    assert _unchanged(rec)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "4"])
def test_every_count_is_refused_in_one_wording(tmp_path: Path, bad: object) -> None:
    """The positive-integer check was written out in ten places in two wordings ("got" and
    "not"), and ``FinetuneOptions(max_per_class=True)`` (or 2.5) passed unchecked; one helper
    (``rar_agent.config.positive_int``) says "NAME must be a positive integer, got VALUE"."""
    from rar_agent.finetune_data import FinetuneOptions
    from rar_agent.mcp.limits import ServiceLimits
    from rar_agent.memory import CategoryMemory

    said = f"must be a positive integer, got {bad!r}"
    with pytest.raises(ConfigError, match="max_per_class " + re.escape(said)):
        FinetuneOptions(max_per_class=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top_n " + re.escape(said)):
        FinetuneOptions(top_n=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="service limit per_minute " + re.escape(said)):
        ServiceLimits(per_minute=bad)  # type: ignore[arg-type]
    memory = CategoryMemory.open(tmp_path / "m", collection="counts")
    try:
        with pytest.raises(ConfigError, match="embedding dimension " + re.escape(said)):
            memory.bind_encoder("vectors:counts", bad)  # type: ignore[arg-type]
        memory.bind_encoder("vectors:counts", 4)
        with pytest.raises(ConfigError, match="limit " + re.escape(said)):
            memory.search_batch(np.ones((1, 4), dtype=np.float32), limit=bad)  # type: ignore[arg-type]
    finally:
        memory.close()


def test_a_memory_in_a_folder_that_takes_no_write_says_to_copy_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory on a read-only file system (a RAR_HOME mounted read-only) was refused with
    "cannot create the lock file .../.rar.lock: [Errno 30] Read-only file system: '...'",
    which said neither that it cannot be read there nor what to do."""
    import errno

    from rar_agent.memory import MemoryEntry, edge_files

    path = tmp_path / "shared memories" / "closet"  # the command quotes it for the shell
    with CategoryMemory.open(path) as memory:
        memory.bind_encoder("test:tiny", 4)
        memory.add_entries([MemoryEntry("cat", "text", "name", "name:cat")], np.eye(1, 4))
    plain_open = edge_files.os.open

    def read_only_mount(name: str, flags: int, mode: int = 0o777) -> int:
        if Path(name).name == edge_files.LOCK_FILE:  # as the system answers on such a mount
            raise OSError(errno.EROFS, "Read-only file system", str(name))
        return plain_open(name, flags, mode)

    monkeypatch.setattr(edge_files.os, "open", read_only_mount)
    with pytest.raises(MemoryStoreError) as info:
        CategoryMemory.open(path, create=False)
    said = str(info.value)
    assert f"cannot open the memory at {path}" in said and "(Read-only file system)" in said
    assert f"cp -r '{path}' DIR) and name the copy with --memory DIR" in said, said


def test_a_memory_given_its_weights_under_another_name_says_to_name_them_back(
    rec: Recognizer, tmp_path: Path, tiny_openclip_spec: str
) -> None:
    """A memory copied to another machine where its checkpoint folder has another name was
    refused with 'use the same --clip-model / --encoder it was built with', a path that is
    not there; nothing said that these were its weights and only the name differed."""
    import shutil

    from rar_agent.encoders import load_encoder

    built = Path(tiny_openclip_spec.removeprefix("local-dir:"))
    assert rec.encoder.fingerprint.startswith(f"open_clip:local-dir:{built.name}:")
    moved = shutil.copytree(built, tmp_path / "clip-here")  # on another machine, renamed
    same = load_encoder(f"local-dir:{moved}", device="cpu")
    with pytest.raises(EncoderMismatchError) as info:
        Recognizer(rec.memory, same, k=3)
    said = str(info.value)
    assert "these are its weights" in said, said
    assert f"rename or copy 'clip-here' to {built.name!r}) and pass that path" in said
    assert _unchanged(rec)
