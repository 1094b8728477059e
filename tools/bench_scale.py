"""Scale benchmark: memories of 10^4-10^6 precomputed vectors per storage setting.

Every phase runs in its own process, sampled every 0.5 s for its peak anonymous memory
(``RssAnon``: heap, what the process really holds) and file-backed memory (``RssFile``:
mapped segment files, reclaimable page cache that still shows as RSS):

- ``data``: clustered unit vectors (100 per cluster, 512-d) to ``vectors.npy`` + labels;
- ``build ours``: ``build_from_vectors`` into a ``CategoryMemory`` opened with the settings
  (the library path of ``rar-agent memory build --from-vectors``), indexing included;
- ``build raw`` (``--raw``): qdrant-edge directly, the same settings, points and batches;
- ``query``: a fresh process opens the memory, warms up, runs single top-10 queries with
  payload: p50/p95, recall@10 against exact search (numpy), RssAnon/RssFile with it open.

The 1-minute load average is recorded beside each phase: the machine may be shared.

Usage::

    python tools/bench_scale.py --sizes 10000 100000 --settings float,int8,int8-disk
    python tools/bench_scale.py --sizes 1000000 --settings int8-disk --raw --json out.json
    python tools/bench_scale.py --sizes 50000 --upsert-batches 128 256 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rar_agent.memory.storage import StorageSettings  # noqa: E402

LIMIT = 10
# The three defaults by size: below 10k, from 10k, from 100k entries.
PRESETS = {
    "float": StorageSettings(),
    "int8": StorageSettings(quantization="int8"),
    "int8-disk": StorageSettings(quantization="int8", vectors_on_disk=True, payload_on_disk=True),
}


# ---------------------------------------------------------------------- the data


def make_data(folder: Path, n: int, dim: int, queries: int) -> tuple[Path, Path, np.ndarray]:
    """Write ``n`` clustered unit vectors and their labels; return paths and query vectors."""
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(max(10, n // 100), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors_path, labels_path = folder / "vectors.npy", folder / "labels.txt"
    out = np.lib.format.open_memmap(vectors_path, mode="w+", dtype=np.float32, shape=(n, dim))
    with open(labels_path, "w", encoding="utf-8") as labels:
        for start in range(0, n, 50_000):
            k = min(50_000, n - start)
            which = rng.integers(0, len(centres), size=k)
            x = centres[which] + rng.normal(0, 0.7 / np.sqrt(dim), size=(k, dim)).astype(np.float32)
            out[start : start + k] = x / np.linalg.norm(x, axis=1, keepdims=True)
            labels.writelines(f"class-{c}\n" for c in which.tolist())
    out.flush()
    del out
    which = rng.integers(0, len(centres), size=queries)
    q = centres[which] + rng.normal(0, 0.7 / np.sqrt(dim), size=(queries, dim)).astype(np.float32)
    return vectors_path, labels_path, q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top(vectors_path: Path, queries: np.ndarray) -> list[list[int]]:
    """Row numbers of the exact top-``LIMIT`` of each query (chunked matrix products)."""
    data = np.load(vectors_path, mmap_mode="r")
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(data), 50_000):
        sims = queries @ np.asarray(data[start : start + 50_000]).T
        top = np.argpartition(-sims, LIMIT, axis=1)[:, :LIMIT]
        best_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :LIMIT]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i.tolist()


# ---------------------------------------------------------------------- child phases


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1]) // 1024
    return out


def child_build_ours(a: argparse.Namespace) -> dict[str, Any]:
    from rar_agent.ingest.from_vectors import build_from_vectors
    from rar_agent.memory import CategoryMemory

    settings = StorageSettings.from_dict(json.loads(a.settings))
    wall, cpu = time.perf_counter(), _cpu_s()
    with CategoryMemory.open(a.dir, collection="bench", storage=settings) as mem:
        report = build_from_vectors(mem, a.vectors, a.labels, fingerprint="bench:vectors")
        aside = time.perf_counter()  # not part of the build: reading the figures
        indexed = mem.stats()["storage_indexed_vectors"]
        aside = time.perf_counter() - aside
    return {
        "seconds": time.perf_counter() - wall - aside,
        "cpu_s": _cpu_s() - cpu,
        "added": report.added,
        "indexed": indexed,
    }


def _raw_config(qe: Any, dim: int, s: StorageSettings) -> Any:
    """The same settings written directly against qdrant-edge (independent of our code)."""
    vec_mem = qe.Memory.Cold if s.vectors_on_disk else qe.Memory.Cached
    quant = None
    if s.quantization == "int8":
        quant = qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned
        )
    return qe.EdgeConfig(
        vectors={
            k: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=vec_mem)
            for k in ("image", "text")
        },
        hnsw_config=qe.HnswIndexConfig(
            m=s.hnsw_m, ef_construct=s.hnsw_ef_construct, full_scan_threshold=10_000
        ),
        quantization_config=quant,
        payload_memory=qe.Memory.Cold if s.payload_on_disk else qe.Memory.Cached,
    )


def child_build_raw(a: argparse.Namespace) -> dict[str, Any]:
    import qdrant_edge as qe

    from rar_agent.memory.core import UPSERT_BATCH

    settings = StorageSettings.from_dict(json.loads(a.settings))
    data = np.load(a.vectors, mmap_mode="r")
    labels = Path(a.labels).read_text(encoding="utf-8").splitlines()
    wall, cpu = time.perf_counter(), _cpu_s()
    shard = qe.EdgeShard.create(
        str(Path(a.dir) / "shard"), _raw_config(qe, data.shape[1], settings)
    )
    for field in ("label", "kind"):
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    namespace = uuid.UUID(int=14)
    for start in range(0, len(data), UPSERT_BATCH):
        rows = np.asarray(data[start : start + UPSERT_BATCH]).tolist()
        points = [
            qe.Point(
                str(uuid.uuid5(namespace, str(start + i))),
                {"image": row},
                {"label": labels[start + i], "kind": "image", "source": f"row#{start + i}"},
            )
            for i, row in enumerate(rows)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    shard.optimize()
    indexed = shard.info().indexed_vectors_count
    shard.flush()
    shard.close()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_s": _cpu_s() - cpu,
        "added": len(data),
        "indexed": indexed,
    }


def child_query(a: argparse.Namespace) -> dict[str, Any]:
    queries = np.load(a.queries)
    before = _status()
    if a.kind == "ours":
        from rar_agent.memory import CategoryMemory

        mem = CategoryMemory.open(a.dir, collection="bench", create=False)

        def search(q: np.ndarray) -> list[str]:
            return [h.source for h in mem.search(q, kind="image", limit=LIMIT)]
    else:
        import qdrant_edge as qe

        settings = StorageSettings.from_dict(json.loads(a.settings))
        shard = qe.EdgeShard.load(str(Path(a.dir) / "shard"))
        quant = (
            qe.QuantizationSearchParams(rescore=True, oversampling=settings.oversampling)
            if settings.quantization == "int8"
            else None
        )
        params = qe.SearchParams(hnsw_ef=settings.search_ef, quantization=quant)

        def search(q: np.ndarray) -> list[str]:
            request = qe.QueryRequest(
                limit=LIMIT,
                query=qe.Query.Nearest(q.tolist(), using="image"),
                with_payload=True,
                params=params,
            )
            return [(p.payload or {})["source"] for p in shard.query(request)]

    opened = _status()
    for q in queries[:20]:
        search(q)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        sources = search(q)
        times.append(time.perf_counter() - t)
        found.append([int(s.rsplit("#", 1)[1]) for s in sources])
    after = _status()
    ms = np.asarray(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "found": found,
        "rss_before": before,
        "rss_open": opened,
        "rss_after": after,
    }


CHILDREN = {"build-ours": child_build_ours, "build-raw": child_build_raw, "query": child_query}


# ---------------------------------------------------------------------- the parent


def load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_child(phase: str, **options: Any) -> dict[str, Any]:
    """Run one phase in a child process; add its peak RssAnon/RssFile (MiB) and load."""
    cmd = [sys.executable, __file__, "_child", phase]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    load = load_avg()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peaks = {"RssAnon": 0, "RssFile": 0}

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key = line.split(":")[0]
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(line.split()[1]) // 1024)
            except OSError:
                break
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"phase {phase} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        peak_anon_mib=peaks["RssAnon"],
        peak_file_mib=peaks["RssFile"],
        load_start=load,
        load_end=load_avg(),
    )
    return result


def disk_mib(path: Path) -> float:
    total = sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
    return total / 2**20


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / (LIMIT * len(truth))


def bench_one(
    work: Path,
    n: int,
    preset: str,
    vectors: Path,
    labels: Path,
    queries_path: Path,
    truth: list[list[int]],
    raw: bool,
) -> list[dict[str, Any]]:
    """Build + query ours (and raw), one after the other; returns one record per contender."""
    settings = json.dumps(PRESETS[preset].to_dict())
    records = []
    for kind in ("raw", "ours") if raw else ("ours",):
        folder = work / f"{kind}-{preset}-{n}"
        print(f"  {kind:4} {preset:5} {n:>9,}: building ...", flush=True)
        build = run_child(
            f"build-{kind}", dir=folder, vectors=vectors, labels=labels, settings=settings
        )
        query = run_child("query", kind=kind, dir=folder, queries=queries_path, settings=settings)
        record = {
            "contender": "CategoryMemory" if kind == "ours" else "raw qdrant-edge",
            "entries": n,
            "settings": preset,
            "build_s": build["seconds"],
            "build_cpu_s": build["cpu_s"],
            "indexed": build["indexed"],
            "build_peak_anon_mib": build["peak_anon_mib"],
            "build_peak_file_mib": build["peak_file_mib"],
            "p50_ms": query["p50_ms"],
            "p95_ms": query["p95_ms"],
            "recall_at_10": recall(query["found"], truth),
            "open_anon_mib": query["rss_after"]["RssAnon"],
            "open_file_mib": query["rss_after"]["RssFile"],
            "baseline_anon_mib": query["rss_before"]["RssAnon"],
            "disk_mib": disk_mib(folder),
            "load_build": [build["load_start"], build["load_end"]],
            "load_query": [query["load_start"], query["load_end"]],
        }
        records.append(record)
        print(
            "   ",
            json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}),
            flush=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
    return records


def run(
    sizes: list[int],
    presets: list[str],
    *,
    raw: bool,
    dim: int,
    queries: int,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    """Every (size, preset) pair; returns the records (also printed as a table)."""
    records: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="rar-scale-", dir=workdir))
    try:
        for n in sizes:
            data = base / f"data-{n}"
            data.mkdir()
            print(f"== {n:,} entries, {dim}-d: writing vectors, exact top-{LIMIT} ...", flush=True)
            vectors, labels, q = make_data(data, n, dim, queries)
            np.save(data / "queries.npy", q)
            truth = exact_top(vectors, q)
            for preset in presets:
                records += bench_one(
                    base, n, preset, vectors, labels, data / "queries.npy", truth, raw
                )
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(records)
    return records


def print_table(records: list[dict[str, Any]]) -> None:
    print(
        f"\n{'contender':16} {'settings':8} {'entries':>9} {'build s':>8} {'cpu s':>7} "
        f"{'peak anon':>9} {'peak file':>9} {'p50 ms':>7} {'p95 ms':>7} {'recall':>7} "
        f"{'open anon':>9} {'open file':>9} {'disk MiB':>9} {'load':>9}"
    )
    for r in records:
        print(
            f"{r['contender']:16} {r['settings']:8} {r['entries']:9,} {r['build_s']:8.1f} "
            f"{r['build_cpu_s']:7.1f} {r['build_peak_anon_mib']:9,} {r['build_peak_file_mib']:9,} "
            f"{r['p50_ms']:7.3f} {r['p95_ms']:7.3f} {r['recall_at_10']:7.4f} "
            f"{r['open_anon_mib']:9,} {r['open_file_mib']:9,} {r['disk_mib']:9,.0f} "
            f"{r['load_build'][0]:4.1f}/{r['load_query'][0]:4.1f}"
        )
    by = {(r["contender"], r["settings"], r["entries"]): r for r in records}
    for (who, preset, n), r in by.items():
        base = by.get(("raw qdrant-edge", preset, n))
        if who == "CategoryMemory" and base:
            print(
                f"CategoryMemory / raw ({preset}, {n:,}): build wall x"
                f"{r['build_s'] / base['build_s']:.2f}, build CPU x"
                f"{r['build_cpu_s'] / base['build_cpu_s']:.2f} (target <= 1.2), query p50 x"
                f"{r['p50_ms'] / base['p50_ms']:.2f}"
            )


def bench_upsert_batches(n: int, dim: int, batches: list[int], rounds: int = 2) -> None:
    """Upsert rate of ``CategoryMemory`` per batch size (fresh memory each; rounds interleaved)."""
    from rar_agent.memory import CategoryMemory, MemoryEntry, core

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    entries = [MemoryEntry(f"class-{i % 1000}", "image", f"v{i}", f"h{i}") for i in range(n)]
    results: dict[int, list[tuple[float, float]]] = {b: [] for b in batches}
    saved = core.UPSERT_BATCH
    try:
        for _ in range(rounds):
            for size in batches:
                core.UPSERT_BATCH = size
                tmp = tempfile.mkdtemp(prefix="rar-batch-")
                with CategoryMemory.open(Path(tmp) / "m") as mem:
                    mem.bind_encoder("bench", dim)
                    wall, cpu = time.perf_counter(), _cpu_s()
                    for start in range(0, n, 8192):
                        mem.add_entries(entries[start : start + 8192], x[start : start + 8192])
                    results[size].append((time.perf_counter() - wall, _cpu_s() - cpu))
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        core.UPSERT_BATCH = saved
    print(f"\n== upsert batch size, {n:,} entries, {dim}-d (best of {rounds}), load {load_avg()}")
    print(f"{'batch':>6} {'points/s':>10} {'points/CPU-s':>13}")
    for size, runs in results.items():
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        print(f"{size:6d} {n / wall:10,.0f} {n / cpu:13,.0f}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        child = argparse.ArgumentParser()
        child.add_argument("phase", choices=sorted(CHILDREN))
        for name in ("dir", "vectors", "labels", "settings", "queries", "kind"):
            child.add_argument(f"--{name}")
        a = child.parse_args(argv[1:])
        print(json.dumps(CHILDREN[a.phase](a)), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--settings", default="float,int8,int8-disk", help="comma-separated: float,int8,int8-disk"
    )
    parser.add_argument("--raw", action="store_true", help="also raw qdrant-edge, same settings")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None, help="where the memories go")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    parser.add_argument(
        "--upsert-batches",
        type=int,
        nargs="*",
        default=None,
        help="instead: upsert rate per batch size (e.g. 128 512 2048) at the first --sizes",
    )
    args = parser.parse_args(argv)
    if args.upsert_batches:
        bench_upsert_batches(args.sizes[0], args.dim, args.upsert_batches)
        return
    presets = [p.strip() for p in args.settings.split(",") if p.strip()]
    unknown = set(presets) - set(PRESETS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}: choose from {sorted(PRESETS)}")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load_avg():.2f}, "
        f"settings: " + "; ".join(f"{p} = {PRESETS[p].describe()}" for p in presets)
    )
    records = run(
        args.sizes, presets, raw=args.raw, dim=args.dim, queries=args.queries, workdir=args.workdir
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": records}, indent=2))


if __name__ == "__main__":
    main()
