"""Open-set calibration: a threshold with a stated price, kept from the memory's own examples.

``--reject auto:ALPHA`` promises that at most ALPHA (default 0.05) of the queries of known
categories are rejected. The statistic (:class:`~rar_agent.openset.statistic.Whitening`: a
relative Mahalanobis score in the memory's principal subspace) is fitted to the memory; the
threshold is a split-conformal one over *stand-ins*: example images scored as if they were
queries, each by a statistic fitted *without* it (``FOLDS``-fold cross-fitting: the
statistic of the examples of one fold is fitted on the other folds, at the rank the full one
has) and against its category's mean *without* it. A query's statistic is compared with
the ``k``-th smallest stand-in statistic, ``k = floor(ALPHA * (n + 1))`` of ``n``
stand-ins; a query of a known category then falls below it with probability at most
``k / (n + 1)`` <= ALPHA when it is exchangeable with the stand-ins. With fewer than
``1 / ALPHA - 1`` stand-ins no such threshold exists, and the verdict says so ("cannot
calibrate") instead of rejecting by a guess.

**Every number of examples.** A query's statistic grows with the number of examples of its
category (its mean is better known), and a stand-in's category has one example fewer than a
query's. So thresholds are kept per *shot level* (``SHOT_LEVELS``): a stand-in's statistic at
``m`` shots is the one it has when its category's mean is taken over ``m`` random other
examples (``DRAWS`` draws). A query is judged at the largest level not above its best
category's number of examples (the memory's stored count), and at a lower one when the
stand-ins cannot support that level: a category taught from one photo is judged as a
one-shot category even in a memory whose other categories have fifty. A memory without any
category of two examples has no stand-in and no statistic: it cannot calibrate, and says so.

**Kept current, one policy** (:func:`update`): a full calibration (:func:`fit`) fits the
statistic on a sample of ``FIT_SAMPLE`` examples, reads every example once to sum its
category's coordinates, and makes up to ``MAX_STANDINS`` stand-ins. It is made when there is
none, when entries were removed, or when the image entries doubled since the last one.
Otherwise the statistic stays as fitted, each added example is projected and added to its
category's sum (the means stay exact), and enters the stand-in reservoir with the standard
reservoir probability (a stand-in made then is scored by the stored statistic, which has not
seen it, against its category's other examples among its search hits). A taught example thus
never costs a full calibration. One that lies far off the statistic's subspace (``BEYOND``
times the farthest of the examples held out of the fit: a photo taught into a memory of
drawings) adds a direction to the statistic (:meth:`Whitening.extended`, at most
``MAX_DIRECTIONS`` until the next full calibration; a full one adds them for the examples
outside its fitting sample alike): without it, its category would be compared with queries
by its shadow on the subspace alone, which anything far off shares, and photos of other
things and noise would be "known" by it. The memory never triggers any of it: its callers
(builds, the teacher, the vector store, the recognizer factory) do. Everything lives in the memory
record's extension ``"openset"`` (:mod:`rar_agent.openset.store`); thresholds and category
means are derived when read.

Text-only memories (class-name prototypes) get no automatic threshold: image-to-text
similarities live on another scale than anything the memory can measure among its entries.
"""

from __future__ import annotations

import bisect
import collections
import datetime as _dt
import itertools
import logging
import math
import random
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from rar_agent.config import DEFAULT_ALPHA
from rar_agent.errors import ConfigError
from rar_agent.openset.prior import (
    MIN_SCALE_CATEGORIES,
    EncoderPrior,
    MemoryScale,
    encoder_prior,
    similarity_at,
)
from rar_agent.openset.statistic import (
    RANK,
    CentreTerms,
    Whitening,
    decode_array,
    encode_array,
)
from rar_agent.openset.store import read_extension, update_extension

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.memory import Hit, MemoryInfo
    from rar_agent.memory.entries import StoredPoint
    from rar_agent.results import Candidate

__all__ = [
    "DRAWS",
    "FIT_SAMPLE",
    "FOLDS",
    "GROUP_QUANTILE",
    "MAX_DIRECTIONS",
    "MAX_STANDINS",
    "MIN_CATEGORIES",
    "MIN_LINK_PAIRS",
    "SHOT_LEVELS",
    "CalibratedMemory",
    "Calibration",
    "CategorySums",
    "Judged",
    "StandIn",
    "Threshold",
    "current",
    "fit",
    "group_link",
    "load",
    "min_standins",
    "smallest_alpha_for",
    "update",
    "why_not_loaded",
    "why_refit",
]


