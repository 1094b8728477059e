"""How an encoder prior is measured: the one definition for the product and the maintainer tool.

An encoder prior (:mod:`~rar_agent.openset.prior`) is the quantile, at each ALPHA and number
of examples, of the :func:`~rar_agent.openset.prior.prior_score` of known-category queries
of many small memories drawn from labelled reference data, plus the two figures a memory of
single examples cannot measure itself: ``far_below`` (a nearest-other similarity below any
the reference memories hold) and ``link`` (the score at which two images are one thing).
``tools/fit_encoder_prior.py`` fits the shipped priors on several reference sets with these
functions; :func:`measure_prior` fits one on a single set, the way the product measures the
prior of an encoder that ships none, on the garments that ship with the package
(:func:`reference_garments`).

A measured prior is stored once per encoder in the user's data dir (:func:`store_prior`,
:func:`stored_prior`, keyed by the encoder's fingerprint); one stored in another form
(``MEASURED_FORM``), on other reference images, or unreadable is not trusted: it is measured
again. Vectors come in already encoded: this layer never loads an encoder (the pipeline
encodes the reference images, :mod:`rar_agent.pipeline.prior`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from rar_agent.openset.calibration import GROUP_QUANTILE
from rar_agent.openset.groups import average_linkage, purity
from rar_agent.openset.prior import EncoderPrior, MemoryScale, prior_score, similarity_at

__all__ = [
    "ALPHAS",
    "CAUTION",
    "FAR_MARGIN",
    "GARMENTS",
    "LINK_PURITY",
    "MEASURED_LINK_PURITY",
    "MEASURED_FORM",
    "MEASURED_ON",
    "REFERENCE_DIR",
    "SHOTS",
    "TRIALS",
    "RefSet",
    "delivered",
    "fit_link",
    "fit_slopes",
    "link_groupings",
    "link_purity",
    "lowest_other",
    "measure_prior",
    "prior_file",
    "purest_link",
    "quantiles",
    "reference_garments",
    "store_prior",
    "stored_prior",
    "trials",
    "unit",
    "weighted_quantile",
]

ALPHAS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
"""The ALPHA grid a prior is stored at (``auto:ALPHA`` interpolates between them)."""
SHOTS = (1, 2, 3)
"""The numbers of examples per category the shipped priors have quantiles for (a measured
one has one level: :func:`measure_prior`)."""
TRIALS = 300
"""Reference memories drawn per number of examples (and for the link)."""
FAR_MARGIN = 0.8
"""A prior's ``far_below``: this fraction of the lowest nearest-other similarity of any
reference memory, so that none of them has a category set apart (EfficientNet-Lite0: the
icons' lowest 0.254 over 3000 memories of 24, Fashion-MNIST's 0.41 over 3000 of 7; a cat
photo reaches 0.19 at most beside garments, 0.16 beside drawn shapes)."""
CAUTION = 2.0
"""A prior measured on one kind of picture keeps to ALPHA / CAUTION on it, so that another
kind stays within ALPHA (:func:`measure_prior`)."""
LINK_PURITY = 0.8
"""How pure the novel groups of a one-example memory must be at a prior's link, on every
reference set (mean over its memories): the docs' target for groups at every memory size (a
group is taught one label, so a purer group beats a larger one)."""
MEASURED_LINK_PURITY = 0.95
"""How pure a prior measured on one kind of picture keeps that kind's novel groups at its
link (:func:`measure_prior`), so that another kind's stay ``LINK_PURITY`` pure, as
``CAUTION`` keeps the threshold (EfficientNet-Lite0, links from the garments alone, the
icons held out: their unseen drawings 72% pure at the garments' pair quantile, 71% at the
garments' 90%-pure link, 85% at the 95%-pure one; ``docs/eval/open-set``)."""
LINK_STEP = 0.01
"""The precision, in prior score, of the lowest link that is ``LINK_PURITY`` pure."""
REFERENCE_DIR = Path(__file__).with_name("reference")
"""The labelled reference data shipped with the package (and its licence)."""
GARMENTS = REFERENCE_DIR / "fashion-mnist-200.npz"
"""The shipped reference garments (:func:`reference_garments`)."""
MEASURED_FORM = 2
"""The form of a measured prior as stored (raise it when :func:`measure_prior` changes: a
prior stored in another form is measured again; 2: the link at ``MEASURED_LINK_PURITY``)."""
MEASURED_ON = "this machine, on the 200 Fashion-MNIST garments shipped with rar-agent"
"""What a measured prior says it was measured on (in every note that names it)."""


@dataclass(eq=False)
class RefSet:
    """One reference set: memory pool and query pool (vectors, integer labels).

    ``same_pool``: the queries are the memory pool (a memory example is then never a query of
    its own memory)."""

    name: str
    memory_x: np.ndarray
    memory_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    same_pool: bool = False

    @classmethod
    def pool(cls, name: str, x: np.ndarray, y: np.ndarray) -> RefSet:
        """A set whose memories and queries come from one pool."""
        return cls(name, x, y, x, y, same_pool=True)

    @property
    def shape(self) -> tuple[int, int]:
        """Known and unseen categories of its memories: Fashion-MNIST the eval's 7 / 3, the
        others the 24 / 8 of the one-example check."""
        return (7, 3) if self.name.startswith("fashion") else (24, 8)


def unit(a: np.ndarray) -> np.ndarray:
    """The rows of ``a`` made unit length (float64)."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def reference_garments() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The reference images shipped with the package: Fashion-MNIST's train pool of the
    shipped prior (20 images of each of its 10 classes, ``tools/reference_pack.py``).

    Returns:
        ``(images, labels, classes)``: uint8 ``(200, 28, 28)`` (white garment on black),
        ``(200,)`` indices into ``classes``.
    """
    with np.load(GARMENTS) as pack:
        return pack["images"], pack["labels"].astype(np.int64), [str(c) for c in pack["classes"]]


# ---------------------------------------------------------------------- reference memories


def trials(ref: RefSet, shots: int, known: int, unseen: int, n: int, seed: int) -> list[dict]:
    """``n`` random memories of ``known`` categories x ``shots`` examples: each known and
    unseen query's similarity to its answer's closest example, as prior scores."""
    rng = np.random.default_rng(seed)
    classes = np.unique(ref.memory_y)
    known = min(known, len(classes) - unseen)
    out = []
    for _ in range(n):
        order = rng.permutation(classes)
        mine, others = order[:known], order[known : known + unseen]
        picks = np.concatenate(
            [rng.choice(np.flatnonzero(ref.memory_y == c), shots, replace=False) for c in mine]
        )
        labels = ref.memory_y[picks]
        scale = MemoryScale.measure([str(v) for v in labels], ref.memory_x[picks])
        if scale is None:
            raise ValueError(f"{ref.name}: too few categories for a scale")
        queries = np.flatnonzero(np.isin(ref.query_y, np.concatenate([mine, others])))
        if ref.same_pool:  # never a memory example as a query of its own memory
            queries = np.setdiff1d(queries, picks)
        sims = ref.query_x[queries] @ ref.memory_x[picks].T
        best = sims.argmax(axis=1)
        score = prior_score(sims.max(axis=1), scale)
        is_known = np.isin(ref.query_y[queries], mine)
        out.append(
            {
                "known": score[is_known],
                "unseen": score[~is_known],
                "correct": (labels[best] == ref.query_y[queries])[is_known],
                "scale": scale.centre,
                "lowest_other": lowest_other(ref.memory_x[picks], labels),
                "pair_spread": float(scale.pair_spread or 0.0),
            }
        )
    return out


def lowest_other(x: np.ndarray, labels: np.ndarray) -> float:
    """The lowest similarity of a category's first example to its nearest other category's."""
    first = np.unique(labels, return_index=True)[1]
    rows = unit(x[first])
    sims = rows @ rows.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max(axis=1).min())


