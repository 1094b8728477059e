"""``memory snapshot`` / ``memory restore``: one file restores a memory, record and all; a
killed snapshot leaves the memory and the previous snapshot intact; Qdrant's own snapshots for
a server memory (with ``QDRANT_URL``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from rar_agent import openset
from rar_agent.errors import ConfigError
from rar_agent.memory import CategoryMemory, MemoryEntry
from rar_agent.memory.snapshot import (
    read_snapshot_header,
    restore_snapshot,
    write_snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
DIM = 8


def fill(memory: CategoryMemory, n: int = 130) -> np.ndarray:
    """``n`` entries over 7 labels, both kinds, with payload extras; calibrated."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    entries = [
        MemoryEntry(
            f"l{i % 7}",
            "image" if i % 5 else "text",
            f"/data/l{i % 7}/{i}.png",
            f"h{i}",
            {"row": i},
        )
        for i in range(n)
    ]
    memory.bind_encoder("enc-A", DIM, description="things")
    memory.add_entries(entries, vectors)
    openset.fit(memory)  # the memory never calibrates itself: the caller does
    return vectors


def same_memory(a: CategoryMemory, b: CategoryMemory, probe: np.ndarray) -> None:
    """Same record (but the name), counts, labels, payloads and search answers."""
    skip = {"collection", "revision"}
    record_a, record_b = a.record, b.record
    assert record_a is not None and record_b is not None
    assert record_a.model_dump(exclude=skip) == record_b.model_dump(exclude=skip)
    assert record_a.extensions[openset.EXTENSION] and record_b.collection == b.collection
    assert a.count() == b.count() and a.labels() == b.labels()
    assert a.count("text") == b.count("text")
    for row in probe[:5]:
        hits_a = [(h.id, round(h.score, 5), h.payload) for h in a.search(row, limit=5)]
        hits_b = [(h.id, round(h.score, 5), h.payload) for h in b.search(row, limit=5)]
        assert hits_a == hits_b


def test_snapshot_restores_everything(tmp_path: Path) -> None:
    out = tmp_path / "snaps" / "one.tar"
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        vectors = fill(source)
        report = write_snapshot(source, out)
        assert report.entries == 130 and report.labels == 7 and out.is_file()
        header = read_snapshot_header(out)
        assert header["kinds"] == {"image": 104, "text": 26}
        assert header["record"]["fingerprint"] == "enc-A"
        with CategoryMemory.open(tmp_path / "copy", collection="copy") as copy:
            restored = restore_snapshot(out, copy)
            assert restored.entries == 130
            same_memory(source, copy, vectors)
            with pytest.raises(ConfigError, match="holds 130 entries"):
                restore_snapshot(out, copy)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_not_a_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(ConfigError, match="cannot read the snapshot"):
        read_snapshot_header(bad)
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(bad, arcname="something.txt")
    with pytest.raises(ConfigError, match="lacks rar-snapshot.json"):
        read_snapshot_header(other)
    with (
        CategoryMemory.open(tmp_path / "empty", collection="empty") as memory,
        pytest.raises(ConfigError, match="nothing to snapshot"),
    ):
        write_snapshot(memory, tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


_SLOW_SNAPSHOT = """
import sys, time
from rar_agent.memory import CategoryMemory
from rar_agent.memory import snapshot
snapshot.PAGE = 16  # many pages; the process is killed after the first
def stall(done, total):
    print("writing", done, flush=True)
    time.sleep(600)
with CategoryMemory.open(sys.argv[1], collection="src", read_only=True) as memory:
    snapshot.write_snapshot(memory, sys.argv[2], progress=stall)
"""


@pytest.mark.slow  # a subprocess, killed mid-snapshot
def test_killing_a_snapshot_leaves_memory_and_previous_snapshot_intact(tmp_path: Path) -> None:
    out = tmp_path / "nightly.tar"
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        vectors = fill(source)
        write_snapshot(source, out)
    before = out.read_bytes()

    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SNAPSHOT, str(tmp_path / "src"), str(out)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("writing 16"), line + process.stderr.read()
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".nightly.tar.partial-")]
        assert partial and partial[0].stat().st_size > 0  # it was mid-write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert out.read_bytes() == before  # the previous snapshot, untouched
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        assert source.count() == 130  # the memory opens (lock freed) and is whole
        with CategoryMemory.open(tmp_path / "back", collection="back") as back:
            restore_snapshot(out, back)
            same_memory(source, back, vectors)


