"""Open-set calibration: a threshold with a stated price, kept from the memory's own examples.

``--reject auto:ALPHA`` promises that at most ALPHA (default 0.05) of the queries of known
categories are rejected. The threshold that keeps it is a split-conformal one over
*stand-ins*: each sampled example image is searched against the memory without itself
(leave-one-out), which makes it a query of a known category whose answer is not in the
memory's copy of it. The query's known-ness statistic
(:func:`~rar_agent.openset.statistic.known_score` of its best category) is compared with the
``k``-th smallest stand-in statistic, ``k = floor(ALPHA * (n + 1))`` of ``n`` stand-ins; a
query of a known category then falls below it with probability at most ``k / (n + 1)``
<= ALPHA when it is exchangeable with the stand-ins. With fewer than ``1 / ALPHA - 1``
stand-ins no such threshold exists, and the verdict says so ("cannot calibrate") instead of
rejecting by a guess.

**Every number of examples.** A query's statistic grows with the number of examples its
category has (more chances of a close one), and a stand-in sees one example fewer than a
real query does. So the thresholds are kept per *shot count* ``m`` = 1 .. ``MAX_SHOTS``: a
stand-in's statistic at ``m`` shots is the one it would have had if its category held only
``m`` random examples (drawn ``DRAWS`` times from the other examples of its category, as
many as it has; an example outside the stand-in's search hits counts as far away, which only
lowers the threshold). A query is judged against the threshold of the number of entries of
its best category among its hits (capped at ``MAX_SHOTS``), which never exceeds the true
number: a category taught from one photo is judged as a one-shot category even in a memory
whose other categories have fifty. A memory whose categories all have a single example has
no stand-in at all: it cannot calibrate, and says so.

**Kept current, one policy** (:func:`update`): the stand-ins are a bounded reservoir
(``MAX_STANDINS``). A full calibration (:func:`fit`) samples that many entries (never all
pairs) and is made when there is none, when entries were removed, or when the image entries
doubled since the last one; otherwise each added entry enters the reservoir with the
standard reservoir probability and only those are searched. A taught example thus never
costs a full calibration. The memory never triggers any of it: its callers (builds, the
teacher, the vector store, the recognizer factory) do. The stand-ins live in the memory
record's extension ``"openset"`` (:mod:`rar_agent.openset.store`); the thresholds are
derived from them when read.

Text-only memories (class-name prototypes) get no automatic threshold: image-to-text
similarities live on another scale than anything the memory can measure among its entries.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from rar_agent.errors import ConfigError
from rar_agent.openset.statistic import known_score, known_score_rows
from rar_agent.openset.store import read_extension, update_extension

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from rar_agent.memory import Hit
    from rar_agent.memory.entries import StoredPoint

__all__ = [
    "DRAWS",
    "MAX_SHOTS",
    "MAX_STANDINS",
    "MIN_CATEGORIES",
    "CalibratedMemory",
    "Calibration",
    "StandIn",
    "Threshold",
    "current",
    "fit",
    "load",
    "make_standin",
    "min_standins",
    "update",
]


class CalibratedMemory(Protocol):
    """What calibration reads and writes of a memory (:class:`~rar_agent.memory.CategoryMemory`)."""

    collection: str
    read_only: bool

    def extension(self, name: str) -> dict[str, Any] | None:
        """An extension of the memory's record."""
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
"""Stand-in queries kept (and sampled by a full calibration)."""
MAX_SHOTS = 5
"""Shot counts with a threshold of their own (more examples share the last one); the same
as the entries a candidate carries (``retrieval.LABEL_SCORES``)."""
DRAWS = 16
"""Random draws of ``m`` examples per stand-in and shot count."""
SEARCH_LIMIT = 64
"""Hits per calibration search: enough to see most of a category's other examples."""
OWN_KEPT = 32
"""Similarities to its own category's other examples a stand-in keeps."""
MIN_CATEGORIES = 5
"""Categories the stand-ins must come from: how close two examples of a category are varies
from category to category, and a few categories say too little about the others (on
Fashion-MNIST, EfficientNet-Lite0, a memory of 4 single-example categories calibrated from 3
categories of 10 examples rejected 12.5 % of known queries at ALPHA 0.05, seeds 0-4)."""
_VERSION = 3

