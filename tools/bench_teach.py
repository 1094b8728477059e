"""Benchmark teaching one example through the teacher, beyond encoding, calibration included.

On a calibrated memory of clustered random unit vectors (``--size`` entries, 10 per
category), each taught image is a small PNG whose vector a stand-in encoder looks up (so the
encoder costs nothing and what is timed is everything else): reading and hashing the bytes,
decoding, the thumbnail, the same-content / near-duplicate search, the write and the
calibration update. The baseline, measured in the same run, is a plain ``add_entries`` of one
entry with no calibration update (the floor of any write). Target: under 50 ms per example.
The breakdown splits each example's time into the calibration update (and, within it, the
write of the stored calibration, made only when the example entered the stand-in reservoir)
and the rest (checks, thumbnail, the entry's write).

``--unknowns N`` times instead what a teach does to the log of unknown images: with ``N``
look-alikes of new categories recognized (10 each; each is unknown, so it is logged, as a
service logs what it is asked), each of ``--examples`` teaches writes six examples of one of
them (a group taught) and drops from the log the images the memory now answers with it
(``Recognizer.taught``), paired in turns with searching and judging every logged image again
(``Recognizer.answers_with`` over all of them: what each teach did before) on the same log;
between teaches, ``--new`` more unknown images are recognized (a service keeps seeing them).
The first teach (no image searched by a teach yet) is reported apart. Both drop the same
images (checked).

Usage::

    python tools/bench_teach.py                      # 10k entries, 40 examples
    python tools/bench_teach.py --size 10000 --examples 40 --json rows.json
    python tools/bench_teach.py --unknowns 512 --examples 20   # the log's re-check
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.openset import fit as calibrate  # noqa: E402
from rar_agent.pipeline import teacher as teacher_module  # noqa: E402
from rar_agent.pipeline.teacher import Teacher  # noqa: E402
from tools.bench_clusters import DIM, build, clustered, entries_of, median_ms  # noqa: E402

TARGET_MS = 50.0


class _LookupEncoder:
    """Stands in for an encoder: each benchmark image's vector is looked up by its pixels; an
    image not in the table (an augmented view of the last example) gets that example's vector
    with a little noise."""

    fingerprint = "bench:teach"
    dim = DIM

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}
        self.last = np.ones(DIM, dtype=np.float32)
        self.rng = np.random.default_rng(0)

    def embed_images(self, images: list[Any]) -> np.ndarray:
        out = []
        for im in images:
            found = self.table.get(hashlib.sha1(im.convert("RGB").tobytes()).hexdigest())
            if found is None:
                noisy = self.last + self.rng.normal(0, 0.3 / np.sqrt(DIM), DIM)
                found = (noisy / np.linalg.norm(noisy)).astype(np.float32)
            self.last = found
            out.append(found)
        return np.stack(out).astype(np.float32)


def _png(i: int) -> tuple[bytes, Any]:
    from PIL import Image

    rng = np.random.default_rng(10_000 + i)
    image = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), image


class _Stopwatch:
    """Times the calls of a function it wraps, per taught example (``lap`` starts the next)."""

    def __init__(self) -> None:
        self.laps: list[list[float]] = []

    def lap(self) -> None:
        self.laps.append([])

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.laps[-1].append(time.perf_counter() - t0)

        return timed

    def per_example(self) -> list[float]:
        return [sum(lap) for lap in self.laps]


def _figures(total: list[float], calib: _Stopwatch, write: _Stopwatch) -> dict[str, float]:
    cal, wrote = calib.per_example(), write.per_example()
    written = [w for w, lap in zip(wrote, write.laps, strict=True) if lap]
    return {
        "median_ms": median_ms(total),
        "mean_ms": float(np.mean(total)) * 1000,
        "p90_ms": float(np.percentile(total, 90)) * 1000,
        "calibration_ms": median_ms(cal),
        "calibration_mean_ms": float(np.mean(cal)) * 1000,
        "rest_ms": median_ms([t - c for t, c in zip(total, cal, strict=True)]),
        "writes": len(written),
        "write_ms": median_ms(written) if written else 0.0,
    }


def _teach(memory: Any, x: np.ndarray, labels: list[str], first: int) -> dict[str, Any]:
    """Teach ``len(labels)`` examples (vectors ``x[first:]``), timed with their breakdown."""
    encoder = _LookupEncoder()
    teacher = Teacher(memory, encoder, via="api")  # type: ignore[arg-type]
    calib, write = _Stopwatch(), _Stopwatch()
    real_update, real_write = teacher_module.update_calibration, memory.update_extension
    teacher_module.update_calibration = calib.wrap(real_update)
    memory.update_extension = write.wrap(real_write)
    known: list[float] = []
    new: list[float] = []
    try:
        for j, label in enumerate(labels):
            data, image = _png(j)
            encoder.table[hashlib.sha1(image.tobytes()).hexdigest()] = x[first + j]
            calib.lap()
            write.lap()
            t0 = time.perf_counter()
            teacher.add(label, [(f"example-{j}.png", data)])
            (new if label.startswith("new") else known).append(time.perf_counter() - t0)
    finally:
        teacher_module.update_calibration = real_update
        memory.update_extension = real_write
    return {
        "all": _figures([*known, *new], calib, write) if known and new else {},
        "known": median_ms(known),
        "new": median_ms(new),
    }


def bench(n: int, examples: int, rows: list[dict[str, Any]]) -> None:
    """Time teaching ``examples`` images into a memory of ``n`` entries."""
    x, ids = clustered(n + 2 * examples, seed=n)
    entries = entries_of(ids)
    with tempfile.TemporaryDirectory(prefix="rar-bench-teach-") as tmp:
        memory, built_s = build(Path(tmp) / "mem", entries, x, n, _LookupEncoder.fingerprint)
        t0 = time.perf_counter()
        calibrate(memory)
        took = time.perf_counter() - t0
        print(f"{n} entries: built in {built_s:.1f} s, calibrated in {took:.1f} s")

        plain = []
        for i in range(n, n + examples):  # the floor: one write, no checks, no calibration
            t0 = time.perf_counter()
            memory.add_entries([entries[i]], x[i : i + 1])
            plain.append(time.perf_counter() - t0)

        # every 4th example names a new category, the others a known one
        labels = [
            entries[n + examples + j].label if j % 4 else f"new category {j}"
            for j in range(examples)
        ]
        timed = _teach(memory, x, labels, n + examples)
        memory.close()
    _report(n, examples, median_ms(plain), timed, rows)


def _recognize(recognizer: Any, encoder: _LookupEncoder, seen: np.ndarray, which: range) -> None:
    """Recognize the images of the vectors ``seen[which]`` (one batch, as a service sees
    them), named ``unknown-image-<i>``: each is unknown, so it joins the recognizer's log."""
    from PIL import Image

    images = []
    for i in which:
        pixels = np.random.default_rng(i).integers(0, 255, (4, 4, 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
        encoder.table[hashlib.sha1(images[-1].tobytes()).hexdigest()] = seen[i]
    results = recognizer.recognize_batch(images, names=[f"unknown-image-{i}" for i in which])
    known = [r.image for r in results if not r.unknown]
    if known:
        raise SystemExit(f"{len(known)} images of new categories were answered: {known[:3]}")


def bench_unknowns(
    n: int, unknowns: int, teaches: int, new: int, rows: list[dict[str, Any]]
) -> None:
    """Time what teaching does to a log of ``unknowns`` unknown images (module docstring)."""
    from rar_agent.memory import MemoryEntry
    from rar_agent.openset import update
    from rar_agent.pipeline import Recognizer

    x, ids = clustered(n, seed=n)
    seen, seen_ids = clustered(unknowns + teaches * new, seed=n + 1)  # the new categories
    with tempfile.TemporaryDirectory(prefix="rar-bench-unknowns-") as tmp:
        memory, _ = build(Path(tmp) / "mem", entries_of(ids), x, n, _LookupEncoder.fingerprint)
        calibrate(memory)
        encoder = _LookupEncoder()
        recognizer = Recognizer(memory, encoder)  # type: ignore[arg-type]
        _recognize(recognizer, encoder, seen, range(unknowns))
        logged, before, after, dropped = unknowns, [], [], 0
        for j in range(teaches):
            category = int(seen_ids[(j * 10 * 7) % unknowns])  # one logged new category
            label = f"new category {category}"
            mine = seen[seen_ids == category]
            taught = [MemoryEntry(label, "image", f"taught-{j}-{e}", f"t{j}-{e}") for e in range(6)]
            update(memory, added=memory.add_entries(taught, mine[:6]))
            _, names, rows_now = recognizer.novel_groups.logged()
            t0 = time.perf_counter()
            if j % 2:  # in turns: which of the two runs first
                gone = set(recognizer.taught([], label=label))
                t1 = time.perf_counter()
                every = recognizer.answers_with(label, rows_now)
                t2 = time.perf_counter()
                after.append(t1 - t0)
                before.append(t2 - t1)
            else:
                every = recognizer.answers_with(label, rows_now)
                t1 = time.perf_counter()
                gone = set(recognizer.taught([], label=label))
                t2 = time.perf_counter()
                before.append(t1 - t0)
                after.append(t2 - t1)
            if gone != {name for name, yes in zip(names, every, strict=True) if yes}:
                raise SystemExit(f"teach {j}: the re-check dropped other images than all did")
            dropped += len(gone)
            _recognize(recognizer, encoder, seen, range(logged, logged + new))
            logged += new
        memory.close()
    timed = {"first teach": (before[0] * 1000, after[0] * 1000)}
    said = ["first teach"]
    if teaches > 1:  # one teach (--examples 1) has no later ones to take a median of
        timed["later teaches, median"] = (median_ms(before[1:]), median_ms(after[1:]))
        said.append(f"the next {teaches - 1}, median")
    figures = "; ".join(
        f"{words} {was:.1f} -> {now:.1f} ms ({was / now:.1f}x)"
        for words, (was, now) in zip(said, timed.values(), strict=True)
    )
    print(
        f"{n} entries, {unknowns} unknown images logged (+{new} before each teach): a teach's "
        f"re-check of the log, searching all again -> only those it may answer: {figures}; "
        f"{dropped} images dropped in all, the same both ways"
    )
    for name, (was, now) in timed.items():
        rows.append(
            {
                "name": f"a teach's re-check of {unknowns} logged unknown images ({name}), "
                f"{n} entries",
                "value": round(now, 2),
                "unit": "ms",
                "baseline": "searching and judging every logged image again",
                "baseline_value": round(was, 2),
                "ratio": round(now / was, 3),
            }
        )


def _report(
    n: int, examples: int, plain: float, timed: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    f = timed["all"]
    print(f"plain add_entries of one entry (median of {examples}): {plain:.2f} ms")
    print(
        f"teach one example: known category {timed['known']:.2f} ms, new category "
        f"{timed['new']:.2f} ms (medians); all {examples}: median {f['median_ms']:.2f}, mean "
        f"{f['mean_ms']:.2f}, p90 {f['p90_ms']:.2f} ms"
    )
    print(
        f"  breakdown (medians): calibration update {f['calibration_ms']:.2f} ms (mean "
        f"{f['calibration_mean_ms']:.2f}), of which the stored calibration's write "
        f"{f['write_ms']:.2f} ms in the {f['writes']} of {examples} examples that wrote it; "
        f"the rest (checks, thumbnail, entry write) {f['rest_ms']:.2f} ms"
    )
    for name, value in (
        ("known category", timed["known"]),
        ("new category", timed["new"]),
        ("mean of all", f["mean_ms"]),
    ):
        rows.append(
            {
                "name": f"teach one example ({name}) beyond encoding, {n} entries",
                "value": round(value, 2),
                "unit": "ms",
                "baseline": "plain add_entries of one entry",
                "baseline_value": round(plain, 2),
                "ratio": round(value / plain, 2),
                "target": f"< {TARGET_MS:g} ms",
                "met": value < TARGET_MS,
                "breakdown": {k: round(v, 2) for k, v in f.items()},
            }
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="Entries in the memory.")
    parser.add_argument("--examples", type=int, default=40, help="Examples taught (timed).")
    parser.add_argument("--json", type=Path, help="Write the figures as JSON rows here.")
    parser.add_argument(
        "--unknowns", type=int, default=0, help="Time the re-check of this many logged unknowns."
    )
    parser.add_argument(
        "--new", type=int, default=16, help="With --unknowns: images logged between teaches."
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if args.unknowns:
        bench_unknowns(args.size, args.unknowns, args.examples, args.new, rows)
    else:
        bench(args.size, args.examples, rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
