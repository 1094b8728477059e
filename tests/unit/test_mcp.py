"""The MCP server, driven by the official ``mcp`` client: in process, over stdio, over HTTP.

The memory is a small real one (coloured pictures plus the example photo of a cat, embedded
by the deterministic hashing encoder), so every server starts in a second or two and the
right answers are known: an image stored in memory finds itself first.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, types
from mcp.shared.memory import create_connected_server_and_client_session

from rar_agent.mcp import build_server, create_server, mcp_tool, output_schema
from rar_agent.tools import make_tools
from tests.helpers.encoder_factories import MeetingEncoder, hashing_encoder
from tests.helpers.small_memory import small_recognizer

ROOT = Path(__file__).resolve().parents[2]
ENCODER_SPEC = "tests.helpers.encoder_factories:hashing_encoder"
PHOTOS = ROOT / "examples" / "images"
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class MemoryDir:
    """A built memory on disk and the folder of its images (the server's allowed root)."""

    memory: Path
    images: Path


def build_memory(directory: Path) -> MemoryDir:
    """The five coloured pictures plus ``cat.jpg`` as "cat"; ``coffee.jpg`` is copied, unknown."""
    from rar_agent.ingest import builders

    encoder = hashing_encoder()
    recognizer = small_recognizer(directory, encoder)
    images = directory / "images"
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(PHOTOS / name, images / name)
    builders.add_images(recognizer.memory, encoder, [(str(images / "cat.jpg"), "cat")])
    recognizer.close()
    return MemoryDir(directory / "memory", images)


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def exercise(session: ClientSession, images: Path, *, learning: bool) -> dict[str, Any]:
    """The scenario every transport runs; returns the recorded listing and one call's result."""
    listing = await session.list_tools()
    names = [tool.name for tool in listing.tools]
    expected = ["recognize_image", "search_categories", "list_categories", "list_unknown_groups"]
    expected.append("recognize_images")
    teaching = ["add_category_example", "teach_unknown_group", "relabel_example"]
    teaching += ["teaching_history", "undo_teaching"]
    assert names == expected + (teaching if learning else [])
    assert all(tool.outputSchema is not None for tool in listing.tools)

    # The allowed folder in one call: names relative to it, never the server's layout.
    folder = await session.call_tool("recognize_images", {"folder": ".", "pattern": "cat*"})
    assert not folder.isError, text_of(folder)
    assert text_of(folder).startswith("Recognized photos 1-1 of 1 in .")
    assert folder.structuredContent["results"][0]["image"] == "cat.jpg"
    assert str(images) not in text_of(folder)

    # A real photo by path (relative to the allowed root); the client checks the structured
    # content against the tool's output schema.
    by_path = await session.call_tool("recognize_image", {"image": "cat.jpg", "k": 3})
    assert not by_path.isError, text_of(by_path)
    assert text_of(by_path).startswith("Answer for cat.jpg: cat (")
    result = by_path.structuredContent
    assert result is not None and result["label"] == "cat"
    assert len(result["candidates"]) == 3 and result["candidates"][0]["score"] > 0.99
    assert result["ranking"]["status"] == "disabled" and result["ranking"]["reason"]
    assert {"load", "encode", "retrieve"} <= set(result["timings_ms"])

    # The same photo as base64 with its MIME type (a data URI).
    by_data = await session.call_tool("recognize_image", {"image": data_uri(images / "cat.jpg")})
    assert not by_data.isError and by_data.structuredContent["label"] == "cat"

    outside = await session.call_tool("recognize_image", {"image": str(ROOT / "README.md")})
    assert outside.isError and "not a file inside the allowed folder 'images'" in text_of(outside)
    loopback = await session.call_tool("recognize_image", {"image": "http://127.0.0.1:9/cat.jpg"})
    assert loopback.isError and "loopback" in text_of(loopback)
    bad = await session.call_tool("recognize_image", {"image": "cat.jpg", "k": 0})
    assert bad.isError and text_of(bad).startswith("invalid tool arguments (k must be a")
    assert "whole number from 1 to 100" in text_of(bad) and "Input should" not in text_of(bad)

    # pydantic's words ('Input should be greater than or equal to 1') never reach a client:
    # what was wrong and what to give, from the argument's schema.
    too_few = await session.call_tool("list_categories", {"limit": 0})
    assert too_few.isError and text_of(too_few) == (
        "invalid tool arguments (limit must be a whole number from 1 to 1000, not 0); fix them "
        "and call the tool again"
    )
    numbered = await session.call_tool("recognize_image", {"image": "image 1"})
    assert numbered.isError and text_of(numbered).startswith(
        "'image 1' is not an image reference: images are named by id (img-...), not by number"
    )

    known = await session.call_tool("list_categories", {})
    assert known.structuredContent["total"] == 6 and "cat (1 example)" in text_of(known)

    if learning:
        coffee = data_uri(images / "coffee.jpg")
        taught = await session.call_tool(
            "add_category_example", {"label": "coffee", "image": coffee}
        )
        assert not taught.isError, text_of(taught)
        assert taught.structuredContent["added"] == 1
        again = await session.call_tool("recognize_image", {"image": "coffee.jpg"})
        assert again.structuredContent["label"] == "coffee"
        refused = await session.call_tool(
            "add_category_example", {"label": "dog", "image": "cat.jpg"}
        )
        assert refused.isError and "already stored as an example of 'cat'" in text_of(refused)
        history = await session.call_tool("teaching_history", {"limit": 5})
        [event] = history.structuredContent["events"]
        assert event["label"] == "coffee" and event["via"] == "mcp"
        undone = await session.call_tool("undo_teaching", {"n": 1})
        assert not undone.isError and undone.structuredContent["undone"][0]["label"] == "coffee"
    return {"tools": listing.tools, "result": by_path}


# ---------------------------------------------------------------------------- in process


@pytest.fixture
def memory_dir(tmp_path: Path) -> MemoryDir:
    return build_memory(tmp_path)


@asynccontextmanager
async def in_process(
    memory_dir: MemoryDir, *, learning: bool, read_only: bool = False
) -> AsyncIterator[ClientSession]:
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    memory = CategoryMemory.open(memory_dir.memory, collection="small", read_only=read_only)
    with Recognizer(memory, hashing_encoder(), k=5) as recognizer:
        server = create_server(
            recognizer, allowed_roots=[memory_dir.images], allow_urls=True, allow_learning=learning
        )
        async with create_connected_server_and_client_session(server) as session:
            yield session


async def test_in_process_scenario_with_learning(memory_dir: MemoryDir) -> None:
    async with in_process(memory_dir, learning=True) as session:
        await exercise(session, memory_dir.images, learning=True)


def _keys(value: Any) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


async def test_the_readmes_example_call_is_what_the_server_answers(memory_dir: MemoryDir) -> None:
    """README, "What the agent sees": the call on this memory, as a client gets it. It showed
    ``"retrieval_rank": 0`` (ranks are 1-based everywhere since issue 12) and no reject time."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("What the agent sees:", 1)[1].split("```text\n", 1)[1].split("```")[0]
    content, structured = block.split("-> content: ", 1)[1].split("-> structuredContent: ")
    async with in_process(memory_dir, learning=False) as session:
        result = await session.call_tool("recognize_image", {"image": "cat.jpg", "k": 3})
    assert " ".join(content.split()).strip('"') == " ".join(text_of(result).split())
    real = result.structuredContent
    assert real is not None
    assert set(re.findall(r'"(\w+)":', structured)) <= _keys(real)
    shown = re.search(r'"candidates": \[(\{.*?\})', structured, re.S)
    assert shown is not None
    first = json.loads(shown[1])
    assert first == {k: real["candidates"][0][k] for k in first if k != "score"} | {
        "score": pytest.approx(real["candidates"][0]["score"], abs=5e-4)
    }
    timings = re.search(r'"timings_ms": (\{.*?\})', structured, re.S)
    assert timings is not None and set(json.loads(timings[1])) == set(real["timings_ms"])


async def test_read_only_server_has_no_learning_tool_and_memory_refuses(
    memory_dir: MemoryDir,
) -> None:
    async with in_process(memory_dir, learning=False, read_only=True) as session:
        await exercise(session, memory_dir.images, learning=False)
        # the client's model reads why, so it can tell the user instead of guessing
        for name in ("add_category_example", "undo_teaching"):
            missing = await session.call_tool(name, {"label": "x"})
            said = " ".join(text_of(missing).split())
            assert missing.isError and f"{name} is off on this server" in said, said
            assert "started without --allow-learning" in said and "learns nothing" in said
        unknown = await session.call_tool("paint_image", {})
        assert unknown.isError and "unknown tool 'paint_image'" in text_of(unknown)


def test_the_opening_words_agree_with_the_tools_they_name() -> None:
    """A server without a text encoder told the model "list_categories tell what the memory
    knows"."""
    from rar_agent.mcp.server import _instructions

    one = _instructions("the memory", None, frozenset({"recognize_image", "list_categories"}))
    assert "list_categories tells what the memory knows" in one, one
    both = frozenset({"recognize_image", "list_categories", "search_categories"})
    assert "list_categories and search_categories tell what" in _instructions(
        "the memory", None, both
    )


def test_the_opening_words_name_a_memory_folder_by_its_folder(tmp_path: Path) -> None:
    """`mcp --memory photos-memory/` opened with "Visual recognition with the category memory
    'default'": a --memory folder's collection is 'default' whatever the folder is called.
    The server names it by its folder, as the CLI does ("the memory at DIR"), by its name
    only (nothing over MCP names where the server's files lie); a memory under RAR_HOME
    keeps its name."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from tests.helpers.small_memory import fill_memory, make_images

    encoder = hashing_encoder()
    images = make_images(tmp_path / "images")
    folder = tmp_path / "photos-memory"
    for place, collection, named in (
        (folder, "default", "the memory in the folder 'photos-memory'"),  # --memory DIR
        (tmp_path / "memories" / "shop", "shop", "the category memory 'shop'"),  # RAR_HOME
    ):
        memory = CategoryMemory.open(place, collection=collection)
        fill_memory(memory, encoder, images)
        with Recognizer(memory, encoder, k=3) as recognizer:
            server = create_server(recognizer)
            opening = server.create_initialization_options().instructions or ""
        assert opening.startswith(f"Visual recognition with {named}:"), opening
        assert str(tmp_path) not in opening and "'default'" not in opening, opening


async def test_learning_on_a_read_only_memory_is_a_tool_error(memory_dir: MemoryDir) -> None:
    async with in_process(memory_dir, learning=True, read_only=True) as session:
        image = data_uri(memory_dir.images / "coffee.jpg")
        result = await session.call_tool(
            "add_category_example", {"label": "coffee", "image": image}
        )
        assert result.isError and "read-only" in text_of(result)


async def test_mcp_tools_are_the_langchain_tools(memory_dir: MemoryDir) -> None:
    """Same names, descriptions, argument schemas and messages: one definition."""
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    memory = CategoryMemory.open(memory_dir.memory, collection="small")
    with Recognizer(memory, hashing_encoder(), k=5) as recognizer:
        tools = make_tools(recognizer, allowed_roots=[memory_dir.images], image_ids=False)
        async with create_connected_server_and_client_session(build_server(tools)) as session:
            listed = {tool.name: tool for tool in (await session.list_tools()).tools}
            for tool in tools:
                mine = listed[tool.name]
                assert mine.description == tool.description
                assert mine.inputSchema == mcp_tool(tool).inputSchema
                assert set(mine.inputSchema["properties"]) == set(tool.args)
            for args in ({"image": "../x.png"}, {"k": 99}, {}):
                message = tools[0].invoke(
                    {"type": "tool_call", "name": "recognize_image", "args": args, "id": "1"}
                )
                answer = await session.call_tool("recognize_image", args)
                assert answer.isError and text_of(answer) == message.text
            search = await session.call_tool("search_categories", {"query": "cat", "k": 2})
            assert len(search.structuredContent["result"]) == 2


def test_output_schemas_allow_unknown_and_name_the_rejection_slot() -> None:
    from rar_agent.tools import CategorySearchTool, RecognizeTool

    schema, wrapped = output_schema(RecognizeTool.model_construct())
    assert schema is not None and not wrapped and schema["type"] == "object"
    result = schema["$defs"]["RecognitionResult"]
    assert {"type": "null"} in result["properties"]["label"]["anyOf"]
    assert "rejection" in result["properties"]
    assert {"candidates", "ranking", "timings_ms"} <= set(result["properties"])
    listed, wrapped = output_schema(CategorySearchTool.model_construct())
    assert wrapped and listed is not None and listed["required"] == ["result"]


async def test_http_on_a_taken_port_is_a_clear_error() -> None:
    import socket

    from rar_agent.errors import ConfigError
    from rar_agent.mcp import serve_http

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
            await serve_http(build_server([]), port=port)


async def test_http_keeps_what_is_loaded_out_of_the_collectors_full_passes() -> None:
    import gc
    import signal

    from rar_agent.mcp import serve_http

    frozen: list[int] = []

    def ready(url: str) -> None:
        frozen.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGINT)  # serve_http's own handler stops it

    gc.unfreeze()
    try:
        with anyio.fail_after(60):
            await serve_http(build_server([]), port=0, on_ready=ready)
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc")
async def test_http_runs_the_tools_in_request_threads_named_at_the_system() -> None:
    import asyncio
    import signal

    from rar_agent.mcp import serve_http

    names: list[str] = []

    def comm() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    async def ready(url: str) -> None:
        names.append(await asyncio.to_thread(comm))
        os.kill(os.getpid(), signal.SIGINT)  # serve_http's own handler stops it

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(
                    lambda: serve_http(
                        build_server([]), port=0, on_ready=lambda url: group.start_soon(ready, url)
                    )
                )
    finally:
        import gc

        gc.unfreeze()  # serve_http froze the test process's objects
    assert names == ["rar-request_0"]


def test_a_client_ending_its_session_is_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SDK logs its event-stream writer's end as an error with a traceback when a client
    closes its session (every normal exit of the official client); the server drops that one
    record, and only that one."""
    import logging

    from rar_agent.mcp.transports import http_app

    http_app(build_server([]))
    sdk = logging.getLogger("mcp.server.streamable_http")
    for error in (anyio.ClosedResourceError(), RuntimeError("a real fault")):
        try:
            raise error
        except Exception:
            sdk.exception("Error in standalone SSE writer")
    try:
        raise anyio.ClosedResourceError()
    except anyio.ClosedResourceError:
        sdk.exception("Error in message router")
    logged = [(r.getMessage(), type(r.exc_info[1]).__name__) for r in caplog.records if r.exc_info]
    assert logged == [
        ("Error in standalone SSE writer", "RuntimeError"),
        ("Error in message router", "ClosedResourceError"),
    ]


# ---------------------------------------------------------------------------- subprocesses


def server_command(memory_dir: MemoryDir, *extra: str) -> list[str]:
    """``rar-agent mcp`` on the test memory (through the console script's entry point)."""
    return [
        sys.executable,
        "-c",
        "from rar_agent.cli import main; main()",
        "mcp",
        "--memory",
        str(memory_dir.memory),
        "--collection",
        "small",
        "--encoder",
        ENCODER_SPEC,
        "--allow-root",
        str(memory_dir.images),
        "--allow-urls",
        "--allow-learning",
        *extra,
    ]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.slow  # a server subprocess (a few seconds to start)
async def test_stdio_subprocess_scenario(memory_dir: MemoryDir) -> None:
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=server_command(memory_dir)[1:],
        env=server_env(),
        cwd=str(ROOT),
    )
    with anyio.fail_after(START_TIMEOUT_S):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await exercise(session, memory_dir.images, learning=True)


