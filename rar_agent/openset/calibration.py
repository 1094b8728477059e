"""Open-set calibration: how similar a query of a *known* category usually is to the memory.

The known-ness statistic of a query is :func:`~rar_agent.openset.statistic.known_score` of its
best candidate category (the *support*: the mean similarity of its closest entries).

The calibration is fitted from the memory's own examples, with no labelled queries. Each
sampled image entry is treated as a query against the memory without it (leave-one-out):
its best other entry's label and the support of that label (other entries only) are a
*stand-in* for a known query. A
category with a single example cannot do that (its nearest other entry belongs to another
category), so it gives no stand-in.

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

One update policy keeps it current (:func:`update`): the stand-ins are a bounded reservoir
(``MAX_STANDINS``); a full calibration (:func:`fit`) samples that many entries (never all
pairs) and is redone only when the image entries have doubled since the last one or entries
were removed; otherwise each added entry enters the reservoir with the standard reservoir
probability. Keeping the calibration current thus costs a constant number of searches per
added entry, and a taught example never costs a full calibration. The memory never triggers
any of it: its callers (builds, the teacher, the recognizer factory) call :func:`update`.
The calibration lives in the memory record's extension ``"openset"``
(:mod:`rar_agent.openset.store`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from rar_agent.errors import ConfigError
from rar_agent.openset.statistic import known_score
from rar_agent.openset.store import read_extension, update_extension

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.memory import Hit
    from rar_agent.memory.core import StoredPoint

__all__ = [
    "MAX_STANDINS",
    "MIN_STANDINS",
    "SHRINK",
    "Z",
    "CalibratedMemory",
    "Calibration",
    "StandIn",
    "fit",
    "load",
    "make_standin",
    "update",
]


class CalibratedMemory(Protocol):
    """What calibration reads and writes of a memory (:class:`~rar_agent.memory.CategoryMemory`)."""

    collection: str

    def get_meta(self, key: str) -> Any:
        """A value of the memory's record."""
        ...

    def set_meta(self, key: str, value: Any) -> None:
        """Store a value in the memory's record."""
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
"""Stand-in queries kept (and sampled by a full calibration)."""
MIN_STANDINS = 5
"""Fewer stand-ins than this give no threshold (too few to estimate a tail)."""
SHRINK = 5.0
"""Weight, in stand-ins, of the global mean in each category's mean."""
Z = 1.645
"""Standard deviations below the mean: the one-sided 5 % tail of a normal fit."""
SEARCH_LIMIT = 16
"""Hits per calibration search: enough to hold the best label's closest others."""
_VERSION = 2

StandIn = tuple[str, str, float | None, str, float | None]
"""One stand-in query: ``(label, predicted label, support, "loo", pair)``.

``support`` is the predicted label's support (``None`` when only one entry of it was among
the hits); ``pair`` the mean similarity to the other entries of its *own* label among the
hits (``None`` when there were none): how close one example of a category is to another.
"""


class Calibration(BaseModel):
    """A memory's open-set calibration (image side), as stored in its record.

    Attributes:
        method: ``leave-one-out`` when a threshold was fitted, ``none`` when it could not be.
        reason: Why there is no threshold (``method == "none"``).
        offset: Added to a category's mean support to give its threshold.
        global_mean: Mean stand-in support (the mean of categories with no stand-in).
        single_threshold: The similarity a query must reach when its best category has a
            single entry among the hits (a category taught from one example): the ``Z``
            tail of the stand-ins' ``pair`` similarities.
        standins: The stand-in queries the fit used.
        seen: Image entries offered to the reservoir so far (for its sampling probability).
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
        """Each category's shrunk mean stand-in support."""
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

    def summary(self) -> dict[str, Any]:
        """Headline figures for people (no stand-in list)."""
        return {
            "method": self.method,
            "reason": self.reason,
            "offset": self.offset,
            "global_mean": self.global_mean,
            "single_threshold": self.single_threshold,
            "standins": len(self.standins),
            "categories": len(self.class_means()),
            "updated_at": self.updated_at,
        }


