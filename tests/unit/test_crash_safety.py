"""Crash safety: processes that build, shrink or concurrently grow an embedded memory are
SIGKILLed at seeded random points and restarted; the memory never loses an acknowledged
write, never keeps a stale lock, and ends exactly equal to an uninterrupted run (same point
ids, same count, no duplicates, same vectors).

Each worker is a real process killed with SIGKILL. To keep the module fast, a "zygote"
process imports torch/open_clip/qdrant-edge once (no tensor work before forking) and forks one
worker per run; every worker loads the tiny encoder, opens the memory, works and logs
``READY`` / ``ACK <count>`` / ``DONE`` lines with timestamps to its own log file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent.memory import CategoryMemory, MemoryEntry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 60
N_LABELS = 6
BATCH = 2
# Seconds a worker waits after each acknowledged batch. Without it an idle machine finishes
# the whole build before the kill delays run out, and the kills test nothing.
BUILD_PAUSE = 0.05
SEED = 20261129

ZYGOTE = textwrap.dedent(
    r'''
    import io, json, os, sys, threading, time, traceback
    import torch, open_clip  # heavy imports once; no tensor op happens before a fork
    import qdrant_edge
    import rar_agent.encoders, rar_agent.memory, rar_agent.ingest.builders, rar_agent.tools


    def log(f, *parts):
        f.write(" ".join([f"{time.monotonic():.4f}", *map(str, parts)]) + "\n")
        f.flush()


    def build(job, f):
        from rar_agent.encoders import load_encoder
        from rar_agent.memory import CategoryMemory
        from rar_agent.ingest.builders import add_images

        encoder = load_encoder(job["spec"], device="cpu")
        log(f, "READY")
        memory = CategoryMemory.open(job["memory"])
        def progress(done, total):
            log(f, "ACK", memory.count())
            time.sleep(job.get("pause", 0.0))  # a slow encoder, so kills land mid-build

        items = [tuple(x) for x in job["items"]]
        add_images(memory, encoder, items, batch_size=job["batch"], progress=progress)
        memory.close()
        log(f, "DONE")


    def remove(job, f):
        from rar_agent.memory import CategoryMemory

        log(f, "READY")
        memory = CategoryMemory.open(job["memory"], create=False)
        for label in job["labels"]:
            memory.remove_label(label)
            log(f, "ACK", memory.count())
            time.sleep(job.get("pause", 0.0))
        memory.close()
        log(f, "DONE")


    def concurrent(job, f):
        """A bulk build in one thread while the add-category tool learns in another."""
        from rar_agent.encoders import load_encoder
        from rar_agent.memory import CategoryMemory
        from rar_agent.ingest.builders import add_images
        from rar_agent.pipeline import Recognizer
        from rar_agent.tools import AddCategoryTool, ImageRegistry

        encoder = load_encoder(job["spec"], device="cpu")
        log(f, "READY")
        memory = CategoryMemory.open(job["memory"])
        recognizer = Recognizer(memory, encoder, k=3)
        registry = ImageRegistry()
        learn = [(registry.register(open(p, "rb").read()), label) for p, label in job["tool"]]
        tool = AddCategoryTool(recognizer=recognizer, registry=registry, enabled=True)
        errors = []

        def progress(done, total):
            log(f, "ACK", memory.count())
            time.sleep(job.get("pause", 0.0))

        def bulk():
            try:
                add_images(memory, encoder, [tuple(x) for x in job["items"]],
                           batch_size=job["batch"], progress=progress)
            except BaseException as e:
                errors.append(repr(e))

        thread = threading.Thread(target=bulk)
        thread.start()
        for image_id, label in learn:
            message = tool.invoke({"type": "tool_call", "id": image_id, "name": tool.name,
                                   "args": {"label": label, "image": image_id}})
            if message.status != "success":
                errors.append(message.content)
            log(f, "ACK", memory.count())
        thread.join()
        if errors:
            raise RuntimeError(errors)
        memory.close()
        log(f, "DONE")


    def create(job, f):
        """Open a new memory and bind an encoder (creates the shard and its indexes)."""
        from rar_agent.memory import CategoryMemory

        log(f, "READY")
        memory = CategoryMemory.open(job["memory"])
        memory.bind_encoder("crash-test-encoder", 8)
        log(f, "ACK", memory.count())
        memory.close()
        log(f, "DONE")


    MODES = {"build": build, "remove": remove, "concurrent": concurrent, "create": create}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            with open(job["log"], "a") as f:
                try:
                    torch.set_num_threads(1)
                    MODES[job["mode"]](job, f)
                except BaseException:
                    log(f, "ERROR", traceback.format_exc().replace("\n", " | "))
                    code = 1
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": status}), flush=True)
    '''
)


@dataclass
class Run:
    """What one worker did before it ended (or was killed)."""

    killed: bool
    status: int
    lines: list[str] = field(default_factory=list)

    @property
    def acks(self) -> list[int]:
        return [int(line.split()[2]) for line in self.lines if line.split()[1:2] == ["ACK"]]

    @property
    def done(self) -> bool:
        return any(line.split()[1:2] == ["DONE"] for line in self.lines)

    @property
    def error(self) -> str | None:
        bad = [line for line in self.lines if line.split()[1:2] == ["ERROR"]]
        return bad[0] if bad else None

    def seconds(self) -> float:
        stamps = [float(line.split()[0]) for line in self.lines if line.strip()]
        return stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0


class Zygote:
    """The forking server (see the module docstring)."""

    def __init__(self, tmp: Path, spec: str) -> None:
        self.tmp = tmp
        self.spec = spec
        self.runs = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return json.loads(line)

    def run(self, mode: str, kill: tuple[Any, ...] | None = None, **job: Any) -> Run:
        """Run one worker; ``kill`` = ("ready", delay) or ("ack", at_least, delay)."""
        self.runs += 1
        log = self.tmp / f"run{self.runs}.log"
        job.update(mode=mode, log=str(log), spec=self.spec)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = self._read()["pid"]
        killed = False
        if kill is not None:
            killed = self._kill_when(pid, log, kill)
        ended = self._read()
        assert ended["pid"] == pid
        lines = log.read_text().splitlines() if log.exists() else []
        return Run(killed, ended["status"], lines)

    @staticmethod
    def _kill_when(pid: int, log: Path, plan: tuple[Any, ...]) -> bool:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if " DONE" in text or " ERROR" in text:
                return False
            lines = text.splitlines()
            if plan[0] == "ready" and any(" READY" in x for x in lines):
                break
            acks = [int(x.split()[2]) for x in lines if " ACK " in x]
            if plan[0] == "ack" and acks and acks[-1] >= plan[1]:
                break
            time.sleep(0.002)
        else:
            raise AssertionError(f"worker {pid} never reached {plan}")
        time.sleep(plan[-1])
        if " DONE" in log.read_text():
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory, tiny_openclip_spec: str) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("crash-logs"), tiny_openclip_spec)
    yield z
    z.close()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """60 small random pictures over 6 labels, as (path, label) items."""
    root = tmp_path_factory.mktemp("crash-images")
    rng = np.random.default_rng(SEED)
    items = []
    for i in range(N_IMAGES):
        label = f"class {i % N_LABELS}"
        path = root / label / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        items.append((str(path), label))
    return items


def expected_ids(items: list[tuple[str, str]]) -> list[str]:
    """Point ids an uninterrupted build must produce (kind + label + SHA-256 of the bytes)."""
    return [
        MemoryEntry(
            label, "image", path, hashlib.sha256(Path(path).read_bytes()).hexdigest()
        ).point_id
        for path, label in items
    ]


def inspect(path: Path, ids: list[str]) -> tuple[int, dict[str, int], set[str]]:
    """Reopen a memory right after a kill: no stale lock, and report count/labels/ids.

    A worker killed right after creating the directory leaves no memory yet (count 0).
    """
    with CategoryMemory.open(path) as memory:
        return memory.count(), memory.labels(), memory.existing_ids(ids)


def assert_same_memory(a: Path, b: Path, ids: list[str], vectors: np.ndarray) -> None:
    """Same count, labels, point ids (no duplicates), encoder and vectors."""
    with CategoryMemory.open(a, create=False) as one, CategoryMemory.open(b, create=False) as two:
        assert one.count() == two.count() == len(set(ids))
        assert one.labels() == two.labels()
        assert one.existing_ids(ids) == two.existing_ids(ids) == set(ids)
        assert one.info.fingerprint == two.info.fingerprint
        for memory in (one, two):  # every picture finds its own entry, intact (cosine 1)
            hits = memory.search_batch(vectors, kind="image", limit=1)
            assert [h[0].id for h in hits] == ids
            assert min(h[0].score for h in hits) == pytest.approx(1.0, abs=1e-4)


def _summary(runs: list[Run]) -> str:
    return "; ".join(
        f"{'killed' if r.killed else 'ended'}(status {r.status}, acks {r.acks[-1:]})" for r in runs
    )


def test_build_killed_at_ten_random_points_equals_uninterrupted_build(
    zygote: Zygote, pictures: list[tuple[str, str]], tmp_path: Path, tiny_encoder: Any
) -> None:
    ids = expected_ids(pictures)
    reference = zygote.run("build", memory=str(tmp_path / "reference"), items=pictures, batch=BATCH)
    assert reference.done and reference.error is None, reference.lines[-3:]
    assert reference.acks[-1] == N_IMAGES

    rng = random.Random(SEED)
    # Kill points: 2 while opening/creating (after READY), 6 mid-build at random progress,
    # 2 after the last write (flush/close); each with a random extra delay.
    plans: list[tuple[Any, ...]] = [("ready", rng.uniform(0.0, 0.4)) for _ in range(2)]
    for target in sorted(rng.sample(range(2, N_IMAGES - 2), 6)):
        plans.append(("ack", target, rng.uniform(0.0, 0.03)))
    plans += [("ack", N_IMAGES, rng.uniform(0.0, 0.15)) for _ in range(2)]

    memory = tmp_path / "killed"
    runs: list[Run] = []
    kills = 0
    for plan in plans:
        run = zygote.run(
            "build", kill=plan, memory=str(memory), items=pictures, batch=BATCH, pause=BUILD_PAUSE
        )
        runs.append(run)
        where = f"run {len(runs)} {plan}: {run.lines[-3:]}"
        assert run.error is None, where
        kills += run.killed
        if not memory.exists():
            continue
        count, labels, stored = inspect(memory, ids)  # raises MemoryBusyError on a stale lock
        assert stored <= set(ids) and count == len(stored), f"unknown/duplicate entries, {where}"
        if run.acks:
            assert count >= run.acks[-1], f"acknowledged writes lost: {count}, {where}"
        assert sum(labels.values()) == count, where
    final = zygote.run("build", memory=str(memory), items=pictures, batch=BATCH)
    assert final.done and final.error is None, final.lines[-3:]
    print(f"[crash] build: {kills} kills survived; {_summary(runs)}")
    assert kills >= 8, _summary(runs)  # a plan may find the worker already done
    vectors = tiny_encoder.embed_images([Image.open(p).convert("RGB") for p, _ in pictures])
    assert_same_memory(tmp_path / "reference", memory, ids, vectors)


def test_kill_while_a_new_memory_is_being_created(zygote: Zygote, tmp_path: Path) -> None:
    """Kills inside shard creation: reopening must give a fully usable memory (indexes too)."""
    reference = zygote.run("create", memory=str(tmp_path / "reference"))
    assert reference.done, reference.lines
    span = reference.seconds()
    rng = random.Random(SEED + 3)
    kills = 0
    # At least 8 runs; more (up to 16) while fewer than 4 kills landed inside creation, since
    # on a fast machine a kill can arrive after the short creation has already finished.
    for i in range(16):
        if i >= 8 and kills >= 4:
            break
        memory = tmp_path / f"new{i}"
        run = zygote.run("create", kill=("ready", rng.uniform(0.0, span)), memory=str(memory))
        kills += run.killed
        with CategoryMemory.open(memory) as mem:
            mem.bind_encoder("crash-test-encoder", 8)
            entries = [
                MemoryEntry("heron", "image", "a", "1"),
                MemoryEntry("egret", "text", "b", "2"),
            ]
            mem.add_entries(entries, np.eye(8, dtype=np.float32)[:2])
            assert mem.labels() == {"egret": 1, "heron": 1}
            assert mem.labels("image") == {"heron": 1}
            assert mem.remove_label("heron") == 1 and mem.count() == 1
    print(f"[crash] create: {kills} kills survived")
    assert kills >= 4


def test_kill_during_memory_remove(
    zygote: Zygote, pictures: list[tuple[str, str]], tmp_path: Path
) -> None:
    memory = tmp_path / "shrinking"
    assert zygote.run("build", memory=str(memory), items=pictures, batch=16).done
    doomed = [f"class {i}" for i in range(3)]
    keep = [(p, label) for p, label in pictures if label not in doomed]
    ids = expected_ids(pictures)
    rng = random.Random(SEED + 1)
    kills = 0
    for _ in range(5):
        run = zygote.run(
            "remove",
            kill=("ready", rng.uniform(0.0, 0.25)),
            memory=str(memory),
            labels=doomed,
            pause=0.15,  # 3 labels take longer than the longest kill delay
        )
        assert run.error is None, run.error
        kills += run.killed
        count, labels, stored = inspect(memory, ids)
        # a label is either fully there or fully gone; acknowledged removals stay removed
        assert all(n == N_IMAGES // N_LABELS for n in labels.values()), labels
        assert not set(doomed[: len(run.acks)]) & set(labels)
        assert {f"class {i}" for i in range(3, N_LABELS)} <= set(labels)
        assert stored <= set(ids) and count == len(stored) == sum(labels.values())
    final = zygote.run("remove", memory=str(memory), labels=doomed)
    assert final.done, final.lines[-2:]
    print(f"[crash] remove: {kills} kills survived")
    assert kills >= 3
    count, labels, stored = inspect(memory, ids)
    assert stored == set(expected_ids(keep)) and count == len(keep)
    assert sorted(labels) == [f"class {i}" for i in range(3, N_LABELS)]


def test_kill_during_a_concurrent_tool_add(
    zygote: Zygote, pictures: list[tuple[str, str]], tmp_path: Path
) -> None:
    bulk, learned = pictures[:40], pictures[40:]
    ids = expected_ids(pictures)
    memory = tmp_path / "busy"
    rng = random.Random(SEED + 2)
    kills = 0
    for target in sorted(rng.sample(range(4, 50), 3)):
        run = zygote.run(
            "concurrent",
            kill=("ack", target, rng.uniform(0.0, 0.05)),
            memory=str(memory),
            items=bulk,
            tool=learned,
            batch=BATCH,
            pause=BUILD_PAUSE,
        )
        assert run.error is None, run.error
        kills += run.killed
        count, _, stored = inspect(memory, ids)
        assert stored <= set(ids) and count == len(stored)
        assert count >= run.acks[-1]
    final = zygote.run("concurrent", memory=str(memory), items=bulk, tool=learned, batch=BATCH)
    assert final.done and final.error is None, final.error
    print(f"[crash] concurrent add: {kills} kills survived")
    assert kills >= 2
    count, labels, stored = inspect(memory, ids)
    assert stored == set(ids) and count == N_IMAGES
    assert labels == {f"class {i}": N_IMAGES // N_LABELS for i in range(N_LABELS)}
