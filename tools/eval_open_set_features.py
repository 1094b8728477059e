"""Open-set known-ness from more than the encoder's pooled embedding: measured, not shipped.

Issue 19's reach target (at 10 examples per class, a third of the unknown Fashion-MNIST
queries rejected at ALPHA 0.05) needs a better low-end ordering than the shipped statistic's:
even the knowns' own 5% quantile of it (an oracle no memory has) catches 29.7% on seeds 0-4.
This script measures candidates that need the images encoded again, and two that do not, all
scored by the shipped statistic (:class:`~rar_agent.openset.statistic.Whitening`, fitted on
the memory) unless said otherwise:

- **intermediate layers** (Lee et al. 2018's "feature ensemble", no training): the
  globally average-pooled output of each of EfficientNet-Lite0's 16 blocks, alone, appended
  to the embedding, or as a sum of per-layer statistics, each standardised by its own
  cross-fitted stand-ins (the memory's examples scored as queries by a statistic fitted
  without them);
- **other poolings of the last convolution**: GeM (p = 3) and the per-channel standard
  deviation, alone or appended;
- **test-time mirroring**: the embedding averaged with the mirrored image's, for the memory
  and the queries or for the queries only;
- **k nearest neighbours** on the statistic's whitened subspace coordinates;
- **per-category normalisation**: the statistic less its category's 10% quantile over the
  stand-ins (a per-category conformal location).

Each gets the AUROC and the share of unknown queries below the knowns' own 5% quantile (the
most any threshold that rejects 5% of the knowns could catch), mean over the memories: the
memories of ``eval_open_set.py`` (seeds 0-4; ``--splits NAME ...``: the 120 splits too) and,
as a held-out check (``--glyphs NAME ...``), session 4's 30 glyph memories of 24 characters
x 10 fonts with 8 unseen.

Usage::

    python tools/eval_open_set_features.py --cache artifacts/openset --json features.json \\
        --splits "standard deviation over positions" --glyphs "standard deviation over positions"

(The first run encodes the train pool and the test images, and the first ``--glyphs`` run the
3100 glyphs, through the network with hooks into ``--cache`` (``layers.npz``,
``glyph_layers.npz``), two forward passes per image; later runs read them.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.evaluation.openset import auroc  # noqa: E402
from rar_agent.openset.statistic import Whitening  # noqa: E402
from tools.eval_open_set import (  # noqa: E402
    add_cache_arguments,
    memory_rows,
    pick_rows,
    seed_memories,
    split_memories,
)

BLOCKS = 16
"""EfficientNet-Lite0's blocks (``model._blocks``)."""
ENSEMBLES = {
    "the embedding + block 16": ("head", "block16"),
    "the embedding + blocks 12-16": ("head", *(f"block{i}" for i in range(12, 17))),
    "every block and the embedding": ("head", *(f"block{i}" for i in range(1, BLOCKS + 1))),
}
"""Layer sets of the feature ensemble (sums of standardised per-layer statistics)."""
APPENDED = (16, 12, 8)
"""Blocks appended (weight 0.5, each part unit length) to the embedding."""
STANDIN_FOLDS = 5


def encode_layers(encoder: Any, images: Sequence[Any], batch: int = 32) -> dict[str, np.ndarray]:
    """Pooled activations of an EfficientNet-Lite0 encoder's network, per image.

    Args:
        encoder: An :class:`~rar_agent.encoders.effnet_backend.EfficientNetLite0Encoder`.
        images: PIL images.
        batch: Images per forward pass.

    Returns:
        ``block1`` .. ``block16``: each block's output averaged over positions; ``head``: the
        last convolution's (the encoder's embedding before its extra coordinate and its
        normalisation); ``gem``, ``std``: the last convolution pooled by a generalised mean
        (p = 3) and by its standard deviation over positions; ``mirrored``: ``head`` of the
        left-right mirrored image.
    """
    import torch

    model = encoder.model
    seen: dict[int, np.ndarray] = {}
    handles = [
        block.register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, out.float().mean(dim=(2, 3)).numpy())
        )
        for i, block in enumerate(model._blocks)
    ]
    rows: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(images), batch):
            with torch.inference_mode():
                pixels = encoder.preprocess(images[start : start + batch])
                pixels = pixels.contiguous(memory_format=torch.channels_last)
                maps = model.extract_features(pixels).float()
                mirrored = model.extract_features(torch.flip(pixels, dims=[3])).float()
            parts = {f"block{i + 1}": seen[i] for i in range(len(handles))}
            parts["head"] = maps.mean(dim=(2, 3)).numpy()
            parts["gem"] = maps.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3).numpy()
            parts["std"] = maps.std(dim=(2, 3)).numpy()
            parts["mirrored"] = mirrored.mean(dim=(2, 3)).numpy()
            for name, value in parts.items():
                rows.setdefault(name, []).append(value)
    finally:
        for handle in handles:
            handle.remove()
    return {name: np.concatenate(value).astype(np.float32) for name, value in rows.items()}


