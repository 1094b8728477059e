"""``memory build`` from a folder of 12 MP JPEGs against the raw encoder: the build rows of
the ``photos`` section (``tools/bench_photos.py``), also runnable alone.

Every measurement runs in a fresh process with the product's own threading (torch's threads as
the encoder sets them, the build's decode threads), so one configuration never leaks into
another. A process measures, for one tree of the package: the raw encoder's images/s on the
folder's images already decoded (to the encoder's need), then builds of a small and a large
part of the folder, each into a new memory (``add_images``, batch 32 as ``memory build``), wall
and CPU time, and the open-set calibration ``memory build`` runs after the build (timed apart).
Two stricter baselines sit beside the raw encoder's best thread count: the raw encoder run as
the build runs it beside a CPU (a forward pass per CPU side by side, one torch thread each),
and the same with freed memory kept in the heap, as ``memory build`` sets the process
(``keep_freed_memory``). The fixed cost of a build (creating the memory, decoding the first
images before the encoder has anything to do, indexing at the end) and its steady time per
image come from the two sizes: ``T(n) = fixed + n x per_image``. Two rows say what the ratio is
made of: the build's bound (every usable CPU busy at the build's CPU time per image; the
decode's CPU is in it, so beside a raw encoder that scales over the CPUs the ratio cannot pass
it) and how many CPUs the build kept busy; and one figure that the raw encoder's own spread
between processes moves less: the median of each process's build / raw ratio. With ``--against
REV`` the same is measured for the package as of git revision ``REV`` (its ``rar_agent/``
exported to a temp folder), the two trees' processes interleaved so that before and after share
the load; the raw encoder's figure is then the best of all processes (the encoder is the same).

Usage::

    python tools/bench_build.py                     # 96 images, this tree
    python tools/bench_build.py --against main      # and main, interleaved
    python tools/bench_build.py --images 32 --small 16 --repeats 2
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
BATCH = 32
Row = dict[str, Any]


def worker(tree: str, paths: list[str], small: int, encoder_name: str) -> dict[str, Any]:
    """One process's figures for the package under ``tree`` (see the module docstring)."""
    sys.path.insert(0, tree)
    # the package before torch, as memory build loads them (rar_agent.OPENMP_SPIN_COUNT)
    import rar_agent  # isort: skip

    import torch

    from rar_agent import openset
    from rar_agent.encoders import load_encoder
    from rar_agent.encoders.torch_base import keep_freed_memory
    from rar_agent.images import load_image
    from rar_agent.ingest.builders import add_images
    from rar_agent.memory import CategoryMemory

    assert Path(rar_agent.__file__).is_relative_to(tree), rar_agent.__file__
    encoder = load_encoder(encoder_name, device="cpu")
    need = getattr(encoder, "input_size", None)
    decoded = [load_image(p, need=need).image for p in paths]
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0))}
    for key, threads in (("raw", out["threads"]), ("raw_1", 1)):
        torch.set_num_threads(threads)
        encoder.embed_images(decoded[:4])  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        encoder.embed_images(decoded)
        out[key] = [time.perf_counter() - start, time.process_time() - cpu]
    out["raw_parallel"] = _raw_parallel(encoder, decoded)
    torch.set_num_threads(out["threads"])
    _as_memory_build()
    items = [(p, Path(p).stem.split("-")[0]) for p in paths]
    for name, part in (("small", items[:small]), ("large", items)):
        with tempfile.TemporaryDirectory(prefix="rar-build-") as tmp:
            memory = CategoryMemory.open(Path(tmp) / "m", collection="photos")
            start, cpu = time.perf_counter(), time.process_time()
            report = add_images(memory, encoder, part, batch_size=BATCH)
            out[name] = [time.perf_counter() - start, time.process_time() - cpu]
            start = time.perf_counter()  # what `memory build` does next
            openset.update(memory, added=report.sample_ids)
            out[f"{name}_calibrate"] = time.perf_counter() - start
            memory.close()
        assert report.added == len(part) and not report.failed, report
    keep_freed_memory()  # the strictest baseline, last (glibc's defaults cannot come back)
    out["raw_strict"] = _raw_parallel(encoder, decoded)
    torch.set_num_threads(out["threads"])
    return out


