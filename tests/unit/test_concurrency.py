"""Concurrency: many recognitions at once against one memory while categories are added.

8 threads (and, separately, 8 asyncio tasks through the recognize tool) x 200 recognitions
each, while another worker adds class-name categories to the same memory. Recognition queries
the image side of the memory and the adds go to the text side, so every concurrent result must
equal the serial result for the same image exactly (labels) and to float precision (scores);
every add must be visible afterwards; no call may fail.

Processes: an embedded memory directory is opened by one process at a time. A second process
gets ``MemoryBusyError`` (never a corrupted memory); when two race to open, exactly one wins.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent.ingest.builders import add_class_names, add_images
from rar_agent.memory import CategoryMemory
from rar_agent.pipeline import Recognizer
from rar_agent.tools import ImageRegistry, RecognizeTool

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 8
CALLS = 200
QUERIES = 16
NEW_NAMES = [f"new category {i}" for i in range(48)]
TEMPLATES = ["a photo of a {}."]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def setup(tmp_path: Path, tiny_encoder: Any) -> Iterator[tuple[Recognizer, list[bytes], dict]]:
    """A memory of 12 image categories (3 examples each), queries and their serial answers."""
    memory = CategoryMemory.open(tmp_path / "memory", collection="busy")
    items = []
    for i in range(36):
        path = tmp_path / "examples" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_png(1000 + i))
        items.append((str(path), f"category {i % 12}"))
    assert add_images(memory, tiny_encoder, items).added == 36
    add_class_names(memory, tiny_encoder, ["seed name"], TEMPLATES)
    recognizer = Recognizer(memory, tiny_encoder, k=5, kind="image")
    queries = [_png(i) for i in range(QUERIES)]
    serial = {i: _answer(recognizer.recognize(q)) for i, q in enumerate(queries)}
    yield recognizer, queries, serial
    memory.close()


def _answer(result: Any) -> tuple[list[str], np.ndarray]:
    assert result.error is None, result.error
    return [c.label for c in result.candidates], np.array([c.score for c in result.candidates])


def _same(got: tuple[list[str], np.ndarray], want: tuple[list[str], np.ndarray]) -> bool:
    return got[0] == want[0] and bool(np.allclose(got[1], want[1], atol=1e-5))


def _check_adds(recognizer: Recognizer) -> None:
    text = recognizer.memory.labels("text")
    assert all(text.get(name) == 1 for name in NEW_NAMES), "an add is missing"
    assert recognizer.memory.count("text") == 1 + len(NEW_NAMES)
    assert recognizer.memory.count("image") == 36


@pytest.mark.slow
def test_threads_recognize_while_another_thread_adds(setup: Any, tiny_encoder: Any) -> None:
    recognizer, queries, serial = setup
    errors: list[str] = []
    mismatches: list[int] = []
    calls = [0] * WORKERS
    during_adds = [0] * WORKERS
    adding = threading.Event()
    stop_adding = threading.Event()

    def recognize(worker: int) -> None:
        order = np.random.default_rng(worker).integers(0, QUERIES, CALLS)
        for i in order:
            try:
                got = _answer(recognizer.recognize(queries[i]))
            except Exception as e:  # noqa: BLE001 - every failure is counted, none expected
                errors.append(f"{type(e).__name__}: {e}")
                continue
            calls[worker] += 1
            during_adds[worker] += adding.is_set() and not stop_adding.is_set()
            if not _same(got, serial[int(i)]):
                mismatches.append(int(i))

    def add() -> None:
        adding.set()
        try:
            for start in range(0, len(NEW_NAMES), 2):
                add_class_names(
                    recognizer.memory, tiny_encoder, NEW_NAMES[start : start + 2], TEMPLATES
                )
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001
            errors.append(f"add: {type(e).__name__}: {e}")
        finally:
            stop_adding.set()

    threads = [threading.Thread(target=recognize, args=(w,)) for w in range(WORKERS)]
    adder = threading.Thread(target=add)
    start = time.monotonic()
    for t in [adder, *threads]:
        t.start()
    for t in [adder, *threads]:
        t.join(timeout=300)
    elapsed = time.monotonic() - start
    print(
        f"[concurrency] threads: {sum(calls)} recognitions in {elapsed:.1f} s, "
        f"{len(errors)} errors, {len(mismatches)} mismatches, {len(NEW_NAMES)} adds, "
        f"{sum(during_adds)} recognitions while adding"
    )
    assert not errors, errors[:5]
    assert not mismatches
    assert sum(calls) == WORKERS * CALLS
    assert stop_adding.is_set() and sum(during_adds) > 0
    _check_adds(recognizer)


@pytest.mark.slow
async def test_asyncio_tasks_recognize_through_the_tool_while_adding(
    setup: Any, tiny_encoder: Any
) -> None:
    recognizer, queries, serial = setup
    registry = ImageRegistry()
    ids = [registry.register(q) for q in queries]
    tool = RecognizeTool(recognizer=recognizer, registry=registry)
    errors: list[str] = []
    mismatches: list[int] = []
    calls = 0
    during_adds = 0
    adding = False

    async def recognize(worker: int) -> None:
        nonlocal calls, during_adds
        order = np.random.default_rng(100 + worker).integers(0, QUERIES, CALLS)
        for i in order:
            call = {
                "type": "tool_call",
                "id": f"{worker}-{i}",
                "name": tool.name,
                "args": {"image": ids[i], "k": 5},
            }
            message = await tool.ainvoke(call)
            if message.status != "success":
                errors.append(str(message.content))
                continue
            calls += 1
            during_adds += adding
            candidates = message.artifact["candidates"]
            got = ([c["label"] for c in candidates], np.array([c["score"] for c in candidates]))
            if not _same(got, serial[int(i)]):
                mismatches.append(int(i))

    async def add() -> None:
        nonlocal adding
        adding = True
        for start in range(0, len(NEW_NAMES), 2):
            await asyncio.sleep(0.05)
            await asyncio.to_thread(
                add_class_names,
                recognizer.memory,
                tiny_encoder,
                NEW_NAMES[start : start + 2],
                TEMPLATES,
            )
        adding = False

    began = time.monotonic()
    await asyncio.gather(add(), *(recognize(w) for w in range(WORKERS)))
    print(
        f"[concurrency] asyncio: {calls} tool calls in {time.monotonic() - began:.1f} s, "
        f"{len(errors)} errors, {len(mismatches)} mismatches, {len(NEW_NAMES)} adds, "
        f"{during_adds} calls while adding"
    )
    assert not errors, errors[:5]
    assert not mismatches
    assert calls == WORKERS * CALLS and during_adds > 0
    _check_adds(recognizer)


# ---------------------------------------------------------------------------- processes

_HOLD = """
import sys, time
from rar_agent.errors import MemoryBusyError
from rar_agent.memory import CategoryMemory
try:
    memory = CategoryMemory.open(sys.argv[1])