def test_cli_snapshot_and_restore(tmp_path: Path) -> None:
    from rar_agent.cli import app

    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        fill(source)
    runner = CliRunner()
    out = tmp_path / "cli.tar"
    made = runner.invoke(
        app,
        [
            "memory",
            "snapshot",
            str(out),
            "--memory",
            str(tmp_path / "src"),
            "--collection",
            "src",
            "--no-progress",
        ],
    )
    assert made.exit_code == 0, made.output
    assert "wrote the snapshot" in made.stdout and "130 entries" in made.stdout
    restore = ["memory", "restore", str(out), "--memory", str(tmp_path / "back")]
    restore += ["--collection", "back", "--no-progress"]
    back = runner.invoke(app, restore)
    assert back.exit_code == 0, back.output
    with CategoryMemory.open(tmp_path / "back", collection="back") as memory:
        assert memory.count() == 130
    again = runner.invoke(app, restore)  # into the memory just restored: refused
    assert again.exit_code == 2 and "holds 130 entries" in again.output
    # A memory named by its folder alone is named so, not by its collection ('default').
    plain = ["memory", "restore", str(out), "--memory", str(tmp_path / "plain"), "--no-progress"]
    assert runner.invoke(app, plain).exit_code == 0
    refused = runner.invoke(app, plain)
    said = " ".join(refused.output.split())
    assert f"the memory at {tmp_path / 'plain'} holds 130 entries" in said, said
    assert "'default'" not in said


def test_cli_snapshot_through_the_server(tmp_path: Path) -> None:
    """While a server holds the memory, a token with the admin scope asks the server."""
    from rar_agent.cli import app
    from tests.unit.test_mcp_auth import serving

    with serving(tmp_path, snapshot_dir=tmp_path / "snapshots") as service:
        runner = CliRunner()
        for token, code in ((service.tokens["bob"], 2), (service.tokens["root"], 0)):
            result = runner.invoke(
                app,
                ["memory", "snapshot", "team.tar", "--server", service.url, "--token", token],
            )
            assert result.exit_code == code, result.output
        assert "needs the scope 'admin'" not in result.output
        assert "Wrote the snapshot team.tar" in result.stdout
        header = read_snapshot_header(tmp_path / "snapshots" / "team.tar")
        assert header["entries"] == service.count()
        # A path is not quietly cut to its name: the file would not be where it was asked.
        elsewhere = str(tmp_path / "backups" / "other.tar")
        asked = ["memory", "snapshot", elsewhere, "--server", service.url]
        result = runner.invoke(app, [*asked, "--token", service.tokens["root"]])
        assert result.exit_code == 2, result.output
        assert "a file name in the server's snapshot folder" in " ".join(result.output.split())
        assert not (tmp_path / "snapshots" / "other.tar").exists()


def _qdrant() -> tuple[str, str | None]:
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("Qdrant's snapshot API needs a server: set QDRANT_URL (and QDRANT_API_KEY)")
    return url, os.environ.get("QDRANT_API_KEY")


def test_qdrant_server_snapshot_round_trip(tmp_path: Path) -> None:
    from rar_agent.memory.snapshot import restore_qdrant_snapshot, write_qdrant_snapshot

    url, key = _qdrant()
    name = f"rar-snap-{os.getpid()}"
    from rar_agent.memory.location import MemoryLocation

    memory: Any = CategoryMemory.open(MemoryLocation(collection=name, url=url, api_key=key))
    with memory:
        vectors = fill(memory)
        out = tmp_path / "server.tar"
        report = write_qdrant_snapshot(memory, url, out, api_key=key)
        assert report.entries == 130 and read_snapshot_header(out)["kind"] == "qdrant"
        restore_qdrant_snapshot(out, url, name + "-back", api_key=key)
        where = MemoryLocation(collection=name + "-back", url=url, api_key=key)
        back = CategoryMemory.open(where, create=False)
        with back:
            same_memory(memory, back, vectors)


