"""Which logged unknown images a teach may have answered, without searching each one again.

Teaching a label drops from the log of unknown images those that the memory now answers with
it (:meth:`~rar_agent.pipeline.Recognizer.taught`). Searching every logged image again at
each teach cost 0.8-0.9 s with 512 logged on a memory of 10k entries. An image's candidates
are folded from the entries its search returns, the ``limit`` nearest: a label none of whose
entries is among them is no candidate, let alone the answer, and an entry less similar to the
image than the last of them is not among them. So what each logged image's search returned
is kept: per memory side, the similarity of the last entry (its *floor*; none where the side
returned fewer than asked, so all of it) and the entries' ids. While every one of those
entries is still stored, the nearest ``limit`` now are at least that similar (an addition
only raises the floor; a removal could let a farther entry in, so the ids are checked), and
an image less similar than its floor to every entry of the label taught cannot be answered
with it: it is not searched again. An image searched now is judged by its hits' labels.
The recognition that logged an image searched it already, and what came back is kept from
then, so a teach searches an image only where its kept entries left the memory (or where it
was logged without a search of this recognizer's, e.g. by ``NovelGroupLog.add`` directly).

This leaves out exactly the images that searching all of them would not answer with the
label, for an exact search (a memory's plain segments); an HNSW index answers as its recall
does, which may differ between two searches of one image (measured recall 1.0 at 100k).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rar_agent.retrieval import fetch_limit, search_sides, sides_of

if TYPE_CHECKING:
    from rar_agent.config import MemoryKind
    from rar_agent.memory import CategoryMemory, EntryKind, Hit
    from rar_agent.openset.groups import NovelGroupLog
    from rar_agent.retrieval import CategoryRetriever

__all__ = ["SearchFloors", "Searched"]

_ROUNDING = 1e-4
"""Slack for the engine's similarities against those computed here (float32 either way)."""


@dataclass(frozen=True)
class _SideSearch:
    """What one side's search of one image returned: the least similarity among the entries
    (``-inf`` where fewer than asked came back) and their ids."""

    floor: float
    ids: tuple[str, ...]


_Sides = dict[str, _SideSearch]
_Search = tuple[object, int, "MemoryKind"]
"""What the kept searches are of: the log of their images (by identity), the search's limit
and the memory sides it searched."""


@dataclass(frozen=True, eq=False)
class Searched:
    """What one image's search of the memory returned, as a teach needs it (module
    docstring): its place in its batch's search, read into :attr:`sides` only for an image
    that is kept (most recognitions keep none, so building them for every image was waste).

    Attributes:
        hits: The batch's entries per side (those that held entries), each query's nearest
            first.
        i: The image's query in the batch.
        limit: The entries asked of each side.
        kind: The memory sides searched (as a retriever's ``kind`` names them).
    """

    hits: Mapping[EntryKind, Sequence[Sequence[Hit]]]
    i: int
    limit: int
    kind: MemoryKind

    @property
    def sides(self) -> _Sides:
        """Per side that held entries, the least similarity among the image's entries
        (``-inf`` where fewer than :attr:`limit` came back) and their ids."""
        sides: _Sides = {}
        for side, batches in self.hits.items():
            found = batches[self.i]
            floor = found[-1].score if len(found) >= self.limit else -math.inf
            sides[side] = _SideSearch(floor, tuple(h.id for h in found))
        return sides


def _search_of(retriever: CategoryRetriever, log: object) -> _Search:
    """The search a teach judges the images of ``log`` by: the retriever's own."""
    return (log, fetch_limit(retriever.k, retriever.fetch_k), retriever.kind)