except MemoryBusyError as e:
    print("BUSY", e, flush=True)
    sys.exit(0)
print("OPEN", memory.count(), time.time(), flush=True)
time.sleep(float(sys.argv[2]))
closing = time.time()
memory.close()
print("CLOSED", closing, flush=True)
"""


def _spawn(path: Path, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD), str(path), str(hold_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_second_process_gets_memory_busy_and_nothing_is_corrupted(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    path = tmp_path / "shared"
    with CategoryMemory.open(path) as memory:
        add_class_names(memory, tiny_encoder, ["heron", "egret"], TEMPLATES)
    first = _spawn(path, 600)  # holds the memory until killed, however slow the second starts
    try:
        assert first.stdout is not None
        assert first.stdout.readline().split()[:2] == ["OPEN", "2"]
        second = _spawn(path, 0)
        out, err = second.communicate(timeout=120)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 0, err
    assert out.startswith("BUSY") and f"in use by process {first.pid}" in out
    assert "--qdrant-url" in out
    with CategoryMemory.open(path, create=False) as memory:
        assert memory.labels() == {"egret": 1, "heron": 1}


def test_two_processes_racing_to_open_one_wins(tmp_path: Path, tiny_encoder: Any) -> None:
    path = tmp_path / "raced"
    with CategoryMemory.open(path) as memory:
        add_class_names(memory, tiny_encoder, ["heron"], TEMPLATES)
    racers = [_spawn(path, 2) for _ in range(3)]
    outputs = [r.communicate(timeout=90) for r in racers]
    assert all(r.returncode == 0 for r in racers), [e for _, e in outputs]
    held: list[tuple[float, float]] = []
    for out, _ in outputs:
        words = out.split()
        assert words[0] in {"OPEN", "BUSY"}, out
        if words[0] == "OPEN":
            held.append((float(words[2]), float(words[4])))
    assert held, outputs
    held.sort()
    # mutual exclusion: no two processes ever held the memory at the same time
    pairs = zip(held, held[1:], strict=False)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairs)
    with CategoryMemory.open(path, create=False) as memory:
        assert memory.labels() == {"heron": 1}