def weighted_quantile(scores: list[np.ndarray], q: float) -> float:
    """The ``q`` quantile of the pooled ``scores``, each memory's weighing the same."""
    weights = np.concatenate([np.full(len(s), 1.0 / len(s)) for s in scores])
    pooled = np.concatenate(scores)
    order = np.argsort(pooled)
    cdf = np.cumsum(weights[order]) / weights.sum()
    return float(pooled[order][min(int(np.searchsorted(cdf, q)), len(pooled) - 1)])


def quantiles(runs: list[dict], slopes: list[float] | None = None) -> list[float]:
    """The known queries' score quantile at each ALPHA, each score less its memory's pair
    spread x the ALPHA's slope (each memory weighs the same)."""
    out = []
    for i, a in enumerate(ALPHAS):
        slope = slopes[i] if slopes else 0.0
        out.append(weighted_quantile([r["known"] - slope * r["pair_spread"] for r in runs], a))
    return out


def fit_slopes(runs: list[dict]) -> list[float]:
    """At each ALPHA, how a memory's known-query quantile rises with its pair spread: the
    least-squares slope over ``runs`` (each memory one point; the memories of every fitted
    reference set together, so the slope is mostly how the sets differ; of one set, how its
    memories differ)."""
    spread = np.asarray([r["pair_spread"] for r in runs])
    design = np.stack([np.ones_like(spread), spread], axis=1)
    out = []
    for a in ALPHAS:
        own = np.asarray([np.quantile(r["known"], a) for r in runs])
        out.append(float(np.linalg.lstsq(design, own, rcond=None)[0][1]))
    return out


