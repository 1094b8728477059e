"""Benchmark the category memory against raw Qdrant baselines measured in the same run.

For each size (10k and 100k entries) of 512-d clustered random unit vectors, it measures
the upsert rate (points/s), the index build time, and the query latency p50/p95 (top-10
with payload, after optimize) of:

- ``CategoryMemory`` on the embedded backend (``memory.add_entries`` / ``memory.search``),
- raw qdrant-edge (the same points, ids and payloads through ``EdgeShard`` directly),
- qdrant-client local mode (``:memory:``; few queries at 100k, it is a brute force).

It also times a memory build from an image folder against raw batched ``embed_images``
over the same images (ViT-B-16 with random weights: real compute, no download).

``--million`` adds the scale benchmark at 1,000,000 entries (``tools/bench_scale.py``):
``CategoryMemory`` built with ``build_from_vectors`` under the storage default for that size
(int8 in RAM, float32 originals and payloads on disk) against raw qdrant-edge with the same
settings, each build and each query run in its own process so its RssAnon / RssFile are
its own: build wall and CPU time, query p50/p95, recall@10 against exact search.

Usage::

    python tools/bench_memory.py                  # 10k and 100k, plus the build benchmark
    python tools/bench_memory.py --sizes 10000 --no-build
    python tools/bench_memory.py --million --sizes --no-build   # only the 1M scale run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.memory import CategoryMemory, MemoryEntry  # noqa: E402

BATCH = 512
LIMIT = 10


def centres(clusters: int, dim: int, seed: int) -> np.ndarray:
    """Random unit cluster centres."""
    c = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def clustered(n: int, centre: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around the centres (noise norm ~0.7), and their cluster ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(centre), size=n)
    dim = centre.shape[1]
    x = centre[ids] + rng.normal(0, 0.7 / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ids


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / max(1, sum(len(t) for t in truth))


# ---------------------------------------------------------------------- contenders
#
# Each contender stores the same points (ids, payloads, vectors) and answers the same
# queries. Upsert batches and single queries are interleaved across contenders, so a
# busy machine slows them alike and the ratios stay fair.


class Contender:
    """One way of storing and searching the points."""

    name = ""
    max_queries: int | None = None

    def upsert(self, start: int, stop: int) -> None:
        raise NotImplementedError

    def optimize(self) -> None:
        """Build indexes (nothing by default)."""

    def query(self, q: np.ndarray) -> list[str]:
        raise NotImplementedError

    def query_batch(self, qs: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


class MemoryContender(Contender):
    name = "CategoryMemory (edge)"

    def __init__(self, root: Path, entries: list[MemoryEntry], vecs: np.ndarray) -> None:
        self.mem = CategoryMemory.open(root / "category_memory", collection="bench")
        self.mem.bind_encoder("bench-random", vecs.shape[1])
        self.entries, self.vecs = entries, vecs

    def upsert(self, start: int, stop: int) -> None:
        self.mem.add_entries(self.entries[start:stop], self.vecs[start:stop])

    def optimize(self) -> None:
        self.mem.optimize()

    def query(self, q: np.ndarray) -> list[str]:
        return [h.id for h in self.mem.search(q, kind="image", limit=LIMIT)]

    def query_batch(self, qs: np.ndarray) -> None:
        self.mem.search_batch(qs, kind="image", limit=LIMIT)

    def close(self) -> None:
        self.mem.close()


class RawEdgeContender(Contender):
    name = "raw qdrant-edge"

    def __init__(
        self, root: Path, ids: list[str], payloads: list[dict[str, Any]], vecs: np.ndarray
    ) -> None:
        import qdrant_edge as qe

        self.qe = qe
        params = {
            k: qe.EdgeVectorParams(size=vecs.shape[1], distance=qe.Distance.Cosine)
            for k in ("image", "text")
        }
        self.shard = qe.EdgeShard.create(str(root / "raw_edge"), qe.EdgeConfig(vectors=params))
        for field in ("label", "kind"):
            self.shard.update(
                qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
            )
        self.ids, self.payloads, self.vecs = ids, payloads, vecs

    def upsert(self, start: int, stop: int) -> None:
        qe = self.qe
        rows = self.vecs[start:stop].tolist()
        points = [
            qe.Point(pid, {"image": row}, payload)
            for pid, row, payload in zip(
                self.ids[start:stop], rows, self.payloads[start:stop], strict=True
            )
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def optimize(self) -> None:
        self.shard.optimize()

    def _request(self, q: list[float]) -> Any:
        qe = self.qe
        return qe.QueryRequest(
            limit=LIMIT, query=qe.Query.Nearest(q, using="image"), with_payload=True
        )

    def query(self, q: np.ndarray) -> list[str]:
        return [str(p.id) for p in self.shard.query(self._request(q.tolist()))]

    def query_batch(self, qs: np.ndarray) -> None:
        self.shard.query_batch(self.qe.QueryBatchRequest([self._request(q) for q in qs.tolist()]))

    def close(self) -> None:
        self.shard.close()


class LocalModeContender(Contender):
    name = "qdrant-client :memory:"

    def __init__(
        self, ids: list[str], payloads: list[dict[str, Any]], vecs: np.ndarray, max_queries: int
    ) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(location=":memory:")
        self.client.create_collection(
            "bench",
            vectors_config={
                k: models.VectorParams(size=vecs.shape[1], distance=models.Distance.COSINE)
                for k in ("image", "text")
            },
        )
        self.ids, self.payloads, self.vecs = ids, payloads, vecs
        self.max_queries = max_queries

    def upsert(self, start: int, stop: int) -> None:
        rows = self.vecs[start:stop].tolist()
        points = [
            self.models.PointStruct(id=pid, vector={"image": row}, payload=payload)
            for pid, row, payload in zip(
                self.ids[start:stop], rows, self.payloads[start:stop], strict=True
            )
        ]
        with warnings.catch_warnings():  # "local mode is not recommended above 20k points"
            warnings.simplefilter("ignore", UserWarning)
            self.client.upsert("bench", points=points)

    def query(self, q: np.ndarray) -> list[str]:
        response = self.client.query_points(
            "bench", query=q.tolist(), using="image", limit=LIMIT, with_payload=True
        )
        return [str(p.id) for p in response.points]

    def query_batch(self, qs: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()


def run_contenders(
    contenders: list[Contender], n: int, queries: np.ndarray, batch_queries: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Load, optimize and query every contender, interleaving upserts and queries."""
    out: dict[str, dict[str, Any]] = {
        c.name: {"upsert_s": 0.0, "times": [], "ids": [], "batch": []} for c in contenders
    }
    for start in range(0, n, BATCH):
        for c in contenders:
            t = time.perf_counter()
            c.upsert(start, min(n, start + BATCH))
            out[c.name]["upsert_s"] += time.perf_counter() - t
    for c in contenders:
        t = time.perf_counter()
        c.optimize()
        out[c.name]["optimize_s"] = time.perf_counter() - t
        for q in queries[:3]:  # warm up
            c.query(q)
    for i, q in enumerate(queries):
        order = contenders[i % len(contenders) :] + contenders[: i % len(contenders)]
        for c in order:
            if c.max_queries is not None and i >= c.max_queries:
                continue
            t = time.perf_counter()
            found = c.query(q)
            out[c.name]["times"].append(time.perf_counter() - t)
            out[c.name]["ids"].append(found)
    for _ in range(5):
        for c in contenders:
            if c.max_queries is not None:
                continue
            t = time.perf_counter()
            c.query_batch(batch_queries)
            out[c.name]["batch"].append((time.perf_counter() - t) / len(batch_queries))
    for c in contenders:
        r = out[c.name]
        r["upsert"] = n / r["upsert_s"]
        r["lat"] = percentiles(r["times"])
        r["batch_ms"] = float(np.median(r["batch"])) * 1000 if r["batch"] else float("nan")
        c.close()
    return out