def _raw_parallel(encoder: Any, decoded: list[Any]) -> list[float]:
    """The raw encoder as the build runs it beside a CPU: one forward pass per CPU side by
    side, each on one torch thread, ``forward_batch`` images each (wall s, CPU s)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from rar_agent.encoders.torch_base import usable_cpus

    torch.set_num_threads(1)
    step = getattr(encoder, "forward_batch", 4)
    chunks = [decoded[i : i + step] for i in range(0, len(decoded), step)]
    with ThreadPoolExecutor(usable_cpus()) as pool:
        list(pool.map(encoder.embed_images, chunks[:2]))  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        np.concatenate(list(pool.map(encoder.embed_images, chunks)))
        return [time.perf_counter() - start, time.process_time() - cpu]


def _as_memory_build() -> None:
    """Set the process up as the imported tree's ``memory build`` does before it builds
    (freed memory kept in the heap, one BLAS thread: whichever of them it calls)."""
    import inspect

    from rar_agent.cli import memory
    from rar_agent.encoders import torch_base

    source = inspect.getsource(memory._build)
    for setting in ("keep_freed_memory", "one_blas_thread"):
        if f"{setting}()" in source:
            getattr(torch_base, setting)()


def _export(rev: str, into: Path) -> str:
    """``rar_agent/`` as of git revision ``rev``, written under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "rar_agent"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


def _spawn(
    tree: str, paths_file: Path, small: int, encoder: str, threads: int | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tree, "--paths-file",
           str(paths_file), "--small", str(small), "--encoder", encoder]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if threads:  # torch's threads as a user sets them (the default: the encoder decides)
        env["RAR_TORCH_THREADS"] = str(threads)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def _row(name: str, value: float, unit: str, baseline: str | None = None,
         base: float | None = None, target: str | None = None,
         met: bool | None = None) -> Row:  # fmt: skip
    ratio = round(value / base, 3) if base else None
    return {"name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": None if base is None else round(base, 3), "ratio": ratio,
            "target": target, "met": met}  # fmt: skip


def summarize(runs: list[dict[str, Any]], n: int, small: int) -> dict[str, float]:
    """Best-of figures over one tree's processes: images/s, fixed cost, per-image times.

    The raw encoder's figure is its better thread count's: torch's own (all CPUs) or one.
    Beside them, the median over processes of each one's own build / raw encoder ratio
    (measured seconds apart, so a change of the machine's speed between processes moves
    both), and the build's bound: every CPU busy at its CPU time per image.
    """
    keys = ("raw", "raw_1", "raw_parallel", "raw_strict", "small", "large")
    best = {k: min(r[k][0] for r in runs) for k in keys}
    raw_key = "raw" if best["raw"] <= best["raw_1"] else "raw_1"
    cpu = {k: min(r[k][1] for r in runs) for k in (raw_key, "raw_strict", "large")}
    per_image = (best["large"] - best["small"]) / (n - small)
    cpus = runs[0]["cpus"]
    return {
        "paired": statistics.median(min(r["raw"][0], r["raw_1"][0]) / r["large"][0] for r in runs),
        "cpus": cpus,
        "bound_rate": cpus * n / cpu["large"],
        "raw_rate": n / best[raw_key],
        "raw_threads": runs[0]["threads"] if raw_key == "raw" else 1,
        "rate": n / best["large"],
        "steady_rate": 1 / per_image if per_image > 0 else float("inf"),
        "fixed_ms": (best["large"] - n * per_image) * 1000,
        "cpu_ms": cpu["large"] * 1000 / n,
        "raw_cpu_ms": cpu[raw_key] * 1000 / n,
        "calibrate_ms": min(r["large_calibrate"] for r in runs) * 1000,
        "parallel_rate": n / best["raw_parallel"],
        "strict_rate": n / best["raw_strict"],
        "strict_cpu_ms": cpu["raw_strict"] * 1000 / n,
    }