def load_layers(cache: Path, pool: int, test: int) -> dict[str, np.ndarray]:
    """The train pool's and test images' :func:`encode_layers` (``train_*``, ``test_*``,
    with ``train_y``, ``test_y``), the same images as ``eval_open_set.py``'s cache; encoded
    once into ``cache/layers.npz``."""
    path = cache / "layers.npz"
    if path.exists():
        with np.load(path) as stored:
            return dict(stored)
    from PIL import Image

    from rar_agent.datasets import load_fashion_mnist
    from rar_agent.encoders import load_encoder

    encoder = load_encoder("efficientnet-lite0")
    out: dict[str, np.ndarray] = {}
    for split, per_class, seed in (("test", test, 1), ("train", pool, 0)):
        images, labels = load_fashion_mnist(split)  # type: ignore[arg-type]
        idx = pick_rows(labels, per_class, seed)
        layers = encode_layers(encoder, [Image.fromarray(a).convert("RGB") for a in images[idx]])
        out |= {f"{split}_{name}": value for name, value in layers.items()}
        out[f"{split}_y"] = labels[idx]
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def load_glyph_layers(cache: Path, families: int = 50) -> dict[str, np.ndarray]:
    """:func:`encode_layers` of the glyph reference set (``fit_encoder_prior.py``'s: the 62
    letters and digits in ``families`` font families), with ``y`` (the character's index);
    encoded once into ``cache/glyph_layers.npz``."""
    path = cache / "glyph_layers.npz"
    if path.exists():
        with np.load(path) as stored:
            return dict(stored)
    from rar_agent.encoders import load_encoder
    from tools.fit_encoder_prior import CHARS, glyph_fonts, render_glyphs

    encoder = load_encoder("efficientnet-lite0")
    images = [im for _, _, font in glyph_fonts(families) for im in render_glyphs(font) or []]
    out = encode_layers(encoder, images)
    out["y"] = np.tile(np.arange(len(CHARS)), len(images) // len(CHARS))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def reach(known: np.ndarray, unknown: np.ndarray, alpha: float = 0.05) -> float:
    """Share of ``unknown`` scores below the ``alpha`` quantile of the ``known`` ones: the
    most a threshold that rejects ``alpha`` of the knowns could catch (higher = more known)."""
    return float(np.mean(np.asarray(unknown) < np.quantile(np.asarray(known), alpha)))


def statistic(mx: np.ndarray, my: np.ndarray, qx: np.ndarray) -> tuple[np.ndarray, Whitening]:
    """The shipped statistic of queries ``qx`` for each category ``(n, categories)`` (sorted
    labels), fitted on the memory ``mx`` (labels ``my``), and the fitted statistic.

    Raises:
        ValueError: When no category of the memory has two examples.
    """
    model = Whitening.fit(mx, [str(c) for c in my])
    if model is None:
        raise ValueError("the statistic needs a category with two examples")
    labels = np.unique(my)
    means = np.stack([mx[my == c].mean(axis=0) for c in labels])
    return model.scores(model.project(qx), model.centre_terms(model.project(means))), model


def standins(mx: np.ndarray, my: np.ndarray, folds: int = STANDIN_FOLDS) -> np.ndarray:
    """Each example's statistic for its own category, from a statistic and category means
    fitted without its fold (stratified folds): how a known query scores."""
    fold = np.empty(len(my), dtype=int)
    for c in np.unique(my):
        rows = np.flatnonzero(my == c)
        fold[rows] = np.random.default_rng(int(c)).permutation(len(rows)) % folds
    out = np.empty(len(my))
    labels = np.unique(my)
    for f in range(folds):
        train, test = fold != f, fold == f
        scores, _ = statistic(mx[train], my[train], mx[test])
        out[test] = scores[np.arange(int(test.sum())), np.searchsorted(labels, my[test])]
    return out


Layers = dict[str, np.ndarray]
"""Layer name -> one row per image (:func:`encode_layers`)."""
Candidate = Callable[[Layers, np.ndarray, Layers], np.ndarray]
"""``(memory layers, memory labels, query layers) -> known-ness of every query``."""


def _layer(memory: Layers, queries: Layers, name: str) -> tuple[np.ndarray, np.ndarray]:
    return _unit(memory[name]), _unit(queries[name])


def _alone(name: str) -> Candidate:
    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        mx, qx = _layer(memory, queries, name)
        return statistic(mx, my, qx)[0].max(axis=1)

    return score


def _appended(names: Sequence[str], weight: float = 0.5) -> Candidate:
    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        parts = [_layer(memory, queries, n) for n in ("head", *names)]
        w = [1.0] + [weight] * len(names)
        mx = np.concatenate([m * k for (m, _), k in zip(parts, w, strict=True)], axis=1)
        qx = np.concatenate([q * k for (_, q), k in zip(parts, w, strict=True)], axis=1)
        return statistic(mx, my, qx)[0].max(axis=1)

    return score


def _ensemble(names: Sequence[str]) -> Candidate:
    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        total = np.zeros(len(queries["head"]))
        for name in names:
            mx, qx = _layer(memory, queries, name)
            own = standins(mx, my)
            total += (statistic(mx, my, qx)[0].max(axis=1) - own.mean()) / own.std()
        return total

    return score


def _mirrored(memory_too: bool) -> Candidate:
    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        mx, qx = _layer(memory, queries, "head")
        mirror_m, mirror_q = _layer(memory, queries, "mirrored")
        return statistic(_unit(mx + mirror_m) if memory_too else mx, my, _unit(qx + mirror_q))[
            0
        ].max(axis=1)

    return score


def _neighbours(k: int, best_category: bool) -> Candidate:
    """Minus the squared distance, in the statistic's whitened subspace coordinates, to the
    ``k``-th closest example (or the mean of the ``k`` closest of the best category)."""

    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        mx, qx = _layer(memory, queries, "head")
        scores, model = statistic(mx, my, qx)
        root = np.linalg.cholesky(model.within)
        wm = model.project(mx)[:, : model.rank] @ root
        wq = model.project(qx)[:, : model.rank] @ root
        d = (wq**2).sum(1)[:, None] + (wm**2).sum(1)[None, :] - 2.0 * wq @ wm.T
        if not best_category:
            return -np.sort(d, axis=1)[:, k - 1]
        labels = np.unique(my)
        near = np.stack([np.sort(d[:, my == c], axis=1)[:, :k].mean(1) for c in labels], 1)
        return -near[np.arange(len(qx)), scores.argmax(axis=1)]

    return score


def _per_category(quantile: float = 0.1) -> Candidate:
    def score(memory: Layers, my: np.ndarray, queries: Layers) -> np.ndarray:
        mx, qx = _layer(memory, queries, "head")
        own = standins(mx, my)
        where = np.array([np.quantile(own[my == c], quantile) for c in np.unique(my)])
        return (statistic(mx, my, qx)[0] - where[None, :]).max(axis=1)

    return score


def candidates() -> dict[str, Candidate]:
    """Every known-ness score this script measures, by the name its tables give."""
    out: dict[str, Candidate] = {"the shipped statistic (the embedding)": _alone("head")}
    out |= {f"block {i} alone": _alone(f"block{i}") for i in range(1, BLOCKS + 1)}
    out |= {f"the embedding + 0.5 x block {i}": _appended([f"block{i}"]) for i in APPENDED}
    out |= {f"feature ensemble: {k}": _ensemble(v) for k, v in ENSEMBLES.items()}
    out |= {
        "GeM-pooled last convolution (p = 3)": _alone("gem"),
        "standard deviation over positions": _alone("std"),
        "the embedding + 0.5 x standard deviation": _appended(["std"]),
        "mirrored view averaged in, memory and queries": _mirrored(True),
        "mirrored view averaged in, queries only": _mirrored(False),
        "nearest example, whitened subspace": _neighbours(1, False),
        "5th nearest example, whitened subspace": _neighbours(5, False),
        "mean of the best category's 3 nearest, whitened subspace": _neighbours(3, True),
        "per category: less its 10% stand-in quantile": _per_category(),
    }
    return out


Trial = tuple[Layers, np.ndarray, Layers, np.ndarray]
"""``(memory layers, memory labels, query layers, which queries are known)``."""
Figures = dict[str, dict[str, float]]
"""Candidate name -> mean ``auroc`` and ``reach``."""


def fashion_trials(
    layers: Layers, memories: list[tuple[list[int], int]], shots: int = 10
) -> Iterator[Trial]:
    """The memories of ``eval_open_set.py`` (``(held-out classes, seed)``: ``shots`` train
    images per known class) against the 1000 test images, as :data:`Trial` s."""
    train = {k.removeprefix("train_"): v for k, v in layers.items() if k.startswith("train_")}
    queries = {k.removeprefix("test_"): v for k, v in layers.items() if k.startswith("test_")}
    for held, seed in memories:
        rows = memory_rows({"train_y": layers["train_y"]}, held, shots, seed)
        memory = {k: v[rows] for k, v in train.items()}
        yield memory, memory.pop("y"), queries, ~np.isin(layers["test_y"], held)


def pool_trials(
    layers: Layers, n: int = 30, shots: int = 10, known: int = 24, unseen: int = 8
) -> Iterator[Trial]:
    """``n`` memories drawn from one pool (``y``: its categories): ``shots`` examples of each
    of ``known`` categories; queries: every other image of those and of ``unseen`` more
    (session 4's held-out check on the glyphs), as :data:`Trial` s."""
    y = layers["y"]
    rng = np.random.default_rng(0)
    names = np.array([c for c in np.unique(y) if (y == c).sum() >= shots + 2])
    for _ in range(n):
        order = rng.permutation(names)
        mine, other = order[:known], order[known : known + unseen]
        picks = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in mine]
        )
        asked = np.setdiff1d(np.flatnonzero(np.isin(y, np.concatenate([mine, other]))), picks)
        yield (
            {k: v[picks] for k, v in layers.items() if k != "y"}, y[picks],
            {k: v[asked] for k, v in layers.items() if k != "y"}, np.isin(y[asked], mine),
        )  # fmt: skip