def test_cli_a_failed_restore_keeps_no_new_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a snapshot, or one cut short after some pages were restored: no memory is left."""
    from rar_agent.cli import app
    from rar_agent.memory import snapshot

    monkeypatch.setattr(snapshot, "PAGE", 16)  # pages of 16 entries: the cut comes after some
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        fill(source)
        good = tmp_path / "good.tar"
        write_snapshot(source, good)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all")
    for snap in (bad, cut):
        target = tmp_path / f"from-{snap.stem}"
        done = CliRunner().invoke(
            app, ["memory", "restore", str(snap), "--memory", str(target), "--no-progress"]
        )
        assert done.exit_code == 2, done.output
        assert not target.exists(), f"{snap.name}: {done.output}"


def test_a_snapshot_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    from rar_agent.cli import app
    from rar_agent.errors import MemoryStoreError

    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        fill(source)
        with pytest.raises(MemoryStoreError, match="it is a folder; name a file"):
            write_snapshot(source, tmp_path / "a-folder")
        with pytest.raises(
            MemoryStoreError, match="snapshot .*a-file/x.tar: .*a-file is a file, not a"
        ):
            write_snapshot(source, tmp_path / "a-file" / "x.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "src"]
    assert not list((tmp_path / "a-folder").iterdir())
    done = CliRunner().invoke(app, ["memory", "snapshot", str(tmp_path / "a-folder"), "--memory",
                                    str(tmp_path / "src"), "--collection", "src"])  # fmt: skip
    assert done.exit_code == 2 and "error: cannot write the snapshot" in done.output


def test_a_file_that_is_no_tar_is_named_as_such(tmp_path: Path) -> None:
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG not a tar")
    with pytest.raises(ConfigError) as caught:
        read_snapshot_header(bad)
    assert "it is not a tar file" in str(caught.value)
    assert "method gz" not in str(caught.value)  # tarfile's attempts, one line each
    with pytest.raises(ConfigError, match="no.tar: it does not exist: check the path"):
        read_snapshot_header(tmp_path / "no.tar")


def test_the_admin_tool_names_no_server_path_when_it_cannot_write(tmp_path: Path) -> None:
    from rar_agent.mcp.admin import SnapshotTool

    folder = tmp_path / "snapshots"
    (folder / "team.tar").mkdir(parents=True)  # in the way
    with CategoryMemory.open(tmp_path / "src", collection="src") as source:
        fill(source)
        tool = SnapshotTool(memory=source, folder=folder)
        answer = tool.invoke({"name": "team.tar"})
    assert "cannot write the snapshot team.tar: it is a folder" in answer
    assert str(tmp_path) not in answer, answer


def test_a_snapshot_through_the_server_holds_teaching_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MCP server's write lock kept teaching out of a snapshot; once teaching took the
    teacher's own lock instead, ``snapshot_memory`` ran beside it (an example could be half
    written into the copy). The snapshot holds the teacher's lock while it copies."""
    import threading

    from rar_agent.mcp.admin import SnapshotTool
    from rar_agent.memory import snapshot
    from rar_agent.pipeline import teacher

    def teaching_could_write() -> bool:
        got: list[bool] = []

        def try_lock() -> None:
            got.append(teacher._WRITES.acquire(blocking=False))
            if got[0]:
                teacher._WRITES.release()

        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        return got[0]

    seen: list[bool] = []
    write = snapshot.write_snapshot

    def watched(memory: CategoryMemory, out: Path, **kwargs: Any) -> Any:
        seen.append(teaching_could_write())
        return write(memory, out, **kwargs)

    monkeypatch.setattr(snapshot, "write_snapshot", watched)
    with CategoryMemory.open(tmp_path / "mem", collection="held") as memory:
        fill(memory, 20)
        tool = SnapshotTool(memory=memory, folder=tmp_path / "snapshots")
        (tmp_path / "snapshots").mkdir()
        answer = tool.invoke({"name": "held.tar"})
    assert "Wrote the snapshot held.tar" in str(answer)
    assert seen == [False] and teaching_could_write()


