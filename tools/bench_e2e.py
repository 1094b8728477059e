"""Benchmark the whole recognizer against raw baselines measured in the same run.

Sections (``--only`` picks some):

- ``recognize``: ``Recognizer.recognize(path)`` minus the time spent inside the encoder's
  ``embed_images`` (the model inference), per image, with no ranker and with an instant fake
  ranker; and ``recognize_batch`` vs one-by-one ``recognize`` (per image). The encoder is
  EfficientNet-Lite0 (real ImageNet weights, offline) over a memory of random unit vectors,
  and (one row) over a memory whose labels cluster as a real memory's do (the photos'
  nearest entries mostly of one label, whose local class mean needs their stored vectors).
  Target: overhead <= 5 ms/image.
- ``startup``: wall time of ``python -c "import rar_agent"`` and ``rar-agent --help`` against
  ``python -c pass``. Targets: < 0.3 s and < 0.5 s.
- ``photos``: phone photos (12 MP JPEG, 12 MP HEIC with and without its thumbnail, 50 MP
  JPEG) beside the small photo, recognize one by one and in a batch, and a memory build,
  decoded to need (after) and in full (before), against the small photo, the raw encoder and
  libheif (``tools/bench_photos.py``; each ratio the median of per-round ratios in paired
  rounds, on the CPU and the wall clock). Targets: 12 MP JPEG <= 1.5x the small photo; HEIC
  <= (libheif full decode + small photo) x1.2, with a thumbnail <= 2x; build >= 1/1.3 of the
  raw encoder's images/s.
- ``rss``: peak RSS (``VmHWM``; ``ru_maxrss`` where /proc is missing) of a fresh process that
  opens a 100k-entry memory (512-d, HNSW-indexed as a build leaves it) and runs queries,
  against the same process importing everything but opening nothing.

Every figure is printed with its baseline and the ratio; ``--json PATH`` writes them too.

Usage::

    python tools/bench_e2e.py                 # full sizes
    python tools/bench_e2e.py --quick         # small sizes (seconds)
    python tools/bench_e2e.py --only startup --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Row = dict[str, Any]


def row(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    base_value: float | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> Row:
    """One result line: the figure, its raw baseline and their ratio."""
    ratio = round(value / base_value, 3) if base_value else None
    return {"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": None if base_value is None else round(base_value, 3),
            "ratio": ratio, "target": target, "met": met}  # fmt: skip


# ---------------------------------------------------------------------------- recognize


class TimedEncoder:
    """Proxy that adds up wall and calling-thread CPU seconds spent inside ``embed_images``."""

    def __init__(self, inner: Any, *, sized: bool = True) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint
        if sized and getattr(inner, "input_size", None):  # images are decoded to need
            self.input_size = inner.input_size
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def embed_images(self, images: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.inner.embed_images(images)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.thread_time() - cpu

    def embed_texts(self, texts: Any) -> Any:
        return self.inner.embed_texts(texts)


def fill_random(memory: Any, dim: int, n: int, labels: int, seed: int = 0) -> None:
    """``n`` random unit vectors as image entries spread over ``labels`` labels."""
    import numpy as np

    from rar_agent.memory import MemoryEntry

    rng = np.random.default_rng(seed)
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        vectors = rng.normal(size=(count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        entries = [
            MemoryEntry(f"class {i % labels}", "image", f"synthetic://{i}", f"h{i}")
            for i in range(start, start + count)
        ]
        memory.add_entries(entries, vectors)


def fill_clustered(memory: Any, centres: Any, n: int, seed: int = 0) -> None:
    """``n`` entries over ``len(centres)`` labels, each its label's centre plus noise (cosine
    about 0.8 to it): a query near a centre finds mostly that label's entries among its
    nearest, as in a real memory, where :func:`fill_random`'s nearest are all of different
    labels (so the local class means, and their stored vectors, are rarely needed)."""
    import numpy as np

    from rar_agent.memory import MemoryEntry

    rng = np.random.default_rng(seed)
    labels, dim = centres.shape
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        which = np.arange(start, start + count) % labels
        noise = rng.normal(size=(count, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
        vectors = centres[which] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        entries = [
            MemoryEntry(f"class {c}", "image", f"synthetic://{start + i}", f"c{start + i}")
            for i, c in enumerate(which)
        ]
        memory.add_entries(entries, vectors)


def photos(folder: Path, n: int) -> list[str]:
    """``n`` deterministic 640x480 JPEG photos-to-be (gradient, noise, a rectangle)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
        arr = np.clip(base + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        ImageDraw.Draw(img).rectangle((50 + i, 60, 300, 400), fill=(i * 20 % 255, 90, 160))
        path = folder / f"photo{i}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def _instant_ranker() -> Any:
    import itertools

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from rar_agent.ranking import RankingChain

    reply = AIMessage(content="1. class 1\n2. class 2")
    return RankingChain(GenericFakeChatModel(messages=itertools.repeat(reply)))


def _overhead(recognizer: Any, timed: TimedEncoder, paths: list[str], repeats: int) -> tuple:
    """Median total and embed wall ms, and per-call overheads (wall ms, thread-CPU ms).

    The CPU-time overhead (the calling thread's CPU outside ``embed_images``) is what the
    overhead costs on an idle machine; the wall-time one also counts waiting for a CPU on a
    busy machine. (Process CPU time would also count torch's OpenMP workers spinning after
    each forward pass.)
    """
    totals, embeds, over, over_cpu = [], [], [], []
    for _ in range(repeats):
        for path in paths:
            timed.seconds = timed.cpu_seconds = 0.0
            start, cpu = time.perf_counter(), time.thread_time()
            recognizer.recognize(path)
            wall_ms = (time.perf_counter() - start) * 1000
            cpu_ms = (time.thread_time() - cpu) * 1000
            totals.append(wall_ms)
            embeds.append(timed.seconds * 1000)
            over.append(wall_ms - timed.seconds * 1000)
            over_cpu.append(cpu_ms - timed.cpu_seconds * 1000)
    return statistics.median(totals), statistics.median(embeds), over, over_cpu


def _median_ms(func: Any, args: list[Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for arg in args:
            start = time.perf_counter()
            func(arg)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _clustered_overhead(
    encoder: Any, timed: TimedEncoder, paths: list[str], args: argparse.Namespace, tmp: str
) -> list[float]:
    """Per-call main-thread CPU overheads over a memory of clustered labels
    (:func:`fill_clustered`; the photos' own embeddings are centres, the other labels'
    centres random), as :func:`_overhead` measures them."""
    import numpy as np

    from rar_agent.images import load_image
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    own = encoder.embed_images([load_image(p, need=encoder.input_size).image for p in paths])
    rng = np.random.default_rng(4)
    others = rng.normal(size=(max(0, args.labels // 10 - len(own)), encoder.dim))
    centres = np.concatenate([own, others / np.linalg.norm(others, axis=1, keepdims=True)])
    with CategoryMemory.open(Path(tmp) / "clustered", collection="clustered") as memory:
        memory.bind_encoder(encoder.fingerprint, encoder.dim, expected_entries=args.entries)
        fill_clustered(memory, centres.astype(np.float32), args.entries)
        memory.optimize(min_unindexed=10_000)
        recognizer = Recognizer(memory, timed, ranker=None, k=5)
        recognizer.recognize(paths[0])  # warm-up
        return _overhead(recognizer, timed, paths, args.repeats)[3]


def _stages(recognizer: Any, memory: Any, paths: list[str], repeats: int) -> list[Row]:
    """The overhead's two main parts, each against its raw baseline."""
    import numpy as np
    from PIL import Image

    from rar_agent.images import load_image

    def raw_decode(path: str) -> None:
        with Image.open(path) as im:
            im.convert("RGB")

    ours = _median_ms(load_image, paths, repeats)
    side = getattr(recognizer.encoder, "input_size", None) or 224
    to_need = _median_ms(lambda p: load_image(p, need=side), paths, repeats)
    raw = _median_ms(raw_decode, paths, repeats)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(len(paths), memory.info.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = list(vectors[:, None, :])
    retrieve = _median_ms(lambda v: recognizer.retriever.retrieve_vectors(v, k=5), rows, repeats)
    search = _median_ms(lambda v: memory.search_batch(v, kind="image", limit=50), rows, repeats)
    return [
        row(
            "  load_image (validate, EXIF, RGB) 640x480 JPEG", ours, "ms", "PIL open + convert", raw
        ),  # fmt: skip
        row(
            f"  load_image decoded to need ({side} px shorter side)",
            to_need,
            "ms",
            "full decode (load_image)",
            ours,
        ),  # fmt: skip
        row(
            "  retrieve_vectors (search + fold to labels)",
            retrieve,
            "ms",
            "memory.search_batch alone",
            search,
        ),  # fmt: skip
    ]


def _forward_rows(encoder: Any, images: list[Any], repeats: int) -> list[Row]:
    """Where batch time goes: one 16-image forward pass vs 16 single ones vs embed_images.

    Each includes the preprocessing, as ``embed_images`` does.
    """
    one_pass, singles, wrapped = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.embed_pixel_batch(encoder.preprocess(images))
        one_pass.append((time.perf_counter() - start) * 1000 / len(images))
        start = time.perf_counter()
        for image in images:
            encoder.embed_pixel_batch(encoder.preprocess([image]))
        singles.append((time.perf_counter() - start) * 1000 / len(images))
        start = time.perf_counter()
        encoder.embed_images(images)
        wrapped.append((time.perf_counter() - start) * 1000 / len(images))
    n = len(images)
    step = getattr(encoder, "forward_batch", n)
    return [
        row(f"  raw forward pass of {n} images, per image (best)", min(one_pass), "ms",
            "raw forward passes of 1 image", min(singles)),
        row(f"  embed_images({n}) ({step} per pass), per image (best)", min(wrapped), "ms",
            "raw forward passes of 1 image", min(singles)),
    ]  # fmt: skip


def bench_recognize(args: argparse.Namespace) -> list[Row]:
    from PIL import Image

    from rar_agent.encoders import load_encoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    encoder = load_encoder(args.encoder, device="cpu")
    timed = TimedEncoder(encoder)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rar-bench-") as tmp:
        paths = photos(Path(tmp), args.images)
        with CategoryMemory.open(Path(tmp) / "mem", collection="bench") as memory:
            # storage as a build of this size gets it (int8 from 10k entries)
            memory.bind_encoder(encoder.fingerprint, encoder.dim, expected_entries=args.entries)
            fill_random(memory, encoder.dim, args.entries, args.labels)
            memory.optimize(min_unindexed=10_000)  # as the memory builders leave it
            recognizer = Recognizer(memory, timed, ranker=None, k=5)
            recognizer.recognize(paths[0])  # warm-up
            total, embed, over, over_cpu = _overhead(recognizer, timed, paths, args.repeats)
            p50 = statistics.median(over)
            p95 = sorted(over)[int(0.95 * (len(over) - 1))]
            cpu50 = statistics.median(over_cpu)
            rows.append(row("recognize (no ranker), per image p50", total, "ms",
                            "encoder embed_images inside it", embed))  # fmt: skip
            rows.append(row(f"recognize overhead p50 ({args.entries} entries)", p50, "ms",
                            target="<= 5 ms", met=p50 <= 5.0))  # fmt: skip
            full = TimedEncoder(encoder, sized=False)  # hides input_size: the old full decode
            before = Recognizer(memory, full, ranker=None, k=5)
            f_over, f_cpu = _overhead(before, full, paths, args.repeats)[2:]
            rows.append(row("  same, before (full decode)", statistics.median(f_over), "ms",
                            "after (decoded to need)", p50))  # fmt: skip
            rows.append(row("recognize overhead p95 / min", p95, "ms"))
            rows[-1]["name"] += f" (min {min(over):.2f} ms)"
            rows.append(row("recognize overhead p50, main-thread CPU time", cpu50, "ms",
                            target="<= 5 ms", met=cpu50 <= 5.0))  # fmt: skip
            rows.append(row("  same, before (full decode)", statistics.median(f_cpu), "ms",
                            "after (decoded to need)", cpu50))  # fmt: skip
            clustered = statistics.median(_clustered_overhead(encoder, timed, paths, args, tmp))
            rows.append(row(f"  same, a clustered memory ({args.labels // 10} labels)",
                            clustered, "ms", "the random memory above", cpu50,
                            "<= 5 ms", clustered <= 5.0))  # fmt: skip
            rows.extend(_stages(recognizer, memory, paths, args.repeats))
            ranked = Recognizer(memory, timed, ranker=_instant_ranker(), k=5)
            ranked.recognize(paths[0])
            _, _, r_over, r_cpu = _overhead(ranked, timed, paths, args.repeats)
            r_p50 = statistics.median(r_over)
            rows.append(row("recognize overhead p50, instant fake ranker", r_p50, "ms",
                            "overhead without ranker", p50))  # fmt: skip
            rows.append(row("  same, main-thread CPU time", statistics.median(r_cpu), "ms",
                            "CPU overhead without ranker", cpu50))  # fmt: skip
            # batch vs single: same images, per-image wall time, best of the repeats
            singles, batches = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for path in paths:
                    recognizer.recognize(path)
                singles.append((time.perf_counter() - start) * 1000 / len(paths))
                start = time.perf_counter()
                recognizer.recognize_batch(paths)
                batches.append((time.perf_counter() - start) * 1000 / len(paths))
            ratio = min(batches) / min(singles)
            rows.append(row(f"recognize_batch({len(paths)}), per image (best)", min(batches),
                            "ms", "recognize one by one, per image", min(singles),
                            "<= 1.0x of one by one", ratio <= 1.0))  # fmt: skip
            images = [Image.open(p).convert("RGB") for p in paths]
            rows.extend(_forward_rows(encoder, images, args.repeats))
    return rows


# ---------------------------------------------------------------------------- startup


def _wall(cmd: list[str], runs: int) -> float:
    """Median wall seconds of ``runs`` runs of a command (after one warm-up run)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run(cmd, capture_output=True, env=env, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_startup(args: argparse.Namespace) -> list[Row]:
    python = sys.executable
    script = Path(python).parent / "rar-agent"
    help_cmd = (
        [str(script), "--help"] if script.exists() else [python, "-m", "rar_agent.cli", "--help"]
    )
    runs = args.startup_runs
    base = _wall([python, "-c", "pass"], runs)
    imp = _wall([python, "-c", "import rar_agent"], runs)
    cli = _wall(help_cmd, runs)
    return [
        row("python -c pass", base, "s"),
        row('python -c "import rar_agent"', imp, "s", "python -c pass", base, "< 0.3 s", imp < 0.3),
        row("rar-agent --help", cli, "s", "python -c pass", base, "< 0.5 s", cli < 0.5),
    ]


# ---------------------------------------------------------------------------- peak RSS

_BUILD = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from rar_agent.memory import CategoryMemory
from tools.bench_e2e import fill_random
with CategoryMemory.open({path!r}, collection="rss") as m:
    m.bind_encoder("bench:random", {dim}, expected_entries={n})
    fill_random(m, {dim}, {n}, {labels})
    m.optimize(min_unindexed=10_000)
"""

_QUERY = """
import resource, sys, time, numpy as np
sys.path.insert(0, {root!r})

def peak_kb():
    # VmHWM is this process's own peak; ru_maxrss on Linux keeps the high-water mark of the
    # parent at fork time across exec, so a child of a big process would report the parent's.
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

from rar_agent.memory import CategoryMemory
import qdrant_edge  # noqa: F401  (the baseline imports it too)
rng = np.random.default_rng(2)
queries = rng.normal(size=({queries}, {dim})).astype(np.float32)
queries /= np.linalg.norm(queries, axis=1, keepdims=True)
if {open_it}:
    with CategoryMemory.open({path!r}, collection="rss", create=False) as m:
        start = time.perf_counter()
        for q in queries:
            m.search(q, kind="image", limit=50)
        print("query_ms", (time.perf_counter() - start) * 1000 / len(queries))
print("maxrss_kb", peak_kb())
"""


def _child(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return {k: float(v) for k, v in (ln.split() for ln in out.stdout.splitlines() if ln.strip())}


def bench_rss(args: argparse.Namespace) -> list[Row]:
    dim, n = 512, args.rss_entries
    with tempfile.TemporaryDirectory(prefix="rar-rss-") as tmp:
        path = str(Path(tmp) / "mem")
        start = time.perf_counter()
        _child(_BUILD.format(root=str(ROOT), path=path, dim=dim, n=n, labels=1000))
        build_s = time.perf_counter() - start
        fmt = {"root": str(ROOT), "path": path, "dim": dim, "queries": 200}
        base = _child(_QUERY.format(open_it=False, **fmt))
        opened = _child(_QUERY.format(open_it=True, **fmt))
    raw_mb = n * dim * 4 / 2**20
    rss_mb, base_mb = opened["maxrss_kb"] / 1024, base["maxrss_kb"] / 1024
    return [
        row(
            f"peak RSS, {n // 1000}k-entry memory open + 200 queries",
            rss_mb,
            "MiB",
            "same process without opening it",
            base_mb,
        ),  # fmt: skip
        row(
            "  RSS added by the open memory",
            rss_mb - base_mb,
            "MiB",
            f"raw float32 vectors ({n}x{dim})",
            raw_mb,
        ),  # fmt: skip
        row("  query latency (single, top-50 entries)", opened.get("query_ms", 0.0), "ms"),
        row("  build (random vectors + optimize)", build_s, "s"),
    ]


# ---------------------------------------------------------------------------- main


def print_table(rows: list[Row]) -> None:
    """Print the rows as a fixed-width table."""
    print(f"{'benchmark':58} {'value':>10}  {'baseline':>10} {'ratio':>7}  target")
    for r in rows:
        base = "" if r["baseline_value"] is None else f"{r['baseline_value']:.3f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        target = r["target"] or ""
        if r["met"] is not None:
            target += " (met)" if r["met"] else " (MISSED)"
        print(
            f"{r['name'][:58]:58} {r['value']:>8.3f} {r['unit']:<3}{base:>10} {ratio:>7}  {target}"
        )
        if r["baseline"]:
            print(f"{'':60}baseline: {r['baseline']}")


def bench_photos(args: argparse.Namespace) -> list[Row]:
    """The ``photos`` section (``tools/bench_photos.py``)."""
    from tools.bench_photos import bench_photos as run

    return run(args)


SECTIONS = {
    "recognize": bench_recognize,
    "photos": bench_photos,
    "startup": bench_startup,
    "rss": bench_rss,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds each)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--wall",
        action="store_true",
        help="photos: judge on wall time (torch on its default threads), not CPU time",
    )
    parser.add_argument(
        "--against", default=None, help="photos: also build with the package as of this git rev"
    )
    args = parser.parse_args(argv)
    args.images = 8 if args.quick else 16
    args.repeats = 2 if args.quick else 5
    args.entries = 2_000 if args.quick else 10_000
    args.labels = 200 if args.quick else 1_000
    args.startup_runs = 3 if args.quick else 10
    args.rss_entries = 10_000 if args.quick else 100_000
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows: list[Row] = []
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        start = time.perf_counter()
        got = SECTIONS[name](args)
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows.extend({**r, "section": name} for r in got)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "quick": args.quick}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
