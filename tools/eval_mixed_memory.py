"""Teaching photos into the built-in ImageNet memory: what the taught label wins, what it leaves.

The built-in memory holds EfficientNet-Lite0's 1000 ImageNet classifier rows on its *text*
side; a taught photo lands on its *image* side. Each trial teaches 1, 2 or 5 examples of a
few new categories (labels ``my <category>``) into a fresh built-in memory through the
product's one door (:class:`~rar_agent.pipeline.teacher.Teacher`), then answers:

- **taught**: held-out images of the taught categories; the share answered with the taught
  label;
- **others**: every image of a category not taught (the other photo's views, the other
  garments, the other emoji); the share whose answer is the one the memory gave before the
  teaching (its class names').

Each side is retrieved by the product's retriever (``retrieve_vectors(kind=...)``) and the
answer is :func:`rar_agent.retrieval.lead_side` at each candidate bar, which is what ``auto``
retrieval does at the bar it is given. *before*: the image side alone, what ``auto``
answered before it searched both sides (any example made the image side answer). The encoder
prior's open-set threshold (the similarity it sets for a one-example category, at ALPHA 0.05,
for a memory of the taught categories' scale) is a bar too, where five categories or more
give a scale.

Reference images (all offline): ``examples/images`` (cat.jpg, coffee.jpg) and views of each
(a 10% crop, a flip, half size, corner crops of 50-70%, ``augment_image`` views), taught one
photo at a time; Fashion-MNIST test images (Debian ``dataset-fashion-mnist``); emoji drawn
by EmojiOne, emojify and Noto (Debian ``ruby-gemojione``, ``libjs-emojify``,
``fonts-noto-color-emoji``; ``tools/emoji_reference.py``), whose three drawings of a thing
allow 1 or 2 taught. ``--bar`` prints the reference measure of the shipped bar: the 99th
percentile of the similarity between images of different categories, per set.

Usage::

    python tools/eval_mixed_memory.py [--seeds 4] [--per-class 30] [--emoji 120] [--bar]
    python tools/eval_mixed_memory.py --cost    # CPU per retrieval: one side or both, 10k
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from emoji_reference import catalogue, render  # noqa: E402

from rar_agent.openset.prior import MemoryScale, encoder_prior, similarity_at  # noqa: E402
from rar_agent.retrieval import NEAR_DUPLICATE, lead_side  # noqa: E402

BARS = (0.6, 0.7, 0.75, 0.85, NEAR_DUPLICATE)
"""Raw bars compared (the shipped one: ``rar_agent/encoders/same_thing.json``)."""
SHOTS = {"photos": (1, 2, 5), "fashion": (1, 2, 5), "emoji": (1, 2)}
TAUGHT = {"photos": 1, "fashion": 5, "emoji": 5}
"""Categories taught per trial."""
K = 5


@dataclass
class RefSet:
    """Images of one reference set: the images (PIL) and their categories."""

    images: list[Any]
    labels: np.ndarray


def photo_views() -> RefSet:
    """cat.jpg and coffee.jpg, each with 15 other views of it."""
    from PIL import Image

    from rar_agent.datasets import augment_image

    rng = random.Random(0)
    images, labels = [], []
    for name in ("cat", "coffee"):
        im = Image.open(ROOT / "examples" / "images" / f"{name}.jpg").convert("RGB")
        w, h = im.size
        views = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), im.resize((w // 2, h // 2))]
        views.append(im.crop((w // 10, h // 10, w - w // 10, h - h // 10)))
        for f in (0.6, 0.7):
            views.append(im.crop((0, 0, int(w * f), int(h * f))))
            views.append(im.crop((int(w * (1 - f)), int(h * (1 - f)), w, h)))
        views += [augment_image(im, rng) for _ in range(9)]
        images += views
        labels += [name] * len(views)
    return RefSet(images, np.asarray(labels))


def fashion(per_class: int) -> RefSet:
    """``per_class`` seeded Fashion-MNIST test images of each garment."""
    from PIL import Image

    from rar_agent.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    x, y = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)]
    )
    images = [Image.fromarray(x[i]).convert("RGB") for i in rows]
    return RefSet(images, np.asarray([FASHION_MNIST_CLASSES[y[i]] for i in rows]))


def emoji(things: int) -> RefSet:
    """The first ``things`` emoji drawn by all three Debian sets, each set's drawing."""
    images, labels = [], []
    for item in catalogue(None):
        drawn = [render(item, s, None) for s in ("emojione", "emojify", "noto")]
        if all(d is not None and np.asarray(d).std() > 2.0 for d in drawn):
            images += [d.convert("RGB") for d in drawn]
            labels += [item["name"]] * 3
        if len(labels) >= 3 * things:
            break
    return RefSet(images, np.asarray(labels))


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_bar(vectors: np.ndarray, labels: np.ndarray) -> float:
    """The 99th percentile of the similarity between two images of different categories."""
    unit = _unit(vectors)
    different = labels[:, None] != labels[None, :]
    return float(np.quantile((unit @ unit.T)[np.triu(different, 1)], 0.99))