def rows_for(label: str, s: dict[str, float], n: int, small: int) -> list[Row]:
    """The table rows of one tree (``label``: what it is)."""
    raw = s["raw_rate"]
    return [
        _row(f"memory build, {n} x 12 MP JPEG ({label}), wall images/s", s["rate"], "img/s",
             f"raw encoder images/s on the decoded images (best: {s['raw_threads']:.0f} torch "
             "threads)", raw, ">= 1/1.3 of raw (ratio >= 0.77)", s["rate"] >= raw / 1.3),
        _row("  same, against the raw encoder run with a pass per CPU, one torch thread each",
             s["rate"], "img/s", "raw encoder, parallel passes", s["parallel_rate"]),
        _row("  same, against that raw encoder with freed memory kept (as memory build runs)",
             s["rate"], "img/s", "raw encoder, parallel passes, keep_freed_memory",
             s["strict_rate"]),
        _row("  same, the median of each process's own ratio", s["paired"], "x",
             "build / raw encoder images/s, both measured in the same process"),
        _row(f"  the build's bound: {s['cpus']:.0f} CPUs busy at its CPU per image",
             s["bound_rate"], "img/s", "raw encoder", raw),
        _row("  CPUs the build kept busy (images/s x CPU per image)",
             s["rate"] * s["cpu_ms"] / 1000, "", "usable CPUs", s["cpus"]),
        _row("  steady state (from builds of both sizes), images/s", s["steady_rate"], "img/s",
             "raw encoder", raw),
        _row(f"  fixed cost per build (new memory, first decode, end; {small} vs {n})",
             s["fixed_ms"], "ms"),
        _row("  build CPU time per image", s["cpu_ms"], "ms", "raw encoder CPU per image",
             s["raw_cpu_ms"]),
        _row("  build CPU time per image, against the strictest raw encoder", s["cpu_ms"], "ms",
             "raw encoder, parallel passes, freed memory kept", s["strict_cpu_ms"]),
        _row(f"  then the open-set calibration of the {n} entries (memory build does it)",
             s["calibrate_ms"], "ms"),
    ]  # fmt: skip


def build_rows(
    paths: list[Path],
    small: int,
    repeats: int,
    encoder: str,
    against: str | None = None,
    threads: int | None = None,
) -> list[Row]:
    """This tree's build rows (and ``against``'s, measured interleaved)."""
    trees = {"this tree": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="rar-bench-build-") as tmp:
        if against:
            trees[against] = _export(against, Path(tmp))
        paths_file = Path(tmp) / "paths.json"
        paths_file.write_text(json.dumps([str(p) for p in paths]))
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for _ in range(repeats):
            for label, tree in trees.items():
                runs[label].append(_spawn(tree, paths_file, small, encoder, threads))
    loads = [r["load"] for rs in runs.values() for r in rs]
    every = [r for rs in runs.values() for r in rs]
    common = summarize(every, len(paths), small)  # the trees' encoders compute the same
    rows = []
    for label in trees:
        own = summarize(runs[label], len(paths), small)
        for key in (
            "raw_rate",
            "raw_threads",
            "raw_cpu_ms",
            "parallel_rate",
            "strict_rate",
            "strict_cpu_ms",
        ):
            own[key] = common[key]
        rows.extend(rows_for(label, own, len(paths), small))
    rows.append(_row("  load average (1 min) during these runs, max", max(loads), ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="the large build's images")
    parser.add_argument("--small", type=int, default=32, help="the small build's images")
    parser.add_argument("--repeats", type=int, default=3, help="processes per tree (best of)")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--against", default=None, help="git revision to compare with")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="RAR_TORCH_THREADS for the builds"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        paths = json.loads(args.paths_file.read_text())
        print(json.dumps(worker(args.worker, paths, args.small, args.encoder)))
        return 0
    if not 0 < args.small < args.images:
        parser.error("need 0 < --small < --images")
    sys.path.insert(0, str(ROOT))
    from tools.bench_e2e import print_table
    from tools.bench_photos import photo_folder

    rows = build_rows(photo_folder(args.images), args.small, args.repeats, args.encoder,
                      args.against, args.torch_threads)  # fmt: skip
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
