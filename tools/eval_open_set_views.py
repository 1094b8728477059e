"""Open-set known-ness with augmented views of the memory's examples: measured, not shipped.

Issue 19's reach target at 10 examples per class needs a better low-end ordering of the
shipped statistic (:class:`~rar_agent.openset.statistic.Whitening`): its within-category
covariance is estimated from 10 examples x 7 classes = 70 vectors in 64 dimensions, a noisy
estimate. This script adds ``VIEWS`` augmented views of every memory example (a random
resized crop, a mirror half of the time, a shift of a pixel or two: what a second photo of
the same garment varies in) as extra samples of the *within-category* scatter only, and
measures, next to the shipped statistic on the same vectors:

- ``own``: each view's deviation from its own example;
- ``mean``: each view's deviation from its category's mean of examples;
- the AUROC and the *oracle reach* (unknown queries below the knowns' own 5% quantile, the
  most any threshold rejecting 5% of the knowns catches), seeds 0-4 and the 120 splits;
- the calibrated rates through the shipped conformal rule (the calibration's own
  cross-fitting, :func:`rar_agent.openset.calibration._cross_fitted`, and
  :meth:`~rar_agent.openset.calibration.Calibration.judge_vector`), with the variant's fit
  in the statistic's place, at ALPHA 0.05.

Usage::

    python tools/eval_open_set_views.py --cache artifacts/openset --json views.json

(The first run encodes ``VIEWS`` views of each of the 200 train-pool images into
``--cache`` as ``views_x.npy``; later runs read it.)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent.evaluation.openset import auroc  # noqa: E402
from rar_agent.memory import MemoryEntry  # noqa: E402
from rar_agent.openset import calibration as calibration_module  # noqa: E402
from rar_agent.openset.calibration import (  # noqa: E402
    MAX_STANDINS,
    Calibration,
    CategorySums,
    _cross_fitted,
    _folds,
    _rank,
)
from rar_agent.openset.statistic import (  # noqa: E402
    OFF_WEIGHT,
    RANK,
    SHRINK,
    Whitening,
    _groups,
    _off_mass,
    _shrunk,
)
from tools.eval_open_set import (  # noqa: E402
    CLASSES,
    add_cache_arguments,
    load_vectors,
    memory_rows,
    pick_rows,
    seed_memories,
    split_memories,
)
from tools.eval_open_set_features import reach  # noqa: E402

VIEWS = 8
"""Augmented views encoded per train-pool image."""


KINDS = ("crop", "gentle", "light")
"""Kinds of views: ``crop`` (a random resized crop of 70-100% of the area, aspect
0.85-1.18, a shift of up to 2 pixels, mirrored half of the time), ``gentle`` (90-100% of the
area, aspect 0.95-1.05, a shift of up to 1 pixel, no mirror), ``light`` (``gentle`` plus
brightness and contrast each scaled by 0.7-1.3: a garment photographed in other light)."""


def view_of(image: Any, rng: np.random.Generator, kind: str = "crop") -> Any:
    """One view of a 28 x 28 Fashion-MNIST image at its own size (black fill, as the
    dataset's background; ``light`` then lifts it a little); ``kind`` one of :data:`KINDS`."""
    from PIL import Image, ImageEnhance, ImageOps

    crop = kind == "crop"
    w, h = image.size
    area = rng.uniform(0.7 if crop else 0.9, 1.0)
    spread = np.log(1.18) if crop else np.log(1.05)
    aspect = float(np.exp(rng.uniform(-spread, spread)))
    shift = 2.0 if crop else 1.0
    cw, ch = w * np.sqrt(area * aspect), h * np.sqrt(area / aspect)
    left = rng.uniform(0.0, max(w - cw, 0.0)) + rng.uniform(-shift, shift)
    top = rng.uniform(0.0, max(h - ch, 0.0)) + rng.uniform(-shift, shift)
    # the output pixel (u, v) samples the input at (left + u cw / w, top + v ch / h)
    coefficients = (cw / w, 0.0, left, 0.0, ch / h, top)
    out = image.transform(
        (w, h), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BICUBIC, fillcolor=0
    )
    if kind == "light":
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast):
            out = enhancer(out).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageOps.mirror(out) if crop and rng.random() < 0.5 else out


