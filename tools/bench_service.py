"""Benchmark: the shared service under load, with tokens, on loopback.

``rar-agent mcp --http --allow-learning`` with an auth file of one token per client (16 with
``recognize``, 2 with ``learn``), driven by the official MCP client (``ClientSession``; the
recognitions and the teaching calls send ``tools/call`` without the client's output-schema
check unless ``--validate``, since the clients share the server's CPUs):

1. ``alone``: one client, ``--calls`` recognitions one after another (the baseline);
2. ``load``: ``--clients`` clients with ``--calls`` recognitions each, all at once, while
   ``--teachers`` clients each teach ``--teach`` new images (distinct pictures, so each adds
   one example).

Printed: errors (any tool error or HTTP refusal counts), p50/p95 latency of a recognition
alone and under load and their ratio (target: p95 under load at most 10x the p50 alone), the
CPU time per call of the server (and of its event loop thread) and of the clients in each
phase (what load from other jobs does not distort, unlike the wall times) with the cores they
kept busy, the order of service under load (for each call, the calls that ended while it
waited and the later ones that overtook it: counts, not times, see :func:`fairness`), the
recognitions answered per second and the cores kept busy while the teachers were at work and
after them (:func:`while_teaching`; the one over the other per busy core is about the
recognitions' share of the benchmark's CPU while teaching, which other jobs' load moves
little), the CPU of one teach by part (:func:`teach_cpu`: the server's event loop, request
threads and encoder workers, the clients), and the memory's image count before and after
against what was taught (nothing lost).
``--batch-images 1`` runs the server without shared forward passes, the baseline of the
micro-batching. The server runs in a subprocess with the default limits; each client is its
own token, so the per-token limits are those a team member would meet. Usage::

    python tools/bench_service.py                                # hashing encoder: the service
    python tools/bench_service.py --encoder efficientnet-lite0   # a real encoder's cost too
    python tools/bench_service.py --clients 4 --calls 50 --json service.json
"""

from __future__ import annotations

import argparse
import bisect
import gc
import io
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench_mcp import (  # noqa: E402
    _announced_url,
    build_memory,
    child_env,
    raw_call,
    server_args,
)

HASHING = "tests.helpers.encoder_factories:hashing_encoder"


def picture(i: int) -> str:
    """A distinct small PNG as a data URI (one new example per call)."""
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    colour = (37 * i % 256, 91 * i % 256, 53 * (i + 7) % 256)
    image = Image.new("RGB", (48, 40), colour)
    image.putpixel((i % 48, (i // 48) % 40), (255 - colour[0], 0, 0))
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[Any]:
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    client = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0, read=300.0)
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write, _),
        ClientSession(read, write) as opened,
    ):
        await opened.initialize()
        yield opened


async def call(s: Any, name: str, args: dict[str, Any], validate: bool) -> Any:
    """One ``tools/call``: with the client's output-schema check when ``validate``, else the
    same request without it (the clients share the server's CPUs)."""
    if validate:
        return await s.call_tool(name, args)
    return await raw_call(s, name, args)


async def recognitions(
    url: str,
    token: str,
    calls: int,
    errors: list[str],
    validate: bool = False,
    spans: list[tuple[float, float]] | None = None,
) -> list[float]:
    """``calls`` recognitions one after another; their latencies in ms (and each call's
    (start, end) appended to ``spans``)."""
    times = []
    args = {"image": "cat.jpg", "k": 5}
    async with session(url, token) as s:
        for _ in range(calls):
            start = time.perf_counter()
            result = await call(s, "recognize_image", args, validate)
            end = time.perf_counter()
            times.append((end - start) * 1000)
            if spans is not None:
                spans.append((start, end))
            if result.isError or (result.structuredContent or {}).get("label") != "cat":
                errors.append(f"recognize: {result.content}")
    return times


