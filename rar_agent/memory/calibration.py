"""Open-set calibration: how similar a query of a *known* category usually is to the memory.

The known-ness statistic of a query is the *support* of its best candidate category: the
mean similarity of that category's ``SUPPORT_ENTRIES`` (2) closest entries. Two neighbours
are steadier than one: on Fashion-MNIST (EfficientNet-Lite0, 10 shots, all 120 ways to hold
out 3 of 10 classes; docs/eval/open-set) the AUROC was 0.792 against 0.779 for the top-1
similarity with the same per-category thresholds, at a smaller accuracy cost.

The memory calibrates itself, with no labelled queries. Each sampled image entry is treated
as a query against the memory without it (leave-one-out): its best other entry's label and
the support of that label (other entries only) are a *stand-in* for a known query. A
category with a single example cannot do that (its nearest other entry belongs to another
category), so an augmented view of its example is the stand-in instead
(:func:`rar_agent.memory.views.add_view_standins`).

From the stand-ins:

- each category's typical similarity ``mean[c]`` (its stand-ins' mean, shrunk towards the
  global mean with the weight of ``SHRINK`` stand-ins, so a category with few examples is not
  judged by one or two numbers);
- an offset: the one-sided ``Z`` (1.645, the 5 % tail of a normal fit) below the mean of
  ``score - mean[predicted category]`` over all stand-ins.

A query whose best candidate is ``c`` with support ``s`` (mean of ``c``'s two closest
entries among the hits) is *known* when ``s >= mean[c] + offset``, its per-category
threshold. Tight categories thus get a higher
threshold than diverse ones. Only the top candidate's label and support (computed while
retrieval folds its hits) are needed at query time: a dict lookup, no extra search.

A category with a single entry among the hits (one taught from a single example) has no
support to speak of: the query's similarity to that entry is compared with a threshold fitted
the same way to the stand-ins' *pair* similarities (how close one example of a category is
to another), so a category taught from one photo recognizes the next photo of it.

Text-only memories (class-name prototypes) get no automatic threshold: image-to-text
similarities live on another scale than the text entries' similarities among themselves, so
the memory holds nothing to calibrate them with. They reject only when the ranker answers
"none of these", or at a threshold the user gives.

The stand-ins are a bounded reservoir (``MAX_STANDINS``): a full calibration samples that
many entries (never all pairs); each later addition enters the reservoir with the standard
reservoir probability, and a full calibration is redone when the image entries have doubled,
so keeping the calibration current costs a constant number of searches per added entry.
The calibration lives in the memory's metadata under ``"calibration"``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from rar_agent.errors import ConfigError, MemoryStoreError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.memory.entries import Hit, StoredPoint

__all__ = [
    "CALIBRATION_KEY",
    "CalibratedMemory",
    "MAX_STANDINS",
    "MIN_STANDINS",
    "SHRINK",
    "SUPPORT_ENTRIES",
    "Z",
    "Calibration",
    "StandIn",
    "calibrate",
    "load_calibration",
    "make_standin",
    "store_calibration",
    "update_calibration",
    "update_on_add",
]


class CalibratedMemory(Protocol):
    """What calibration reads and writes of a memory (:class:`~rar_agent.memory.CategoryMemory`).

    A protocol rather than the class itself, so that the memory can call calibration without
    the two modules importing each other.
    """

    collection: str

    def extension(self, name: str) -> dict[str, Any] | None:
        """An extension of the memory's record."""
        ...

    def update_extension(
        self, name: str, fn: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Change an extension of the memory's record atomically (compare-and-set)."""
        ...

    def get_vectors(self, ids: Iterable[str]) -> dict[str, list[float]]:
        """The stored image vectors of these entries."""
        ...

    def labels(self, kind: str | None = None) -> dict[str, int]:
        """Entry counts per label."""
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

CALIBRATION_KEY = "calibration"
MAX_STANDINS = 1000
"""Stand-in queries kept (and sampled by a full calibration)."""
MIN_STANDINS = 5
"""Fewer stand-ins than this give no threshold (too few to estimate a tail)."""
SHRINK = 5.0
"""Weight, in stand-ins, of the global mean in each category's mean."""
Z = 1.645
"""Standard deviations below the mean: the one-sided 5 % tail of a normal fit."""
SUPPORT_ENTRIES = 2
"""Closest entries of a category averaged into its support (the known-ness statistic)."""
SEARCH_LIMIT = 16
"""Hits per calibration search: enough to hold the best label's 2 closest others."""
_VERSION = 1

StandIn = tuple[str, str, float | None, str, float | None]
"""One stand-in query: ``(label, predicted label, support, "loo" | "view", pair)``.

``support`` is the predicted label's support (``None`` when only one entry of it was among
the hits); ``pair`` the mean similarity to the other entries of its *own* label among the
hits (``None`` when there were none): how close one example of a category is to another.
"""


class Calibration(BaseModel):
    """A memory's open-set calibration (image side), as stored in its metadata.

    Attributes:
        method: ``leave-one-out`` when a threshold was fitted, ``none`` when it could not be.
        reason: Why there is no threshold (``method == "none"``).
        offset: Added to a category's mean support to give its threshold.
        global_mean: Mean stand-in support (the mean of categories with no stand-in).
        single_threshold: The similarity a query must reach when its best category has a
            single entry among the hits (a category taught from one example): the ``Z``
            tail of the stand-ins' ``pair`` similarities.
        standins: The stand-in queries the fit used.
        seen: Entries offered to the reservoir so far (for its sampling probability).
        full_at: Image entries at the last full calibration (redone when they double).
        revision: Grows with every change (lets readers cache derived values).
    """

    version: int = _VERSION
    kind: Literal["image"] = "image"
    method: Literal["leave-one-out", "none"] = "none"
    reason: str | None = None
    z: float = Z
    shrink: float = SHRINK
    offset: float | None = None
    global_mean: float | None = None
    single_threshold: float | None = None
    standins: list[StandIn] = Field(default_factory=list)
    seen: int = 0
    full_at: int = 0
    revision: int = 0
    updated_at: str | None = None
    _means: dict[str, float] | None = None

    @property
    def calibrated(self) -> bool:
        """Whether any threshold is available."""
        return self.offset is not None or self.single_threshold is not None

    def class_means(self) -> dict[str, float]:
        """Each category's shrunk mean stand-in support (leave-one-out stand-ins only)."""
        if self._means is None:
            self._means = _class_means(self.standins, self.global_mean or 0.0, self.shrink)
        return self._means

    def threshold_for(self, label: str, *, single: bool = False) -> float | None:
        """What a query whose best candidate is ``label`` must reach (None: no threshold).

        Args:
            label: The best candidate's category.
            single: Only one entry of it was among the hits: the query's similarity to that
                entry is compared with :attr:`single_threshold` instead of its support.
        """
        if single:
            return self.single_threshold
        if self.offset is None or self.global_mean is None:
            return None
        return self.class_means().get(label, self.global_mean) + self.offset

    def refit(self) -> Calibration:
        """A copy whose threshold is fitted to the current stand-ins."""
        cal = _fit(self.standins, seen=self.seen, revision=self.revision + 1)
        cal.full_at = self.full_at
        return cal

    def summary(self) -> dict[str, Any]:
        """Headline figures for people (no stand-in list)."""
        loo = sum(1 for s in self.standins if s[3] == "loo")
        return {
            "method": self.method,
            "reason": self.reason,
            "offset": self.offset,
            "global_mean": self.global_mean,
            "single_threshold": self.single_threshold,
            "standins": len(self.standins),
            "leave_one_out": loo,
            "views": len(self.standins) - loo,
            "categories": len(self.class_means()),
            "updated_at": self.updated_at,
        }


def _class_means(standins: Sequence[StandIn], g: float, shrink: float) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for label, _, support, flag, _ in standins:
        if flag == "loo" and support is not None:
            sums[label] += support
            counts[label] += 1
    return {c: (sums[c] + shrink * g) / (counts[c] + shrink) for c in sums}


def _tail(values: Sequence[float]) -> float:
    """The one-sided ``Z`` tail of a normal fit: ``mean - Z * std``."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean() - Z * arr.std())


def _fit(standins: Sequence[StandIn], *, seen: int, revision: int) -> Calibration:
    """Fit class means, the offset and the single-entry threshold (module docstring)."""
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    cal = Calibration(standins=list(standins), seen=seen, revision=revision, updated_at=now)
    supported = [(s[1], s[2], s[3]) for s in standins if s[2] is not None]
    if len(supported) >= MIN_STANDINS:
        loo = [support for _, support, flag in supported if flag == "loo"]
        cal.global_mean = float(np.mean(loo or [support for _, support, _ in supported]))
        means = cal.class_means()
        g = cal.global_mean
        cal.offset = _tail([support - means.get(pred, g) for pred, support, _ in supported])
    pairs = [s[4] for s in standins if s[3] == "loo" and s[4] is not None]
    pairs = pairs or [s[4] for s in standins if s[4] is not None]
    if len(pairs) >= MIN_STANDINS:
        cal.single_threshold = _tail(pairs)
    if cal.calibrated:
        cal.method = "leave-one-out"
    else:
        cal.reason = (
            f"only {len(standins)} stand-in queries (at least {MIN_STANDINS} needed): add "
            "more example images, or give a threshold such as --reject 0.8"
        )
    return cal


# ---------------------------------------------------------------------- stored form


def load_calibration(memory: CalibratedMemory) -> Calibration | None:
    """The calibration stored in ``memory``, or ``None`` if it has none (or an old form)."""
    return _parse(memory, memory.extension(CALIBRATION_KEY))


def _parse(memory: CalibratedMemory, data: object) -> Calibration | None:
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    try:
        return Calibration.model_validate(data)
    except ValueError:
        logger.warning("memory %r: unreadable calibration ignored", memory.collection)
        return None


def update_calibration(
    memory: CalibratedMemory, compute: Callable[[Calibration | None], Calibration]
) -> Calibration:
    """Store ``compute(stored calibration or None)`` atomically and return it.

    Goes through the memory's compare-and-set (``update_extension``): when another writer
    changed the calibration meanwhile, ``compute`` runs again on the newer one, so
    concurrent updates are never lost. On a read-only (or unbound) memory the result is
    computed but not written.
    """
    made: list[Calibration] = []

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        made.append(compute(_parse(memory, current)))
        return made[-1].model_dump(mode="json")

    try:
        memory.update_extension(CALIBRATION_KEY, change)
    except MemoryStoreError as e:
        logger.info("calibration not stored in memory %r: %s", memory.collection, e)
        if not made:
            made.append(compute(load_calibration(memory)))
    return made[-1]


def store_calibration(memory: CalibratedMemory, cal: Calibration) -> Calibration:
    """Write the calibration into the memory's record and return it (on a read-only memory
    nothing is written)."""
    return update_calibration(memory, lambda _old: cal)


# ---------------------------------------------------------------------- computing


def make_standin(hits: Sequence[Hit], label: str, flag: str, skip: str | None) -> StandIn | None:
    """The stand-in an example of ``label`` makes from its search ``hits`` (minus ``skip``).

    ``flag`` is ``loo`` (an entry searched without itself, ``skip`` its id) or ``view`` (an
    augmented view of an entry, nothing skipped).
    """
    others = [h for h in hits if h.id != skip]
    if not others:
        return None
    pred = others[0].label
    top = [float(h.score) for h in others if h.label == pred][:SUPPORT_ENTRIES]
    support = sum(top) / len(top) if len(top) == SUPPORT_ENTRIES else None
    own = [float(h.score) for h in others if h.label == label]
    return (label, pred, support, flag, sum(own) / len(own) if own else None)


def _leave_one_out(
    memory: CalibratedMemory, ids: Sequence[str], labels: Sequence[str], vectors: np.ndarray
) -> list[StandIn | None]:
    """Each entry searched against the memory without itself."""
    if not len(ids):
        return []
    batches = memory.search_batch(vectors, kind="image", limit=SEARCH_LIMIT)
    return [
        make_standin(hits, label, "loo", own)
        for own, label, hits in zip(ids, labels, batches, strict=True)
    ]


def _sample(memory: CalibratedMemory, limit: int) -> tuple[list[str], list[str], np.ndarray]:
    """Up to ``limit`` image entries in id order: ids are hashes, so this is a fair sample."""
    ids: list[str] = []
    labels: list[str] = []
    rows: list[list[float]] = []
    offset: str | None = None
    while len(ids) < limit:
        page, offset = memory.scroll(offset, limit=512)
        for pid, kind, vector, payload in page:
            if kind == "image" and vector and len(ids) < limit:
                ids.append(pid)
                labels.append(str(payload.get("label")))
                rows.append(vector)
        if offset is None:
            break
    return ids, labels, np.asarray(rows, dtype=np.float32)


def calibrate(memory: CalibratedMemory, *, sample: int | None = None) -> Calibration:
    """Calibrate ``memory`` from scratch (a sample of ``sample`` entries) and store it.

    Cost: one scroll over at most ``sample`` entries and one batched search of as many
    vectors, whatever the memory's size. View stand-ins of categories that still have a
    single example are kept.

    Args:
        memory: The memory (a read-only one is calibrated but not written to).
        sample: How many entries to use as leave-one-out queries (``MAX_STANDINS``).

    Returns:
        The new calibration.
    """
    size = MAX_STANDINS if sample is None else sample
    if size < 1:
        raise ConfigError(f"the calibration sample must be >= 1 entry, got {size}")
    return update_calibration(memory, lambda old: _full(memory, old, size))


def _full(memory: CalibratedMemory, old: Calibration | None, sample: int) -> Calibration:
    """A calibration from scratch (``old`` gives the revision and the view stand-ins)."""
    counts = memory.labels("image")
    revision = old.revision + 1 if old else 1
    if not counts:
        cal = _fit([], seen=0, revision=revision)
        cal.reason = "the memory holds no example images (a text-only memory has no threshold)"
        return cal
    ids, labels, vectors = _sample(memory, sample)
    standins = [
        found
        for label, found in zip(labels, _leave_one_out(memory, ids, labels, vectors), strict=True)
        if found is not None and counts.get(label, 0) >= 2
    ]
    if old is not None:
        standins += [s for s in old.standins if s[3] == "view" and counts.get(s[0]) == 1]
    cal = _fit(standins, seen=sum(counts.values()), revision=revision)
    cal.full_at = cal.seen
    logger.info("memory %r calibrated: %s", memory.collection, cal.summary())
    return cal


def update_on_add(memory: CalibratedMemory, ids: Sequence[str], entries: Sequence[Any]) -> None:
    """Keep the calibration current after image entries were added.

    When the image entries have doubled since the last full calibration, it is redone (so
    stand-ins searched in a much smaller memory do not linger; over a memory's growth this
    costs a constant number of searches per entry). Otherwise each new image entry enters
    the stand-in reservoir with probability ``MAX_STANDINS / seen``; the ones that enter
    are searched leave-one-out (one batched search). Entries of a category that has no
    other example are not stand-ins.

    Args:
        memory: The memory the entries were just written to.
        ids: Their point ids.
        entries: The ``MemoryEntry`` objects, same order.
    """
    new = [(pid, e.label) for pid, e in zip(ids, entries, strict=True) if e.kind == "image"]
    if new:
        # Read, change and write in one compare-and-set, so concurrent adds each count.
        update_calibration(memory, lambda old: _added(memory, old, new))


def _added(
    memory: CalibratedMemory, cal: Calibration | None, new: Sequence[tuple[str, str]]
) -> Calibration:
    """``cal`` after the image entries ``new`` (``(id, label)``) were added."""
    if cal is None or cal.seen + len(new) >= 2 * max(cal.full_at, 1):
        return _full(memory, cal, MAX_STANDINS)
    pool = list(cal.standins)
    chosen: list[tuple[int | None, str, str]] = []  # (slot to replace or None, id, label)
    free, seen = MAX_STANDINS - len(pool), cal.seen
    for pid, label in new:
        seen += 1
        target: int | None = None
        if free > 0:
            free -= 1
        else:
            target = random.Random(f"{memory.collection}\x00{seen}").randrange(seen)
            if target >= MAX_STANDINS:
                continue
        chosen.append((target, pid, label))
    cal.seen = seen
    if chosen:
        vectors = _vectors_of(memory, [pid for _, pid, _ in chosen])
        counts = memory.labels("image")
        ids, labels = [pid for _, pid, _ in chosen], [label for _, _, label in chosen]
        found = _leave_one_out(memory, ids, labels, vectors)
        for (slot, _, label), standin in zip(chosen, found, strict=True):
            if standin is None or counts.get(label, 0) < 2:
                continue
            if slot is None or slot >= len(pool):
                pool.append(standin)
            else:
                pool[slot] = standin
        # A category that now has a second example no longer needs its view stand-in.
        pool = [s for s in pool if s[3] != "view" or counts.get(s[0]) == 1]
    cal.standins = pool
    return cal.refit()


def _vectors_of(memory: CalibratedMemory, ids: Sequence[str]) -> np.ndarray:
    vectors = memory.get_vectors(ids)
    return np.asarray([vectors[i] for i in ids], dtype=np.float32)
