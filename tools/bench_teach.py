"""Benchmark teaching one example through the teacher, beyond encoding, calibration included.

On a calibrated memory of clustered random unit vectors (``--size`` entries, 10 per
category), each taught image is a small PNG whose vector a stand-in encoder looks up (so the
encoder costs nothing and what is timed is everything else): reading and hashing the bytes,
decoding, the thumbnail, the same-content / near-duplicate search, the write and the
calibration update. The baseline, measured in the same run, is a plain ``add_entries`` of one
entry with no calibration update (the floor of any write). Target: under 50 ms per example.

Usage::

    python tools/bench_teach.py                      # 10k entries, 40 examples
    python tools/bench_teach.py --size 10000 --examples 40 --json rows.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.memory import CategoryMemory, MemoryEntry  # noqa: E402
from rar_agent.openset import fit as calibrate  # noqa: E402
from rar_agent.pipeline.teacher import Teacher  # noqa: E402

DIM = 512
PER_LABEL = 10
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
                found = self.last + self.rng.normal(0, 0.3 / np.sqrt(DIM), DIM)
                found /= np.linalg.norm(found)
            self.last = found
            out.append(found)
        return np.stack(out).astype(np.float32)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = -(-n // PER_LABEL)
    centres = rng.standard_normal((labels, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = np.repeat(np.arange(labels), PER_LABEL)[:n]
    x = centres[ids] + rng.normal(0, 0.5 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, ids


def _png(i: int) -> tuple[bytes, Any]:
    from PIL import Image

    rng = np.random.default_rng(10_000 + i)
    image = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), image


def _ms(samples: list[float]) -> float:
    return float(np.median(samples)) * 1000.0


def bench(n: int, examples: int, rows: list[dict[str, Any]]) -> None:
    """Time teaching ``examples`` images into a memory of ``n`` entries."""
    x, ids = _data(n + 2 * examples, seed=n)
    entries = [MemoryEntry(f"category {c}", "image", f"e{i}", f"h{i}") for i, c in enumerate(ids)]
    encoder = _LookupEncoder()
    with tempfile.TemporaryDirectory(prefix="rar-bench-teach-") as tmp:
        memory = CategoryMemory.open(Path(tmp) / "mem", collection="bench")
        memory.bind_encoder(encoder.fingerprint, DIM)
        t0 = time.perf_counter()
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            memory.add_entries(entries[start:stop], x[start:stop])
        memory.optimize(min_unindexed=10_000)
        calibrate(memory)
        print(f"{n} entries: built and calibrated in {time.perf_counter() - t0:.1f} s")

        plain = []
        for i in range(n, n + examples):  # the floor: one write, no checks, no calibration
            t0 = time.perf_counter()
            memory.add_entries([entries[i]], x[i : i + 1])
            plain.append(time.perf_counter() - t0)

        teacher = Teacher(memory, encoder, via="api")  # type: ignore[arg-type]
        taught, new_category = [], []
        for j, i in enumerate(range(n + examples, n + 2 * examples)):
            data, image = _png(j)
            encoder.table[hashlib.sha1(image.tobytes()).hexdigest()] = x[i]
            label = entries[i].label if j % 4 else f"new category {j}"  # every 4th is new
            t0 = time.perf_counter()
            teacher.add(label, [(f"example-{j}.png", data)])
            (taught if j % 4 else new_category).append(time.perf_counter() - t0)
        memory.close()
    print(f"plain add_entries of one entry (median of {examples}): {_ms(plain):.2f} ms")
    print(
        f"teach one example of a known category (median of {len(taught)}): "
        f"{_ms(taught):.2f} ms; of a new category (with its view stand-in): "
        f"{_ms(new_category):.2f} ms"
    )
    for name, samples in (("known category", taught), ("new category", new_category)):
        rows.append(
            {
                "name": f"teach one example ({name}) beyond encoding, {n} entries",
                "value": round(_ms(samples), 2),
                "unit": "ms",
                "baseline": "plain add_entries of one entry",
                "baseline_value": round(_ms(plain), 2),
                "ratio": round(_ms(samples) / _ms(plain), 2),
                "target": f"< {TARGET_MS:g} ms",
                "met": _ms(samples) < TARGET_MS,
            }
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="Entries in the memory.")
    parser.add_argument("--examples", type=int, default=40, help="Examples taught (timed).")
    parser.add_argument("--json", type=Path, help="Write the figures as JSON rows here.")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    bench(args.size, args.examples, rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