StandIn = tuple[str, list[float], int, float | None]
"""One stand-in query: ``(label, own, others, rival)``.

``own``: similarities to the other examples of its category among its hits, best first;
``others``: how many other examples its category had; ``rival``: the known-ness statistic of
the best *other* category among its hits (``None`` when there was none).
"""

Threshold = tuple[float | None, str | None]
"""``(threshold, why not)``: a threshold, or ``None`` and the reason there is none."""


def min_standins(alpha: float) -> int:
    """Stand-ins needed for a conformal threshold at ``alpha``: ``ceil(1 / alpha) - 1``."""
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


class Calibration(BaseModel):
    """A memory's open-set calibration (image side), as stored in its record.

    Attributes:
        method: ``conformal`` when stand-ins exist, ``none`` when there are none.
        reason: Why there is no threshold at all (``method == "none"``).
        standins: The stand-in queries (see :data:`StandIn`).
        seen: Image entries offered to the reservoir when it last changed (an update
            recounts the memory's entries, so a taught example not drawn into the full
            reservoir writes nothing).
        full_at: Image entries at the last full calibration (redone when they double).
        revision: Grows with every change (lets readers cache derived values).
    """

    version: int = _VERSION
    kind: Literal["image"] = "image"
    method: Literal["conformal", "none"] = "none"
    reason: str | None = None
    standins: list[StandIn] = Field(default_factory=list)
    seen: int = 0
    full_at: int = 0
    revision: int = 0
    updated_at: str | None = None
    _by_shots: list[np.ndarray] | None = PrivateAttr(default=None)
    _thresholds: dict[tuple[float, int], Threshold] = PrivateAttr(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        """Whether any threshold can be given (at some ALPHA)."""
        return bool(self.standins)

    def eligible(self, shots: int) -> list[StandIn]:
        """The stand-ins that can stand for a query at ``shots`` examples (their category
        has at least that many other examples)."""
        return [s for s in self.standins if s[2] >= shots]

    def scores_at(self, shots: int) -> np.ndarray:
        """The eligible stand-ins' statistics as if their category had ``shots`` examples,
        sorted (``DRAWS`` draws per stand-in, each an equal share of it)."""
        if self._by_shots is None:
            self._by_shots = [
                np.sort(_simulate(self.eligible(m), m), axis=None) for m in range(1, MAX_SHOTS + 1)
            ]
        return self._by_shots[min(max(shots, 1), MAX_SHOTS) - 1]

    def judge_scores(self, scores: Sequence[float], alpha: float) -> tuple[float, Threshold]:
        """The statistic of a query's best category and the threshold it must reach.

        With ``m`` of the category's entries among the hits (``scores``, best first), the
        threshold is the one at the largest shot count ``m' <= m`` the stand-ins can support,
        and the statistic is taken over the best ``m'`` entries (at least as high as over
        ``m'`` random ones, so the promise errs on the side of rejecting less).

        Returns:
            ``(statistic, (threshold, why))``.
        """
        top = sorted((float(v) for v in scores), reverse=True)
        shots = max(1, min(len(top), MAX_SHOTS))
        while shots > 1 and self.threshold(alpha, shots)[0] is None:
            shots -= 1
        score = known_score(top[:shots])
        return (score[0] if score else -math.inf), self.threshold(alpha, shots)

    def threshold(self, alpha: float, shots: int = MAX_SHOTS) -> Threshold:
        """The conformal threshold for a query whose best category has ``shots`` entries.

        Args:
            alpha: The promised share of known-category queries rejected.
            shots: Entries of the best category among the query's hits.

        Returns:
            ``(threshold, None)``, or ``(None, why)`` when the stand-ins cannot support it.
        """
        key = (alpha, min(max(shots, 1), MAX_SHOTS))
        if key not in self._thresholds:
            self._thresholds[key] = self._threshold(*key)
        return self._thresholds[key]

    def _threshold(self, alpha: float, shots: int) -> Threshold:
        if not self.standins:
            return None, self.reason or "cannot calibrate: no stand-in queries"
        eligible = self.eligible(shots)
        n = len(eligible)
        categories = len({s[0] for s in eligible})
        if categories < MIN_CATEGORIES:
            have = "category has" if categories == 1 else "categories have"
            return None, (
                f"cannot calibrate: only {categories} {have} {shots + 1} or more examples "
                f"(at least {MIN_CATEGORIES} needed to say how close two "
                "photos of one category lie); add a second example to more categories, or give "
                "a threshold such as --reject 0.8"
            )
        k = math.floor(alpha * (n + 1) + 1e-9)
        if k < 1:
            return None, (
                f"cannot calibrate for ALPHA {alpha:g}: {n} stand-in queries from categories "
                f"with {shots + 1} or more examples, at least {min_standins(alpha)} needed; add "
                "examples, or accept a larger ALPHA (auto:0.1)"
            )
        # k-th smallest of n stand-ins, each an equal mixture of its DRAWS draws
        values = self.scores_at(shots)
        index = min(len(values) - 1, max(0, math.ceil(k / n * len(values)) - 1))
        return float(values[index]), None

    def summary(self, alpha: float | None = None) -> dict[str, Any]:
        """Headline figures for people (no stand-in list); thresholds at ``alpha``."""
        from rar_agent.config import DEFAULT_ALPHA

        alpha = DEFAULT_ALPHA if alpha is None else alpha
        per_shot = {m: self.threshold(alpha, m) for m in (1, 2, MAX_SHOTS)}
        return {
            "method": self.method,
            "alpha": alpha,
            "standins": len(self.standins),
            "categories": len({s[0] for s in self.standins}),
            "smallest_alpha": round(1.0 / (len(self.standins) + 1), 4) if self.standins else None,
            "thresholds": {
                str(m): None if t is None else round(t, 4) for m, (t, _) in per_shot.items()
            },
            "cannot_calibrate": per_shot[MAX_SHOTS][1],
            "updated_at": self.updated_at,
        }


def _simulate(standins: Sequence[StandIn], shots: int) -> np.ndarray:
    """Each stand-in's statistic with its category cut to ``shots`` random examples
    (``DRAWS`` draws; examples outside its search hits count as missing)."""
    out = np.empty((len(standins), DRAWS), dtype=np.float64)
    rng = np.random.default_rng(shots)
    for row, (_, own, others, rival) in enumerate(standins):
        size = max(others, len(own), shots)
        values = np.full(size, -np.inf)
        values[: len(own)] = own
        keys = rng.random((DRAWS, size))
        picks = np.argpartition(keys, shots - 1, axis=1)[:, :shots] if shots < size else None
        drawn = values[picks] if picks is not None else np.tile(values, (DRAWS, 1))
        drawn = -np.sort(-drawn, axis=1)
        stats = known_score_rows(drawn)
        out[row] = np.maximum(stats, -np.inf if rival is None else rival)
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _make(standins: Sequence[StandIn], *, seen: int, full_at: int, revision: int) -> Calibration:
    cal = Calibration(
        standins=list(standins), seen=seen, full_at=full_at, revision=revision, updated_at=_now()
    )
    if standins:
        cal.method = "conformal"
    else:
        cal.reason = (
            "cannot calibrate: no category has two example images, so the memory holds no "
            "stand-in for a query of a known category; add a second example to some "
            "categories, or give a threshold such as --reject 0.8"
        )
    return cal


# ---------------------------------------------------------------------- stored form


def load(memory: CalibratedMemory) -> Calibration | None:
    """The calibration stored in ``memory``, or ``None`` if it has none (or an old form)."""
    return _parse(read_extension(memory), memory.collection)


MAX_AGE_S = 1.0
"""How long :func:`current` trusts its copy before reading the record again."""
_CURRENT: weakref.WeakKeyDictionary[Any, tuple[float, Calibration | None]] = (
    weakref.WeakKeyDictionary()
)
_CURRENT_LOCK = threading.Lock()


def current(memory: CalibratedMemory, *, max_age: float = MAX_AGE_S) -> Calibration | None:
    """The memory's calibration for judging queries, without re-reading the record for each.

    Updates made through this module in this process are seen at once; changes made by
    another process within ``max_age`` seconds (the record is re-read at most that often,
    since parsing it costs more than a query's verdict).
    """
    now = time.monotonic()
    with _CURRENT_LOCK:
        held = _CURRENT.get(memory)
    if held is not None and now - held[0] < max_age:
        return held[1]
    cal = load(memory)
    _remember(memory, cal)
    return cal


def _remember(memory: CalibratedMemory, cal: Calibration | None) -> None:
    try:
        with _CURRENT_LOCK:
            _CURRENT[memory] = (time.monotonic(), cal)
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
    update_extension(memory, lambda _old: cal.model_dump(mode="json"))
    _remember(memory, cal)
    return cal


# ---------------------------------------------------------------------- computing


def make_standin(hits: Sequence[Hit], label: str, skip: str | None, others: int) -> StandIn | None:
    """The stand-in an example of ``label`` makes from its search ``hits`` (minus ``skip``).

    Args:
        hits: The example's nearest entries, best first.
        label: Its category.
        skip: Its own id (left out: leave-one-out).
        others: How many other examples its category has in the memory.

    Returns:
        The stand-in, or ``None`` when its category has no other example.
    """
    if others < 1:
        return None
    rest = [h for h in hits if h.id != skip]
    own = [round(float(h.score), 6) for h in rest if h.label == label][:OWN_KEPT]
    rival_label = next((h.label for h in rest if h.label != label), None)
    rival = None
    if rival_label is not None:
        score = known_score([float(h.score) for h in rest if h.label == rival_label])
        rival = None if score is None else round(score[0], 6)
    return (label, own, others, rival)


def _leave_one_out(
    memory: CalibratedMemory,
    ids: Sequence[str],
    labels: Sequence[str],
    vectors: np.ndarray,
    counts: dict[str, int],
) -> list[StandIn | None]:
    """Each entry searched against the memory without itself."""
    if not len(ids):
        return []
    batches = memory.search_batch(vectors, kind="image", limit=SEARCH_LIMIT)
    return [
        make_standin(hits, label, own, counts.get(label, 0) - 1)
        for own, label, hits in zip(ids, labels, batches, strict=True)
    ]


def _sample(
    memory: CalibratedMemory, limit: int, counts: dict[str, int]
) -> tuple[list[str], list[str], np.ndarray]:
    """Up to ``limit`` image entries of categories with two or more examples, in id order
    (ids are hashes, so this is a fair sample)."""
    ids: list[str] = []
    labels: list[str] = []
    rows: list[list[float]] = []
    offset: str | None = None
    while len(ids) < limit:
        page, offset = memory.scroll(offset, limit=512)
        for pid, kind, vector, payload in page:
            label = str(payload.get("label"))
            if kind == "image" and vector and len(ids) < limit and counts.get(label, 0) >= 2:
                ids.append(pid)
                labels.append(label)
                rows.append(vector)
        if offset is None:
            break
    return ids, labels, np.asarray(rows, dtype=np.float32)


def fit(memory: CalibratedMemory, *, sample: int | None = None) -> Calibration:
    """Calibrate ``memory`` from scratch (a sample of ``sample`` entries) and store it.

    Cost: one scroll over the memory (at most until ``sample`` entries of categories with two
    or more examples are found) and one batched search of as many vectors.

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
    seen = sum(counts.values())
    if not counts:
        cal = _make([], seen=0, full_at=0, revision=revision)
        cal.reason = (
            "cannot calibrate: the memory holds no example images (a text-only memory has no "
            "automatic threshold)"
        )
        return _store(memory, cal)
    standins: list[StandIn] = []
    if any(c >= 2 for c in counts.values()):
        ids, labels, vectors = _sample(memory, sample, counts)
        found = _leave_one_out(memory, ids, labels, vectors, counts)
        standins = [s for s in found if s is not None]
    cal = _make(standins, seen=seen, full_at=seen, revision=revision)
    logger.info("memory %r calibrated: %s", memory.collection, cal.summary())
    return _store(memory, cal)


def update(memory: CalibratedMemory, *, added: Sequence[str] = (), removed: int = 0) -> Calibration:
    """Keep the calibration current after entries were added or removed (the one policy).

    A full calibration (:func:`fit`) is made when there is none yet, when entries were
    removed (stand-ins may have matched them), or when the image entries have doubled since
    the last full one (so stand-ins searched in a much smaller memory do not linger; over a
    memory's growth this costs a constant number of searches per entry). Otherwise each new
    image entry enters the stand-in reservoir with probability ``MAX_STANDINS / seen``; the
    ones that enter are searched leave-one-out (one batched search). A new entry that gives
    its category a second example is always searched (the category gains stand-ins).
    Counting is indexed (the image entries, and those of the searched entries' categories)
    and the calibration is written only when an entry was drawn into the reservoir, so a
    taught example that is not (most, once the reservoir is full) costs a count and no write.

    Args:
        memory: The memory the entries were written to (or removed from).
        added: Point ids of the entries just added (text entries are ignored); a uniform
            sample of them is enough when a build added very many.
        removed: How many entries were just removed.

    Returns:
        The calibration now stored.
    """
    cal = load(memory)
    total = memory.count("image")
    if cal is None or removed or total >= 2 * max(cal.full_at, 1):
        return fit(memory)
    labels = _labels_of(memory, added)
    new = [pid for pid in added if pid in labels]
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
        vectors = memory.get_vectors([pid for _, pid in chosen])
        keep = [(slot, pid) for slot, pid in chosen if pid in vectors]
        chosen = keep
        rows = np.asarray([vectors[pid] for _, pid in chosen], dtype=np.float32)
        ids = [pid for _, pid in chosen]
        counts = _image_counts(memory, [labels[i] for i in ids])
        found = _leave_one_out(memory, ids, [labels[i] for i in ids], rows, counts)
    if not chosen:
        # nothing was drawn into the full reservoir: the stored calibration stands, and no
        # write (of every stand-in) is paid for a taught example that changes nothing
        cal.seen = max(cal.seen, total)
        _remember(memory, cal)
        return cal

    def merge(data: dict[str, Any] | None) -> dict[str, Any]:
        current = _parse(data, memory.collection) or cal
        pool = list(current.standins)
        for (slot, _), standin in zip(chosen, found, strict=True):
            if standin is None:
                continue
            if slot is None or slot >= len(pool):
                pool.append(standin)
            else:
                pool[slot] = standin
        out = _make(
            pool[-MAX_STANDINS:],
            seen=max(total, current.seen),  # entries now held (concurrent adds counted once)
            full_at=current.full_at,
            revision=current.revision + 1,
        )
        return out.model_dump(mode="json")

    stored = update_extension(memory, merge)
    result = _parse(stored, memory.collection) or Calibration.model_validate(merge(None))
    _remember(memory, result)
    return result


def _image_counts(memory: CalibratedMemory, labels: Iterable[str]) -> dict[str, int]:
    """Image entries of each of ``labels``: indexed counts, far cheaper than counting every
    label (``memory.labels``, a facet) when a few examples were taught."""
    return {label: memory.count("image", label=label) for label in dict.fromkeys(labels)}


def _labels_of(memory: CalibratedMemory, ids: Sequence[str]) -> dict[str, str]:
    """The label of each image entry among ``ids``."""
    if not ids:
        return {}
    return {h.id: h.label for h in memory.get_entries(ids) if h.kind == "image"}