@pytest.fixture
def http_server(memory_dir: MemoryDir) -> Iterator[str]:
    """``rar-agent mcp --http --port 0`` on 127.0.0.1; yields its URL, stops it afterwards."""
    process = subprocess.Popen(
        server_command(memory_dir, "--http", "--port", "0"),
        cwd=ROOT,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True)
    reader.start()
    url, seen = None, []
    try:
        while url is None:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"the HTTP server did not start: {''.join(seen)}")
            seen.append(line)
            if "MCP server on http://" in line:
                url = line.split(" on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        yield url
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            pytest.fail("the HTTP server did not stop on SIGTERM")
    reader.join(timeout=30)
    while not lines.empty():
        seen.append(lines.get())
    assert code == 0, "".join(seen)  # a clean stop: the memory was closed
    # Clients that ended their sessions normally left no error in the server's log.
    assert "Traceback" not in "".join(seen), "".join(seen)


@pytest.mark.slow  # a server subprocess (a few seconds to start)
async def test_http_subprocess_scenario(http_server: str, memory_dir: MemoryDir) -> None:
    from mcp.client.streamable_http import streamable_http_client

    with anyio.fail_after(START_TIMEOUT_S):
        async with (
            streamable_http_client(http_server) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            recorded = await exercise(session, memory_dir.images, learning=True)
    record = os.environ.get("RAR_MCP_RECORD")
    if record:  # the closing note's recorded listing and call
        Path(record).write_text(
            json.dumps(
                {
                    "tools": [
                        t.model_dump(mode="json", exclude_none=True) for t in recorded["tools"]
                    ],
                    "call": recorded["result"].model_dump(mode="json", exclude_none=True),
                },
                indent=2,
            )
        )


@pytest.mark.slow  # a server subprocess (a few seconds to start)
async def test_http_refuses_a_foreign_host_header(http_server: str) -> None:
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            http_server,
            json=body,
            headers={"Host": "attacker.example", "Accept": "application/json, text/event-stream"},
        )
    assert response.status_code in (400, 403, 421)


async def test_image_errors_never_name_the_servers_file_layout(memory_dir: MemoryDir) -> None:
    """Issue 22: over MCP a bad image is named as the client gave it (or relative to the
    allowed folder), never by the server's absolute path, and the error still says what to do."""
    from PIL import Image

    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    photos = memory_dir.images / "photos"
    photos.mkdir()
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg " * 8)
    Image.new("RGB", (64, 64)).save(photos / "big.png")
    layout = str(memory_dir.images.resolve())
    garbage = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8 garbage " * 8).decode()
    calls = [
        ("recognize_image", {"image": "photos/corrupt.jpg"}, "photos/corrupt.jpg is not an image"),
        ("recognize_image", {"image": "photos/big.png"}, "photos/big.png is 64x64 pixels, over"),
        ("recognize_image", {"image": "photos"}, "photos is not a regular file"),
        ("recognize_image", {"image": "photos/gone.jpg"}, "photos/gone.jpg: no such file"),
        ("recognize_image", {"image": garbage}, "not an image"),
        ("recognize_images", {"images": ["photos/corrupt.jpg"]}, "photos/corrupt.jpg is not an"),
        ("recognize_images", {"folder": "photos"}, "photos/corrupt.jpg is not an image"),
        ("add_category_example", {"label": "x", "image": "photos/corrupt.jpg"}, "is not an image"),
    ]
    memory = CategoryMemory.open(memory_dir.memory, collection="small")
    with Recognizer(memory, hashing_encoder(), k=5) as recognizer:
        server = create_server(
            recognizer, allowed_roots=[memory_dir.images], allow_learning=True, max_pixels=1000
        )
        async with create_connected_server_and_client_session(server) as session:
            for name, args, expected in calls:
                answer = await session.call_tool(name, args)
                seen = text_of(answer) + json.dumps(answer.structuredContent)
                assert expected in seen, (name, seen)
                assert layout + "/photos" not in seen, (name, seen)


async def test_nothing_over_mcp_names_where_the_allowed_folder_lies(memory_dir: MemoryDir) -> None:
    """A path outside the allowed folder, a missing file or folder: the error names the
    image as the client gave it and says what to do, but never where the server's allowed
    folder lies on its disk; nor do the tool descriptions."""
    layout = str(memory_dir.images.resolve().parent)
    calls = [
        ("recognize_image", {"image": "/etc/hostname"}, "/etc/hostname is not a file inside"),
        ("recognize_image", {"image": "../memory"}, "../memory is not a file inside"),
        ("recognize_image", {"image": "gone.jpg"}, "gone.jpg: no such file in"),
        ("recognize_images", {"images": ["gone.jpg"]}, "gone.jpg: no such file in"),
        ("recognize_images", {"folder": "/etc"}, "/etc is not a folder inside"),
        ("recognize_images", {"folder": "gone"}, "gone: no such folder in"),
        ("add_category_example", {"label": "x", "image": "/etc/hostname"}, "is not a file inside"),
    ]
    async with in_process(memory_dir, learning=True) as session:
        listing = (await session.list_tools()).tools
        for tool in listing:
            assert layout not in json.dumps(tool.model_dump(mode="json")), tool.name
        recognize = next(t for t in listing if t.name == "recognize_image")
        assert "relative to the allowed folder 'images'" in (recognize.description or "")
        for name, args, expected in calls:
            answer = await session.call_tool(name, args)
            seen = text_of(answer) + json.dumps(answer.structuredContent)
            assert expected in seen and "allowed folder 'images'" in seen, (name, seen)
            assert answer.isError or "images" in args, (name, seen)  # a list: per image
            assert layout not in seen, (name, seen)


async def test_a_path_one_client_taught_by_is_not_shown_to_the_next(memory_dir: MemoryDir) -> None:
    """A client that knows the server's layout teaches by absolute path; what the memory
    then says about that example (history, candidates, undo), in text and in structured
    content, names it relative to the allowed folder, never by the server's path."""
    from PIL import Image

    layout = str(memory_dir.images)
    Image.new("RGB", (40, 30), (20, 160, 150)).save(memory_dir.images / "mint.png")
    async with in_process(memory_dir, learning=True) as session:
        taught = await session.call_tool(
            "add_category_example", {"label": "mint", "image": layout + "/mint.png"}
        )
        assert not taught.isError, text_of(taught)
        for name, args in [
            ("teaching_history", {}),
            ("recognize_image", {"image": "mint.png"}),
            ("undo_teaching", {}),
        ]:
            answer = await session.call_tool(name, args)
            seen = text_of(answer) + json.dumps(answer.structuredContent)
            assert not answer.isError and "mint.png" in seen, (name, seen)
            assert layout not in seen, (name, seen)


async def test_two_clients_teaching_at_once_encode_side_by_side(memory_dir: MemoryDir) -> None:
    """Two learn-scoped clients teach at the same moment: each call's image is encoded
    while the other's is (neither waits for the other's encoder pass), and both are stored."""
    from PIL import Image

    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    for name, colour in [("mint.png", (20, 160, 150)), ("plum.png", (120, 30, 90))]:
        Image.new("RGB", (40, 30), colour).save(memory_dir.images / name)
    memory = CategoryMemory.open(memory_dir.memory, collection="small")
    encoder = MeetingEncoder(hashing_encoder(), timeout=10)
    with Recognizer(memory, encoder, k=5) as recognizer:  # type: ignore[arg-type]
        server = create_server(
            recognizer, allowed_roots=[memory_dir.images], allow_learning=True, batch_images=1
        )
        async with create_connected_server_and_client_session(server) as session:
            answers: dict[str, types.CallToolResult] = {}

            async def teach(label: str) -> None:
                image = {"label": label, "image": f"{label}.png"}
                answers[label] = await session.call_tool("add_category_example", image)

            async with anyio.create_task_group() as group:
                group.start_soon(teach, "mint")
                group.start_soon(teach, "plum")
        for label, answer in answers.items():
            assert not answer.isError, (label, text_of(answer))
        assert {"mint", "plum"} <= set(memory.labels("image"))


async def test_an_unexpected_failure_is_told_without_its_details() -> None:
    """A bug's exception text may hold anything (a path of the server, internal state): the
    client hears which tool failed and of what kind; the server's log has the rest."""
    from langchain_core.tools import StructuredTool

    def broken(image: str) -> str:
        raise OSError(f"[Errno 5] Input/output error: '/srv/rar/memory/segments/{image}'")

    tool = StructuredTool.from_function(broken, name="recognize_image", description="Breaks.")
    async with create_connected_server_and_client_session(build_server([tool])) as session:
        answer = await session.call_tool("recognize_image", {"image": "cat.jpg"})
    assert answer.isError
    assert text_of(answer).startswith("recognize_image failed unexpectedly (OSError)")
    assert "log" in text_of(answer) and "/srv/rar" not in text_of(answer)


async def test_the_server_names_a_portrait_photo_over_its_limit_by_its_upright_size(
    tmp_path: Path,
) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x30, seen 30x60
    Image.new("RGB", (60, 30), (0, 0, 255)).save(images / "portrait.jpg", exif=exif)
    recognizer = small_recognizer(tmp_path, hashing_encoder())
    with recognizer:
        server = create_server(recognizer, allowed_roots=[images], max_pixels=1000)
        async with create_connected_server_and_client_session(server) as session:
            answer = await session.call_tool("recognize_image", {"image": "portrait.jpg"})
    assert answer.isError and "portrait.jpg is 30x60 pixels" in text_of(answer), text_of(answer)