def compare(trials: Iterable[Trial], names: Sequence[str] | None = None) -> Figures:
    """AUROC and :func:`reach` of the :func:`candidates` (``names``: some of them), mean
    over the ``trials``."""
    chosen = candidates()
    if names is not None:
        unknown = sorted(set(names) - set(chosen))
        if unknown:
            raise SystemExit(f"unknown candidates {unknown}; known: {sorted(chosen)}")
        chosen = {n: chosen[n] for n in names}
    found: dict[str, list[tuple[float, float]]] = {}
    for memory, my, queries, known in trials:
        for name, score in chosen.items():
            value = score(memory, my, queries)
            pair = (auroc(value[known].tolist(), value[~known].tolist()) or 0.0,
                    reach(value[known], value[~known]))  # fmt: skip
            found.setdefault(name, []).append(pair)
    return {
        name: {
            "auroc": round(float(np.mean([p[0] for p in v])), 4),
            "reach": round(float(np.mean([p[1] for p in v])), 4),
        }  # fmt: skip
        for name, v in found.items()
    }


COLUMNS = {"seeds": "seeds 0-4", "splits": "120 splits", "glyphs": "glyphs, 10 fonts each"}
"""The tables' columns: Fashion-MNIST's seeds and splits, the held-out glyphs."""