def test_cli_snapshot_through_a_server_that_is_not_running(tmp_path: Path) -> None:
    """A --server URL where nothing listens said the server "refused the snapshot (unhandled
    errors in a TaskGroup (1 sub-exception))"; it says the server cannot be reached."""
    import socket

    from rar_agent.cli import app

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    asked = ["memory", "snapshot", "team.tar", "--server", url, "--token", "rar_x"]
    result = CliRunner().invoke(app, asked)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"cannot reach the server at {url}" in said
    assert "that the server is running" in said
    assert "TaskGroup" not in said


def test_cli_snapshot_through_an_open_server_says_it_needs_tokens(tmp_path: Path) -> None:
    """The lock error says to ask the server that holds the memory; a server started without
    tokens answered "unknown tool 'snapshot_memory'": the error says what the server needs."""
    from rar_agent.cli import app
    from tests.unit.test_mcp_auth import serving

    with serving(tmp_path, auth=False) as service:
        asked = ["memory", "snapshot", "team.tar", "--server", service.url, "--token", "any"]
        result = CliRunner().invoke(app, asked)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"the server at {service.url} does not serve the snapshot (snapshot_memory)" in said
    assert "rar-agent auth add NAME --scope admin" in said and "restart the server" in said


def test_cli_through_the_server_says_which_credential_or_url_was_wrong(tmp_path: Path) -> None:
    """A wrong or revoked token said "refused the teaching_history call (HTTP 401): check the
    URL and that the token has the recognize scope" (a scope is never a 401: the token was
    not one the server knows), and the URL without /mcp "refused ... (unhandled errors in a
    TaskGroup (1 sub-exception))"; each says what was wrong."""
    from rar_agent.cli import app
    from tests.unit.test_mcp_auth import serving

    with serving(tmp_path) as service:
        service.store.revoke("alice")
        history = ["memory", "history", "--server"]
        runner = CliRunner()
        said = {}
        for case, url, token in (
            ("wrong", service.url, "rar_0123456789ab_wrong"),
            ("revoked", service.url, service.tokens["alice"]),
            ("no /mcp", service.url.removesuffix("mcp"), service.tokens["bob"]),
        ):
            result = runner.invoke(app, [*history, url, "--token", token])
            assert result.exit_code == 2, result.output
            said[case] = " ".join(result.output.split())
    # the server's words, which say which it was (before: "the server knows no such token,
    # or it was revoked" for both)
    assert "(HTTP 401: the token is not one rar-agent made (those start rar_" in said["wrong"]
    assert (
        "(HTTP 401: this token was revoked: ask whoever runs the server for a new one "
        "(rar-agent auth add NAME --scope recognize)); check --token (or RAR_TOKEN)"
    ) in said["revoked"], said["revoked"]
    for case in ("wrong", "revoked"):  # a scope is never why a request gets a 401
        assert "the recognize scope" not in said[case] and "Authentication" not in said[case]
    assert "TaskGroup" not in said["no /mcp"], said["no /mcp"]
    assert "no MCP endpoint answered there" in said["no /mcp"], said["no /mcp"]
    assert "ends in /mcp" in said["no /mcp"]


@pytest.mark.parametrize("under", ["", "sub"])
def test_a_snapshot_folder_that_is_a_file_is_refused_when_the_server_starts(
    under: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed only when the first snapshot was asked for, hours later, over the network."""
    from rar_agent.cli import app
    from rar_agent.cli import mcp as mcp_command

    def no_load(*_: Any, **__: Any) -> Any:
        raise AssertionError("the memory and the encoder opened before the flags were checked")

    monkeypatch.setattr(mcp_command, "open_recognizer", no_load)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    folder = a_file / under if under else a_file
    args = ["mcp", "--http", "--port", "0", "--snapshot-dir", str(folder)]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and said.count("error:") == 1, result.output
    assert f"{a_file} is a file, not a folder: name a folder with --snapshot-dir" in said, said
