"""Benchmark: what the MCP layer adds per call over calling the LangChain tool directly.

One memory (coloured pictures plus the two example photos), one encoder; the same two calls
through every path, in the same run, rounds interleaved so machine load hits all alike:

- ``direct``: ``await tool.ainvoke(tool_call)``, the LangChain tool as an agent calls it (the
  raw baseline);
- ``convert``: ``rar_agent.mcp.call_langchain_tool``, the layer's own work (tool call ->
  MCP result) without any protocol;
- ``in-process``: an official ``mcp`` client session over in-memory streams;
- ``stdio``: the same client talking to ``rar-agent mcp`` in a subprocess over pipes;
- ``http``: the same client talking to ``rar-agent mcp --http`` on 127.0.0.1.

Each session path runs twice: ``/raw`` sends the ``tools/call`` request itself and
``/validated`` uses ``ClientSession.call_tool``, which also checks the structured content
against the tool's output schema (the official Python client re-checks the schema against the
JSON Schema meta-schema on every call, a client-side cost that grows with the schema).

The calls: ``list_categories`` (a cheap tool: the figure is almost all overhead) and
``recognize_image`` of a photo by path (decode, encode, retrieve). Each subprocess server gets
its own copy of the memory (an embedded memory opens in one process at a time). Usage::

    python tools/bench_mcp.py                       # EfficientNet-Lite0, offline weights
    python tools/bench_mcp.py --encoder tests.helpers.encoder_factories:hashing_encoder
    python tools/bench_mcp.py --rounds 300 --json mcp.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CALLS = {
    "list_categories": {},
    "recognize_image": {"image": "cat.jpg", "k": 5},
}
COLOURS = [(200, 30, 30), (40, 170, 60), (30, 60, 210), (235, 215, 40), (15, 15, 20)]


def build_memory(directory: Path, encoder_spec: str) -> tuple[Path, Path]:
    """A memory of five coloured pictures and the two example photos; returns (memory, images)."""
    from PIL import Image

    from rar_agent.encoders import load_encoder
    from rar_agent.ingest import builders
    from rar_agent.memory import CategoryMemory

    images = directory / "images"
    images.mkdir(parents=True)
    items = []
    for i, colour in enumerate(COLOURS):
        path = images / f"colour{i}.png"
        Image.new("RGB", (64, 48), colour).save(path)
        items.append((str(path), f"colour {i}"))
    for name in ("cat", "coffee"):
        shutil.copy(ROOT / "examples" / "images" / f"{name}.jpg", images / f"{name}.jpg")
        items.append((str(images / f"{name}.jpg"), name))
    encoder = load_encoder(encoder_spec, device="cpu")
    with CategoryMemory.open(directory / "memory", collection="bench") as memory:
        memory.bind_encoder(encoder.fingerprint, encoder.dim)
        builders.add_images(memory, encoder, items, strict=True)
    return directory / "memory", images


def server_args(memory: Path, images: Path, encoder_spec: str, *extra: str) -> list[str]:
    """``rar-agent mcp`` on a memory copy (through the console script's entry point)."""
    return [
        "-c",
        "from rar_agent.cli import main; main()",
        "mcp",
        "--memory",
        str(memory),
        "--collection",
        "bench",
        "--encoder",
        encoder_spec,
        "--allow-root",
        str(images),
        "--no-progress",
        *extra,
    ]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@asynccontextmanager
async def stdio_session(args: list[str]) -> AsyncIterator[Any]:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=args, env=child_env(), cwd=str(ROOT)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(args: list[str]) -> AsyncIterator[Any]:
    import anyio
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    process = await anyio.open_process(
        [sys.executable, *args, "--http", "--port", "0"], env=child_env(), cwd=str(ROOT)
    )
    try:
        url = await _announced_url(process)
        async with (
            streamable_http_client(url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    finally:
        process.terminate()
        await process.wait()


async def _announced_url(process: Any) -> str:
    import anyio

    seen = b""
    with anyio.fail_after(300):
        while b" on http://" not in seen or not seen.endswith(b"\n"):
            chunk = await process.stderr.receive()
            seen += chunk
    line = next(x for x in seen.decode().splitlines() if " on http://" in x)
    return line.split(" on ", 1)[1].split()[0]


async def raw_call(session: Any, name: str, arguments: dict[str, Any]) -> Any:
    """``tools/call`` without the client's output-schema check."""
    from mcp import types

    request = types.CallToolRequest(
        params=types.CallToolRequestParams(name=name, arguments=arguments)
    )
    return await session.send_request(types.ClientRequest(request), types.CallToolResult)


def summarize(times: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Median and minimum ms per (tool, path), with the overhead over ``direct``."""
    rows = []
    for tool, by_path in times.items():
        base = statistics.median(by_path["direct"])
        for path, values in by_path.items():
            median = statistics.median(values)
            rows.append(
                {
                    "tool": tool,
                    "path": path,
                    "median_ms": round(median, 3),
                    "min_ms": round(min(values), 3),
                    "overhead_ms": round(median - base, 3),
                    "ratio": round(median / base, 3),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]], rounds: int, encoder: str) -> None:
    print(f"MCP layer overhead per call: median of {rounds} interleaved rounds; encoder {encoder}")
    print(f"{'tool':<17} {'path':<22} {'median ms':>10} {'min ms':>8} {'overhead ms':>12} "
          f"{'x direct':>9}")  # fmt: skip
    for row in rows:
        print(
            f"{row['tool']:<17} {row['path']:<22} {row['median_ms']:>10.3f} {row['min_ms']:>8.3f} "
            f"{row['overhead_ms']:>+12.3f} {row['ratio']:>9.2f}"
        )


async def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from mcp.shared.memory import create_connected_server_and_client_session

    from rar_agent.encoders import load_encoder
    from rar_agent.mcp import build_server, call_langchain_tool
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from rar_agent.tools import make_tools

    memory_dir, images = build_memory(work / "main", args.encoder)
    copies = {}
    for name in args.transports:
        copies[name] = work / name / "memory"
        shutil.copytree(memory_dir, copies[name], ignore=shutil.ignore_patterns(".rar.lock"))
    encoder = load_encoder(args.encoder, device="cpu")
    memory = CategoryMemory.open(memory_dir, collection="bench", read_only=True)
    async with AsyncExitStack() as stack:
        recognizer = stack.enter_context(Recognizer(memory, encoder, k=5))
        tools = {t.name: t for t in make_tools(recognizer, allowed_roots=[images], image_ids=False)}
        sessions = {
            "in-process": await stack.enter_async_context(
                create_connected_server_and_client_session(build_server(list(tools.values())))
            )
        }
        for name in args.transports:
            opener = stdio_session if name == "stdio" else http_session
            # the layer's overhead, not the server's limits: no per-minute cap in the way
            server = server_args(copies[name], images, args.encoder, "--per-minute", "1000000")
            sessions[name] = await stack.enter_async_context(opener(server))

        def paths(tool: str) -> dict[str, Callable[[], Awaitable[Any]]]:
            call = {"type": "tool_call", "name": tool, "args": CALLS[tool], "id": "bench"}
            out: dict[str, Callable[[], Awaitable[Any]]] = {
                "direct": lambda: tools[tool].ainvoke(call),
                "convert": lambda: call_langchain_tool(tools[tool], CALLS[tool]),
            }
            for name, session in sessions.items():
                out[f"{name}/raw"] = partial(raw_call, session, tool, CALLS[tool])
                out[f"{name}/validated"] = partial(session.call_tool, tool, CALLS[tool])
            return out

        plan = {tool: paths(tool) for tool in CALLS}
        times: dict[str, dict[str, list[float]]] = {
            tool: {path: [] for path in fns} for tool, fns in plan.items()
        }
        order = [(tool, path) for tool, fns in plan.items() for path in fns]
        shuffle = random.Random(0).shuffle
        for round_ in range(args.warmup + args.rounds):
            shuffle(order)  # no path always runs first, after the others' leftover work
            for tool, path in order:
                start = time.perf_counter()
                result = await plan[tool][path]()
                elapsed = (time.perf_counter() - start) * 1000
                if getattr(result, "isError", False) or getattr(result, "status", "") == "error":
                    raise SystemExit(f"{tool} over {path} failed: {result}")
                if round_ >= args.warmup:
                    times[tool][path].append(elapsed)
    return summarize(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet-lite0", help="encoder spec")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--transports", default="stdio,http", help="subprocess transports: stdio,http or none"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.transports = [t for t in args.transports.split(",") if t in {"stdio", "http"}]

    import anyio

    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        rows = anyio.run(measure, args, Path(tmp))
    print_table(rows, args.rounds, args.encoder)
    if args.json:  # tools/bench.py's row format; every figure against the direct call
        bench_rows = [
            {
                "name": f"{row['tool']} via {row['path']} (overhead {row['overhead_ms']:+.2f} ms)",
                "value": row["median_ms"],
                "unit": "ms",
                "baseline": "LangChain tool, direct",
                "baseline_value": next(
                    r["median_ms"]
                    for r in rows
                    if r["tool"] == row["tool"] and r["path"] == "direct"
                ),
                "ratio": row["ratio"],
                **row,
            }
            for row in rows
            if row["path"] != "direct"
        ]
        args.json.write_text(json.dumps({"rows": bench_rows}, indent=2))


if __name__ == "__main__":
    main()