class Trial:
    """One fresh built-in memory, taught ``taught`` (index lists per category)."""

    def __init__(self, encoder: Any, folder: Path) -> None:
        from rar_agent.ingest.vocabulary import add_builtin_vocabulary
        from rar_agent.memory import CategoryMemory
        from rar_agent.pipeline import Recognizer

        self.memory = CategoryMemory.open(folder, collection="builtin")
        add_builtin_vocabulary(self.memory, encoder)
        self.recognizer = Recognizer(self.memory, encoder, k=K)

    def teach(self, examples: dict[str, list[Any]]) -> None:
        """Store the images of each label through the teacher."""
        from rar_agent.pipeline.teacher import Teacher

        teacher = Teacher(self.memory, self.recognizer.encoder, via="api")
        for label, images in examples.items():
            teacher.add(label, [(f"{label} {i}.png", _png(im)) for i, im in enumerate(images)])

    def sides(self, vectors: np.ndarray) -> tuple[list[Any], list[Any]]:
        """Each query's image-side and text-side candidates."""
        retriever = self.recognizer.retriever
        return (
            retriever.retrieve_vectors(vectors, kind="image"),
            retriever.retrieve_vectors(vectors, kind="text"),
        )

    def close(self) -> None:
        """Close the recognizer and its memory."""
        self.recognizer.close()


def prior_bar(fingerprint: str, vectors: np.ndarray, labels: list[str]) -> float | None:
    """The encoder prior's one-example threshold at ALPHA 0.05 as a similarity, for a memory
    of these examples (None: fewer than five categories, or no prior)."""
    prior, scale = encoder_prior(fingerprint), MemoryScale.measure(labels, vectors)
    score = None if prior is None or scale is None else prior.threshold(0.05, 1, scale)
    return None if score is None or scale is None else similarity_at(score, scale)


def run(sets: dict[str, RefSet], vectors: dict[str, np.ndarray], seeds: int, encoder: Any) -> Any:
    """Every trial's shares per rule: ``{(set, shots): {rule: [(taught, others), ...]}}``."""
    before = _text_answers(encoder, vectors)
    out: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
    plan = [(name, n, seed) for name in sets for n in SHOTS[name] for seed in range(seeds)]
    for done, (name, n, seed) in enumerate(plan, 1):
        print(f"\r{done}/{len(plan)} trials ({name}, {n} taught)", end="", file=sys.stderr)
        shares = _trial(sets, vectors, before, name, n, seed, encoder)
        for rule, pair in shares.items():
            out.setdefault((name, n), {}).setdefault(rule, []).append(pair)
    print(file=sys.stderr)
    return out