class CalibratedMemory(Protocol):
    """What calibration reads and writes of a memory (:class:`~rar_agent.memory.CategoryMemory`)."""

    collection: str
    read_only: bool

    @property
    def info(self) -> MemoryInfo:
        """What the memory records (its encoder's fingerprint: the key of an encoder prior)."""
        ...

    def extension(self, name: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """An extension of the memory's record (``refresh``: re-read from the backend)."""
        ...

    def update_extension(
        self, name: str, fn: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Change an extension of the memory's record atomically (compare-and-set)."""
        ...

    def get_entries(self, ids: Iterable[str]) -> list[Hit]:
        """The stored entries among ``ids`` (payloads, no vectors)."""
        ...

    def get_vectors(self, ids: Iterable[str]) -> dict[str, list[float]]:
        """The stored image vectors of these entries."""
        ...

    def labels(self, kind: str | None = None) -> dict[str, int]:
        """Entry counts per label."""
        ...

    def count(self, kind: str | None = None, *, label: str | None = None) -> int:
        """Entries (of one kind, of one label): an indexed count."""
        ...

    def scroll(
        self, offset: str | None = None, limit: int = 512
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of stored points and the offset of the next."""
        ...

    def search_batch(
        self, vectors: ArrayLike, *, kind: str = "image", limit: int = 50
    ) -> list[list[Hit]]:
        """The nearest entries of each vector."""
        ...


logger = logging.getLogger(__name__)

MAX_STANDINS = 1000
"""Stand-in queries kept (and made by a full calibration)."""
FIT_SAMPLE = 1000
"""Examples the statistic is fitted on (the first in id order: ids are hashes, so a fair
sample)."""
FOLDS = 20
"""Cross-fitting folds: a stand-in is scored by a statistic fitted without its fold (measured
on Fashion-MNIST, 10 shots, ALPHA 0.05: 5 folds rejected 3.3 % of known queries, 20 folds
4.0 %, leaving each example out alone 5.3 %: fewer folds fit the stand-ins' statistic on
fewer examples than the query's, which only errs on the side of rejecting less)."""
FOLD_ROWS = 2000
"""Rows a full calibration's cross-fitting may fit in all (see :func:`_folds`)."""
SHOT_LEVELS = tuple(range(1, 17))
"""Shot counts with a threshold of their own (a category with more shares the last)."""
DRAWS = 8
"""Random draws of ``m`` other examples per stand-in and shot level."""
MAX_DIRECTIONS = 32
"""Directions the statistic may gain after a full calibration, one for each example lying
far off its subspace (:data:`BEYOND`, :meth:`Whitening.extended`); past them a memory of at
most ``FIT_SAMPLE`` entries is calibrated afresh (the fit then sees every example), a larger
one compares such an example by its shadow on the subspace until its next full
calibration."""
BEYOND = 1.0
"""How many times :attr:`Calibration.reach` an example must lie off the statistic's subspace
to gain a direction of its own: new examples like the memory's own lie up to about its reach
(in a memory of 10k clustered entries, 10 of the 9000 outside the fitting sample lay beyond
it, none beyond 1.5 times it), a photo taught into a memory of drawn icons twice as far. Any
example beyond it is one: a bag taught beside 7 other garments lay 1.2 times as far, and
compared by its shadow it made drawings and photos "known" (at 1.5 until session 15)."""
FENCE = 6.0
""":attr:`Calibration.reach` is the farthest stand-in within the upper quartile of their
distances off the subspace plus ``FENCE`` times their interquartile range. One photo held out
among 42 drawings (the coffee among the discs) lay 15.7 of those ranges above the quartile,
six times as far as the farthest drawing; as the reach it made a photo taught later "near",
compared by its shadow, and that photo itself came back "unknown". In 300 memories of 2-10
examples of 7 or 24 categories of the reference sets (Fashion-MNIST, icons, emoji, with
EfficientNet-Lite0) the farthest stand-in lay at most 4.5 ranges above it, so their reach is
their farthest, as before (Tukey's 3 would have cut it in 46 of them)."""
ON_SUBSPACE = 1e-6
"""A squared distance off the statistic's subspace below which an example lies on it: the
rounding of the stored (float32) statistic, for vectors of unit length. Where the subspace
spans every direction the examples take (an encoder of few dimensions), their distances off
it and :attr:`Calibration.reach` are that rounding alone, and ``BEYOND`` times it is no
bar: examples like the memory's own were "far", and each cost a full calibration."""
SEARCH_LIMIT = 64
"""Hits searched for a stand-in made by :func:`update` (its category's other examples)."""
GROUP_QUANTILE = 0.35
"""Novel groups join unknown queries whose mean similarity reaches this quantile of the
similarities of all pairs of examples of one category (:attr:`Calibration.link`): a pair's
similarity, unlike an example's to its closest sibling, means the same whether a category has
2 examples or 50. The lowest of 0.2, 0.25, ..., 0.5 whose groups were at least 80% pure at
every memory size (Fashion-MNIST, 3 classes held out, seeds 0-4; 0.33-0.38 are, 0.2 was 68.5%
pure with 2 examples a class): a group is taught one label, so a purer group beats a larger
one (``docs/eval/open-set``)."""
MIN_LINK_PAIRS = 3
"""Pairs of examples of one category a memory's own link needs before it replaces its encoder
prior's (:attr:`Calibration.link`): the link of one pair is that pair's similarity, however
alike or unlike those two photos happen to be. On Fashion-MNIST (7 known classes of one
example but for one or a few of 2-3; 20 seeds through the shipped code) one pair's link
scattered twice as far as the prior's (standard deviation 0.093 against 0.047) and its
groups were less pure and fewer (the rejected images 84.0% pure, 56.3% grouped, against
90.0% and 63.4%); two pairs grouped more of the rejected images than the prior (67.5%
against 65.1%) but fewer of every unseen one (93.2% against 94.2%, less pure); from three
pairs on, the memory's own link groups more in both, at least 80% pure
(``docs/eval/open-set``)."""
MIN_CATEGORIES = 5
"""Categories the stand-ins must come from: how a category scatters varies from category to
category, and a few categories say too little about the others (on Fashion-MNIST,
EfficientNet-Lite0, a memory of 4 single-example categories calibrated from 3 categories of
10 examples rejected 12.5 % of known queries at ALPHA 0.05, seeds 0-4)."""
_VERSION = 17
"""The stored form's version (5: coordinates carry the distance off the subspace; 6: the
encoder's fingerprint and the memory's scale for an encoder prior; 7: the scale's pair
spread; 8: the statistic's reach and the directions added to it; 9: the reach within
``FENCE``, not the farthest stand-in; 10: the labels of the categories set apart from the
scale; 11: the link over all pairs of a category, not each example's closest; 12: the
link's quantile median-unbiased, not numpy's default; 13: the link at the 35% quantile, not
the 20%; 14: a memory of one example per category has the encoder prior's link; 15: that
link kept at least 80% pure on every kind of reference image; 16: a memory of one or two
pairs takes the prior's link too; 17: a memory first fitted with too few categories for a
scale measures it when taught more); a calibration stored in another is refitted."""

StandIn = tuple[str, int, str]
"""One stand-in query: ``(label, others, draws)``: its category, how many other examples of
it the stand-in was scored against, and its statistic at each shot level it reaches (base64
float32, ``(min(others, len(SHOT_LEVELS)), DRAWS)``: row ``i`` at ``SHOT_LEVELS[i]``
shots)."""

Threshold = tuple[float | None, str | None]
"""``(threshold, why not)``: a threshold, or ``None`` and the reason there is none."""


class Judged(NamedTuple):
    """One query's known-ness against its threshold (:meth:`Calibration.judge_query`)."""

    statistic: float | None
    """The known-ness compared (``None``: the memory has none for this query)."""
    shots: int
    """Examples of the category the threshold is for."""
    threshold: float | None
    """The threshold (``None``: cannot calibrate, see ``note``)."""
    note: str | None
    """Where the threshold came from when not from the memory's stand-ins, or why there is
    none."""
    prior: bool = False
    """The threshold is the encoder prior's, and ``statistic`` the similarity of the answer's
    closest example."""
    measured: bool = False
    """That prior was measured on this machine (it carries a caveat), not shipped."""
    share: float | None = None
    """Share of the memory's own examples, scored as queries (the stand-ins the threshold
    comes from), whose known-ness is at most ``statistic`` (``None``: no such threshold)."""


def min_standins(alpha: float) -> int:
    """Stand-ins needed for a conformal threshold at ``alpha``: ``ceil(1 / alpha) - 1``, the
    fewest ``n`` whose rank ``floor(alpha * (n + 1))`` is 1 or more (the one place this rule
    is written: the threshold, its refusal and :meth:`Calibration.smallest_alpha` ask it)."""
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


_ALPHA_GRID = range(1, 10_001)
"""ALPHA in steps of 0.0001 (four places), as :func:`smallest_alpha_for` names one."""


def smallest_alpha_for(standins: int) -> float | None:
    """The smallest ALPHA, to four places, that ``standins`` stand-ins set a threshold at
    (:func:`min_standins`), or ``None`` where they set none."""
    if standins < min_standins(1.0):
        return None

    def enough(i: int) -> bool:
        return min_standins(i / 10_000) <= standins

    return _ALPHA_GRID[bisect.bisect_left(_ALPHA_GRID, True, key=enough)] / 10_000


def _level(shots: int) -> int:
    """Index of the largest shot level not above ``shots`` (at least the first)."""
    return max(bisect.bisect_right(SHOT_LEVELS, shots) - 1, 0)


class CategorySums(BaseModel):
    """Each category's number of examples and sum of coordinates (the stored form)."""

    labels: list[str] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    sums: str = ""

    def matrix(self, width: int) -> np.ndarray:
        """The sums as ``(categories, width)`` (coordinates of :meth:`Whitening.project`)."""
        return decode_array(self.sums, (len(self.labels), width))

    def add(self, labels: Sequence[str], z: np.ndarray) -> None:
        """Add examples (coordinates ``z``, one row each) to their categories' sums."""
        sums = self.matrix(z.shape[1]) if self.labels else np.zeros((0, z.shape[1]))
        index = {label: i for i, label in enumerate(self.labels)}
        extra = [label for label in dict.fromkeys(labels) if label not in index]
        for label in extra:
            index[label] = len(index)
        self.labels += extra
        self.counts += [0] * len(extra)
        sums = np.concatenate([sums, np.zeros((len(extra), z.shape[1]))])
        rows = np.asarray([index[label] for label in labels], dtype=np.int64)
        np.add.at(sums, rows, z)
        counts = np.asarray(self.counts) + np.bincount(rows, minlength=len(self.labels))
        self.counts = [int(c) for c in counts]
        self.sums = encode_array(sums)

    def widen(self, width: int, to: int) -> None:
        """Sums of ``width`` numbers made ``to`` wide: the directions added to the statistic
        (:meth:`Whitening.extended`) come before the distance off the subspace, and the
        examples summed so far count as lying on the subspace along them."""
        if not self.labels or to == width:
            return
        sums = self.matrix(width)
        out = np.zeros((len(self.labels), to))
        out[:, : width - 1], out[:, -1] = sums[:, :-1], sums[:, -1]
        self.sums = encode_array(out)

    def count_of(self, label: str) -> int:
        """Examples of ``label`` (0 when unknown)."""
        return self.counts[self.labels.index(label)] if label in self.labels else 0


class Calibration(BaseModel):
    """A memory's open-set calibration (image side), as stored in its record.

    Attributes:
        method: ``conformal`` when stand-ins exist; ``prior`` when there are none but the
            encoder has a prior (:mod:`~rar_agent.openset.prior`); ``none`` otherwise.
        reason: Why the memory's own examples give no threshold (no stand-in at all).
        encoder: The encoder's fingerprint (the key of its prior).
        scale: How far the memory's categories lie apart (what an encoder prior's
            threshold is scaled by), ``None`` with too few categories.
        statistic: The fitted statistic (:meth:`Whitening.to_json`), ``None`` without one.
        categories: Per category (in ``labels`` order): its number of examples and the sum
            of their coordinates (a base64 float32 ``(categories, rank + 1)`` block), from which
            the category means are derived.
        standins: The stand-in queries (see :data:`StandIn`).
        link: The mean similarity at which unknown queries are one new thing
            (:data:`GROUP_QUANTILE`); with fewer than ``MIN_LINK_PAIRS`` pairs of examples of
            one category, the encoder prior's (:meth:`EncoderPrior.link_at`), else those
            pairs' (an encoder without a prior), ``None`` without either.
        reach: How far off the statistic's subspace new examples like the memory's own
            lie: the largest squared distance off it of the examples held out of the fit
            (the stand-ins, under their fold's statistic) within the fence of the others
            (:func:`_reach`); ``None`` without stand-ins.
        directions: Directions the statistic gained since it was fitted, one for each
            example taught beyond ``BEYOND`` times ``reach`` (:meth:`Whitening.extended`,
            at most ``MAX_DIRECTIONS``).
        seen: Image entries offered to the reservoir so far (for its sampling probability).
        full_at: Image entries at the last full calibration (redone when they double).
        revision: Grows with every change (lets readers cache derived values).
        prior_digest: The :meth:`~rar_agent.openset.prior.EncoderPrior.digest` of the encoder
            prior the last full calibration was made with (its scale and link), ``None``
            without one: a memory the prior judges is fitted again when its encoder's prior
            changes (:meth:`prior_changed`; e.g. one measured after the memory was built).
    """

    version: int = _VERSION
    kind: Literal["image"] = "image"
    method: Literal["conformal", "prior", "none"] = "none"
    reason: str | None = None
    encoder: str | None = None
    scale: MemoryScale | None = None
    statistic: dict[str, Any] | None = None
    categories: CategorySums = Field(default_factory=lambda: CategorySums())
    standins: list[StandIn] = Field(default_factory=list)
    link: float | None = None
    reach: float | None = None
    directions: int = 0
    seen: int = 0
    full_at: int = 0
    revision: int = 0
    prior_digest: str | None = None
    updated_at: str | None = None
    _model: Whitening | None = PrivateAttr(default=None)
    _means: tuple[list[str], np.ndarray, np.ndarray] | None = PrivateAttr(default=None)
    _terms: CentreTerms | None = PrivateAttr(default=None)
    _by_level: dict[int, np.ndarray] = PrivateAttr(default_factory=dict)
    _thresholds: dict[tuple[float, int], Threshold] = PrivateAttr(default_factory=dict)
    _supported_at: dict[tuple[float, int], int] = PrivateAttr(default_factory=dict)
    _judging: _Judging | None = PrivateAttr(default=None)

    @property
    def calibrated(self) -> bool:
        """Whether any threshold can be given (at some ALPHA)."""
        return bool(self.standins) and self.statistic is not None

    def model(self) -> Whitening | None:
        """The fitted statistic (read once per calibration object)."""
        if self._model is None and self.statistic is not None:
            self._model = Whitening.from_json(self.statistic)
        return self._model

    def means(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(labels, counts, mean coordinates)`` of the memory's categories."""
        if self._means is None:
            model = self.model()
            width = model.width if model is not None else 0
            labels = list(self.categories.labels)
            counts = np.asarray(self.categories.counts, dtype=np.float64)
            sums = self.categories.matrix(width) if labels else np.zeros((0, width))
            self._means = (labels, counts, sums / np.maximum(counts, 1.0)[:, None])
        return self._means

    def terms(self) -> CentreTerms:
        """The category means' :meth:`~Whitening.centre_terms` (computed once)."""
        model = self.model()
        if self._terms is None and model is not None:
            self._terms = model.centre_terms(self.means()[2])
        if self._terms is None:
            return np.zeros((0, 0)), np.zeros(0)
        return self._terms

    def eligible(self, shots: int) -> list[StandIn]:
        """The stand-ins that stand for a query at ``shots`` examples' level."""
        level = _level(shots)
        return [s for s in self.standins if min(s[1], len(SHOT_LEVELS)) > level]

    def scores_at(self, shots: int) -> np.ndarray:
        """The eligible stand-ins' statistics at the level of ``shots``, sorted (``DRAWS``
        draws per stand-in, each an equal share of it)."""
        level = _level(shots)
        if level not in self._by_level:
            rows = [_draw_rows(s)[level] for s in self.eligible(SHOT_LEVELS[level])]
            self._by_level[level] = np.sort(np.asarray(rows, dtype=np.float64), axis=None)
        return self._by_level[level]

    def judge_vector(
        self, vector: ArrayLike, alpha: float, among: Sequence[str] | None = None
    ) -> tuple[float, int, Threshold]:
        """A query's known-ness, its best category's shot count and the threshold to reach.

        The known-ness is the best statistic over the categories ``among`` (retrieval's
        candidates: the verdict judges what the answer can be, and its cost does not grow
        with the memory's categories; categories the calibration does not hold are left
        out), or over every category when ``among`` is ``None``. The threshold is the one
        at the largest shot level not above the best category's number of examples that
        the stand-ins support.

        Returns:
            ``(statistic, shots, (threshold, why))``; ``-inf`` and no shots when none of
            ``among`` is held.
        """
        return self._judged(self._judging_now(), vector, alpha, among)[:3]

    def _judging_now(self) -> _Judging:
        """What judging queries needs, derived on the first query."""
        judging = self._judging
        if judging is None:
            judging = self._judging = _Judging(self)
        return judging

    def _judged(
        self, judging: _Judging, vector: ArrayLike, alpha: float, among: Sequence[str] | None
    ) -> tuple[float, int, Threshold, np.ndarray]:
        """:meth:`judge_vector`, and the sorted stand-in statistics the threshold comes from
        (what :meth:`share_at_most` counts)."""
        model = judging.model
        if model is None or not judging.index:
            no = (None, self.reason or "cannot calibrate: no statistic")
            return -math.inf, 0, no, np.zeros(0)
        counts, terms, index = judging.counts, judging.terms, judging.index
        if among is not None:
            rows = [index[label] for label in dict.fromkeys(among) if label in index]
            if not rows:
                return -math.inf, 0, (None, _not_calibrated(among)), np.zeros(0)
            terms = (terms[0][rows], terms[1][rows])
            counts = counts[rows]
        row = model.scores_of(np.asarray(vector), terms)[0]
        best = int(np.argmax(row))
        shots = int(counts[best])
        key = (alpha, _level(shots))
        found = judging.levels.get(key)
        if found is None:
            level = self._supported(alpha, shots)
            found = judging.levels[key] = (self.threshold(alpha, level), self.scores_at(level))
        return float(row[best]), shots, found[0], found[1]

    def _supported(self, alpha: float, shots: int) -> int:
        """The largest shot level not above ``shots`` whose stand-ins give a threshold at
        ``alpha`` (the first level when none does; looked up once per level and ALPHA)."""
        key = (alpha, _level(shots))
        found = self._supported_at.get(key)
        if found is None:
            level = key[1]
            while level > 0 and self.threshold(alpha, SHOT_LEVELS[level])[0] is None:
                level -= 1
            found = self._supported_at[key] = SHOT_LEVELS[level]
        return found

    def share_at_most(self, statistic: float, alpha: float, shots: int) -> float:
        """Share of the stand-ins that set the threshold at ``alpha`` for a category of
        ``shots`` examples (:meth:`judge_vector`) whose statistic is at most ``statistic``:
        how unusual a known image scoring it would be."""
        return _share(self.scores_at(self._supported(alpha, shots)), statistic)

    def threshold(self, alpha: float, shots: int = SHOT_LEVELS[-1]) -> Threshold:
        """The conformal threshold for a query whose best category has ``shots`` examples.

        Args:
            alpha: The promised share of known-category queries rejected.
            shots: Examples of the query's best category.

        Returns:
            ``(threshold, None)``, or ``(None, why)`` when the stand-ins cannot support it.
        """
        key = (alpha, _level(shots))
        if key not in self._thresholds:
            self._thresholds[key] = self._threshold(alpha, SHOT_LEVELS[key[1]])
        return self._thresholds[key]

    def _threshold(self, alpha: float, shots: int) -> Threshold:
        if not self.calibrated:
            return None, self.reason or "cannot calibrate: no stand-in queries"
        eligible = self.eligible(shots)
        n = len(eligible)
        categories = len({s[0] for s in eligible})
        if categories < MIN_CATEGORIES:
            return None, self._too_few_categories(categories, shots)
        if n < min_standins(alpha):
            return None, (
                f"cannot calibrate for ALPHA {alpha:g}: {n} stand-in queries from categories "
                f"with {shots + 1} or more examples, at least {min_standins(alpha)} needed; add "
                "examples"
            )
        # k-th smallest of n stand-ins, each an equal mixture of its DRAWS draws
        k = math.floor(alpha * (n + 1) + 1e-9)
        values = self.scores_at(shots)
        index = min(len(values) - 1, max(0, math.ceil(k / n * len(values)) - 1))
        return float(values[index]), None

    def _too_few_categories(self, standing: int, shots: int) -> str:
        """Why stand-ins from ``standing`` categories set no threshold at ``shots``: in the
        memory's own counts, which a person can check with ``memory list`` (a small memory's
        cross-fitting leaves some of its categories without a stand-in)."""
        held = sum(1 for n in self.categories.counts if n > shots)
        enough = f"at least {MIN_CATEGORIES} needed to say how the examples of a category scatter"
        if held >= MIN_CATEGORIES:
            return (
                f"cannot calibrate: the examples scored as stand-in queries come from only "
                f"{standing} of the {held} categories with {shots + 1} or more examples "
                f"({enough}); add examples, or give a threshold such as --reject 0.8"
            )
        have = "category has" if held == 1 else "categories have"
        return (
            f"cannot calibrate: only {held} {have} {shots + 1} or more examples ({enough}); "
            "add a second example to more categories, or give a threshold such as --reject 0.8"
        )

    def prior(self) -> EncoderPrior | None:
        """The encoder's prior, when it has one and the memory has a scale to apply it to."""
        return encoder_prior(self.encoder) if self.scale is not None else None

    def prior_changed(self) -> bool:
        """Whether the encoder's prior is not the one this calibration was made with, in a
        memory whose own examples set no threshold at the default ALPHA (so that the prior
        judges it, with the scale and link measured by that prior): it must be fitted again."""
        if not self.encoder or self.own_threshold(DEFAULT_ALPHA)[0] is not None:
            return False
        now = encoder_prior(self.encoder)
        return (now.digest() if now is not None else None) != self.prior_digest

    def prior_change(self) -> str | None:
        """How the encoder's prior differs from the one this calibration was made with
        (:meth:`prior_changed`), in words that follow "the calibration", or ``None``."""
        if not self.prior_changed():
            return None
        if self.prior_digest is None:
            return (
                "does not record the encoder prior it was made with (made by an earlier "
                "rar-agent, or before its encoder's prior was measured)"
            )
        if encoder_prior(self.encoder) is None:
            return (
                "was made with an encoder prior that this machine does not hold (measured on "
                "another machine, or under another RAR_HOME)"
            )
        return "was made with another encoder prior than its encoder's now"

    def prior_threshold(self, alpha: float, shots: int, label: str | None = None) -> Threshold:
        """The similarity threshold the encoder prior sets for a query whose category
        (``label``) has ``shots`` examples, or ``(None, why not)``: for a category set apart
        from the scale, the lower of the others' and the prior's
        :meth:`~rar_agent.openset.prior.EncoderPrior.far_threshold`."""
        prior = self.prior()
        if prior is None or self.scale is None:
            return None, self._no_prior()
        score = prior.threshold(alpha, shots, self.scale)
        if score is None:
            return None, (
                f"the encoder prior covers ALPHA {prior.alphas[0]:g} to {prior.alphas[-1]:g} "
                f"only, not {alpha:g}"
            )
        threshold = similarity_at(score, self.scale)
        far = prior.far_threshold(alpha) if label in self.scale.apart else None
        return (threshold if far is None else min(threshold, far)), None

    def too_few_for_prior(self) -> str | None:
        """Why no encoder prior can judge the memory yet (too few image categories for a
        scale), or ``None`` where one can."""
        held = len(self.categories.labels)
        if held >= MIN_SCALE_CATEGORIES:
            return None
        return (
            f"the memory needs at least {MIN_SCALE_CATEGORIES} categories (it holds {held}) "
            "before an encoder prior can judge it: the prior measures how far a memory's "
            "categories lie apart"
        )

    def _no_prior(self) -> str:
        too_few = self.too_few_for_prior()
        if too_few is not None:
            return too_few
        return (
            f"no encoder prior for {self.encoder or 'this encoder'} yet (none ships with "
            "rar-agent; `rar-agent memory prior` or the first recognition with this memory "
            "measures one on the 200 Fashion-MNIST garments shipped with it, once per machine)"
        )

    def why_no_groups(self) -> str | None:
        """Why look-alike unknown queries are not grouped (``None``: they are, at
        :attr:`link`): the memory has no pair of examples of one category and the encoder
        prior gives no link in its stead, or it has no example image at all."""
        if self.link is not None:
            return None
        if not self.seen:  # class names only (the built-in memory): no scale to judge
            return (
                "no groups: the memory holds no example images, only class names, so nothing "
                "says how alike two photos of one thing are (teach a few photos of a category)"
            )
        prior = self.prior()
        stead = (
            self._no_prior()
            if prior is None
            else f"the encoder prior of {prior.encoder} measured no link at the "
            f"{GROUP_QUANTILE:g} quantile"
        )
        return (
            "no groups: no category has two example images, so nothing says how alike two "
            f"photos of one thing are; {stead}"
        )

    def own_threshold(self, alpha: float) -> Threshold:
        """The memory's own threshold for a one-example category at ``alpha``, or why there is
        none; a category of more examples falls back to it, so without it the memory's own
        examples set no threshold at all."""
        return self.threshold(alpha, 1) if self.calibrated else (None, self.reason or NO_PAIRS)

    def judged_by_own(self) -> bool:
        """Whether the memory's own stand-ins judge its queries, at every ALPHA: they set a
        threshold at the default ALPHA (``auto``), or the encoder has no prior to do it; else
        the encoder prior judges, at every ALPHA.

        The choice is the memory's, not the ALPHA's: the two judge different statistics, and
        a memory judged by the prior at auto:0.02 and by its stand-ins at auto:0.05 rejected
        queries at 0.02 that 0.05 kept (a larger ALPHA must never reject fewer). Where the
        stand-ins that judge are too few for a small ALPHA, nothing is rejected at it.
        """
        if not self.calibrated:
            return False
        return self.prior() is None or self.own_threshold(DEFAULT_ALPHA)[0] is not None

    def smallest_alpha(self) -> float | None:
        """The smallest ALPHA the memory's own stand-ins set a threshold at (to four places),
        ``None`` where they do not judge its queries (:meth:`judged_by_own`) or set none."""
        if not self.judged_by_own() or self.own_threshold(0.5)[0] is None:
            return None
        return smallest_alpha_for(len(self.eligible(1)))

    def _without_threshold(self, why: str | None) -> str:
        """Why a query of a memory its own stand-ins judge has no threshold at an ALPHA
        (``why``: the stand-ins' reason), and what to do."""
        smallest = self.smallest_alpha()
        ask = "" if smallest is None else f", or ask for auto:{smallest:g} or more"
        prior = self._no_prior() if self.prior() is None else NO_PRIOR_BELOW
        return f"{why or NO_PAIRS}{ask}; {prior}"

    def source(self, alpha: float) -> str:
        """Which source sets the thresholds at ``alpha``, in words (for ``memory stats``)."""
        if self.judged_by_own():
            own = self.own_threshold(alpha)[0] is not None
            return "this memory's own examples" if own else "none"
        if self._prior_words() is None:
            return "none"
        return self._by_prior(self.own_threshold(DEFAULT_ALPHA)[1])

    def _by_prior(self, why: str | None) -> str:
        """The encoder prior as the source, and why the memory's own examples are not."""
        own = (why or "").removeprefix("cannot calibrate")
        return f"{self._prior_words()}; its own examples cannot{own}"

    def _prior_words(self) -> str | None:
        prior = self.prior()
        if prior is None or self.scale is None:
            return None
        apart = self.scale.set_apart
        far = (
            f"; {apart} far from all the others set apart, judged at the prior's threshold "
            "for such a category where it is lower"
            if apart
            else ""
        )
        caveat = f"; {prior.caveat}" if prior.caveat else ""
        return (
            f"the encoder prior of {prior.encoder} (measured on {prior.measured_on}{caveat}), "
            f"not on this memory (scaled by how far its {self.scale.categories} categories "
            f"lie apart{far})"
        )

    def judge_query(
        self, vector: ArrayLike | None, candidates: Sequence[Candidate], alpha: float
    ) -> Judged:
        """One image query's known-ness and threshold at ``alpha``, from the memory's own
        stand-ins (:meth:`judge_vector` over its image candidates' categories) where they
        judge (:meth:`judged_by_own`), else from the encoder prior (the similarity of the
        answer's closest example against the prior's threshold).

        The stand-ins are scored against every category (their rival is the best other
        category's statistic), a query among its candidates only: its statistic is at most
        what it would be against every category and the thresholds are the same, so where
        the categories have one number of examples this rejects at least what judging every
        category did (in a mixed memory the threshold is the best candidate's level, which
        may be lower than the best category's).

        Args:
            vector: The query's embedding.
            candidates: Its retrieval candidates, best first (the first is the answer).
            alpha: The promised share of known-category queries rejected.

        Raises:
            ValueError: A calibrated memory without the query's embedding.
        """
        judging = self._judging_now()
        if judging.own:
            if vector is None:
                raise ValueError("the auto open-set check needs the query's embedding")
            among = [c.label for c in candidates if c.kind == "image"]
            value, shots, (threshold, why), values = self._judged(judging, vector, alpha, among)
            if not shots:  # no candidate's category is calibrated: no ALPHA would judge it
                return Judged(None, 0, None, why)
            if threshold is None:
                stat = value if math.isfinite(value) else None
                return Judged(stat, shots, None, self._without_threshold(why))
            share = _share(values, value)
            return Judged(value, shots, threshold, None, share=share)
        why = self.own_threshold(DEFAULT_ALPHA)[1]  # why the memory's own examples do not judge
        top = candidates[0]
        shots = max(1, self.categories.count_of(top.label))
        threshold, no_prior = self.prior_threshold(alpha, shots, top.label)
        if threshold is None:
            return Judged(None, shots, None, f"{why}; {no_prior}")
        similarity = top.scores[0] if top.scores else top.score
        note = f"threshold set by {self._by_prior(why)}"
        prior = self.prior()
        measured = prior is not None and prior.caveat is not None
        return Judged(float(similarity), shots, threshold, note, prior=True, measured=measured)

    def summary(self, alpha: float | None = None) -> dict[str, Any]:
        """Headline figures for people (no stand-in list); thresholds at ``alpha``."""
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        own = self.judged_by_own()
        # what a query of a category of m examples is judged at (fewer shots where the
        # stand-ins support no more, as judge_vector does), where the stand-ins judge
        per_shot: dict[int, Threshold] = {
            m: self.threshold(alpha, self._supported(alpha, m))
            if own
            else (None, self.own_threshold(DEFAULT_ALPHA)[1])
            for m in (1, 2, 5, 10)
        }
        model = self.model()
        prior = {m: self.prior_threshold(alpha, m) for m in (1, 2, 3)}
        if own:
            method = "conformal" if per_shot[1][0] is not None else "none"
        else:
            method = "prior" if prior[1][0] is not None else "none"
        return {
            "method": method,
            "statistic": None if model is None else f"relative Mahalanobis, rank {model.rank}",
            "alpha": alpha,
            "standins": len(self.standins),
            "categories": len({s[0] for s in self.standins}),
            "smallest_alpha": self.smallest_alpha(),
            "thresholds": {
                str(m): None if t is None else round(t, 4) for m, (t, _) in per_shot.items()
            },
            "source": self.source(alpha),
            "prior_thresholds": {
                str(m): None if t is None else round(t, 4) for m, (t, _) in prior.items()
            },
            "scale": None if self.scale is None else self.scale.model_dump(),
            # a query falls back to fewer shots: the promise holds wherever one shot does
            # (then why it cannot, as answers say)
            "cannot_calibrate": None
            if method != "none"
            else self._without_threshold(per_shot[1][1])
            if own
            else f"{per_shot[1][1]}; {prior[1][1]}",
            "updated_at": self.updated_at,
        }


class _Judging:
    """What judging queries needs of a calibration, derived once per calibration object (a
    plain object: a pydantic private attribute costs 2.5 us a read, and a verdict read eight
    of them): whether its own stand-ins judge, the statistic, the category counts and mean
    terms, each category's row, and per ALPHA and shot level the threshold and the sorted
    stand-in statistics it comes from. A write replaces the calibration object, and with it
    this."""

    __slots__ = ("counts", "index", "levels", "model", "own", "terms")

    def __init__(self, cal: Calibration) -> None:
        self.own = cal.judged_by_own()
        self.model = cal.model()
        self.counts = cal.means()[1]
        self.terms = cal.terms()
        self.index = {label: i for i, label in enumerate(cal.categories.labels)}
        self.levels: dict[tuple[float, int], tuple[Threshold, np.ndarray]] = {}


def _share(values: np.ndarray, statistic: float) -> float:
    """Share of the sorted stand-in statistics ``values`` at most ``statistic`` (0 without
    any)."""
    if not len(values):
        return 0.0
    return float(np.searchsorted(values, statistic, side="right")) / len(values)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _not_calibrated(among: Sequence[str]) -> str:
    """Why a query whose candidates' categories (``among``) the calibration lacks is not
    judged, and what to do."""
    names = ", ".join(repr(label) for label in dict.fromkeys(among))
    return (
        f"cannot judge: the calibration holds none of the candidates' categories ({names}), "
        "whose examples were written without updating it, so nothing is rejected; call "
        "rar_agent.openset.update(memory, added=ids) after memory.add_entries, as teaching "
        "and rar-agent memory build do"
    )


NO_PRIOR_BELOW = (
    "nothing is rejected at this ALPHA: the encoder prior judges only a memory whose own "
    f"examples cannot set a threshold at auto (ALPHA {DEFAULT_ALPHA:g}), so that a smaller "
    "ALPHA never rejects more"
)
"""Why a memory its own stand-ins judge rejects nothing at an ALPHA too small for them."""


NO_PAIRS = (
    "cannot calibrate: no category has two example images, so the memory holds no "
    "stand-in for a query of a known category; add a second example to some "
    "categories, or give a threshold such as --reject 0.8"
)


def _finish(cal: Calibration) -> Calibration:
    cal.updated_at = _now()
    if cal.standins and cal.statistic is not None:
        cal.method, cal.reason = "conformal", None
    else:
        cal.method = "prior" if cal.prior() is not None else "none"
        # a memory of too few examples fits no statistic, so no stand-in was scored even
        # where a category holds two: then say how many categories hold two, not none
        paired = any(n >= 2 for n in cal.categories.counts)
        cal.reason = cal.reason or (cal._too_few_categories(0, 1) if paired else NO_PAIRS)
    return cal


# ---------------------------------------------------------------------- stored form


def load(memory: CalibratedMemory) -> Calibration | None:
    """The calibration stored in ``memory``, or ``None`` if it has none (or an old form)."""
    return _parse(read_extension(memory), memory.collection)


def why_not_loaded(memory: CalibratedMemory) -> str:
    """Why :func:`load` finds no calibration in ``memory``, in words: none stored yet, one
    stored in another version's form, or one that cannot be read."""
    data = read_extension(memory)
    if data is None:
        return "no open-set calibration is stored yet"
    version = data.get("version")
    if version != _VERSION:
        return (
            f"the stored open-set calibration is in another rar-agent version's form ({version}; "
            f"this version reads {_VERSION})"
        )
    return "the stored open-set calibration cannot be read"


def why_refit(memory: CalibratedMemory) -> str | None:
    """Why ``memory``'s calibration must be fitted before it judges queries, in words: none
    is stored that this version reads (:func:`why_not_loaded`), or its encoder's prior changed
    since it was made (:meth:`Calibration.prior_changed`); ``None``: it judges as stored."""
    cal = load(memory)
    if cal is None:
        return why_not_loaded(memory)
    change = cal.prior_change()
    return None if change is None else f"the stored open-set calibration {change}"


MAX_AGE_S = 1.0
"""How long :func:`current` trusts its copy before reading the record again."""
_CURRENT: weakref.WeakKeyDictionary[
    Any, tuple[float, Calibration | None, dict[str, Any] | None]
] = weakref.WeakKeyDictionary()
_CURRENT_LOCK = threading.Lock()


def current(memory: CalibratedMemory, *, max_age: float | None = None) -> Calibration | None:
    """The memory's calibration for judging queries, without re-reading the record for each.

    Updates made through this module in this process are seen at once; changes made by
    another process within ``max_age`` seconds (``MAX_AGE_S`` by default): the stored
    calibration is read afresh at most that often (from the server, for a server memory),
    and parsed again only when it differs from the one held, since parsing it and deriving
    what the verdict needs cost far more than a query's verdict (7-15 ms at 10k entries).
    """
    now = time.monotonic()
    with _CURRENT_LOCK:
        held = _CURRENT.get(memory)
    if held is not None and now - held[0] < (MAX_AGE_S if max_age is None else max_age):
        return held[1]
    data = read_extension(memory, fresh=True)
    same = held is not None and held[2] == data
    cal = held[1] if held is not None and same else _parse(data, memory.collection)
    _remember(memory, cal, data)
    return cal


def _remember(
    memory: CalibratedMemory, cal: Calibration | None, stored: dict[str, Any] | None
) -> None:
    """Hold ``cal`` as ``memory``'s current calibration, parsed from ``stored``."""
    try:
        with _CURRENT_LOCK:
            _CURRENT[memory] = (time.monotonic(), cal, stored)
    except TypeError:  # an object that takes no weak references: nothing is kept
        pass


def _parse(data: dict[str, Any] | None, collection: str) -> Calibration | None:
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    try:
        return Calibration.model_validate(data)
    except ValueError:
        logger.warning("memory %r: unreadable calibration ignored", collection)
        return None


def _store(memory: CalibratedMemory, cal: Calibration) -> Calibration:
    stored = update_extension(memory, lambda _old: cal.model_dump(mode="json"))
    _remember(memory, cal, stored)
    return cal


# ---------------------------------------------------------------------- computing


def _seed(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def _draw_rows(standin: StandIn) -> np.ndarray:
    """A stand-in's draws as ``(levels, DRAWS)``."""
    levels = min(standin[1], len(SHOT_LEVELS))
    return decode_array(standin[2], (levels, DRAWS))


def _draws(model: Whitening, z: np.ndarray, others: np.ndarray, rival: float, seed: int) -> str:
    """A stand-in's statistic at each shot level it reaches: its category's mean taken over
    ``m`` random ones of its ``others`` (``DRAWS`` draws), the best other category's
    statistic (``rival``) when that is higher."""
    rng = np.random.default_rng(seed)
    out = []
    for m in SHOT_LEVELS:
        if m > len(others):
            break
        keys = rng.random((DRAWS, len(others)))
        picks = np.argsort(keys, axis=1)[:, :m]
        out.append(np.maximum(model.scores(z, others[picks].mean(axis=1))[0], rival))
    return encode_array(np.asarray(out))


def _standin(
    model: Whitening, label: str, z: np.ndarray, others: np.ndarray, rival: float, key: str
) -> StandIn | None:
    """The stand-in one example of ``label`` (coordinates ``z``) makes, or ``None`` when its
    category has no other example (``rival``: the best other category's statistic)."""
    if not len(others):
        return None
    return (label, len(others), _draws(model, z, others, rival, _seed(key)))


def _rivals(scores: np.ndarray, names: Sequence[str], own: Sequence[str]) -> np.ndarray:
    """Each row's best statistic over the categories other than its own (``-inf``: none)."""
    mask = np.asarray(names)[None, :] == np.asarray(own)[:, None]
    masked = np.where(mask, -np.inf, scores)
    return masked.max(axis=1) if masked.shape[1] else np.full(len(own), -np.inf)


def _cross_fitted(
    ids: Sequence[str], labels: Sequence[str], x: np.ndarray, limit: int
) -> tuple[list[StandIn], float | None]:
    """Up to ``limit`` stand-ins from the fitting sample, each scored by the statistic fitted
    on the other ``FOLDS - 1`` folds (position in the sample modulo ``FOLDS``), and their
    :func:`_reach`: how far off their folds' subspaces they lie (``None``: none)."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    chosen = [i for i in range(len(ids)) if len(groups[labels[i]]) >= 2][:limit]
    folds = _folds(len(ids))
    fold = np.arange(len(ids)) % folds
    out: list[StandIn] = []
    distances: list[np.ndarray] = []
    for k in range(folds):
        mine = [i for i in chosen if fold[i] == k]
        train = np.flatnonzero(fold != k)
        fold_labels = [labels[int(i)] for i in train]
        model = Whitening.fit(x[train], fold_labels, rank=_rank(len(x), folds)) if mine else None
        if model is None:
            continue
        z = model.project(x)
        distances.append(z[mine, -1])
        names = list(groups)
        means = np.stack([z[groups[name]].mean(axis=0) for name in names])
        rivals = _rivals(model.scores(z[mine], means), names, [labels[i] for i in mine])
        for i, rival in zip(mine, rivals, strict=True):
            others = z[[j for j in groups[labels[i]] if j != i]]
            standin = _standin(model, labels[i], z[i], others, float(rival), ids[i])
            if standin is not None:
                out.append(standin)
    return out, _reach(np.concatenate(distances)) if distances else None


def _reach(distances: np.ndarray) -> float:
    """The largest of the stand-ins' ``distances`` off the subspace within ``FENCE``: a few
    examples of another kind inside the fitting sample do not set the bar for the next."""
    q1, q3 = np.percentile(distances, [25, 75])
    return float(distances[distances <= q3 + FENCE * (q3 - q1)].max())


def _folds(n: int) -> int:
    """Cross-fitting folds for ``n`` examples: ``FOLDS`` for small memories, fewer (at least
    5) for large ones, so a full calibration fits at most about ``FOLD_ROWS`` rows."""
    return max(5, min(FOLDS, FOLD_ROWS // max(n, 1)))


def _rank(n: int, folds: int) -> int:
    """The rank of the statistic fitted on ``n`` examples: the one its cross-fitted
    stand-ins can have too (fitted on ``(folds - 1) / folds`` of them), since the
    statistic's spread grows with the rank."""
    return max(1, min(RANK, n - math.ceil(n / folds) - 1))


def group_link(
    labels: Sequence[str],
    x: np.ndarray,
    quantile: float = GROUP_QUANTILE,
    per_category: int = 50,
) -> float | None:
    """The link of examples ``x`` (categories ``labels``): the ``quantile`` of the
    similarities of all pairs of examples of one category (up to ``per_category`` examples
    of each); ``None`` without a category of two examples. Another ``quantile`` is for
    measuring (``tools/eval_open_set.py --link-quantiles``)."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = []
    for idx in groups.values():
        rows = unit[idx[:per_category]]
        if len(rows) >= 2:
            sims.append((rows @ rows.T)[np.triu_indices(len(rows), 1)])
    if not sims:
        return None
    # the k-th of n pairs at k = q (n + 1/3) + 1/3, median-unbiased for any n; numpy's
    # default, k = q (n - 1) + 1, reads a higher quantile where pairs are few (7 pairs, one
    # per category of 2 examples: 0.02 above the 20% quantile of all such pairs, on average
    # over 300 memories of Fashion-MNIST garments), a link set by chance, not by the rule
    pairs = np.concatenate(sims)
    return round(float(np.quantile(pairs, quantile, method="median_unbiased")), 6)


def _link(
    own: float | None, pairs: int, encoder: str | None, scale: MemoryScale | None
) -> float | None:
    """The memory's :attr:`Calibration.link`: ``own``, from its ``pairs`` pairs of examples
    of one category (:func:`group_link`), where they are at least ``MIN_LINK_PAIRS``; else
    the encoder prior's at the memory's ``scale`` (:meth:`EncoderPrior.link_at`: a memory of
    one example per category has no pair, one of one or two pairs only a guess); else ``own``
    (an encoder without a prior: one pair's guess beats no groups)."""
    prior = encoder_prior(encoder) if own is None or pairs < MIN_LINK_PAIRS else None
    instead = prior.link_at(GROUP_QUANTILE, scale) if prior is not None else None
    return own if instead is None else instead


def _pairs(counts: Iterable[int]) -> int:
    """The pairs of examples of one category among categories of ``counts`` examples."""
    return sum(n * (n - 1) // 2 for n in counts)


def _image_entries(memory: CalibratedMemory) -> Iterator[tuple[str, str, list[float]]]:
    """Every image entry ``(id, label, vector)`` in id order (ids are hashes: a fair order)."""
    offset: str | None = None
    while True:
        page, offset = memory.scroll(offset, limit=512)
        for pid, kind, vector, payload in page:
            if kind == "image" and vector:
                yield pid, str(payload.get("label")), vector
        if offset is None:
            return


def _labels_and_rows(
    entries: Sequence[tuple[str, str, list[float]]],
) -> tuple[list[str], np.ndarray]:
    """The labels of image ``entries`` (as :func:`_image_entries` yields them) and their
    vectors as float64 rows: what a fit and a memory's scale are measured on."""
    return [label for _, label, _ in entries], np.asarray([v for _, _, v in entries], np.float64)


def _category_sums(
    model: Whitening | None,
    reach: float | None,
    first: Sequence[tuple[str, str, list[float]]],
    rest: Iterator[Any],
) -> tuple[CategorySums, Whitening | None, int]:
    """Each category's number of examples and sum of coordinates, over every example (only
    the numbers without a statistic), the statistic extended by the examples far beyond
    ``reach`` (:func:`_taken_in`), and how many directions that added."""
    out = CategorySums()
    added = 0
    chunk = list(first)
    while chunk:
        x = np.asarray([v for _, _, v in chunk], dtype=np.float64)
        z = np.zeros((len(x), 0))
        if model is not None:
            width = model.width
            model, z, more = _taken_in(model, x, reach, MAX_DIRECTIONS - added)
            out.widen(width, model.width)
            added += more
        out.add([label for _, label, _ in chunk], z)
        chunk = list(itertools.islice(rest, 4096))
    return out, model, added


def _taken_in(
    model: Whitening, x: np.ndarray, reach: float | None, room: int
) -> tuple[Whitening, np.ndarray, int]:
    """The coordinates of new examples ``x``, by the statistic extended (up to ``room``
    directions) with each example lying further off its subspace than ``BEYOND`` times
    ``reach``, farthest first (:meth:`Whitening.extended`); and how many directions were
    added.

    Such an example's category would otherwise be compared with queries by its shadow on
    the subspace alone, which photos of anything and noise share: a catch-all "known"."""
    z = model.project(x)
    added = 0
    while added < room:
        far = _far(z, reach)
        if not len(far):
            break
        grown = model.extended(x[far[np.argmax(z[far, -1])]])
        if grown is model:
            break
        model, added = grown, added + 1
        z = model.project(x)
    return model, z, added


def _far(z: np.ndarray, reach: float | None) -> np.ndarray:
    """The rows of coordinates ``z`` lying ``BEYOND`` times ``reach`` off the subspace (and
    more than ``ON_SUBSPACE``)."""
    if reach is None:
        return np.zeros(0, int)
    return np.flatnonzero(z[:, -1] > max(BEYOND * reach, ON_SUBSPACE))


def fit(memory: CalibratedMemory, *, sample: int | None = None) -> Calibration:
    """Calibrate ``memory`` from scratch and store it.

    Cost: one scroll over the memory's image entries (the statistic fitted on the first
    ``FIT_SAMPLE``, each entry projected once), ``FOLDS`` fits for the stand-ins; no search.

    Args:
        memory: The memory (a read-only one is calibrated but not written to).
        sample: How many stand-ins to make (``MAX_STANDINS``).

    Returns:
        The new calibration.
    """
    sample = MAX_STANDINS if sample is None else sample
    if sample < 1:
        raise ConfigError(f"the calibration sample must be >= 1 entry, got {sample}")
    old = load(memory)
    seen = memory.count("image")
    cal = Calibration(seen=seen, full_at=seen, revision=old.revision + 1 if old else 1)
    entries = _image_entries(memory)
    first = list(itertools.islice(entries, FIT_SAMPLE))
    if not first:
        cal.reason = (
            "cannot calibrate: the memory holds no example images (a text-only memory has no "
            "automatic threshold)"
        )
        return _store(memory, _finish(cal))
    ids = [pid for pid, _, _ in first]
    labels, x = _labels_and_rows(first)
    model = Whitening.fit(x, labels, rank=_rank(len(x), _folds(len(x))))
    cal.encoder, prior = memory.info.fingerprint, encoder_prior(memory.info.fingerprint)
    cal.scale = MemoryScale.measure(labels, x, prior.far_below if prior else None)
    if model is not None:
        cal.standins, cal.reach = _cross_fitted(ids, labels, x, sample)
    cal.categories, model, cal.directions = _category_sums(model, cal.reach, first, entries)
    if model is not None:
        cal.statistic = model.to_json()
    own = group_link(labels, x) if model is not None else None
    pairs = _pairs(collections.Counter(labels).values())
    cal.link = _link(own, pairs, cal.encoder, cal.scale)
    cal.prior_digest = prior.digest() if prior is not None else None
    _finish(cal)
    logger.info("memory %r calibrated: %s", memory.collection, cal.summary())
    return _store(memory, cal)


def update(memory: CalibratedMemory, *, added: Sequence[str] = (), removed: int = 0) -> Calibration:
    """Keep the calibration current after entries were added or removed (the one policy).

    A full calibration (:func:`fit`) is made when there is none yet, when entries were
    removed, when the image entries have doubled since the last full one, or when a memory
    without a statistic (no category of two examples) gained entries and holds at most
    ``FIT_SAMPLE`` (a scroll with nothing to fit: its category counts and the
    :class:`~rar_agent.openset.prior.MemoryScale` an encoder prior is scaled by stay exact)
    or gained a category of two examples, or when it holds at most ``FIT_SAMPLE`` and an
    entry lies far off the statistic's subspace with all ``MAX_DIRECTIONS`` taken (the fit
    sees every example). Otherwise the statistic stays as fitted, but for a
    direction added for each new entry lying ``BEYOND`` times its reach off its subspace
    (:func:`_taken_in`): each new image entry is projected and added to its category's sum,
    and enters the stand-in reservoir with probability ``MAX_STANDINS / seen``; the ones that
    enter are searched once (one batched search) for their category's other examples.
    Counting is indexed (the image entries, and the new entries' categories; never every
    label). Every added example changes its category's mean, so each update writes the
    calibration once. A memory of fewer than ``MIN_LINK_PAIRS`` pairs of examples of one
    category keeps the encoder prior's link at its scale; its own link takes over at the
    full calibration after it has that many.

    Args:
        memory: The memory the entries were written to (or removed from).
        added: Point ids of the entries just added (text entries are ignored).
        removed: How many entries were just removed.

    Returns:
        The calibration now stored.
    """
    cal = load(memory)
    total = memory.count("image")
    model = cal.model() if cal is not None else None
    if cal is None or removed or total >= 2 * max(cal.full_at, 1):
        return fit(memory)
    if model is None and total <= FIT_SAMPLE:
        return fit(memory)  # no statistic to fit: the counts and the scale, kept exact
    labels = _labels_of(memory, added)
    if model is None and any(n >= 2 for n in _image_counts(memory, labels.values()).values()):
        return fit(memory)  # a first category of two examples: a statistic can be fitted
    scale = _rescaled(memory, cal, labels.values())
    vectors = memory.get_vectors([pid for pid in added if pid in labels]) if model else {}
    new = [pid for pid in added if pid in vectors]
    taken: tuple[Whitening, np.ndarray, int] | None = None
    rows = np.asarray([vectors[p] for p in new])
    if model is not None and new:
        taken = _taken_in(model, rows, cal.reach, MAX_DIRECTIONS - cal.directions)
        if len(_far(taken[1], cal.reach)) and total <= FIT_SAMPLE:
            return fit(memory)  # no direction left for a far example: the fit sees them all
    slots = _reservoir(memory.collection, cal, total, len(new))
    found = _reservoir_standins(memory, cal, new, labels, vectors, slots) if model else []

    merged: list[Calibration] = []

    def merge(data: dict[str, Any] | None) -> dict[str, Any]:
        # a copy of what was read, not model_copy: that would keep the means, terms and
        # thresholds derived from it, which the merge below makes stale
        now = _parse(data, memory.collection) or Calibration.model_validate(cal.model_dump())
        merged.append(now)
        if taken is not None:
            _join_sums(now, cal, taken, rows, [labels[p] for p in new])
        pool = list(now.standins)
        for slot, standin in found:
            if slot is None or slot >= len(pool):
                pool.append(standin)
            else:
                pool[slot] = standin
        now.standins = pool[-MAX_STANDINS:]
        if scale is not None:
            now.scale = scale
            pairs = _pairs(now.categories.counts)
            if pairs < MIN_LINK_PAIRS:  # the prior's link (too few pairs) follows the scale
                now.link = _link(now.link, pairs, now.encoder, scale)
        now.seen = max(total, now.seen)  # entries now held (concurrent adds counted once)
        now.revision += 1
        return _finish(now).model_dump(mode="json")

    stored = update_extension(memory, merge)
    result = merged[-1]  # what was stored last (compare-and-set may have merged again)
    _remember(memory, result, stored)
    return result


def _rescaled(
    memory: CalibratedMemory, cal: Calibration, labels: Iterable[str]
) -> MemoryScale | None:
    """The memory's scale measured again (as :func:`fit` measures it) when the encoder prior
    judges it and ``labels`` (of examples just added) bring a category it has not counted:
    the scale is what the prior's threshold is set by, and a category taught far from the
    others must be set apart from it (and judged as such); ``None`` otherwise."""
    # the cheap tests first: the own threshold below costs ~5 ms at 10k entries
    if all(cal.categories.count_of(label) for label in labels):
        return None
    prior = encoder_prior(memory.info.fingerprint)
    if prior is None:
        return None
    # not judged_by_own(): without a scale the prior judges nothing, so a memory first fitted
    # with too few categories for one would have counted as judged by its own for good
    if cal.calibrated and cal.own_threshold(DEFAULT_ALPHA)[0] is not None:
        return None
    first = list(itertools.islice(_image_entries(memory), FIT_SAMPLE))
    return MemoryScale.measure(*_labels_and_rows(first), prior.far_below)


def _join_sums(
    now: Calibration,
    cal: Calibration,
    taken: tuple[Whitening, np.ndarray, int],
    rows: np.ndarray,
    labels: Sequence[str],
) -> None:
    """Add new examples (vectors ``rows``) to the stored calibration ``now``'s category
    sums: by ``taken`` (:func:`_taken_in` of the statistic of ``cal``, the calibration read
    before) where ``now`` holds that statistic. Where another writer extended it since (the
    same fit, with directions added for its own far examples) they are projected again by
    ``now``'s, so that both writers' examples count; where another writer fitted afresh,
    not at all (its fit counted every example then held)."""
    grown, z, directions = taken
    if now.statistic != cal.statistic:
        if not _same_fit(now, cal):
            return
        model = Whitening.from_json(now.statistic or {})
        grown, z, directions = _taken_in(model, rows, now.reach, MAX_DIRECTIONS - now.directions)
    if directions:
        width = grown.width - directions
        now.categories.widen(width, grown.width)
        now.statistic, now.directions = grown.to_json(), now.directions + directions
    now.categories.add(labels, z)


def _same_fit(a: Calibration, b: Calibration) -> bool:
    """Whether two calibrations' statistics come from one full calibration (they differ by
    the directions added since at most: :meth:`Whitening.extended` keeps the fitted mean)."""
    if a.statistic is None or b.statistic is None:
        return False
    return a.full_at == b.full_at and a.statistic["mean"] == b.statistic["mean"]


def _reservoir(collection: str, cal: Calibration, total: int, new: int) -> list[int | None]:
    """For each of ``new`` entries: the stand-in slot it replaces (``None``: appended), or
    ``-1`` when it does not enter the reservoir."""
    seen = max(cal.seen, total - new)
    free = MAX_STANDINS - len(cal.standins)
    out: list[int | None] = []
    for _ in range(new):
        seen += 1
        if free > 0:
            free -= 1
            out.append(None)
            continue
        target = random.Random(f"{collection}\x00{seen}").randrange(seen)
        out.append(target if target < MAX_STANDINS else -1)
    return out


def _reservoir_standins(
    memory: CalibratedMemory,
    cal: Calibration,
    new: Sequence[str],
    labels: dict[str, str],
    vectors: dict[str, list[float]],
    slots: Sequence[int | None],
) -> list[tuple[int | None, StandIn]]:
    """The stand-ins the entries that entered the reservoir make, scored by the stored
    statistic (which has not seen them) against their category's other examples among
    their search hits and the other categories' means."""
    model = cal.model()
    chosen = [(slot, pid) for slot, pid in zip(slots, new, strict=True) if slot != -1]
    if model is None or not chosen:
        return []
    rows = np.asarray([vectors[pid] for _, pid in chosen], dtype=np.float64)
    batches = memory.search_batch(rows, kind="image", limit=SEARCH_LIMIT)
    own = {pid: [h.id for h in hits if h.label == labels[pid] and h.id != pid]
           for (_, pid), hits in zip(chosen, batches, strict=True)}  # fmt: skip
    others = memory.get_vectors([i for ids in own.values() for i in ids])
    z = model.project(rows)
    rivals = _rivals(model.scores(z, cal.terms()), cal.means()[0], [labels[p] for _, p in chosen])
    out: list[tuple[int | None, StandIn]] = []
    for (slot, pid), row, rival in zip(chosen, z, rivals, strict=True):
        mine = [others[i] for i in own[pid] if i in others]
        z_own = model.project(np.asarray(mine)) if mine else np.zeros((0, model.width))
        standin = _standin(model, labels[pid], row, z_own, float(rival), pid)
        if standin is not None:
            out.append((slot, standin))
    return out


def _image_counts(memory: CalibratedMemory, labels: Iterable[str]) -> dict[str, int]:
    """Image entries of each of ``labels``: indexed counts, far cheaper than counting every
    label (``memory.labels``, a facet) when a few examples were taught."""
    return {label: memory.count("image", label=label) for label in dict.fromkeys(labels)}


def _labels_of(memory: CalibratedMemory, ids: Sequence[str]) -> dict[str, str]:
    """The label of each image entry among ``ids``."""
    if not ids:
        return {}
    return {h.id: h.label for h in memory.get_entries(ids) if h.kind == "image"}