def load_views(cache: Path, pool: int, kind: str = "crop", views: int = VIEWS) -> np.ndarray:
    """``(pool images, views, dim)`` embeddings of augmented views of the train pool (the
    rows of ``train_x.npy``, in its order), encoded once into ``cache``."""
    path = cache / ("views_x.npy" if kind == "crop" else f"views_{kind}_x.npy")
    if path.exists():
        return np.load(path)
    from PIL import Image

    from rar_agent.datasets import load_fashion_mnist
    from rar_agent.encoders import load_encoder

    encoder = load_encoder("efficientnet-lite0")
    images, labels = load_fashion_mnist("train")
    idx = pick_rows(labels, pool, 0)
    rng = np.random.default_rng(19)
    out = []
    for i in idx:
        source = Image.fromarray(images[i]).convert("L")
        batch = [view_of(source, rng, kind).convert("RGB") for _ in range(views)]
        out.append(encoder.embed_images(batch))
    x = np.stack(out)
    np.save(path, x)
    return x


def fit_with_views(
    x: np.ndarray, labels: list[str], views: np.ndarray, mode: str, rank: int = RANK
) -> Whitening | None:
    """The shipped fit (:meth:`Whitening.fit`) with the ``(n, k, dim)`` ``views`` of the
    examples as extra samples of the within-category scatter. ``mode`` is ``none`` (the
    shipped fit) or ``CENTRE`` or ``CENTRE:W``, where ``CENTRE`` is ``own`` (each view's
    deviation from its example) or ``mean`` (from its category's mean of examples) and ``W``
    the views' share of the within covariance (a mixture of the examples' and the views'
    covariances; default: each view counts as one example). The basis and the overall
    covariance come from the examples alone, as shipped."""
    shipped = Whitening.fit(x, labels, rank=rank)
    if mode == "none" or shipped is None:
        return shipped
    centre_mode, _, share = mode.partition(":")
    x = np.asarray(x, dtype=np.float64)
    groups = [idx for idx in _groups(labels).values() if centre_mode == "own" or len(idx) >= 2]
    ex_x = np.concatenate([x[idx] - x[idx].mean(axis=0) for idx in groups if len(idx) >= 2])
    vx = np.concatenate([
        (views[idx] - (x[idx][:, None] if centre_mode == "own" else x[idx].mean(axis=0))).reshape(
            -1, x.shape[1]
        )
        for idx in groups
    ])  # fmt: skip
    ex_z, vz = ex_x @ shipped.basis.T, vx @ shipped.basis.T
    w = float(share) if share else len(vx) / (len(vx) + len(ex_x))
    within = _shrunk((1 - w) * ex_z.T @ ex_z / len(ex_z) + w * vz.T @ vz / len(vz))
    off_dims = x.shape[1] - shipped.rank
    if off_dims <= 0:
        return replace(shipped, within=within[0])
    # the shipped weight on the distance off the subspace, its within variance from the mixture
    z = (x - shipped.mean) @ shipped.basis.T
    v_overall = (
        _shrunk(z.T @ z / len(z))[1] + (1.0 - SHRINK) * _off_mass(x - shipped.mean, z) / off_dims
    )
    mass = (1 - w) * _off_mass(ex_x, ex_z) + w * _off_mass(vx, vz)
    v_within = within[1] + (1.0 - SHRINK) * mass / off_dims
    return replace(shipped, within=within[0], off=OFF_WEIGHT * (1.0 / v_overall - 1.0 / v_within))


class _Variant:
    """Puts a variant's fit in the calibration's place for its cross-fitting (rows found by
    their bytes)."""

    def __init__(self, x: np.ndarray, views: np.ndarray, mode: str) -> None:
        self.views = {row.tobytes(): v for row, v in zip(x, views, strict=True)}
        self.mode = mode

    def fit(self, vectors: np.ndarray, labels: list[str], rank: int = RANK) -> Whitening | None:
        v = np.stack([self.views[row.tobytes()] for row in np.asarray(vectors)])
        return fit_with_views(vectors, labels, v, self.mode, rank)