def fairness(spans: list[tuple[float, float]]) -> dict[str, float]:
    """How fairly the server took turns: for each call, the calls that ended while it waited
    (first-come first-served with N clients each waiting for its answer: about N - 1 each),
    and the calls sent after it that ended before it (first-come first-served: none).

    Counted in calls, not milliseconds, so machine load does not change it; the p95 against
    the p50 of "ended meanwhile" is the part of p95 / p50 that the order of service makes.
    """
    ends = sorted(end for _, end in spans)
    meanwhile, overtaken = [], []
    for start, end in spans:
        meanwhile.append(bisect.bisect_left(ends, end) - bisect.bisect_right(ends, start))
        overtaken.append(sum(1 for s, e in spans if s > start and e < end))
    return {
        "meanwhile_p50": pct(meanwhile, 0.5),
        "meanwhile_p95": pct(meanwhile, 0.95),
        "overtaken_p50": pct(overtaken, 0.5),
        "overtaken_p95": pct(overtaken, 0.95),
    }


def overlapping(
    spans: Sequence[tuple[float, float]], others: Sequence[tuple[float, float]]
) -> list[bool]:
    """For each span, whether any of ``others`` (the teaching calls) overlapped it."""
    ordered = sorted(others)
    starts = [s for s, _ in ordered]
    out = []
    for start, end in spans:
        # the others that started before this span ended; one of them may still run
        before = ordered[: bisect.bisect_left(starts, end)]
        out.append(any(e > start for _, e in before))
    return out


async def teaching(
    url: str,
    token: str,
    first: int,
    count: int,
    errors: list[str],
    spans: list[tuple[float, float]] | None = None,
    validate: bool = False,
) -> int:
    """``count`` new examples taught one after another (each call's (start, end) appended
    to ``spans``); how many were added."""
    added = 0
    async with session(url, token) as s:
        for i in range(first, first + count):
            args = {"label": f"taught {i % 5}", "image": picture(i)}
            start = time.perf_counter()
            result = await call(s, "add_category_example", args, validate)
            if spans is not None:
                spans.append((start, time.perf_counter()))
            if result.isError:
                errors.append(f"teach: {result.content}")
            else:
                added += int((result.structuredContent or {}).get("added", 0))
    return added


async def image_count(url: str, token: str) -> int:
    async with session(url, token) as s:
        listing = await s.call_tool("list_categories", {"limit": 1000})
    return sum(c["image_examples"] for c in (listing.structuredContent or {})["categories"])


