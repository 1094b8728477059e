"""Open-set rejection on Fashion-MNIST: the promise of ``--reject auto:ALPHA`` at every
number of examples, every way to hold classes out, and the known-ness scores compared.

``rar-agent eval --open-set`` measures one seeded run end to end (encoding included). This
script encodes a pool of images once (``--cache DIR``: EfficientNet-Lite0 vectors as .npy,
reused by later runs), then runs the shipped code on them: ``CategoryMemory`` (embedded),
``openset.fit``, ``CategoryRetriever.retrieve_vectors`` and ``openset.judge``.

- ``shots``: 3 of 10 classes held out (the seeded choice of ``eval --open-set 0.3``), memories
  of 1, 2, 5 and 10 examples per known class and a mixed one (four classes 1 example, three
  classes 10), seeds 0-4 (``--seeds``): promised ALPHA vs the share of known-class queries
  rejected, the share of unknowns rejected, the known top-1 drop, the AUROC, the novel groups.
- ``splits``: all 120 ways to hold 3 of 10 classes out, at 10 examples per class.
- ``scores``: known-ness scores compared on the same vectors (numpy, AUROC only), at 10
  examples per class, seeds 0-4 and the 120 splits (``split-scores``: the 120 alone).

Usage::

    python tools/eval_open_set.py --cache artifacts/openset --json docs/eval/open-set/table.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rar_agent import openset  # noqa: E402
from rar_agent.config import parse_reject  # noqa: E402
from rar_agent.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from rar_agent.evaluation.openset import PROMISE_ALPHAS, auroc  # noqa: E402
from rar_agent.memory import CategoryMemory, MemoryEntry  # noqa: E402
from rar_agent.openset.calibration import group_link  # noqa: E402
from rar_agent.openset.groups import NovelGroupLog, purity  # noqa: E402
from rar_agent.retrieval import CategoryRetriever  # noqa: E402

CLASSES = list(FASHION_MNIST_CLASSES)
SHOTS = (1, 2, 5, 10)
MIXED = "mixed"
"""Four known classes with 1 example, three with 10."""


class _Vectors:
    """Stands in for the encoder: the vectors are precomputed (fingerprint and dim only)."""

    def __init__(self, fingerprint: str, dim: int) -> None:
        self.fingerprint, self.dim = fingerprint, dim


def pick_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` seeded indices of each of the 10 classes in ``labels`` (the pool drawn)."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    )


def load_vectors(cache: Path, pool: int, test: int) -> dict[str, Any]:
    """Train-pool and test vectors (encoded once, then read from ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    meta = cache / "vectors.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        out: dict[str, Any] = {"fingerprint": info["fingerprint"]}
        for name in ("train_x", "train_y", "test_x", "test_y", "imagenet_rows"):
            out[name] = np.load(cache / f"{name}.npy")
        return out
    from PIL import Image

    from rar_agent.encoders import load_encoder

    encoder = load_encoder("efficientnet-lite0")
    out = {"fingerprint": encoder.fingerprint}
    for split, per_class, seed in (("test", test, 1), ("train", pool, 0)):
        images, labels = load_fashion_mnist(split)  # type: ignore[arg-type]
        idx = pick_rows(labels, per_class, seed)
        rows = []
        for start in range(0, len(idx), 64):
            batch = [Image.fromarray(a).convert("RGB") for a in images[idx[start : start + 64]]]
            rows.append(encoder.embed_images(batch))
        out[f"{split}_x"], out[f"{split}_y"] = np.concatenate(rows), labels[idx]
    vocabulary = getattr(encoder, "builtin_vocabulary", None)
    if vocabulary is None:
        raise SystemExit("the encoder has no built-in vocabulary (EfficientNet-Lite0 does)")
    out["imagenet_rows"] = vocabulary()[1]
    for name in ("train_x", "train_y", "test_x", "test_y", "imagenet_rows"):
        np.save(cache / f"{name}.npy", out[name])
    meta.write_text(json.dumps({"fingerprint": out["fingerprint"], "pool": pool, "test": test}))
    return out


def use_prior(path: Path | None, workdir: Path) -> None:
    """Judge with the encoder prior in ``path`` instead of the shipped ones."""
    if path is None:
        return
    from rar_agent.openset import prior

    folder = workdir / "priors"
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    prior.PRIOR_DIR = folder
    prior._priors.cache_clear()


def held_out(seed: int) -> list[int]:
    """The classes ``rar-agent eval --open-set 0.3 --seed SEED`` holds out."""
    names = sorted(CLASSES)
    held = random.Random(f"{seed}\x00open-set").sample(names, 3)
    return sorted(CLASSES.index(h) for h in held)


def memory_rows(data: dict[str, Any], held: list[int], shots: int | str, seed: int) -> np.ndarray:
    """Indices into the train pool: ``shots`` per known class (or the mixed memory)."""
    rng = np.random.default_rng(1000 + seed)
    known = [c for c in range(10) if c not in held]
    picked = []
    for i, c in enumerate(known):
        n = (10 if i < 3 else 1) if shots == MIXED else int(shots)
        picked.append(rng.choice(np.flatnonzero(data["train_y"] == c), n, replace=False))
    return np.concatenate(picked)


def run(
    data: dict[str, Any],
    held: list[int],
    rows: np.ndarray,
    workdir: Path,
    link_quantiles: Sequence[float] = (),
) -> dict[str, Any]:
    """One memory through the shipped code: build, fit, retrieve, judge at every ALPHA."""
    names = [CLASSES[c] for c in data["train_y"][rows]]
    truth = np.array([CLASSES[c] for c in data["test_y"]])
    known = ~np.isin(data["test_y"], held)
    return run_memory(
        data["fingerprint"], data["train_x"][rows], names, [str(i) for i in rows],
        data["test_x"], truth, known, workdir, link_quantiles=link_quantiles,
    )  # fmt: skip


def run_memory(
    fingerprint: str,
    x: np.ndarray,
    names: list[str],
    keys: list[str],
    queries: np.ndarray,
    truth: np.ndarray,
    known: np.ndarray,
    workdir: Path,
    alphas: tuple[float, ...] = PROMISE_ALPHAS,
    link_quantiles: Sequence[float] = (),
) -> dict[str, Any]:
    """A memory of examples ``x`` (labels ``names``, unique ``keys``) through the shipped
    code: build, calibrate (``openset.update``), retrieve the ``queries`` (true labels
    ``truth``; ``known``: of a category the memory holds), judge at every ALPHA. The point
    ids come from the labels and keys (the calibration's folds follow their order). The
    rejected queries' novel groups at ALPHA 0.05 are measured at the calibration's link
    (``link``), and
    at the link of each of ``link_quantiles`` (``groups_at``) where the memory has one."""
    entries = [
        MemoryEntry(n, "image", f"train-{k}", f"{n}-{k}") for k, n in zip(keys, names, strict=True)
    ]
    encoder = _Vectors(fingerprint, x.shape[1])
    with CategoryMemory.open(workdir / f"m{len(list(workdir.iterdir()))}", collection="o") as mem:
        mem.bind_encoder(encoder.fingerprint, encoder.dim)
        openset.update(mem, added=mem.add_entries(entries, x))
        cal = openset.load(mem)
        retriever = CategoryRetriever(memory=mem, encoder=encoder, k=5)  # type: ignore[arg-type]
        retrieved = retriever.retrieve_vectors(queries)
    top1 = np.array([c[0].label for c in retrieved]) == truth
    out: dict[str, Any] = {"known_top1": float(top1[known].mean())}
    per_alpha = {}
    for alpha in alphas:
        setting = parse_reject(f"auto:{alpha}")
        start = time.perf_counter()
        verdicts = [
            openset.judge(c, setting, cal, v) for c, v in zip(retrieved, queries, strict=True)
        ]
        per_query_ms = (time.perf_counter() - start) * 1000.0 / len(retrieved)
        rejected = np.array([bool(v.reasons) for v in verdicts])
        thresholds = [v.threshold for v in verdicts]
        per_alpha[f"{alpha:g}"] = {
            "known_rejected": float(rejected[known].mean()),
            "unknown_rejected": float(rejected[~known].mean()),
            "top1_drop_points": 100.0 * float((top1 & known & rejected).sum() / known.sum()),
            "with_threshold": float(np.mean([t is not None for t in thresholds])),
            "note": next((v.note for v in verdicts if v.note), None),
            "judge_ms_per_query": per_query_ms,
        }
        if alpha == 0.05:
            score = np.array(
                [(v.similarity or 0.0) - (v.threshold or 0.0) for v in verdicts], dtype=float
            )
            out["auroc"] = auroc(score[known].tolist(), score[~known].tolist())
            link = cal.link if cal is not None else None
            out["link"] = link
            out["groups"] = group_figures(queries, truth, rejected & ~known, rejected, link)
            out["groups_at"] = {
                f"{q:g}": group_figures(
                    queries,
                    truth,
                    rejected & ~known,
                    rejected,
                    None if link is None else group_link(names, x, q),
                )
                for q in link_quantiles
            }
    out["alphas"] = per_alpha
    out["standins"] = len(cal.standins) if cal else 0
    return out


def group_figures(
    queries: np.ndarray,
    truth: np.ndarray,
    new: np.ndarray,
    rejected: np.ndarray,
    link: float | None,
) -> dict[str, float | None]:
    """The rejected queries through the novel-group log at ``link``, in query order (class
    by class): how pure the groups are (by true class), how many rejected queries joined one,
    how many groups hold a new class's images (``new``: the rejected queries of held-out
    classes; over the classes with 2 grouped images or more), in how many groups the first 6
    rejected images of a new class end when they are the only ones seen (singletons count),
    and, were each group taught its most common class, the images taught right and wrong."""
    log = _log(queries, np.flatnonzero(rejected), link)
    groups = log.groups()
    labels = [[str(truth[int(m)]) for m in log.members(g.id)] for g in groups]
    grouped = sum(len(g) for g in labels)
    classes = sorted({str(t) for t in truth[new]})
    holding = [sum(c in g for g in labels) for c in classes]
    firsts = [np.flatnonzero(new & (truth == c))[:6] for c in classes]
    right = sum(max(g.count(c) for c in set(g)) for g in labels)
    return {
        "purity": purity(labels),
        "groups": float(len(groups)),
        "grouped_share": grouped / max(1, int(rejected.sum())),
        "groups_per_new_class": _average(
            [
                h
                for h, c in zip(holding, classes, strict=True)
                if sum(g.count(c) for g in labels) >= 2
            ]
        ),
        "first_six_groups": _average(
            [len(_log(queries, f, link).groups(min_size=1)) for f in firsts if len(f) == 6]
        ),
        "taught_right": float(right),
        "taught_wrong": float(grouped - right),
    }


def _log(queries: np.ndarray, rows: np.ndarray, link: float | None) -> NovelGroupLog:
    """The queries at ``rows`` added one by one (in that order) to a novel-group log."""
    log = NovelGroupLog(capacity=4096)
    for i in rows:
        log.add(queries[i], str(i), link)
    return log


def _average(values: list[int]) -> float | None:
    return float(np.mean(values)) if values else None


def group_means(runs: list[dict[str, Any]], *path: str) -> dict[str, float | None]:
    """The mean over ``runs`` of each figure of :func:`group_figures` found at ``path``."""
    return {
        "group_purity": _mean(runs, *path, "purity"),
        **{
            key: _mean(runs, *path, key)
            for key in (
                "grouped_share",
                "groups_per_new_class",
                "first_six_groups",
                "taught_right",
                "taught_wrong",
            )
        },
    }


def _mean(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for r in rows:
        v: Any = r
        for p in path:
            v = v[p]
        if v is not None:
            values.append(float(v))
    return float(np.mean(values)) if values else None


def shots_table(
    data: dict[str, Any],
    workdir: Path,
    seeds: Sequence[int] = range(5),
    link_quantiles: Sequence[float] = (),
    shot_counts: Sequence[int | str] = (*SHOTS, MIXED),
) -> dict[str, Any]:
    table = {}
    for shots in shot_counts:
        runs = [
            run(
                data,
                held_out(seed),
                memory_rows(data, held_out(seed), shots, seed),
                workdir,
                link_quantiles,
            )
            for seed in seeds
        ]
        table[str(shots)] = {
            "auroc": _mean(runs, "auroc"),
            **group_means(runs, "groups"),
            "groups_at": {q: group_means(runs, "groups_at", q) for q in runs[0]["groups_at"]},
            "known_top1": _mean(runs, "known_top1"),
            "standins": _mean(runs, "standins"),
            "alphas": {
                a: {
                    key: _mean(runs, "alphas", a, key)
                    for key in (
                        "known_rejected",
                        "unknown_rejected",
                        "top1_drop_points",
                        "with_threshold",
                        "judge_ms_per_query",
                    )
                }  # fmt: skip
                | {"note": runs[0]["alphas"][a]["note"]}
                for a in runs[0]["alphas"]
            },
        }
        row: dict[str, Any] = table[str(shots)]["alphas"]["0.05"]  # type: ignore[index]
        print(
            f"shots {shots}: known rejected {row['known_rejected']:.3f} (ALPHA 0.05), unknown "
            f"{row['unknown_rejected']:.3f}, drop {row['top1_drop_points']:.2f} pt, AUROC "
            f"{table[str(shots)]['auroc']}",
            flush=True,
        )
    return table


def splits_table(data: dict[str, Any], workdir: Path) -> dict[str, Any]:
    splits = []
    for held, seed in split_memories():
        result = run(data, held, memory_rows(data, held, 10, seed), workdir)
        a = result["alphas"]["0.05"]
        splits.append(
            {
                "held_out": [CLASSES[c] for c in held],
                "auroc": result["auroc"],
                "known_rejected": a["known_rejected"],
                "unknown_rejected": a["unknown_rejected"],
                "top1_drop_points": a["top1_drop_points"],
            }
        )
    keys = ("auroc", "known_rejected", "unknown_rejected", "top1_drop_points")
    table = np.array([[s[k] for k in keys] for s in splits], dtype=float)
    met = (table[:, 3] <= 5.0) & (table[:, 2] >= 1 / 3)
    summary = {
        "splits": len(splits),
        "mean": dict(zip(keys, np.round(table.mean(0), 4).tolist(), strict=True)),
        "median": dict(zip(keys, np.round(np.median(table, 0), 4).tolist(), strict=True)),
        "share_meeting_reach": round(float(met.mean()), 4),
    }
    print(json.dumps(summary), flush=True)
    return {"summary": summary, "splits": splits}


# ---------------------------------------------------------------------- score comparison


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def seed_memories() -> list[tuple[list[int], int]]:
    """``(held-out classes, seed)`` of the runs ``rar-agent eval --open-set 0.3`` makes,
    seeds 0-4."""
    return [(held_out(seed), seed) for seed in range(5)]


def split_memories() -> list[tuple[list[int], int]]:
    """The 120 ways to hold 3 of 10 classes out (the memory drawn with seed 0)."""
    return [(list(held), 0) for held in itertools.combinations(range(10), 3)]


def compare_scores(
    data: dict[str, Any], memories: list[tuple[list[int], int]], shots: int = 10
) -> dict[str, float]:
    """AUROC of candidate known-ness scores (higher = more known), mean over ``memories``
    (``(held-out classes, seed)`` each)."""
    results: dict[str, list[float]] = {}
    rows_w = _unit(np.asarray(data["imagenet_rows"], dtype=np.float64))
    for held, seed in memories:
        idx = memory_rows(data, held, shots, seed)
        mx, my = _unit(data["train_x"][idx].astype(np.float64)), data["train_y"][idx]
        qx = _unit(data["test_x"].astype(np.float64))
        known = ~np.isin(data["test_y"], held)
        sims = qx @ mx.T
        labels = np.unique(my)
        per = [-np.sort(-sims[:, my == c], axis=1) for c in labels]
        best = np.stack([p[:, 0] for p in per], 1)
        order = np.argsort(-best, 1)
        top = order[:, 0]
        rows = np.arange(len(qx))
        top1 = best[rows, top]
        support2 = np.array([per[t][i, :2].mean() for i, t in enumerate(top)])
        support3 = np.array([per[t][i, :3].mean() for i, t in enumerate(top)])
        ordered = -np.sort(-sims, axis=1)
        loo = mx @ mx.T
        np.fill_diagonal(loo, -np.inf)
        mu = {c: float(loo[np.ix_(my == c, my == c)].max(1).mean()) for c in labels}
        mu_top = np.array([mu[labels[t]] for t in top])
        # NegLabel-style: the ImageNet classifier rows least like every memory example are
        # "something else" directions; a query close to them is less known
        affinity = (mx @ rows_w.T).max(0)
        negatives = rows_w[np.argsort(affinity)[:100]]
        neg = (qx @ negatives.T).max(1)
        zneg = (neg - neg[known].mean()) / (neg[known].std() + 1e-9)
        ztop = (support2 - support2[known].mean()) / (support2[known].std() + 1e-9)
        scores = {
            **_whitened_scores(mx, my, qx, labels, support2),
            "top-1 similarity": top1,
            "support: mean of the 2 closest of the best category (fixed thresholds)": support2,
            "mean of the 3 closest of the best category": support3,
            "2nd nearest neighbour, any category": ordered[:, 1],
            "5th nearest neighbour, any category": ordered[:, 4],
            "margin between the best two categories": top1 - best[rows, order[:, 1]],
            "top-1 minus the category's typical leave-one-out similarity": top1 - mu_top,
            "support minus the category's typical similarity": support2 - mu_top,
            "support minus ImageNet negative prototypes (NegLabel-style, z-scored)": ztop - zneg,
            "support minus 0.5 x negative prototypes": ztop - 0.5 * zneg,
        }
        for name, value in scores.items():
            results.setdefault(name, []).append(
                auroc(value[known].tolist(), value[~known].tolist()) or 0.0
            )
    return {k: round(float(np.mean(v)), 4) for k, v in results.items()}


def _mahalanobis(x: np.ndarray, cov_rows: np.ndarray, shrink: float) -> np.ndarray:
    """Squared distances of the rows of ``x`` under ``(1 - a) S + a (tr S / d) I``, where
    ``S = cov_rows' cov_rows / n`` (low-rank form: ``d`` may exceed ``n``)."""
    _, sv, vt = np.linalg.svd(cov_rows, full_matrices=False)
    lam = sv**2 / len(cov_rows)
    target = shrink * lam.sum() / x.shape[1]
    coef = (1 - shrink) * lam / ((1 - shrink) * lam + target)
    return np.asarray(((x**2).sum(1) - ((x @ vt.T) ** 2 * coef).sum(1)) / target)


def _whitened_scores(
    mx: np.ndarray, my: np.ndarray, qx: np.ndarray, labels: np.ndarray, support2: np.ndarray
) -> dict[str, np.ndarray]:
    """The candidates from the literature on frozen features: centring, class means,
    (relative) Mahalanobis with a shrunk shared covariance, PCA whitening, and the shipped
    statistic (``Whitening``, fitted on the memory as the calibration does) with its
    variants."""
    import dataclasses

    from rar_agent.openset.statistic import OFF_WEIGHT, Whitening

    mu = mx.mean(0)
    mc, qc = _unit(mx - mu), _unit(qx - mu)
    means = np.stack([mx[my == c].mean(0) for c in labels])
    cen = qc @ mc.T
    centred2 = np.stack([-np.sort(-cen[:, my == c], axis=1)[:, :2].mean(1) for c in labels], 1).max(
        1
    )
    within = mx - means[np.searchsorted(labels, my)]
    rel = {}
    for shrink in (0.5, 0.95):
        md = np.stack([_mahalanobis(qx - m, within, shrink) for m in means], 1).min(1)
        rel[shrink] = (md, md - _mahalanobis(qx - mu, mx - mu, shrink))
    _, _, vt = np.linalg.svd(mx - mu, full_matrices=False)
    pm, pq = _unit((mx - mu) @ vt[:32].T), _unit((qx - mu) @ vt[:32].T)
    psims = pq @ pm.T
    pca2 = np.stack([-np.sort(-psims[:, my == c], axis=1)[:, :2].mean(1) for c in labels], 1)
    model = Whitening.fit(mx, [str(c) for c in my])
    assert model is not None
    z, centres = model.project(qx), model.project(means)
    shipped = model.known(z, centres)

    def off_weight(weight: float) -> np.ndarray:
        return dataclasses.replace(model, off=model.off * weight / OFF_WEIGHT).known(z, centres)

    zs = (support2 - support2.mean()) / (support2.std() + 1e-12)
    return {
        "**relative Mahalanobis, 64 principal directions + the distance off them x 0.3 "
        "(shipped)**": shipped,
        "the same without the distance off the subspace (shipped before)": off_weight(0.0),
        "the same, distance off the subspace x 0.5": off_weight(0.5),
        "the same, distance off the subspace x 1 (the Gaussian's own weight)": off_weight(1.0),
        "shipped, each category's distances scaled by its own scatter": _own_scatter(
            model, mx, my, labels, z, centres
        ),
        "shipped + 0.25 x support (both z-scored)": (shipped - shipped.mean())
        / (shipped.std() + 1e-12)
        + 0.25 * zs,
        "relative Mahalanobis, all 1281 dimensions, shrink 0.95": -rel[0.95][1],
        "relative Mahalanobis, all 1281 dimensions, shrink 0.5": -rel[0.5][1],
        "Mahalanobis to the class mean (shared covariance, shrink 0.5)": -rel[0.5][0],
        "cosine to the class mean": (qx @ _unit(means).T).max(1),
        "cosine to the class mean, features centred on the memory's mean": (
            qc @ _unit(means - mu).T
        ).max(1),
        "support on features centred on the memory's mean": centred2,
        "support on PCA-whitened features (32 directions)": pca2.max(1),
        "support minus the query's similarity to the memory's mean": support2 - qx @ mu,
    }


def _own_scatter(
    model: Any, mx: np.ndarray, my: np.ndarray, labels: np.ndarray, z: np.ndarray, centres: Any
) -> np.ndarray:
    """The shipped statistic with each category's within distance divided by how far its
    own examples lie from its mean (relative to the average category): class-conditional
    normalisation."""
    zm = model.project(mx)[:, : model.rank]
    c = np.asarray(centres)[:, : model.rank]
    dev = zm - c[np.searchsorted(labels, my)]
    own = np.einsum("ij,jk,ik->i", dev, model.within, dev)
    scale = np.array([own[my == k].mean() for k in labels])
    scale /= scale.mean()
    q = z[:, : model.rank]
    d = q[:, None, :] - c[None, :, :]
    within = np.einsum("qcj,jk,qck->qc", d, model.within, d)
    rest = model.scores(z, centres) + within  # the statistic less its within distance
    return np.asarray((rest - within / scale[None, :]).max(axis=1))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _groups_table(shots: dict[str, Any]) -> list[str]:
    """The novel groups of the rejected queries, per memory size (see :func:`group_figures`): at
    the calibration's link, then at each link quantile measured (``--link-quantiles``)."""
    header = "| purity | grouped | groups per new class | first 6 form | taught right / wrong |"
    lines = [
        "Novel groups of the rejected queries (ALPHA 0.05): purity, the share of rejected "
        "queries in a group, how many groups hold a new class's images, how many groups the "
        "first 6 rejected images of a new class form when only they have been seen, and the "
        "images a memory's groups would teach right and wrong (each taught its most common "
        "class).",
        "",
        f"| examples per class {header}",
        "|---|---|---|---|---|---|",
        *(f"| {name} {_group_cells(row)}" for name, row in shots.items()),
        "",
    ]
    first: dict[str, Any] = next(iter(shots.values()), {})
    quantiles = first.get("groups_at", {})
    if quantiles:
        lines += [
            "The same rejections grouped at the link of each quantile of the pairs of "
            "examples of one category:",
            "",
            f"| link quantile | examples per class {header}",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {q} | {name} {_group_cells(row['groups_at'][q])}"
                for q in quantiles
                for name, row in shots.items()
            ),
            "",
        ]
    return lines


def _group_cells(row: dict[str, Any]) -> str:
    """One row's cells of :func:`_groups_table` (after its first)."""
    right, wrong = row.get("taught_right"), row.get("taught_wrong")
    taught = "-" if right is None or wrong is None else f"{right:.1f} / {wrong:.1f}"
    return (
        f"| {_pct(row.get('group_purity'))} | {_pct(row.get('grouped_share'))} | "
        f"{_one(row.get('groups_per_new_class'))} | {_one(row.get('first_six_groups'))} | "
        f"{taught} |"
    )


def _one(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(out: dict[str, Any]) -> str:
    """The tables of docs/eval/open-set from this script's JSON."""
    lines: list[str] = []
    shots = out.get("shots") or {}
    if shots:
        lines += [
            "| examples per class | known rejected (promised 5%) | unknown rejected | known "
            "top-1 drop | AUROC | stand-ins | novel-group purity | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in shots.items():
            a = row["alphas"]["0.05"]
            cannot = a["with_threshold"] is not None and a["with_threshold"] < 1.0
            lines.append(
                f"| {name} | {_pct(a['known_rejected'])} | {_pct(a['unknown_rejected'])} | "
                f"{a['top1_drop_points']:.1f} pt | {row['auroc']:.3f} | {row['standins']:.0f} | "
                f"{_pct(row.get('group_purity'))} | "
                + (
                    f"cannot calibrate ({_pct(1 - a['with_threshold'])} of queries)"
                    if cannot
                    else ""
                )
                + " |"
            )
        alphas = list(next(iter(shots.values()))["alphas"])
        lines += [
            "",
            "Delivered vs promised: known-class queries rejected at each ALPHA (unknowns "
            "rejected in brackets; `cannot` = the memory states it cannot calibrate and rejects "
            "nothing).",
            "",
            "| examples per class | " + " | ".join(f"ALPHA {a}" for a in alphas) + " |",
            "|---|" + "---|" * len(alphas),
        ]
        for name, row in shots.items():
            cells = []
            for a in alphas:
                r = row["alphas"][a]
                if not r["with_threshold"]:
                    cells.append("cannot")
                else:
                    cells.append(f"{_pct(r['known_rejected'])} ({_pct(r['unknown_rejected'])})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        judge = max(
            r["judge_ms_per_query"] for row in shots.values() for r in row["alphas"].values()
        )
        lines += ["", f"Reject step (the verdict alone): at most {judge:.4f} ms per query.", ""]
        lines += _groups_table(shots)
    splits = out.get("splits")
    if splits:
        m, md = splits["summary"]["mean"], splits["summary"]["median"]
        lines += [
            "",
            "| over 120 splits, 10 shots, ALPHA 0.05 | AUROC | known rejected | unknown "
            "rejected | known top-1 drop |",
            "|---|---|---|---|---|",
            f"| mean | {m['auroc']:.3f} | {_pct(m['known_rejected'])} | "
            f"{_pct(m['unknown_rejected'])} | {m['top1_drop_points']:.1f} pt |",
            f"| median | {md['auroc']:.3f} | {_pct(md['known_rejected'])} | "
            f"{_pct(md['unknown_rejected'])} | {md['top1_drop_points']:.1f} pt |",
            "",
        ]
    scores, over_splits = out.get("scores") or {}, out.get("split_scores") or {}
    if scores or over_splits:
        lines += [
            "| known-ness score (10 shots) | AUROC, seeds 0-4 | AUROC, 120 splits |",
            "|---|---|---|",
        ]
        names = sorted(
            set(scores) | set(over_splits), key=lambda k: -over_splits.get(k, scores.get(k, 0))
        )
        lines += [f"| {k} | {_num(scores.get(k))} | {_num(over_splits.get(k))} |" for k in names]
    return "\n".join(lines) + "\n"


def plot(out: dict[str, Any], path: Path) -> None:
    """Delivered vs promised share of known queries rejected, one line per memory size."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6), dpi=110)
    alphas = [float(a) for a in next(iter(out["shots"].values()))["alphas"]]
    ax.plot([100 * a for a in alphas], [100 * a for a in alphas], ":", color="gray",
            label="promised (ALPHA)")  # fmt: skip
    for name, row in out["shots"].items():
        ys = [100 * (row["alphas"][f"{a:g}"]["known_rejected"] or 0.0) for a in alphas]
        label = "mixed (4 classes x 1, 3 x 10)" if name == MIXED else f"{name} per class"
        ax.plot([100 * a for a in alphas], ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks([100 * a for a in alphas], [f"{100 * a:g}" for a in alphas])
    ax.set_xlabel("ALPHA in --reject auto:ALPHA (%)")
    ax.set_ylabel("known-class queries rejected (%); 0 = cannot calibrate")
    ax.set_title("Fashion-MNIST, 3 of 10 held out, seeds 0-4")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the encoded Fashion-MNIST cache: where it lives and how many images."""
    parser.add_argument("--cache", type=Path, default=Path("artifacts/openset"))
    parser.add_argument("--pool", type=int, default=20, help="Train images per class encoded.")
    parser.add_argument("--test-per-class", type=int, default=100)


def _seeds(text: str) -> list[int]:
    """``5-9`` or ``0,3,7``: the seeds named."""
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-"))
            return list(range(first, last + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FIRST-LAST or a comma list of seeds (e.g. 5-9, 0,3,7)"
        ) from None


def _shot_counts(text: str) -> list[int | str]:
    """``1,2,mixed``: the memories named (examples per class, or the mixed memory)."""
    try:
        return [MIXED if part == MIXED else int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma list of examples per class and 'mixed' (e.g. 1,2,mixed)"
        ) from None


def _quantiles(text: str) -> list[float]:
    """``0.2,0.35``: the quantiles named (each between 0 and 1)."""
    try:
        found = [float(part) for part in text.split(",")]
    except ValueError:
        found = []
    if not found or not all(0.0 <= q <= 1.0 for q in found):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma list of quantiles between 0 and 1 (e.g. 0.2,0.35,0.5)"
        )
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cache_arguments(parser)
    parser.add_argument(
        "--only",
        default="scores,split-scores,shots,splits",
        help="Comma list of scores, split-scores, shots, splits.",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=range(5),
        help="Seeds of the shots table: FIRST-LAST or a comma list (default 0-4).",
    )
    parser.add_argument(
        "--link-quantiles",
        type=_quantiles,
        default=(),
        help="Also group the shots table's rejections at these quantiles of the pairs of "
        "examples of one category (a comma list, e.g. 0.2,0.35,0.5).",
    )
    parser.add_argument(
        "--shots",
        type=_shot_counts,
        default=(*SHOTS, MIXED),
        help="Memories of the shots table: a comma list of examples per class and 'mixed' "
        "(default 1,2,5,10,mixed).",
    )
    parser.add_argument(
        "--prior",
        type=Path,
        help="Judge with the encoder prior in this JSON file instead of the shipped ones (e.g. "
        "one measured on the shipped garments alone: fit_encoder_prior.py --garments-only).",
    )
    parser.add_argument("--json", type=Path, help="Write every figure here.")
    parser.add_argument("--from-json", type=Path, nargs="*", help="Render earlier results.")
    parser.add_argument("--markdown", type=Path, help="Write the tables here (Markdown).")
    parser.add_argument("--plot", type=Path, help="Draw delivered vs promised here (PNG).")
    args = parser.parse_args(argv)
    if args.from_json:
        earlier: dict[str, Any] = {}
        for file in args.from_json:
            earlier.update(json.loads(file.read_text()))
        _render(earlier, args)
        return
    data = load_vectors(args.cache, args.pool, args.test_per_class)
    parts = set(args.only.split(","))
    out: dict[str, Any] = {"fingerprint": data["fingerprint"]}
    for part, memories in (("scores", seed_memories), ("split_scores", split_memories)):
        if part.replace("_", "-") in parts:
            out[part] = compare_scores(data, memories())
            for name, value in sorted(out[part].items(), key=lambda kv: -kv[1]):
                print(f"{part}: AUROC {value:.3f}  {name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rar-open-set-") as tmp:
        use_prior(args.prior, Path(tmp))
        if "shots" in parts:
            out["shots"] = shots_table(data, Path(tmp), args.seeds, args.link_quantiles, args.shots)
        if "splits" in parts:
            out["splits"] = splits_table(data, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    _render(out, args)


def _render(out: dict[str, Any], args: argparse.Namespace) -> None:
    if args.markdown:
        args.markdown.write_text(markdown(out))
    if args.plot and out.get("shots"):
        plot(out, args.plot)


if __name__ == "__main__":
    main()
