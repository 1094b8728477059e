"""Benchmark open-set rejection against retrieval alone, measured in the same run.

On a memory of clustered random unit vectors (``--sizes``, 10 entries per category):

- per query: retrieval alone (``memory.search_batch`` + a plain max-per-label fold, the raw
  baseline) against retrieval with the support statistic plus the reject decision
  (``CategoryRetriever.retrieve_vectors`` + ``Recognizer.judge_many``), one query at a time,
  in turns: each query is timed both ways back to back, in the order that alternates from
  query to query (the second of a pair finds the first's search in the caches), over
  ``--passes`` passes each with a new recognizer (its kept vectors start empty, as in a new
  process). What rejection costs (target: under 1 ms per query) is the median of the
  per-query differences: the machine's slow spells, which move both timings of a pair
  together, cancel in each difference, where a difference of the two medians moved with them;
- the same in turns against what a recognizer without rejection does (``reject="off"``):
  the same retrieval, whose category scores (local class means, :mod:`rar_agent.retrieval`)
  read stored vectors whether or not anything is rejected, and a check that judges nothing.
  The raw baseline above counts those scores in the step; this one leaves them to retrieval;
- a full calibration (a sample of at most 1000 entries) against one batched search of as many
  vectors (its floor), to show it does not grow with the memory;
- adding a batch of 32 entries with and without the calibration update.

Usage::

    python tools/bench_reject.py                 # 10k and 100k entries
    python tools/bench_reject.py --sizes 10000 --queries 200 --passes 3 --json rows.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent import openset  # noqa: E402
from rar_agent.openset.calibration import MAX_STANDINS  # noqa: E402
from rar_agent.pipeline import Recognizer  # noqa: E402
from rar_agent.retrieval import fetch_limit  # noqa: E402
from tools.bench_clusters import DIM, build, clustered, entries_of  # noqa: E402
from tools.bench_clusters import median_ms as _ms  # noqa: E402
from tools.turns import in_turn  # noqa: E402

K = 5


class _VectorsOnly:
    """Stands in for an encoder: the benchmark hands vectors to retrieval directly."""

    fingerprint = "bench:vectors"
    dim = DIM


def _plain_fold(hits: list[Any], k: int) -> list[tuple[str, float]]:
    best: dict[str, float] = {}
    for h in hits:
        if h.score > best.get(h.label, -2.0):
            best[h.label] = h.score
    return sorted(best.items(), key=lambda kv: -kv[1])[:k]


def _alone(memory: Any, row: np.ndarray, limit: int) -> float:
    """Seconds of retrieval alone for one query."""
    t0 = time.perf_counter()
    _plain_fold(memory.search_batch(row, kind="image", limit=limit)[0], K)
    return time.perf_counter() - t0


def _with_step(rec: Recognizer, row: np.ndarray) -> tuple[float, float]:
    """Seconds of retrieval with the support and the reject decision for one query, and of
    the decision alone."""
    t0 = time.perf_counter()
    retrieved = rec.retriever.retrieve_vectors(row)
    t1 = time.perf_counter()
    rec.judge_many(retrieved, row)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def _off(rec: Recognizer, row: np.ndarray) -> float:
    """Seconds of what a recognizer without rejection does for one query (``reject="off"``):
    the same retrieval, its category scores included, and a check that judges nothing."""
    t0 = time.perf_counter()
    rec.judge_many(rec.retriever.retrieve_vectors(row), row)
    return time.perf_counter() - t0


def _in_turns(
    memory: Any, queries: np.ndarray, passes: int, baseline: str = "alone"
) -> tuple[list[float], list[float], list[float], list[np.ndarray]]:
    """Each query timed by the baseline and with the step, back to back in the order that
    alternates from query to query, ``passes`` times (new recognizers each pass): the
    timings (seconds) of the baseline, with the step, of the decision alone, and each pass's
    per-query differences. ``baseline``: ``"alone"``, retrieval alone (the plain search and
    fold); ``"off"``, a recognizer without rejection (:func:`_off`)."""
    limit = fetch_limit(K, None)
    base: list[float] = []
    full: list[float] = []
    judge: list[float] = []
    extra: list[np.ndarray] = []
    for p in range(passes):
        rec = Recognizer(memory, _VectorsOnly(), k=K, reject="auto")  # type: ignore[arg-type]
        off = Recognizer(memory, _VectorsOnly(), k=K, reject="off")  # type: ignore[arg-type]
        start = len(base)
        for i, q in enumerate(queries):
            row = q[None, :]
            first: Callable[[], float] = (
                functools.partial(_alone, memory, row, limit)
                if baseline == "alone"
                else functools.partial(_off, off, row)
            )
            alone, (step, judged) = in_turn(i + p, [first, functools.partial(_with_step, rec, row)])
            base.append(alone)
            full.append(step)
            judge.append(judged)
        extra.append(np.subtract(full[start:], base[start:]))
    return base, full, judge, extra


def bench_size(n: int, n_queries: int, passes: int, rows: list[dict[str, Any]]) -> None:
    x, ids = clustered(n + n_queries + 32, seed=n)
    entries = entries_of(ids)
    with tempfile.TemporaryDirectory(prefix="rar-bench-reject-") as tmp:
        memory, built_s = build(Path(tmp) / "mem", entries, x, n, _VectorsOnly.fingerprint)
        print(f"\n{n} entries: built in {built_s:.1f} s")

        sample = x[: min(MAX_STANDINS, n)]
        floor_s = calib_s = float("inf")
        for _ in range(2):  # best of two: the machine is shared
            t0 = time.perf_counter()
            memory.search_batch(sample, kind="image", limit=16)
            floor_s = min(floor_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            cal = openset.fit(memory)
            calib_s = min(calib_s, time.perf_counter() - t0)
        print(f"full calibration: {calib_s:.2f} s ({len(cal.standins)} stand-ins); one batched "
              f"search of {len(sample)} vectors: {floor_s:.2f} s")  # fmt: skip

        queries = x[n : n + n_queries]
        base, full, judge, extra = _in_turns(memory, queries, passes)
        spread = ", ".join(f"{float(np.median(p)) * 1000:+.3f}" for p in extra)
        every = np.concatenate(extra)
        cost = float(np.median(every)) * 1000
        print(f"per query, {n_queries} queries x {passes} passes, in turns (medians): retrieval "
              f"alone {_ms(base):.3f} ms; with support + reject {_ms(full):.3f} ms (difference "
              f"of the medians {_ms(full) - _ms(base):+.3f} ms); beyond retrieval, the median "
              f"of the per-query differences: {cost:+.3f} ms (each pass: {spread}); judge alone "
              f"{_ms(judge):.4f} ms")  # fmt: skip

        off_base, off_full, _, off_extra = _in_turns(memory, queries, passes, baseline="off")
        off_spread = ", ".join(f"{float(np.median(p)) * 1000:+.3f}" for p in off_extra)
        off_cost = float(np.median(np.concatenate(off_extra))) * 1000
        print(f"against a recognizer without rejection (reject off: the same retrieval, its "
              f"category scores included), in turns: without {_ms(off_base):.3f} ms, with "
              f"{_ms(off_full):.3f} ms; the reject step, the median of the per-query "
              f"differences: {off_cost:+.3f} ms (each pass: {off_spread})")  # fmt: skip

        batch = entries[n + n_queries :]
        vecs = x[n + n_queries :]
        t0 = time.perf_counter()
        memory.add_entries(batch[:16], vecs[:16])
        add_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        openset.update(memory, added=memory.add_entries(batch[16:], vecs[16:]))
        add_cal = time.perf_counter() - t0
        print(f"add 16 entries: {add_plain * 1000:.1f} ms without, {add_cal * 1000:.1f} ms with "
              "the calibration update")  # fmt: skip
        memory.close()
    rows += [
        {"name": f"reject cost per query, {n} entries", "value": round(cost, 4), "unit": "ms",
         "baseline": "retrieval alone", "baseline_value": round(_ms(base), 4),
         "ratio": round(_ms(full) / _ms(base), 3), "target": "< 1 ms", "met": cost < 1.0,
         "passes": [round(float(np.median(p)) * 1000, 4) for p in extra]},
        {"name": f"reject cost per query beyond a recognizer without rejection, {n} entries",
         "value": round(off_cost, 4), "unit": "ms", "baseline": "reject off",
         "baseline_value": round(_ms(off_base), 4),
         "ratio": round(_ms(off_full) / _ms(off_base), 3),
         "passes": [round(float(np.median(p)) * 1000, 4) for p in off_extra]},
        {"name": f"full calibration, {n} entries", "value": round(calib_s, 3), "unit": "s",
         "baseline": f"one batched search of {len(sample)} vectors",
         "baseline_value": round(floor_s, 3), "ratio": round(calib_s / floor_s, 2)},
        {"name": f"add 16 entries with calibration update, {n} entries",
         "value": round(add_cal * 1000, 2), "unit": "ms", "baseline": "add without update",
         "baseline_value": round(add_plain * 1000, 2), "ratio": round(add_cal / add_plain, 2)},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="Comma-separated entry counts.")
    parser.add_argument("--queries", type=int, default=300, help="Queries timed per size.")
    parser.add_argument(
        "--passes", type=int, default=3, help="Passes over the queries, a new recognizer each."
    )
    parser.add_argument("--json", type=Path, help="Write the figures as JSON rows here.")
    args = parser.parse_args(argv)
    if args.passes < 1 or args.queries < 1:
        parser.error("--passes and --queries must be at least 1")
    rows: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, args.queries, args.passes, rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