def cpu_seconds(pid: int | str | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process: this one (all its threads) or ``pid``'s
    (``"PID/task/TID"``: one of its threads).

    CPU time is what machine load does not distort (wall time is): the figure to compare
    between runs on a shared machine. Another process's is read from ``/proc`` (Linux).
    """
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


#: The server's threads by their OS name's start (``rar_agent.encoders.batching.name_os_thread``):
#: its request threads, the encoder's workers, qdrant-edge's search pool.
THREAD_KINDS = {"rar-request": "requests", "rar-encoder": "encoder", "edge-search": "search"}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process's live threads, summed per kind of
    :data:`THREAD_KINDS` (Linux ``/proc``; empty elsewhere); the rest under ``"other"``."""
    out = dict.fromkeys([*THREAD_KINDS.values(), "other"], 0.0)
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            name = (task / "comm").read_text().strip()
            user, system = cpu_seconds(f"{pid}/task/{task.name}")
        except OSError:  # the thread ended meanwhile
            continue
        if task.name == str(pid):
            continue  # the event loop, counted on its own
        kind = next((k for prefix, k in THREAD_KINDS.items() if name.startswith(prefix)), "other")
        out[kind] += user + system
    return out


class CpuMeter:
    """CPU time of the server, of its event loop thread, of its other threads by kind, and
    of the clients (this process) across one phase."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.start = self._now()
        self.threads = thread_cpu(server_pid)
        self.wall = time.perf_counter()

    def _now(self) -> tuple[float, ...]:
        loop = f"{self.pid}/task/{self.pid}"  # the server's main thread runs its event loop
        return (*cpu_seconds(self.pid), *cpu_seconds(loop), *cpu_seconds())

    def used(self) -> dict[str, float]:
        """CPU seconds since the start: the server (``server``), its event loop, its other
        threads by kind (``threads_...``) and the clients."""
        now = self._now()
        spent = [b - a for a, b in zip(self.start, now, strict=True)]
        threads = thread_cpu(self.pid)
        return {
            "server": spent[0] + spent[1],
            "event_loop": spent[2] + spent[3],
            **{f"threads_{k}": threads[k] - self.threads[k] for k in threads},
            "clients": spent[4] + spent[5],
        }

    def per_call(self, calls: int) -> dict[str, float]:
        """Milliseconds of CPU per call since the start: server user/sys, its event loop
        (user+sys), its other threads by kind (``threads_requests``, ``threads_encoder``,
        ``threads_search``, ``threads_other``; threads that ended meanwhile are missing),
        clients (user+sys); and ``cores``: the CPUs that server and clients kept busy on
        average (2 = both cores of a 2-core machine)."""
        now = self._now()
        used = [(b - a) * 1000 / max(calls, 1) for a, b in zip(self.start, now, strict=True)]
        total = used[0] + used[1] + used[4] + used[5]
        threads = thread_cpu(self.pid)
        return {
            **{
                f"threads_{kind}": (threads[kind] - self.threads[kind]) * 1000 / max(calls, 1)
                for kind in threads
            },
            "server_user": used[0],
            "server_sys": used[1],
            "event_loop": used[2] + used[3],
            "clients": used[4] + used[5],
            "cores": total * max(calls, 1) / 1000 / (time.perf_counter() - self.wall),
        }


def teaching_effect(
    spans: Sequence[tuple[float, float]], teach_spans: Sequence[tuple[float, float]]
) -> dict[str, float]:
    """The teaching calls' latency, and the recognitions' with and without a teaching call
    in flight beside them (p50/p95, ms; how many overlapped): whether teaching stalls the
    recognitions that meet it. Also how many of the slowest 5% of the recognitions (those
    the p95 counts) started while some teaching call had started and the last had not ended:
    where the p95 comes from."""
    ms = [(e - s) * 1000 for s, e in spans]
    met = overlapping(spans, teach_spans)
    window = (
        (min(s for s, _ in teach_spans), max(e for _, e in teach_spans)) if teach_spans else None
    )
    slowest = pct(ms, 0.95)
    slow = [s for (s, _), t in zip(spans, ms, strict=True) if t >= slowest]
    slow_teaching = sum(1 for s in slow if window and window[0] <= s <= window[1])
    beside = [t for t, m in zip(ms, met, strict=True) if m] or [math.nan]
    apart = [t for t, m in zip(ms, met, strict=True) if not m] or [math.nan]
    teach = [(e - s) * 1000 for s, e in teach_spans] or [math.nan]
    return {
        "teach_p50": pct(teach, 0.5),
        "teach_p95": pct(teach, 0.95),
        "beside_n": float(sum(met)),
        "beside_p50": pct(beside, 0.5),
        "beside_p95": pct(beside, 0.95),
        "apart_p50": pct(apart, 0.5),
        "apart_p95": pct(apart, 0.95),
        "slow_n": float(len(slow)),
        "slow_teaching": float(slow_teaching),
    }


def while_teaching(
    spans: Sequence[tuple[float, float]], start: float, taught: float, end: float
) -> dict[str, float]:
    """Recognitions answered per second while the teachers were at work (from ``start``, the
    load phase's start, to ``taught``, when the last teaching call ended) and after them (to
    ``end``), counted by when each call ended: what teaching takes from the recognitions,
    measured in the same run (other jobs' load moves both alike, unless it changes midway)."""
    during = sum(1 for _, e in spans if e <= taught)
    return {
        "during_per_s": during / max(taught - start, 1e-9),
        "after_per_s": (len(spans) - during) / max(end - taught, 1e-9),
    }


def teach_cpu(split: dict[str, Any], recognized: int, taught: int) -> dict[str, float]:
    """Milliseconds of CPU per teach, by part (the server, its event loop, its threads by
    kind, the clients): what the benchmark's processes spent while the teachers worked
    beyond what the recognitions answered meanwhile cost each after them (measured in the
    same run, so both phases meet the same machine)."""
    during, after = split["during_used"], split["after_used"]
    later = max(recognized - split["count"], 1)
    return {
        k: (during[k] - split["count"] * after[k] / later) * 1000 / max(taught, 1) for k in during
    }


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import anyio

    from rar_agent.auth import TokenStore

    memory, images = build_memory(work, args.encoder)
    # The clients share this process with what building the memory loaded (torch, the
    # encoder): kept out of the collector's full passes, each of which stopped all the
    # clients (docs/benchmarks.md, session 19: 329-427 ms of wall time under load); the
    # server does the same.
    gc.freeze()
    store = TokenStore(work / "auth.toml")
    readers = [store.add(f"reader{i}", ["recognize"])[1] for i in range(args.clients)]
    teachers = [store.add(f"teacher{i}", ["learn"])[1] for i in range(args.teachers)]
    command = [
        *server_args(memory, images, args.encoder, "--allow-learning"),
        *("--http", "--port", "0", "--auth", str(work / "auth.toml")),
        *(("--batch-images", str(args.batch_images)) if args.batch_images else ()),
    ]
    process = await anyio.open_process([sys.executable, *command], env=child_env(), cwd=ROOT)
    errors: list[str] = []
    try:
        url = await _announced_url(process)
        before = await image_count(url, readers[0])
        await recognitions(url, readers[0], 10, errors)  # warm-up
        meter = CpuMeter(process.pid)
        alone = await recognitions(url, readers[0], args.calls, errors, args.validate)
        cpu_alone = meter.per_call(len(alone))
        loaded: list[float] = []
        spans: list[tuple[float, float]] = []
        taught: list[int] = []
        teach_spans: list[tuple[float, float]] = []

        async def reader(token: str) -> None:
            loaded.extend(await recognitions(url, token, args.calls, errors, args.validate, spans))

        split: dict[str, Any] = {}

        async def teacher(n: int, token: str) -> None:
            first = n * args.teach
            taught.append(
                await teaching(url, token, first, args.teach, errors, teach_spans, args.validate)
            )
            if len(taught) == len(teachers):  # the last teacher is done: the CPU so far
                split["during"] = meter.per_call(len(spans) + sum(taught))
                split["during_used"] = meter.used()
                split["after"] = CpuMeter(process.pid)
                split["count"] = len(spans)

        start = time.perf_counter()
        meter = CpuMeter(process.pid)
        async with anyio.create_task_group() as group:
            for token in readers:
                group.start_soon(reader, token)
            for n, token in enumerate(teachers):
                group.start_soon(teacher, n, token)
        end = time.perf_counter()
        wall = end - start
        cpu_load = meter.per_call(len(loaded) + sum(taught))
        if split:
            split["after_used"] = split["after"].used()
            split["after"] = split["after"].per_call(len(spans) - split["count"])
        after = await image_count(url, readers[0])
    finally:
        process.terminate()
        await process.wait()
    return {
        "errors": errors,
        "alone_p50": pct(alone, 0.5),
        "alone_p95": pct(alone, 0.95),
        "load_p50": pct(loaded, 0.5),
        "load_p95": pct(loaded, 0.95),
        "load_mean": statistics.fmean(loaded),
        "recognitions": len(loaded),
        "throughput": len(loaded) / wall,
        "taught": sum(taught),
        "before": before,
        "after": after,
        "wall_s": wall,
        "cpu_alone": cpu_alone,
        "cpu_load": cpu_load,
        "fairness": fairness(spans),
        "teaching": teaching_effect(spans, teach_spans),
        "split": {
            **while_teaching(spans, start, max((e for _, e in teach_spans), default=end), end),
            **{f"cores_{k}": split[k]["cores"] for k in ("during", "after") if k in split},
        },
        "teach_cpu": teach_cpu(split, len(spans), sum(taught)) if split else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=HASHING, help="encoder spec (default: hashing)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=200, help="recognitions per client")
    parser.add_argument("--teachers", type=int, default=2)
    parser.add_argument("--teach", type=int, default=25, help="examples each teacher adds")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="recognize and teach with ClientSession.call_tool, which re-checks every answer "
        "against the output schema on the client (default: the same request without that check, so "
        "the clients' own CPU, on the same machine, weighs less on the server's figures)",
    )
    parser.add_argument(
        "--batch-images",
        type=int,
        help="the server's --batch-images (default: the server's; 1: each request encodes "
        "alone, the baseline of the shared passes)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import anyio

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        r = anyio.run(measure, args, Path(tmp))
    load = os.getloadavg()
    ratio = r["load_p95"] / r["alone_p50"]
    lost = r["before"] + r["taught"] - r["after"]
    print(
        f"service under load: {args.clients} clients x {args.calls} recognitions + "
        f"{args.teachers} teaching x {args.teach}; encoder {args.encoder}; "
        f"load average before the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"errors: {len(r['errors'])}" + (f" (first: {r['errors'][0]})" if r["errors"] else ""))
    print(f"one client alone:  p50 {r['alone_p50']:.1f} ms  p95 {r['alone_p95']:.1f} ms")
    print(
        f"under load:        p50 {r['load_p50']:.1f} ms  p95 {r['load_p95']:.1f} ms  "
        f"({r['recognitions']} recognitions, {r['throughput']:.0f}/s, {r['wall_s']:.1f} s)"
    )
    for phase in ("alone", "load"):
        c = r[f"cpu_{phase}"]
        print(
            f"CPU per call {phase + ':':<6}   server {c['server_user']:.1f} ms user + "
            f"{c['server_sys']:.1f} ms sys (event loop {c['event_loop']:.1f}), clients "
            f"{c['clients']:.1f} ms; {c['cores']:.2f} cores busy"
        )
        print(
            f"  server threads:   requests {c['threads_requests']:.1f}, encoder "
            f"{c['threads_encoder']:.1f}, search pool {c['threads_search']:.1f}, other "
            f"{c['threads_other']:.1f} ms per call"
        )
    f = r["fairness"]
    print(
        f"turns under load:  calls ended while one waited p50 {f['meanwhile_p50']:.0f} "
        f"p95 {f['meanwhile_p95']:.0f}; overtaken by later calls p50 {f['overtaken_p50']:.0f} "
        f"p95 {f['overtaken_p95']:.0f} (first come first served: {args.clients - 1} and 0)"
    )
    t = r["teaching"]
    print(
        f"teaching:          p50 {t['teach_p50']:.1f} ms  p95 {t['teach_p95']:.1f} ms; "
        f"recognitions beside a teaching call ({t['beside_n']:.0f}) p50 {t['beside_p50']:.1f} "
        f"p95 {t['beside_p95']:.1f} ms, the others p50 {t['apart_p50']:.1f} "
        f"p95 {t['apart_p95']:.1f} ms; of the slowest 5% ({t['slow_n']:.0f}), "
        f"{t['slow_teaching']:.0f} started while the teachers were at work"
    )
    w = r["split"]
    if "cores_during" in w:
        per_core = [w[f"{k}_per_s"] / max(w[f"cores_{k}"], 1e-9) for k in ("during", "after")]
        print(
            f"while teaching:    {w['during_per_s']:.0f} recognitions/s, "
            f"{w['cores_during']:.2f} cores busy; after: {w['after_per_s']:.0f}/s, "
            f"{w['cores_after']:.2f} cores busy (while / after "
            f"{w['during_per_s'] / max(w['after_per_s'], 1e-9):.2f}; per busy core "
            f"{per_core[0] / max(per_core[1], 1e-9):.2f}: about the recognitions' share of "
            "the CPU while teaching, whatever other jobs took)"
        )
    if r["teach_cpu"]:
        c = r["teach_cpu"]
        print(
            f"CPU per teach:     server {c['server']:.1f} ms (event loop {c['event_loop']:.1f}, "
            f"requests {c['threads_requests']:.1f}, encoder {c['threads_encoder']:.1f}, "
            f"search pool {c['threads_search']:.1f}, other {c['threads_other']:.1f}), "
            f"clients {c['clients']:.1f} ms: beyond the recognitions answered meanwhile, "
            "at their cost per call after the teachers"
        )
    print(f"p95 under load / p50 alone: {ratio:.1f}x (target <= 10x)")
    print(
        f"memory images: {r['before']} before + {r['taught']} taught = {r['after']} after "
        f"({'nothing lost' if lost == 0 else f'{lost} LOST'})"
    )
    if args.json:
        rows = [
            {
                "name": "recognition p95 under load",
                "value": round(r["load_p95"], 2),
                "unit": "ms",
                "baseline": "one client alone, p50",
                "baseline_value": round(r["alone_p50"], 2),
                "ratio": round(ratio, 2),
                "target": "<= 10x",
                "met": ratio <= 10 and not r["errors"] and lost == 0,
            },
            {
                "name": "errors under load",
                "value": len(r["errors"]),
                "unit": "errors",
                "target": "0",
                "met": not r["errors"],
            },
        ]
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    if r["errors"] or lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