def markdown(figures: dict[str, Figures]) -> str:
    """One table: AUROC and reach in each of :data:`COLUMNS` measured (``-``: not)."""
    columns = [c for c in COLUMNS if c in figures]
    lines = [
        "| score (10 examples) | " + " | ".join(COLUMNS[c] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    names = dict.fromkeys(n for c in columns for n in figures[c])
    for name in names:
        cells = []
        for c in columns:
            v = figures[c].get(name)
            cells.append(f"{v['auroc']:.3f}, {100 * v['reach']:.1f}%" if v else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cache_arguments(parser)
    parser.add_argument(
        "--splits", nargs="*", default=[], metavar="NAME",
        help="Candidates to measure over the 120 splits too (slow: about 1 s each per split).",
    )  # fmt: skip
    parser.add_argument(
        "--glyphs", nargs="*", default=[], metavar="NAME",
        help="Candidates to check on the held-out glyphs (encoded once into --cache).",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--markdown", type=Path, help="Write the table here (Markdown).")
    args = parser.parse_args(argv)
    layers = load_layers(args.cache, args.pool, args.test_per_class)
    figures = {"seeds": compare(fashion_trials(layers, seed_memories()))}
    if args.splits:
        figures["splits"] = compare(fashion_trials(layers, split_memories()), args.splits)
    if args.glyphs:
        figures["glyphs"] = compare(pool_trials(load_glyph_layers(args.cache)), args.glyphs)
    for column, found in figures.items():
        for name, v in found.items():
            print(
                f"{COLUMNS[column]}: AUROC {v['auroc']:.3f}, reach {100 * v['reach']:.1f}%  {name}"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(figures))


if __name__ == "__main__":
    main()