def calibrate(
    x: np.ndarray, labels: list[str], keys: list[str], views: np.ndarray, mode: str
) -> Calibration:
    """The shipped full calibration (:func:`~rar_agent.openset.calibration.fit`) of a memory
    of ``x`` without the memory, with the variant's fit: examples in point-id order, the
    statistic, the category sums, the cross-fitted stand-ins."""
    ids = [
        MemoryEntry(n, "image", f"train-{k}", f"{n}-{k}").point_id
        for n, k in zip(labels, keys, strict=True)
    ]
    order = np.argsort(ids)
    x, views = x[order], views[order]
    labels, ids = [labels[i] for i in order], [ids[i] for i in order]
    variant = _Variant(x, views, mode)
    model = variant.fit(x, labels, rank=_rank(len(x), _folds(len(x))))
    if model is None:
        raise ValueError("no category of two examples")
    with mock.patch.object(calibration_module, "Whitening", variant):
        standins, reach = _cross_fitted(ids, labels, x, MAX_STANDINS)
    sums = CategorySums()
    sums.add(labels, model.project(x))
    return Calibration(statistic=model.to_json(), categories=sums, standins=standins, reach=reach)


def measure(
    data: dict[str, Any],
    views: np.ndarray,
    held: list[int],
    seed: int,
    mode: str,
    alphas: tuple[float, ...] = (0.05,),
) -> dict[str, float]:
    """One memory of 10 examples per known class: AUROC, oracle reach, and the calibrated
    rates at each of ``alphas`` (known / unknown rejected, known top-1 drop in points)."""
    rows = memory_rows(data, held, 10, seed)
    x, y = data["train_x"][rows].astype(np.float64), data["train_y"][rows]
    labels = [CLASSES[c] for c in y]
    cal = calibrate(x, labels, [str(i) for i in rows], views[rows], mode)
    model = cal.model()
    assert model is not None
    q = data["test_x"].astype(np.float64)
    known = ~np.isin(data["test_y"], held)
    stat = model.known(model.project(q), cal.terms())
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    top = y[np.argmax(q @ unit_x.T, axis=1)]
    top1 = top == data["test_y"]
    out: dict[str, float] = {
        "auroc": float(auroc(stat[known].tolist(), stat[~known].tolist()) or 0.5),
        "oracle_reach": reach(stat[known], stat[~known]),
    }
    for alpha in alphas:
        thresholds = np.array([cal.judge_vector(v, alpha)[2][0] for v in q], dtype=float)
        rejected = stat < thresholds
        out[f"known_rejected@{alpha:g}"] = float(rejected[known].mean())
        out[f"unknown_rejected@{alpha:g}"] = float(rejected[~known].mean())
        out[f"top1_drop@{alpha:g}"] = 100.0 * float((top1 & known & rejected).sum() / known.sum())
    return out


def fold_scored(x: np.ndarray, labels: list[str], keys: list[str], q: np.ndarray) -> np.ndarray:
    """Queries scored as the stand-ins are: each by the statistic of one cross-fitting fold
    (drawn at random), fitted without that fold at the calibration's rank, against the
    category means of every example projected on that fold's basis."""
    ids = [
        MemoryEntry(n, "image", f"train-{k}", f"{n}-{k}").point_id
        for n, k in zip(labels, keys, strict=True)
    ]
    order = np.argsort(ids)
    x, labels = x[order], [labels[i] for i in order]
    folds = _folds(len(x))
    fold = np.arange(len(x)) % folds
    names = sorted(set(labels))
    pick = np.random.default_rng(0).integers(0, folds, len(q))
    out = np.empty(len(q))
    for k in range(folds):
        train = np.flatnonzero(fold != k)
        model = Whitening.fit(x[train], [labels[i] for i in train], rank=_rank(len(x), folds))
        assert model is not None
        z = model.project(x)
        means = np.stack(
            [z[[i for i, n in enumerate(labels) if n == name]].mean(axis=0) for name in names]
        )
        out[pick == k] = model.known(model.project(q[pick == k]), means)
    return out


