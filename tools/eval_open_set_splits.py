"""Open-set rejection on Fashion-MNIST over every way to hold classes out (real code paths).

``rar-agent eval --open-set`` measures one seeded split; which classes are held out matters a
lot on Fashion-MNIST (a held-out "shirt" looks like the known "pullover"). This script encodes
the images once, then for each of the C(10, n) held-out sets builds the memory of the other
classes (``CategoryMemory``), calibrates it (``openset.fit``), retrieves every test image
(``CategoryRetriever``) and judges it (``Recognizer.judge_many`` with ``reject="auto"``), and
reports the spread: AUROC, known-class top-1 drop, share of unknowns rejected, and how many
splits meet the issue's targets (drop <= 5 points with >= 1/3 of unknowns rejected).

Usage::

    python tools/eval_open_set_splits.py --encoder efficientnet-lite0
    python tools/eval_open_set_splits.py --shots 10 --test-per-class 100 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from rar_agent.encoders import load_encoder  # noqa: E402
from rar_agent.evaluation.metrics import QueryRecord  # noqa: E402
from rar_agent.evaluation.openset import open_set_report  # noqa: E402
from rar_agent.memory import CategoryMemory, MemoryEntry  # noqa: E402
from rar_agent.openset import fit, known_score  # noqa: E402
from rar_agent.pipeline import Recognizer  # noqa: E402


def _pick(split: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist(split)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )
    return images[idx], labels[idx]


def _embed(encoder: Any, images: np.ndarray) -> np.ndarray:
    from PIL import Image

    rows = []
    for start in range(0, len(images), 64):
        batch = [Image.fromarray(a).convert("RGB") for a in images[start : start + 64]]
        rows.append(encoder.embed_images(batch))
    return np.concatenate(rows)


def run_split(
    encoder: Any, held: tuple[int, ...], memory_set: tuple[np.ndarray, np.ndarray],
    test_set: tuple[np.ndarray, np.ndarray], workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    vectors, labels = memory_set
    keep = ~np.isin(labels, held)
    names = [FASHION_MNIST_CLASSES[c] for c in labels[keep]]
    entries = [MemoryEntry(n, "image", f"train-{i}", f"{n}-{i}") for i, n in enumerate(names)]
    with CategoryMemory.open(workdir / "-".join(map(str, held)), collection="split") as memory:
        memory.bind_encoder(encoder.fingerprint, encoder.dim)
        memory.add_entries(entries, vectors[keep])
        cal = fit(memory)
        rec = Recognizer(memory, encoder, k=5, reject="auto")
        retrieved = rec.retriever.retrieve_vectors(test_set[0])
        verdicts = rec.judge_many(retrieved)
    records = []
    for cands, verdict, y in zip(retrieved, verdicts, test_set[1], strict=True):
        top = cands[0]
        similarity, single = known_score(top.scores) or (top.score, True)
        records.append(QueryRecord(
            source="", label=FASHION_MNIST_CLASSES[y], candidates=[c.label for c in cands],
            scores=[c.score for c in cands], known=int(y) not in held,
            similarity=similarity,
            auto_threshold=cal.threshold_for(top.label, single=single),
            rejected=bool(verdict.reasons),
        ))  # fmt: skip
    report = open_set_report(records, [FASHION_MNIST_CLASSES[c] for c in held])
    return {
        "held_out": report.unknown_classes,
        "auroc": report.auroc,
        "known_top1": report.known_top1,
        "top1_drop_points": report.top1_drop_points,
        "unknown_rejected": report.unknown_rejected,
        "known_rejected": report.known_rejected,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--shots", type=int, default=10, help="Train images per class.")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=3, help="Classes held out per split.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write every split's figures here.")
    args = parser.parse_args(argv)
    encoder = load_encoder(args.encoder)
    train_x, train_y = _pick("train", args.shots, args.seed)
    test_x, test_y = _pick("test", args.test_per_class, args.seed + 1)
    print(f"encoding {len(train_x)} memory and {len(test_x)} test images ...", flush=True)
    memory_set = (_embed(encoder, train_x), train_y)
    test_set = (_embed(encoder, test_x), test_y)
    splits = []
    with tempfile.TemporaryDirectory(prefix="rar-splits-") as tmp:
        for held in itertools.combinations(range(10), args.held_out):
            splits.append(run_split(encoder, held, memory_set, test_set, Path(tmp)))
    table = np.array(
        [[s["auroc"], s["top1_drop_points"], s["unknown_rejected"]] for s in splits], dtype=float
    )
    met = (table[:, 1] <= 5.0) & (table[:, 2] >= 1 / 3)
    summary = {
        "splits": len(splits),
        "mean": dict(zip(("auroc", "top1_drop_points", "unknown_rejected"),
                         np.round(table.mean(0), 4).tolist(), strict=True)),
        "median": dict(zip(("auroc", "top1_drop_points", "unknown_rejected"),
                           np.round(np.median(table, 0), 4).tolist(), strict=True)),
        "share_meeting_targets": round(float(met.mean()), 4),
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    worst = sorted(splits, key=lambda s: s["auroc"])[:3]
    for s in worst:
        print("hardest:", s)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "splits": splits}, indent=2))


if __name__ == "__main__":
    main()