def delivered(
    runs: list[dict], thresholds: list[float], slopes: list[float] | None = None
) -> dict[str, Any]:
    """Mean over memories of the known and unseen queries rejected at each ALPHA (a memory's
    threshold: the ALPHA's quantile + slope x its pair spread)."""
    rows = {}
    for i, (a, t) in enumerate(zip(ALPHAS, thresholds, strict=True)):
        slope = slopes[i] if slopes else 0.0
        cut = [t + slope * r["pair_spread"] for r in runs]
        known = np.mean([np.mean(r["known"] < c) for r, c in zip(runs, cut, strict=True)])
        unseen = np.mean([np.mean(r["unseen"] < c) for r, c in zip(runs, cut, strict=True)])
        drop = np.mean(
            [np.mean(r["correct"] & (r["known"] < c)) for r, c in zip(runs, cut, strict=True)]
        )
        rows[f"{a:g}"] = {
            "known_rejected": round(float(known), 4),
            "unseen_rejected": round(float(unseen), 4),
            "top1_drop_points": round(100 * float(drop), 2),
        }
    return rows


def link_trials(ref: RefSet, known: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` random memories of ``known`` categories x one example: the prior score of each
    example's similarity to every other image of its category in the memory pool (its
    same-category pairs, what a memory of more examples measures its link on)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(ref.memory_y)
    out = []
    for _ in range(n):
        mine = rng.permutation(classes)[:known]
        picks = np.array([rng.choice(np.flatnonzero(ref.memory_y == c)) for c in mine])
        scale = MemoryScale.measure([str(c) for c in mine], ref.memory_x[picks])
        if scale is None:
            raise ValueError(f"{ref.name}: too few categories for a scale")
        sims = [
            ref.memory_x[np.setdiff1d(np.flatnonzero(ref.memory_y == c), [p])] @ ref.memory_x[p]
            for p, c in zip(picks, mine, strict=True)
        ]
        out.append(prior_score(np.concatenate(sims), scale))
    return out


def link_groupings(
    ref: RefSet, n: int, seed: int
) -> list[tuple[MemoryScale, np.ndarray, np.ndarray]]:
    """``n`` random memories of one example of each of ``ref.shape[0]`` categories, each with
    every image of ``ref.shape[1]`` categories it does not hold (new things, each seen again
    and again, all rejected; of a set with fewer categories, 30% of them and at least two):
    the memory's scale, those images' pairwise similarities and their categories."""
    classes = np.unique(ref.memory_y)
    unseen = min(ref.shape[1], max(2, round(0.3 * len(classes))))  # two new things at least
    known = min(ref.shape[0], len(classes) - unseen)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        order = rng.permutation(classes)
        mine, new = order[:known], order[known : known + unseen]
        picks = np.array([rng.choice(np.flatnonzero(ref.memory_y == c)) for c in mine])
        scale = MemoryScale.measure([str(c) for c in mine], ref.memory_x[picks])
        if scale is None:
            raise ValueError(f"{ref.name}: too few categories for a scale")
        rows = ref.query_x[np.isin(ref.query_y, new)]
        out.append((scale, rows @ rows.T, ref.query_y[np.isin(ref.query_y, new)]))
    return out


def link_purity(memories: list[tuple[MemoryScale, np.ndarray, np.ndarray]], score: float) -> float:
    """How pure the novel groups (:func:`~rar_agent.openset.groups.average_linkage`, two
    images or more) of each memory's new images are at the link ``score`` (at the memory's
    scale): the mean over the memories that form a group (1.0 where none does: nothing is
    joined wrongly)."""
    found = []
    for scale, sims, truth in memories:
        groups = [g for g in average_linkage(sims, similarity_at(score, scale)) if len(g) >= 2]
        value = purity([[str(truth[i]) for i in g] for g in groups])
        if value is not None:
            found.append(value)
    return float(np.mean(found)) if found else 1.0


def purest_link(
    memories: list[tuple[MemoryScale, np.ndarray, np.ndarray]],
    floor: float = LINK_PURITY,
    bounds: tuple[float, float] = (-4.0, 4.0),
) -> float:
    """The lowest score (within ``LINK_STEP``) whose groups are at least ``floor`` pure
    (:func:`link_purity`; a higher link joins fewer images, so purity rises with it: found
    by bisection); the upper bound where none within ``bounds`` is."""
    low, high = bounds
    if link_purity(memories, low) >= floor:
        return low
    if link_purity(memories, high) < floor:
        return high
    while high - low > LINK_STEP:
        middle = (low + high) / 2
        if link_purity(memories, middle) >= floor:
            high = middle
        else:
            low = middle
    return high


def fit_link(
    refs: list[RefSet], n: int, floor: float = LINK_PURITY
) -> tuple[float, dict[str, Any]]:
    """A prior's ``link``, judged by the worst reference set: the highest over the sets of
    the :data:`GROUP_QUANTILE` quantile of the scores of same-category pairs of ``n``
    one-example memories (what the link of a memory with pairs of its own is) and of the
    lowest score at which the groups of new images of such memories are ``floor`` pure
    (:func:`purest_link`). The score does not carry over from one kind of image to
    another (EfficientNet-Lite0: the pairs' 35% quantile is 0.139 on garments, -1.588 on
    icon names, whose second drawings lie as close as their nearest other name), so no mean
    of the sets carries over to a kind between or beyond them: the strictest set's link keeps
    each fitted set's groups pure, and a kind held out is grouped at least as strictly as
    the hardest kind fitted. Returns the link and each set's two figures (for people)."""
    figures = {}
    for ref in refs:
        scores = link_trials(ref, ref.shape[0], n, seed=7)
        figures[ref.name] = {
            "quantile": round(weighted_quantile(scores, GROUP_QUANTILE), 5),
            f"pure {floor:g}": round(purest_link(link_groupings(ref, n, seed=8), floor), 5),
        }
    return max(v for row in figures.values() for v in row.values()), figures


# ---------------------------------------------------------------------- one set, one prior


def measure_prior(
    ref: RefSet,
    *,
    fingerprint: str,
    encoder: str,
    measured_on: str,
    caveat: str | None = None,
    n: int = TRIALS,
) -> EncoderPrior:
    """The prior of one reference set (the product's, on the shipped garments): at each
    ALPHA, the known queries' quantile at ALPHA / ``CAUTION`` in memories of one example per
    category, ``far_below`` and ``link`` (:func:`fit_link` at ``MEASURED_LINK_PURITY``); no
    slopes and no ``far`` (both need pictures of several kinds).

    Measured for EfficientNet-Lite0 (``docs/eval/open-set``, "An encoder that ships no
    prior"): the garments' own quantile at ALPHA rejected about twice ALPHA of the known
    icons held out (11.0% at ALPHA 0.05); at ALPHA / 2, 4.8% at 0.05 and at most ALPHA + 2
    points from 0.01 to 0.2, and the garments about half of ALPHA. One level, one example,
    judges every query: a query of a category of more examples lies closer to it, so it is
    rejected less often (the garments' own quantiles at 2 and 3 examples rejected 9.5% of a
    mixed memory's knowns at ALPHA 0.05: a query answered with a category of ten examples is
    judged at the higher level even where it belongs to one of one). Slopes fitted across the
    garments' own memories carried over to the icons but broke the promise on the garments'
    test images at ALPHA 0.1 and 0.2 (13.3%, 30.5%): the pair spread of one kind's memories
    varies too little to fit them. Where some reference memory's lowest nearest-other
    similarity is not positive, no fraction of it lies below all of them: the prior then sets
    no category apart (``far_below`` none).

    Args:
        ref: The reference set, encoded by the encoder the prior is for.
        fingerprint: That encoder's fingerprint (the key the prior is found by).
        encoder: A readable name of the encoder.
        measured_on: What the prior was measured on, in words (said in every note).
        caveat: Where it is known not to keep its promise (said with it).
        n: Reference memories drawn.

    Raises:
        ValueError: The vectors give no finite prior (an encoder whose images are all alike).
    """
    if not (np.isfinite(ref.memory_x).all() and np.isfinite(ref.query_x).all()):
        raise ValueError(f"{encoder}: the reference images give no finite prior ({ref.name})")
    runs = trials(ref, 1, *ref.shape, n, seed=1)
    known = [r["known"] for r in runs]
    table = [weighted_quantile(known, a / CAUTION) for a in ALPHAS]
    lowest = min(r["lowest_other"] for r in runs)
    link, _ = fit_link([ref], n, MEASURED_LINK_PURITY)
    if not all(np.isfinite([*table, lowest, link])):
        raise ValueError(f"{encoder}: the reference images give no finite prior ({ref.name})")
    return EncoderPrior(
        fingerprint=fingerprint,
        encoder=encoder,
        measured_on=measured_on,
        alphas=list(ALPHAS),
        quantiles={"1": [round(v, 5) for v in table]},
        far_below=round(FAR_MARGIN * lowest, 4) if lowest > 0 else None,
        link=round(link, 5),
        link_quantile=GROUP_QUANTILE,
        caveat=caveat,
        validated={
            f"{ref.name} (fitted on, not held out)": delivered(runs, table),
            "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )


# ---------------------------------------------------------------------- stored per encoder


def prior_file(directory: Path, fingerprint: str) -> Path:
    """Where the prior measured for ``fingerprint`` is stored in ``directory`` (a readable
    name and a digest of the whole fingerprint)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint)[:60]
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]
    return Path(directory) / f"{readable}-{digest}.json"


@functools.cache
def _reference_digest() -> str:
    return hashlib.sha256(GARMENTS.read_bytes()).hexdigest()[:16]


def store_prior(directory: Path, prior: EncoderPrior) -> Path:
    """Store a measured prior in ``directory`` (written whole or not at all); its path."""
    path = prior_file(directory, prior.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "form": MEASURED_FORM,
        "reference": _reference_digest(),
        "prior": prior.model_dump(mode="json"),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".prior-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stored_prior(directory: Path, fingerprint: str) -> tuple[EncoderPrior | None, str | None]:
    """The prior stored for ``fingerprint`` in ``directory``, or ``(None, why not)``: ``why``
    is ``None`` where none is stored, else why the stored one is not trusted (unreadable, of
    another form, measured on other reference images, or for another encoder)."""
    path = prior_file(directory, fingerprint)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"the stored encoder prior {path} cannot be read ({exc})"
    if not isinstance(record, dict) or record.get("form") != MEASURED_FORM:
        form = record.get("form") if isinstance(record, dict) else None
        return None, (
            f"the stored encoder prior {path} is of another rar-agent version's form "
            f"({form}; this version measures form {MEASURED_FORM})"
        )
    if record.get("reference") != _reference_digest():
        return None, f"the stored encoder prior {path} was measured on other reference images"
    try:
        prior = EncoderPrior.model_validate(record.get("prior"))
    except ValidationError as exc:
        return None, f"the stored encoder prior {path} cannot be read ({exc.error_count()} errors)"
    if prior.fingerprint != fingerprint:
        return None, f"the stored encoder prior {path} is another encoder's ({prior.fingerprint})"
    return prior, None