class SearchFloors:
    """What the last search of each logged unknown image returned (:class:`Searched`), kept
    by the log's key of the image for the next teach: its recognition's (:meth:`keep`), then
    a teach's where that one's entries left. Thread-safe; it keeps the images still logged,
    whoever's they are, and forgets the others at each teach (:meth:`keep_only`) or when
    they make up half of what it keeps (:meth:`keep`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[int, _Sides] = {}
        self._search: _Search | None = None  # the log, limit and kind the kept ones are of

    def keep(
        self, retriever: CategoryRetriever, log: NovelGroupLog, key: int, searched: Searched
    ) -> None:
        """Keep what an image's search returned, the image just logged under ``key`` in
        ``log`` (its recognition's search): no teach searches it again while those entries
        are stored. A search other than a teach's (another ``k`` or memory side) is not kept.
        What was kept of images the log has dropped since (to make room) is forgotten here
        too, not only at a teach: a service that is never taught keeps twice the log's
        capacity at most."""
        search = _search_of(retriever, log)
        if (searched.limit, searched.kind) != search[1:]:
            return
        with self._lock:
            self._of(search)[key] = searched.sides
            crowded = len(self._kept) > 2 * log.capacity
        if crowded:
            self.keep_only(log.logged()[0])

    def _of(self, search: _Search) -> dict[int, _Sides]:
        """What is kept, for ``search``: what was kept for another (log, limit, kind) is
        forgotten, as a key names an image of one log only. Called with the lock held."""
        if self._search != search:
            self._kept.clear()
            self._search = search
        return self._kept

    def __len__(self) -> int:
        """The images whose search is kept."""
        with self._lock:
            return len(self._kept)

    def keep_only(self, keys: Collection[int]) -> None:
        """Forget what was kept of the images not among ``keys`` (those logged now: a teach
        is asked about its teacher's images only, and the others' stay for their teaches)."""
        wanted = set(keys)
        with self._lock:
            self._kept = {key: s for key, s in self._kept.items() if key in wanted}

    def could_answer(
        self,
        retriever: CategoryRetriever,
        label: str,
        log: object,
        keys: Sequence[int],
        rows: np.ndarray,
    ) -> list[int]:
        """The positions of the images ``rows`` (unit embeddings, logged under ``keys``)
        whose answer the memory may now give as ``label``: those with an entry of ``label``
        among the entries their search returns. The others are not (module docstring).

        Args:
            retriever: The recognizer's retrieval (its memory, ``k``, ``fetch_k``, ``kind``).
            label: The label just taught (as stored).
            log: The log the images are in (a key names an image of one log only: what was
                kept for another log is forgotten).
            keys: Each row's key in ``log`` (unique while it is logged there).
            rows: The images' embeddings, one row each.
        """
        memory = retriever.memory
        search = _search_of(retriever, log)
        sides = sides_of(retriever.kind)
        theirs = {side: v for side, v in memory.vectors_of(label).items() if side in sides}
        if not theirs or not len(keys):
            return []
        kept = self._still_valid(memory, keys, search)
        fresh = [i for i, key in enumerate(keys) if key not in kept]
        near = set(self._search_again(memory, label, keys, rows, fresh, search))
        old = [i for i, key in enumerate(keys) if key in kept]
        for side, vectors in theirs.items():
            if not old:
                break
            closest = (rows[old] @ vectors.T).max(axis=1)
            floors = [
                kept[keys[i]][side].floor if side in kept[keys[i]] else -math.inf for i in old
            ]
            reach = closest >= np.asarray(floors) - _ROUNDING  # a side searched empty: all of it
            near.update(i for i, yes in zip(old, reach, strict=True) if yes)
        return sorted(near)

    def _still_valid(
        self, memory: CategoryMemory, keys: Sequence[int], search: _Search
    ) -> dict[int, _Sides]:
        """The kept searches of ``keys`` whose entries are all still stored (the others are
        forgotten)."""
        with self._lock:
            held = self._of(search)
            kept = {key: held[key] for key in keys if key in held}
        ids = set().union(*(seen.ids for sides in kept.values() for seen in sides.values()))
        gone = ids - memory.existing_ids(ids) if ids else set()
        valid = {
            key: sides
            for key, sides in kept.items()
            if not gone or gone.isdisjoint(i for seen in sides.values() for i in seen.ids)
        }
        with self._lock:
            for key in kept.keys() - valid.keys():
                self._kept.pop(key, None)
        return valid

    def _search_again(
        self,
        memory: CategoryMemory,
        label: str,
        keys: Sequence[int],
        rows: np.ndarray,
        fresh: Sequence[int],
        search: _Search,
    ) -> list[int]:
        """Search the images at ``fresh`` as retrieval does, keep what came back, and return
        those among them with an entry of ``label`` in their hits."""
        if not fresh:
            return []
        _, limit, kind = search
        found = search_sides(memory, rows[list(fresh)], kind, limit)
        searched = {keys[i]: Searched(found, j, limit, kind).sides for j, i in enumerate(fresh)}
        near = [
            i
            for j, i in enumerate(fresh)
            if any(h.label == label for batches in found.values() for h in batches[j])
        ]
        with self._lock:
            if self._search == search:
                self._kept.update(searched)
        return near