def _text_answers(encoder: Any, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each image's answer from the class names alone (before any teaching)."""
    with tempfile.TemporaryDirectory() as folder:
        trial = Trial(encoder, Path(folder))
        try:
            retriever = trial.recognizer.retriever
            return {
                name: np.asarray([c[0].label for c in retriever.retrieve_vectors(x)])
                for name, x in vectors.items()
            }
        finally:
            trial.close()


def _trial(
    sets: dict[str, RefSet],
    vectors: dict[str, np.ndarray],
    before: dict[str, np.ndarray],
    name: str,
    n: int,
    seed: int,
    encoder: Any,
) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    ref = sets[name]
    cats = rng.permutation(np.unique(ref.labels))[: TAUGHT[name]]
    if name == "photos":
        cats = np.asarray([["cat", "coffee"][seed % 2]])
    taught: dict[str, list[int]] = {}
    held: list[int] = []
    for cat in cats:
        rows = rng.permutation(np.flatnonzero(ref.labels == cat))
        taught[f"my {cat}"], held = list(rows[:n]), held + list(rows[n:])
    queries = {"taught": (name, np.asarray(held))}
    others = {
        other: np.flatnonzero(~np.isin(ref.labels, cats))
        if other == name
        else np.arange(len(sets[other].labels))
        for other in sets
    }
    with tempfile.TemporaryDirectory() as folder:
        trial = Trial(encoder, Path(folder))
        try:
            trial.teach({label: [ref.images[i] for i in rows] for label, rows in taught.items()})
            examples = np.concatenate([vectors[name][rows] for rows in taught.values()])
            names = [label for label, rows in taught.items() for _ in rows]
            bars: dict[str, float | None] = {f"bar {b:g}": b for b in BARS}
            bars["encoder prior's threshold"] = prior_bar(encoder.fingerprint, examples, names)
            held_x = vectors[name][queries["taught"][1]]
            truth = [f"my {c}" for c in ref.labels[queries["taught"][1]]]
            other_x = np.concatenate([vectors[o][rows] for o, rows in others.items() if len(rows)])
            other_before = np.concatenate(
                [before[o][rows] for o, rows in others.items() if len(rows)]
            )
            h_img, h_txt = trial.sides(held_x)
            o_img, o_txt = trial.sides(other_x)
        finally:
            trial.close()
    out = {"before (image side first)": _shares(h_img, truth, o_img, other_before)}
    for rule, bar in bars.items():
        if bar is None:
            continue
        held_c = [lead_side(i, t, K, bar, base="text") for i, t in zip(h_img, h_txt, strict=True)]
        other_c = [lead_side(i, t, K, bar, base="text") for i, t in zip(o_img, o_txt, strict=True)]
        out[rule] = _shares(held_c, truth, other_c, other_before)
    return out


def _shares(
    held: list[Any], truth: list[str], others: list[Any], before: np.ndarray
) -> tuple[float, float]:
    won = np.mean([c[0].label == t for c, t in zip(held, truth, strict=True)])
    kept = np.mean([c[0].label == b for c, b in zip(others, before, strict=True)])
    return float(won), float(kept)


def table(results: Any, rules: list[str]) -> str:
    """One row per rule, one column per (set, taught examples): taught % / others kept %."""
    cols = list(results)
    head = "| rule | " + " | ".join(f"{s}, {n} taught" for s, n in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for rule in rules:
        cells = []
        for col in cols:
            pairs = results[col].get(rule)
            if not pairs:
                cells.append("n/a")
                continue
            won, kept = np.mean(pairs, axis=0) * 100
            cells.append(f"{won:.0f} / {kept:.1f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost(rounds: int = 800) -> dict[str, float]:
    """CPU milliseconds of one query's retrieval (``retrieve_vectors``, min of ``rounds``
    after 20 warm-up rounds) over random memories of 10k example images (of 1000 categories),
    of 1000 class rows, and of both: the photos of 1000 categories (the base side, on a tie)
    or of 500 (the class names the base, as in the built-in memory): what searching both
    sides costs, in-process (no benchmark run)."""
    import time

    from rar_agent.memory import CategoryMemory, MemoryEntry
    from rar_agent.retrieval import CategoryRetriever

    dim, rng = 1281, np.random.default_rng(0)
    query = rng.normal(size=(1, dim)).astype(np.float32)
    out = {}
    shapes = {  # example images, their categories, class rows
        "10k images": (10_000, 1000, 0),
        "1000 class rows": (0, 0, 1000),
        "both, photos the base": (10_000, 1000, 1000),
        "both, class names the base": (10_000, 500, 1000),
    }
    with tempfile.TemporaryDirectory() as folder:
        for name, (images, cats, texts) in shapes.items():
            memory = CategoryMemory.open(Path(folder) / name, collection="cost")
            memory.bind_encoder("cost", dim)
            centres = rng.normal(size=(1000, dim))
            if images:
                x = centres[np.arange(images) % cats] + 0.6 * rng.normal(size=(images, dim))
                entries = [
                    MemoryEntry(f"c{i % cats}", "image", "x", f"i{i}") for i in range(images)
                ]
                memory.add_entries(entries, x.astype(np.float32))
            if texts:
                entries = [MemoryEntry(f"t{i}", "text", "x", f"t{i}") for i in range(texts)]
                memory.add_entries(entries, rng.normal(size=(texts, dim)).astype(np.float32))
            encoder = type("Fixed", (), {"fingerprint": "cost", "dim": dim})()
            retriever = CategoryRetriever(memory=memory, encoder=encoder, k=K, same_thing=0.75)
            for _ in range(20):
                retriever.retrieve_vectors(query)
            best = float("inf")
            for _ in range(rounds):
                start = time.thread_time()
                retriever.retrieve_vectors(query)
                best = min(best, time.thread_time() - start)
            out[name] = best * 1000
            memory.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Teach, answer, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4, help="trials per set and number taught")
    p.add_argument("--per-class", type=int, default=30, help="Fashion-MNIST images per garment")
    p.add_argument("--emoji", type=int, default=120, help="emoji things (three drawings each)")
    p.add_argument("--bar", action="store_true", help="print the reference measure of the bar")
    p.add_argument("--cost", action="store_true", help="only the CPU cost of a retrieval")
    args = p.parse_args(argv)
    if args.cost:
        for name, ms in cost().items():
            print(f"{name}: {ms:.3f} ms of CPU per query's retrieval")
        return 0

    from rar_agent.encoders import load_encoder, same_thing_bar

    encoder = load_encoder("efficientnet-lite0", device="cpu")
    print("encoding the reference images ...", file=sys.stderr)
    sets = {"photos": photo_views(), "fashion": fashion(args.per_class), "emoji": emoji(args.emoji)}
    vectors = {name: encoder.embed_images(ref.images) for name, ref in sets.items()}
    if args.bar:
        for name in ("fashion", "emoji"):
            bar = reference_bar(vectors[name], sets[name].labels)
            print(f"99th percentile of different-category similarity, {name}: {bar:.3f}")
    shipped = same_thing_bar(encoder.fingerprint)
    rules = ["before (image side first)", *(f"bar {b:g}" for b in BARS)]
    rules.append("encoder prior's threshold")
    print(
        f"Cells: taught-category images answered with the taught label % / other images whose "
        f"answer is unchanged %; mean of {args.seeds} seeds (shipped bar: {shipped}, "
        f"an encoder without one: {NEAR_DUPLICATE})."
    )
    print(table(run(sets, vectors, args.seeds, encoder), rules))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