# ---------------------------------------------------------------------- one size


def bench_size(n: int, dim: int, n_queries: int, local_queries: int, local_max: int) -> None:
    c = centres(max(10, n // 100), dim, seed=n)
    vecs, cluster = clustered(n, c, seed=n + 1)
    queries, _ = clustered(n_queries, c, seed=n + 2)  # new points from the same clusters
    batch_queries = queries[:64]
    entries = [
        MemoryEntry(f"class-{k}", "image", f"vec-{i}", f"h{i}")
        for i, k in enumerate(cluster.tolist())
    ]
    ids = [e.point_id for e in entries]
    payloads = [e.payload() for e in entries]
    truth = []
    for start in range(0, n_queries, 50):
        sims = queries[start : start + 50] @ vecs.T
        truth += [[ids[j] for j in np.argpartition(-row, LIMIT)[:LIMIT]] for row in sims]

    print(
        f"\n== {n:,} entries, {dim}-d, top-{LIMIT} with payload, {n_queries} queries ==", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="rar-bench-") as tmp:
        contenders: list[Contender] = [
            MemoryContender(Path(tmp), entries, vecs),
            RawEdgeContender(Path(tmp), ids, payloads, vecs),
        ]
        if n <= local_max:
            contenders.append(LocalModeContender(ids, payloads, vecs, local_queries))
        rows = run_contenders(contenders, n, queries, batch_queries)
    gc.collect()

    print(
        f"{'contender':24} {'upsert pts/s':>13} {'optimize s':>11} {'queries':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'batch ms/q':>11} {'recall@10':>10}"
    )
    for name, r in rows.items():
        rec = recall(r["ids"], truth[: len(r["ids"])])
        print(
            f"{name:24} {r['upsert']:13,.0f} {r['optimize_s']:11.1f} {len(r['ids']):8d} "
            f"{r['lat'][0]:8.3f} {r['lat'][1]:8.3f} {r['batch_ms']:11.3f} {rec:10.3f}"
        )
    mem, raw = rows[MemoryContender.name], rows[RawEdgeContender.name]
    print(
        f"CategoryMemory / raw edge: query p50 x{mem['lat'][0] / raw['lat'][0]:.2f}, "
        f"p95 x{mem['lat'][1] / raw['lat'][1]:.2f}, "
        f"batch x{mem['batch_ms'] / raw['batch_ms']:.2f}, "
        f"upsert time x{raw['upsert'] / mem['upsert']:.2f}  (target: within 1.5x)"
    )
    if LocalModeContender.name in rows:
        loc = rows[LocalModeContender.name]
        print(
            f"local mode / CategoryMemory: query p50 x{loc['lat'][0] / mem['lat'][0]:.0f}, "
            f"upsert time x{mem['upsert'] / loc['upsert']:.1f}  (target at 100k: >= 50x)"
        )


# ---------------------------------------------------------------------- build vs encode


def bench_build(n_images: int, batch_size: int) -> None:
    from PIL import Image

    from rar_agent.encoders import load_encoder
    from rar_agent.ingest.builders import build_from_folder, iter_image_folder

    print(
        f"\n== memory build vs raw embed_images: {n_images} JPEGs (ViT-B-16, random "
        f"weights, cpu, batch {batch_size}) ==",
        flush=True,
    )
    encoder = load_encoder("ViT-B-16", pretrained=None, device="cpu")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="rar-bench-img-") as tmp:
        root = Path(tmp) / "images"
        for i in range(n_images):
            small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            im = Image.fromarray(small, "RGB").resize((400, 300), Image.Resampling.BICUBIC)
            (root / f"class{i % 8}").mkdir(parents=True, exist_ok=True)
            im.save(root / f"class{i % 8}" / f"{i}.jpg", quality=90)
        paths = [p for p, _ in iter_image_folder(root)]
        with Image.open(paths[0]) as im:  # warm up
            encoder.embed_images([im.convert("RGB")] * 2)

        t = time.perf_counter()
        for start in range(0, len(paths), batch_size):
            images = []
            for p in paths[start : start + batch_size]:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            encoder.embed_images(images)
        raw_s = time.perf_counter() - t

        with CategoryMemory.open(Path(tmp) / "mem") as mem:
            t = time.perf_counter()
            report = build_from_folder(mem, encoder, root, batch_size=batch_size)
            build_s = time.perf_counter() - t
            assert report.added == n_images, report
    raw_rate, build_rate = n_images / raw_s, n_images / build_s
    print(f"raw decode + embed_images: {raw_rate:8.1f} images/s")
    print(
        f"memory build (read, hash, decode overlapped, embed, upsert): {build_rate:8.1f} "
        f"images/s  -> x{build_rate / raw_rate:.2f} of raw (target: >= 0.90)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument(
        "--million",
        action="store_true",
        help="also 1,000,000 entries vs raw qdrant-edge (int8 defaults; tools/bench_scale.py)",
    )
    parser.add_argument("--million-queries", type=int, default=500)
    parser.add_argument("--million-json", type=Path, default=None, help="1M records as JSON")
    parser.add_argument("--workdir", type=Path, default=None, help="where the 1M memories go")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--local-queries",
        type=int,
        default=None,
        help="queries for local mode (default: 200 at 10k, 20 above)",
    )
    parser.add_argument(
        "--local-max", type=int, default=100_000, help="skip local mode above this size"
    )
    parser.add_argument("--no-build", action="store_true", help="skip the build benchmark")
    parser.add_argument("--build-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    sizes = args.sizes
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}, "
        f"run {uuid.uuid4().hex[:8]}"
    )
    for n in sizes:
        local_q = args.local_queries or (min(200, args.queries) if n <= 10_000 else 20)
        bench_size(n, args.dim, args.queries, local_q, args.local_max)
    if args.million:
        from tools.bench_scale import run as run_scale

        records = run_scale([1_000_000], ["int8-disk"], raw=True, dim=args.dim,
                            queries=args.million_queries, workdir=args.workdir)  # fmt: skip
        if args.million_json:
            args.million_json.write_text(json.dumps({"rows": records}, indent=2))
    if not args.no_build:
        bench_build(args.build_images, args.batch_size)


if __name__ == "__main__":
    main()