def _class_means(standins: Sequence[StandIn], g: float, shrink: float) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for label, _, support, _, _ in standins:
        if support is not None:
            sums[label] += support
            counts[label] += 1
    return {c: (sums[c] + shrink * g) / (counts[c] + shrink) for c in sums}


def _tail(values: Sequence[float]) -> float:
    """The one-sided ``Z`` tail of a normal fit: ``mean - Z * std``."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean() - Z * arr.std())


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fit(standins: Sequence[StandIn], *, seen: int, full_at: int, revision: int) -> Calibration:
    """Fit class means, the offset and the single-entry threshold (module docstring)."""
    cal = Calibration(
        standins=list(standins), seen=seen, full_at=full_at, revision=revision, updated_at=_now()
    )
    supported = [(s[1], s[2]) for s in standins if s[2] is not None]
    if len(supported) >= MIN_STANDINS:
        cal.global_mean = float(np.mean([support for _, support in supported]))
        means = cal.class_means()
        g = cal.global_mean
        cal.offset = _tail([support - means.get(pred, g) for pred, support in supported])
    pairs = [s[4] for s in standins if s[4] is not None]
    if len(pairs) >= MIN_STANDINS:
        cal.single_threshold = _tail(pairs)
    if cal.calibrated:
        cal.method = "leave-one-out"
    elif seen and not standins:
        cal.reason = (
            "cannot calibrate: no category has two example images, so the memory holds no "
            "stand-in for a known query; add a second example to some categories, or give a "
            "threshold such as --reject 0.8"
        )
    else:
        cal.reason = (
            f"cannot calibrate: only {len(standins)} stand-in queries from categories with "
            f"two or more examples (at least {MIN_STANDINS} needed); add example images, or "
            "give a threshold such as --reject 0.8"
        )
    return cal


# ---------------------------------------------------------------------- stored form


def load(memory: CalibratedMemory) -> Calibration | None:
    """The calibration stored in ``memory``, or ``None`` if it has none (or an old form)."""
    return _parse(read_extension(memory), memory.collection)


def _parse(data: dict[str, Any] | None, collection: str) -> Calibration | None:
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return None
    try:
        return Calibration.model_validate(data)
    except ValueError:
        logger.warning("memory %r: unreadable calibration ignored", collection)
        return None


def _store(memory: CalibratedMemory, cal: Calibration) -> Calibration:
    update_extension(memory, lambda _old: cal.model_dump(mode="json"))
    return cal


# ---------------------------------------------------------------------- computing


def make_standin(hits: Sequence[Hit], label: str, skip: str | None) -> StandIn | None:
    """The stand-in an example of ``label`` makes from its search ``hits`` (minus ``skip``)."""
    others = [h for h in hits if h.id != skip]
    if not others:
        return None
    pred = others[0].label
    score = known_score([float(h.score) for h in others if h.label == pred])
    support = score[0] if score is not None and not score[1] else None
    own = [float(h.score) for h in others if h.label == label]
    return (label, pred, support, "loo", sum(own) / len(own) if own else None)


def _leave_one_out(
    memory: CalibratedMemory, ids: Sequence[str], labels: Sequence[str], vectors: np.ndarray
) -> list[StandIn | None]:
    """Each entry searched against the memory without itself."""
    if not len(ids):
        return []
    batches = memory.search_batch(vectors, kind="image", limit=SEARCH_LIMIT)
    return [
        make_standin(hits, label, own)
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


def fit(memory: CalibratedMemory, *, sample: int | None = None) -> Calibration:
    """Calibrate ``memory`` from scratch (a sample of ``sample`` entries) and store it.

    Cost: one scroll over at most ``sample`` entries and one batched search of as many
    vectors, whatever the memory's size.

    Args:
        memory: The memory (a read-only one is calibrated but not written to).
        sample: How many entries to use as leave-one-out queries (``MAX_STANDINS``).

    Returns:
        The new calibration.
    """
    sample = MAX_STANDINS if sample is None else sample
    if sample < 1:
        raise ConfigError(f"the calibration sample must be >= 1 entry, got {sample}")
    counts = memory.labels("image")
    old = load(memory)
    revision = old.revision + 1 if old else 1
    if not counts:
        cal = _fit([], seen=0, full_at=0, revision=revision)
        cal.reason = (
            "cannot calibrate: the memory holds no example images (a text-only memory has no "
            "automatic threshold)"
        )
        return _store(memory, cal)
    ids, labels, vectors = _sample(memory, sample)
    standins = [
        found
        for label, found in zip(labels, _leave_one_out(memory, ids, labels, vectors), strict=True)
        if found is not None and counts.get(label, 0) >= 2
    ]
    seen = sum(counts.values())
    cal = _fit(standins, seen=seen, full_at=seen, revision=revision)
    logger.info("memory %r calibrated: %s", memory.collection, cal.summary())
    return _store(memory, cal)


def update(memory: CalibratedMemory, *, added: Sequence[str] = (), removed: int = 0) -> Calibration:
    """Keep the calibration current after entries were added or removed (the one policy).

    A full calibration (:func:`fit`) is made when there is none yet, when entries were
    removed (stand-ins may have matched them), or when the image entries have doubled since
    the last full one (so stand-ins searched in a much smaller memory do not linger; over a
    memory's growth this costs a constant number of searches per entry). Otherwise each new
    image entry enters the stand-in reservoir with probability ``MAX_STANDINS / seen``; the
    ones that enter are searched leave-one-out (one batched search). Entries of a category
    that has no other example are not stand-ins.

    Args:
        memory: The memory the entries were written to (or removed from).
        added: Point ids of the entries just added (text entries are ignored); a uniform
            sample of them is enough when a build added very many.
        removed: How many entries were just removed.

    Returns:
        The calibration now stored.
    """
    cal = load(memory)
    counts = memory.labels("image")
    total = sum(counts.values())
    if cal is None or removed or total >= 2 * max(cal.full_at, 1):
        return fit(memory)
    vectors_by_id = memory.get_vectors(added) if added else {}
    labels = _labels_of(memory, list(vectors_by_id))
    new = [pid for pid in vectors_by_id if pid in labels]
    seen = max(cal.seen, total - len(new))
    chosen: list[tuple[int | None, str]] = []  # (slot to replace or None, id)
    free = MAX_STANDINS - len(cal.standins)
    for pid in new:
        seen += 1
        target: int | None = None
        if free > 0:
            free -= 1
        else:
            target = random.Random(f"{memory.collection}\x00{seen}").randrange(seen)
            if target >= MAX_STANDINS:
                continue
        chosen.append((target, pid))
    found: list[StandIn | None] = []
    if chosen:
        ids = [pid for _, pid in chosen]
        rows = np.asarray([vectors_by_id[i] for i in ids], dtype=np.float32)
        found = _leave_one_out(memory, ids, [labels[i] for i in ids], rows)

    def merge(data: dict[str, Any] | None) -> dict[str, Any]:
        current = _parse(data, memory.collection) or cal
        pool = list(current.standins)
        for (slot, pid), standin in zip(chosen, found, strict=True):
            if standin is None or counts.get(labels[pid], 0) < 2:
                continue
            if slot is None or slot >= len(pool):
                pool.append(standin)
            else:
                pool[slot] = standin
        out = _fit(
            pool[-MAX_STANDINS:],
            seen=max(seen, current.seen),
            full_at=current.full_at,
            revision=current.revision + 1,
        )
        return out.model_dump(mode="json")

    stored = update_extension(memory, merge)
    return _parse(stored, memory.collection) or Calibration.model_validate(merge(None))


def _labels_of(memory: CalibratedMemory, ids: Sequence[str]) -> dict[str, str]:
    """The label of each image entry among ``ids``."""
    if not ids:
        return {}
    return {h.id: h.label for h in memory.get_entries(ids) if h.kind == "image"}
