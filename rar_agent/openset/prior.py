"""Encoder priors: the statistic a memory too small to calibrate cannot measure itself.

A memory of one example per category holds no two photos of one category, so nothing in it
says how far a second photo of a known category lies from the first: the conformal threshold
(:mod:`~rar_agent.openset.calibration`) has no stand-in query. What such a memory does hold
is how far its categories lie from *each other*: each example's similarity to its nearest
example of another category, which is what a query of a category the memory does not know
looks like. An *encoder prior* supplies the missing half, measured once per encoder on
labelled reference data and shipped with the package (``priors/*.json``, keyed by the
encoder's fingerprint): the quantiles, over known-category queries of many small reference
memories, of the *scale-free* known-ness

    (s - c) / d

where ``s`` is the query's similarity to its answer's closest example, and ``c`` and ``d``
the memory's *scale* (:class:`MemoryScale`): the mean and the standard deviation of its
categories' similarities to their nearest other category (one example of each). Raw similarities do
not carry over from one kind of image to another (EfficientNet-Lite0: a known garment's
similarity is above 0.55 for 95% of Fashion-MNIST queries, a known glyph's above 0.77); the
scale is measured on the memory itself, so the prior only carries how a second photo of a
category compares with how the memory's own categories lie apart. Of the scales measured
(raw similarity, the nearest-other mean, the mean over all pairs, z-scores of either), this
one carried over best between the reference sets (``tools/fit_encoder_prior.py``).

The threshold for ``--reject auto:ALPHA`` is then the prior's ALPHA-quantile at the query's
number of examples (:meth:`EncoderPrior.threshold`), shifted by the memory's *pair spread*
(the spread of the similarities over all pairs of its categories) times the prior's slope
(measured across the reference memories: sets whose categories lie evenly apart, emoji or
garments, have their known queries higher above the nearest-other similarities than sets
whose categories form clusters, glyphs or icon themes), and turned back into a similarity for
this memory (:func:`similarity_at`). It keeps its promise to the extent that the memory's data
resemble the reference data (``measured_on``); its held-out figures travel in the stored
prior (``validated``). An encoder that ships no prior gets one measured on this machine, once,
on the garments that ship with the package (:mod:`~rar_agent.openset.fitting`; the pipeline
encodes them, :mod:`rar_agent.pipeline.prior`, and makes the result known here,
:func:`use_measured`); until then its memories say they cannot calibrate. Once a memory's
own stand-ins support a conformal threshold at the default ALPHA, they judge it at every
ALPHA (:meth:`Calibration.judged_by_own <rar_agent.openset.calibration.Calibration.judged_by_own>`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MIN_SCALE_CATEGORIES",
    "PRIOR_DIR",
    "EncoderPrior",
    "MemoryScale",
    "encoder_prior",
    "prior_score",
    "shipped_prior",
    "similarity_at",
    "use_measured",
]

logger = logging.getLogger(__name__)

PRIOR_DIR = Path(__file__).with_name("priors")
"""Where the shipped encoder priors live (one JSON file per encoder)."""
MIN_SCALE_CATEGORIES = 5
"""Categories a memory needs for its scale to mean anything (the mean of fewer nearest-other
similarities says little about the next category)."""
SCALE_SAMPLE = 1000
"""Categories the scale is measured over at most (one example each)."""


MIN_SPREAD = 1e-3
"""Smallest spread a scale divides by (a memory of near-identical spacings)."""


@overload
def prior_score(similarity: float, scale: MemoryScale) -> float: ...
@overload
def prior_score(similarity: np.ndarray, scale: MemoryScale) -> np.ndarray: ...
def prior_score(similarity: float | np.ndarray, scale: MemoryScale) -> float | np.ndarray:
    """The scale-free known-ness of a query: ``(s - c) / d`` (the one definition, for
    reference data and queries alike)."""
    return (similarity - scale.centre) / max(scale.spread, MIN_SPREAD)


def similarity_at(score: float, scale: MemoryScale) -> float:
    """The similarity whose :func:`prior_score` is ``score`` in a memory of this scale."""
    return float(scale.centre + score * max(scale.spread, MIN_SPREAD))


class MemoryScale(BaseModel):
    """The memory's side of a prior threshold: how far its categories lie apart.

    Attributes:
        centre: Mean similarity of the examples to their nearest example of another category.
        spread: The standard deviation of those similarities.
        categories: Categories it was measured over.
        examples: Examples it was measured over.
    """

    centre: float
    spread: float
    categories: int
    examples: int
    pair_spread: float | None = None
    """The standard deviation of the similarities over all pairs of those examples (what an
    encoder prior's ``slopes`` shift its quantile by)."""
    set_apart: int = 0
    """Categories left out of the scale: their nearest other category lies below the
    encoder's ``far_below`` (a photo taught beside drawings)."""
    apart: list[str] = Field(default_factory=list)
    """The labels of those categories: a query answered with one of them is judged at the
    prior's :meth:`EncoderPrior.far_threshold` where that is lower, not at the others' scale
    alone."""

    @classmethod
    def measure(
        cls, labels: Sequence[str], vectors: np.ndarray, far_below: float | None = None
    ) -> MemoryScale | None:
        """The scale of examples ``vectors`` (rows) of ``labels``, over the first example of
        each category (up to ``SCALE_SAMPLE``): one per category, so that a category with
        many examples does not crowd the others' nearest neighbours (the scale of a memory
        of 1 and 10 examples per category is that of single examples, as the prior's);
        ``None`` with fewer than ``MIN_SCALE_CATEGORIES`` categories.

        A category whose similarity to its nearest other lies below ``far_below`` (an
        encoder prior's :attr:`EncoderPrior.far_below`) is set apart, unless fewer than
        ``MIN_SCALE_CATEGORIES`` would remain: it is of another kind than the rest, and its
        one low similarity would lower the centre and widen the spread, so that every
        category's threshold became lenient (one photo among drawings made coffee "known").

        Raises:
            ValueError: When labels and vectors differ in number.
        """
        names = list(labels)
        if len(names) != len(vectors):
            raise ValueError(f"{len(names)} labels for {len(vectors)} vectors")
        first = list({name: i for i, name in reversed(list(enumerate(names)))}.values())
        first = sorted(first)[:SCALE_SAMPLE]
        if len(first) < MIN_SCALE_CATEGORIES:
            return None
        x = np.asarray(vectors, dtype=np.float64)[first]
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        kept = np.ones(len(first), dtype=bool)
        if far_below is not None:
            near = sims.max(axis=1) >= far_below
            if near.sum() >= MIN_SCALE_CATEGORIES:
                kept = near
        apart = [names[i] for i, k in zip(first, kept, strict=True) if not k]
        sims = sims[np.ix_(kept, kept)]
        nearest_other = sims.max(axis=1)
        pairs = sims[np.triu_indices(len(sims), 1)]
        return cls(
            centre=round(float(nearest_other.mean()), 6),
            spread=round(float(nearest_other.std()), 6),
            categories=int(kept.sum()),
            examples=len(names),
            pair_spread=round(float(pairs.std()), 6),
            set_apart=len(apart),
            apart=apart,
        )


class EncoderPrior(BaseModel):
    """One encoder's prior, as shipped (``priors/<name>.json``).

    Attributes:
        fingerprint: The encoder's fingerprint (the key it is found by).
        encoder: A readable name of the encoder.
        measured_on: The reference data it was measured on (said in every note).
        alphas: The ALPHA grid the quantiles are given at (increasing).
        quantiles: Per number of examples of the query's category (``"1"``, ``"2"``, ...):
            the known queries' :func:`prior_score` quantile at each ALPHA of the grid, less
            ``slopes`` x their memory's :attr:`MemoryScale.pair_spread`.
        slopes: Per number of examples, at each ALPHA: how much a memory's quantile rises
            with its pair spread (fitted across the reference memories; none: 0). A memory
            whose categories lie evenly apart (a small pair spread) is judged at a higher
            quantile than one whose categories form clusters.
        far_below: A similarity to the nearest other category below every one the
            reference memories hold (a fraction of their lowest, measured by
            ``tools/fit_encoder_prior.py``): a category this far from all the others is set
            apart from a memory's scale (:meth:`MemoryScale.measure`). No reference memory
            reaches it, so the quantiles and their held-out figures stand.
        far: The similarity a query answered with a category set apart is judged at, at
            each ALPHA of the grid: the ALPHA-quantile of such categories' second examples'
            similarity to them, measured on reference memories of one kind with one
            category of another set apart (``tools/fit_encoder_prior.py``,
            ``far_quantiles``). The others' scale says nothing of how close a second
            picture of a category of another kind lies (a drawing beside garments: 29% of
            its second examples rejected at ALPHA 0.05 by the garments' threshold); empty:
            the others' threshold judges it.
        link: The :func:`prior_score` at which unknown queries of a memory of one example
            per category are one new thing, judged by the worst reference set: the highest
            of each set's ``link_quantile`` quantile of the scores of the same-category pairs
            of its reference memories of one example per category (an example and another
            image of its category; each memory weighs the same) and of the lowest score at
            which those memories' groups of new images are 80% pure
            (:func:`rar_agent.openset.fitting.fit_link`, ``tools/fit_encoder_prior.py
            --update-link``). Such a memory holds no pair of its own to measure the link on
            (``Calibration.link``); ``None``: it gets none.
        link_quantile: The quantile ``link`` was measured at (the calibration's
            ``GROUP_QUANTILE``: a prior measured at another level gives no link).
        validated: Held-out figures (promised vs delivered), for people.
        caveat: Where the prior is known not to keep its promise (a prior measured on one
            kind of picture), said with ``measured_on`` in every note; ``None``: none known.
    """

    fingerprint: str = Field(min_length=1)
    encoder: str
    measured_on: str
    alphas: list[float]
    quantiles: dict[str, list[float]]
    slopes: dict[str, list[float]] = Field(default_factory=dict)
    far_below: float | None = None
    far: list[float] = Field(default_factory=list)
    link: float | None = None
    link_quantile: float | None = None
    validated: dict[str, Any] = Field(default_factory=dict)
    caveat: str | None = None

    model_config = ConfigDict(allow_inf_nan=False)  # a NaN threshold would reject nothing

    def digest(self) -> str:
        """A short digest of what judges queries (the fingerprint and the fitted figures, not
        the figures for people): a calibration records the prior it was made with by it."""
        judged = self.model_dump(exclude={"validated", "measured_on", "caveat", "encoder"})
        text = json.dumps(judged, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def shots(self) -> list[int]:
        """The numbers of examples with quantiles of their own (increasing)."""
        return sorted(int(k) for k in self.quantiles)

    def threshold(self, alpha: float, shots: int, scale: MemoryScale | None = None) -> float | None:
        """The known-ness quantile at ``alpha`` for a query whose category has ``shots``
        examples (the largest measured level not above it: more examples only raise a known
        query's similarity), in a memory of ``scale`` (its pair spread shifts it by the
        level's ``slopes``), and never above the one at a larger ALPHA; above the ALPHA grid,
        the grid's largest ALPHA's. ``None`` below the grid, or with slopes and no pair
        spread to apply them to."""
        if not self.alphas or alpha < self.alphas[0] - 1e-9:
            return None
        levels = [m for m in self.shots() if m <= max(shots, 1)] or self.shots()[:1]
        key = str(levels[-1])
        if self.slopes.get(key) and (scale is None or scale.pair_spread is None):
            return None
        # never above the quantile at a larger ALPHA (a slope may fall faster than the
        # quantile rises), and above the grid its largest ALPHA's: a larger ALPHA never
        # rejects fewer, and each rejects less than it promises rather than more
        wanted = min(alpha, self.alphas[-1])
        return min(self._quantile(a, key, scale) for a in [wanted, *self.alphas] if a >= wanted)

    def link_at(self, quantile: float, scale: MemoryScale | None) -> float | None:
        """The similarity at which unknown queries are one new thing in a memory of
        ``scale`` (:attr:`link` turned back into a similarity), where the prior's link was
        measured at ``quantile``; ``None`` without a link at that level or a scale."""
        if self.link is None or scale is None or self.link_quantile != quantile:
            return None
        return round(similarity_at(self.link, scale), 6)

    def far_threshold(self, alpha: float) -> float | None:
        """The similarity a query answered with a category set apart from the scale is
        judged at (:attr:`far`), at ``alpha`` (above the grid, its largest ALPHA's); ``None``
        below the grid or where the prior has none."""
        if not self.far or alpha < self.alphas[0] - 1e-9:
            return None
        rising = np.maximum.accumulate(self.far)  # a larger ALPHA never rejects fewer
        return float(np.interp(math.log(alpha), np.log(self.alphas), rising))

    def _quantile(self, alpha: float, key: str, scale: MemoryScale | None) -> float:
        """The quantile at ``alpha`` (within the grid) for level ``key``, shifted by the
        memory's pair spread times the level's slope."""
        where = math.log(alpha)
        value = float(np.interp(where, np.log(self.alphas), self.quantiles[key]))
        slopes = self.slopes.get(key)
        if not slopes or scale is None or scale.pair_spread is None:
            return value
        return value + float(np.interp(where, np.log(self.alphas), slopes)) * scale.pair_spread


@functools.cache
def _priors() -> dict[str, EncoderPrior]:
    out: dict[str, EncoderPrior] = {}
    for path in sorted(PRIOR_DIR.glob("*.json")):
        try:
            prior = EncoderPrior.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("encoder prior %s unreadable, ignored: %s", path.name, exc)
            continue
        out[prior.fingerprint] = prior
    return out


_MEASURED: dict[str, EncoderPrior] = {}
"""Priors measured on this machine that this process uses, by fingerprint."""
_MEASURED_LOCK = threading.Lock()


def shipped_prior(fingerprint: str | None) -> EncoderPrior | None:
    """The prior shipped with the package for this fingerprint (``None``: none ships)."""
    return _priors().get(fingerprint) if fingerprint else None


def use_measured(prior: EncoderPrior) -> None:
    """Make a prior measured on this machine known to this process (a shipped prior of the
    same encoder still comes first)."""
    with _MEASURED_LOCK:
        _MEASURED[prior.fingerprint] = prior


def encoder_prior(fingerprint: str | None) -> EncoderPrior | None:
    """The prior of the encoder with this fingerprint: the shipped one, else one measured on
    this machine that this process uses (:func:`use_measured`), else ``None``."""
    if not fingerprint:
        return None
    shipped = shipped_prior(fingerprint)
    if shipped is not None:
        return shipped
    with _MEASURED_LOCK:
        return _MEASURED.get(fingerprint)