def draw_check(data: dict[str, Any], memories: list[tuple[list[int], int]]) -> dict[str, float]:
    """The shipped calibration over ``memories`` at ALPHA 0.05: the known and unknown
    queries rejected, the same knowns scored as the stand-ins are (:func:`fold_scored`)
    against the same threshold, and the AUROC (mean over the memories)."""
    runs = []
    for held, seed in memories:
        rows = memory_rows(data, held, 10, seed)
        x, y = data["train_x"][rows].astype(np.float64), data["train_y"][rows]
        labels, keys = [CLASSES[c] for c in y], [str(i) for i in rows]
        cal = calibrate(x, labels, keys, np.zeros((len(x), 1, x.shape[1])), "none")
        model = cal.model()
        assert model is not None
        q = data["test_x"].astype(np.float64)
        known = ~np.isin(data["test_y"], held)
        stat = model.known(model.project(q), cal.terms())
        threshold = cal.judge_vector(q[0], 0.05)[2][0]
        folded = fold_scored(x, labels, keys, q[known])
        runs.append(
            {
                "known_rejected": float(np.mean(stat[known] < threshold)),
                "unknown_rejected": float(np.mean(stat[~known] < threshold)),
                "known_rejected_fold_scored": float(np.mean(folded < threshold)),
                "auroc": float(auroc(stat[known].tolist(), stat[~known].tolist()) or 0.5),
            }
        )
    out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    print(json.dumps({k: round(v, 4) for k, v in out.items()}), flush=True)
    return out


def table(
    data: dict[str, Any],
    views: np.ndarray,
    memories: list[tuple[list[int], int]],
    modes: tuple[str, ...],
    alphas: tuple[float, ...],
) -> dict[str, dict[str, float]]:
    """Mean figures of each mode over ``memories``."""
    out = {}
    for mode in modes:
        runs = [measure(data, views, held, seed, mode, alphas) for held, seed in memories]
        out[mode] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        print(mode, json.dumps({k: round(v, 4) for k, v in out[mode].items()}), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """Encode the views (once) and measure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_cache_arguments(parser)
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--modes", default="none,own,mean", help="Comma list of none, own, mean.")
    parser.add_argument("--alphas", default="0.05", help="Comma list of ALPHA.")
    parser.add_argument("--kind", default="crop", choices=KINDS, help="Kind of views.")
    parser.add_argument("--splits", action="store_true", help="The 120 splits too.")
    parser.add_argument(
        "--draws", action="store_true", help="The calibration's delivered rate per memory draw."
    )
    args = parser.parse_args(argv)
    data = load_vectors(args.cache, args.pool, args.test_per_class)
    views = load_views(args.cache, args.pool, args.kind)
    check = np.einsum("ij,ij->i", data["train_x"], views[:, 0])
    print(f"views {views.shape}, cosine to their example: mean {check.mean():.3f}", flush=True)
    modes = tuple(args.modes.split(","))
    alphas = tuple(float(a) for a in args.alphas.split(","))
    figures: dict[str, Any] = {"seeds": table(data, views, seed_memories(), modes, alphas)}
    if args.splits:
        figures["splits"] = table(data, views, split_memories(), modes, alphas)
    if args.draws:
        splits = split_memories()
        figures["draws"] = {
            name: draw_check(data, memories)
            for name, memories in (
                ("120 splits, memory drawn with seed 0 (the splits table)", splits),
                ("120 splits, memory drawn with seed 1", [(h, 1) for h, _ in splits]),
                (
                    "120 splits, one draw each (seed = split index)",
                    [(h, i) for i, (h, _) in enumerate(splits)],
                ),
                ("seeds 0-4", seed_memories()),
            )
        }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
