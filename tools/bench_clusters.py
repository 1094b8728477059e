"""Shared set-up of the memory benchmarks: a memory of clustered random unit vectors.

``clustered(n, seed)`` draws ``n`` unit vectors around one random centre per category
(``PER_LABEL`` per category); ``build(path, x, ids, fingerprint)`` stores the first ``n`` of
them as image entries of ``category <c>`` and builds the index, timed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.memory import CategoryMemory, MemoryEntry  # noqa: E402

__all__ = ["DIM", "PER_LABEL", "build", "clustered", "entries_of", "median_ms"]

DIM = 512
PER_LABEL = 10


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors, ``PER_LABEL`` per category around its random centre, and the
    category of each."""
    rng = np.random.default_rng(seed)
    labels = -(-n // PER_LABEL)
    centres = rng.standard_normal((labels, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = np.repeat(np.arange(labels), PER_LABEL)[:n]
    x = centres[ids] + rng.normal(0, 0.5 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, ids


def entries_of(ids: np.ndarray) -> list[MemoryEntry]:
    """One image entry per vector, labelled ``category <c>``."""
    return [MemoryEntry(f"category {c}", "image", f"e{i}", f"h{i}") for i, c in enumerate(ids)]


def build(
    path: Path, entries: list[MemoryEntry], x: np.ndarray, n: int, fingerprint: str
) -> tuple[CategoryMemory, float]:
    """A memory at ``path`` holding the first ``n`` entries, indexed, and the seconds it took
    (uncalibrated: each benchmark times its calibration itself)."""
    memory = CategoryMemory.open(path, collection="bench")
    memory.bind_encoder(fingerprint, x.shape[1])
    t0 = time.perf_counter()
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        memory.add_entries(entries[start:stop], x[start:stop])
    memory.optimize(min_unindexed=10_000)
    return memory, time.perf_counter() - t0


def median_ms(samples: list[float]) -> float:
    """The median of timings in seconds, in milliseconds."""
    return float(np.median(samples)) * 1000.0
