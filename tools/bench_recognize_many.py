"""Benchmark recognizing a folder of phone photos: the stream against the batch and the raw
encoder, each in its own process, measured in turns in the same run.

``rar-agent recognize photo1.jpg ... photoN.jpg`` runs :meth:`Recognizer.recognize_stream
<rar_agent.pipeline.Recognizer.recognize_stream>`: images decoded a few passes ahead in
background threads while earlier ones are encoded, passes side by side on a CPU, each answer
printed when ready. Before it, the command ran ``recognize_batch``: every image decoded,
one after the other, then all encoded, then all printed. Each variant runs in a fresh
process over the built-in memory of EfficientNet-Lite0 (no ranker, the open-set check on),
on ``--images`` 12 MP JPEGs (the photo benchmark's, ``tools/bench_photos.py``):

- ``raw encoder``: ``embed_images`` on the images already decoded to need (torch's default
  threads): what the encoder alone can do, the baseline of the rates;
- ``batch``: ``recognize_batch`` over the paths;
- ``stream``: ``recognize_stream`` over the paths, and when its first answer came.

Printed: images/s (best of ``--repeats``) against the raw encoder, the first answer's time,
and each process's peak RSS (``VmHWM``) against a process that loads the same and
recognizes one photo. No target: the raw encoder decodes nothing, and a 12 MP JPEG's
entropy decoding (about 12 ms of CPU here) is half of what EfficientNet-Lite0's pass costs
per image on one thread, so the stream's ceiling is the CPUs, not the encoder.

Usage::

    python tools/bench_recognize_many.py              # 96 photos, 3 rounds
    python tools/bench_recognize_many.py --images 480 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench_e2e import Row, print_table, row  # noqa: E402

VARIANTS = ("one photo", "raw encoder", "batch", "stream")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(variant: str, paths: list[str]) -> dict[str, Any]:
    """Run one variant in this process; its rate, first answer and peak RSS."""
    from rar_agent.config import Settings
    from rar_agent.images import load_image
    from rar_agent.pipeline import Recognizer

    recognizer = Recognizer.from_settings(Settings(ranker="none"))
    recognizer.recognize(paths[0])  # warm-up: the model's first pass
    first = None
    start = time.perf_counter()
    if variant == "one photo":  # the RSS baseline: loaded, one photo recognized
        pass
    elif variant == "raw encoder":
        images = [load_image(p, need=recognizer.decode_need).image for p in paths]
        start = time.perf_counter()
        recognizer.encoder.embed_images(images)
    elif variant == "batch":
        assert len(recognizer.recognize_batch(paths)) == len(paths)
    elif variant == "stream":
        done = 0
        for _ in recognizer.recognize_stream(paths):
            first = first if first is not None else time.perf_counter() - start
            done += 1
        assert done == len(paths)
    seconds = time.perf_counter() - start
    out = {"rate": len(paths) / seconds, "first_s": first, "rss_mb": _peak_rss_mb()}
    out["load"] = os.getloadavg()[0]
    return out


def _spawn(variant: str, paths_file: Path, home: Path) -> dict[str, Any]:
    env = {**os.environ, "RAR_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("RAR_QDRANT_URL", "RAR_MEMORY_PATH", "RAR_COLLECTION", "RAR_TORCH_THREADS"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--paths-file", str(paths_file)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(paths: list[Path], repeats: int) -> list[Row]:
    """Every variant ``repeats`` times, in turns; the rows."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="rar-bench-many-") as tmp:
        paths_file = Path(tmp) / "paths.json"
        paths_file.write_text(json.dumps([str(p) for p in paths]))
        home = Path(tmp) / "home"
        for i in range(repeats):
            for variant in VARIANTS:
                runs[variant].append(_spawn(variant, paths_file, home))
                print(f"round {i + 1}/{repeats}: {variant} done", file=sys.stderr, flush=True)
    best = {v: max(r["rate"] for r in rs) for v, rs in runs.items()}
    rss = {v: min(r["rss_mb"] for r in rs) for v, rs in runs.items()}
    n = len(paths)
    raw = best["raw encoder"]
    rows = [
        row(f"raw encoder, {n} x 12 MP JPEG decoded to need", raw, "i/s"),
        row(
            f"recognize_stream, {n} x 12 MP JPEG (rar-agent recognize)",
            best["stream"],
            "i/s",
            "raw encoder",
            raw,
        ),  # fmt: skip
        row(
            f"recognize_batch, {n} x 12 MP JPEG (before)", best["batch"], "i/s", "raw encoder", raw
        ),  # fmt: skip
        row("stream against batch", best["stream"], "i/s", "batch", best["batch"]),
        row("stream: first answer after", min(r["first_s"] for r in runs["stream"]), "s"),
    ]
    for variant in ("batch", "stream"):
        rows.append(row(f"peak RSS, {variant}", rss[variant], "MiB", "one photo",
                        rss["one photo"]))  # fmt: skip
    loads = [r["load"] for rs in runs.values() for r in rs]
    rows.append(row("load average (1 min) during these runs, max", max(loads), ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="12 MP JPEGs to recognize")
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        paths = json.loads(args.paths_file.read_text())
        print(json.dumps(worker(args.worker, paths)))
        return 0
    if args.images < 2 or args.repeats < 1:
        parser.error("need --images >= 2 and --repeats >= 1")
    from tools.bench_photos import photo_folder

    rows = measure(photo_folder(args.images), args.repeats)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
