"""Novel groups: rejected queries that look alike are one new thing seen again and again.

A recognizer keeps the queries it judged unknown lately (a bounded log) and groups them by
*average linkage*: two groups are one when their queries are, on average over every pair
across them, at least as similar as the memory's ``link``
(:attr:`rar_agent.openset.Calibration.link`: the ``calibration.GROUP_QUANTILE`` quantile of
the similarities of all pairs of examples of one category, so 65% of the pairs of photos of
one known category are as close). A mean over pairs means the same whether two images of a new
thing have been seen or two hundred, and whatever their order, where linking each image to its
closest look-alike (single linkage, at the memory's closest-pair similarity) split the first
few photos of one new thing into pairs and chained many of them into one group with their
neighbours. An agent asks once, "what are these 7 images?", instead of seven times; once one
of them is taught, its group is answered and leaves the log (:meth:`NovelGroupLog.answered`);
on a log that callers share, the group as the teacher sees it: images only others sent stay.
A group keeps its id while it keeps images (the id most of its images had, whichever left or
joined), so an agent told an id finds that group under it; an id no group has any more says
what became of it (:meth:`NovelGroupLog.fate`).
How pure the groups are on Fashion-MNIST's held-out classes: ``docs/eval/open-set``. A memory
of one example per category has no such pair, and one of one or two pairs too few to tell
(``calibration.MIN_LINK_PAIRS``): it takes its encoder prior's link
(:meth:`~rar_agent.openset.prior.EncoderPrior.link_at`); without a link (no prior either)
nothing is linked, and the groups listing says why (``NovelGroups.no_groups``).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

import numpy as np

from rar_agent.results import NovelGroup

__all__ = [
    "LOG_CAPACITY",
    "MAX_MEMBERS_SHOWN",
    "NovelGroupLog",
    "SentImages",
    "Senders",
    "average_linkage",
    "purity",
]

MAX_MEMBERS_SHOWN = 20
"""Member images listed per group (the size counts all of them)."""

LOG_CAPACITY = 512
"""Unknown queries a log keeps (and image names a caller's :class:`SentImages` keeps)."""

Shown = Callable[[str | None], bool]
"""Whether an unknown image, by its name, counts for the one asking (see ``groups``)."""

_SAME_IMAGE = 1.0 - 1e-5
"""Cosine at or above which a query named like a logged one is that image asked again."""


class _Fate(NamedTuple):
    """What became of a group id no group has now, and the images it held then."""

    why: str
    images: tuple[str, ...]


class NovelGroupLog:
    """The unknown queries seen lately, grouped by closeness (bounded, thread-safe).

    Args:
        capacity: Queries kept; when full, the oldest half is dropped (groups are rebuilt).
    """

    def __init__(self, capacity: int = LOG_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError("a novel-group log needs room for at least 2 queries")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._sims = np.zeros((0, 0), dtype=np.float32)
        self._images: list[str] = []
        self._seq: list[int] = []  # each query's sequence number (unique, never reused)
        self._gid: list[int] = []  # each query's group, by its lasting id (same counter)
        self._fates: OrderedDict[int, _Fate] = OrderedDict()  # ids no group has now
        self._lone_fates: OrderedDict[int, _Fate] = OrderedDict()  # the same, of lone images
        self._grouped: set[int] = set()  # ids that have had two images or more (groups)
        self._link: float | None = None
        self._next = 0

    def add(self, vector: np.ndarray, image: str | None, link: float | None) -> NovelGroup | None:
        """Log one unknown query and return its group (``None``: it has no look-alike yet,
        or there is no threshold to link by). The same image asked again (same name, same
        embedding) is logged once.

        Args:
            vector: The query's embedding.
            image: How the caller named the image (an id, a path, a URL).
            link: The mean similarity at which queries are one new thing (the memory's
                ``Calibration.link``, now: the whole log is grouped by it), ``None`` when
                the memory has none.
        """
        return self.add_keyed(vector, image, link)[1]

    def add_keyed(
        self, vector: np.ndarray, image: str | None, link: float | None
    ) -> tuple[int, NovelGroup | None]:
        """:meth:`add`, which also returns the query's key in the log (as :meth:`logged`
        gives it: the key it had where it was logged already)."""
        row = np.asarray(vector, dtype=np.float32).ravel()
        row = row / (float(np.linalg.norm(row)) or 1.0)
        with self._lock:
            relink = link != self._link
            self._link = link
            seen = self._seen(row, image)
            if seen is not None:  # the same image asked again is not a second sighting
                if relink:
                    self._regroup(self._ids(), "")  # no query leaves
                return self._seq[seen], self._group_of(seen, min_size=2)
            full = len(self._images) >= self.capacity
            before = self._ids() if full or relink else None
            if full:
                self._keep(range(len(self._images) // 2, len(self._images)))
            seq = self._fresh()
            self._append(row, image or f"query-{seq}", seq)
            if before is not None or not self._alone():
                if before is None:  # its own id, alone for a moment, was never shown: no fate
                    before = {s: had for s, had in self._ids().items() if s != seq}
                self._regroup(before, self._evicted())
            return self._seq[-1], self._group_of(len(self._images) - 1, min_size=2)

    def answered(
        self, images: Collection[str], shown: Shown | None = None, label: str | None = None
    ) -> list[str]:
        """Drop the queries named ``images`` and the queries of their groups that ``shown``
        shows: someone said what they show (an example of it was taught), so the group's
        question, as they saw it, is answered. The queries of those groups that only others
        sent stay (grouped again among themselves): no one answered them.

        Args:
            images: The names of the images taught.
            shown: Whether an image named so is the teacher's to answer (their conversation's,
                the images their token sent); every one when ``None`` (one caller).
            label: What they were taught as (what an id of a group that left says).

        Returns:
            The names of the queries that left the log.
        """
        names = set(images)
        with self._lock:
            gids = {self._gid[i] for i, name in enumerate(self._images) if name in names}
            gone = [
                i
                for i, name in enumerate(self._images)
                if name in names or (self._gid[i] in gids and (shown is None or shown(name)))
            ]
            taught = "were taught" if label is None else f"were taught as {label!r}"
            return self._drop(gone, f"its images {taught}")

    def logged(self) -> tuple[list[int], list[str], np.ndarray]:
        """The logged queries, oldest first: their keys (sequence numbers, unique while they
        are logged), their names and their (unit) embeddings."""
        with self._lock:
            return list(self._seq), list(self._images), self._vectors.copy()

    def forget(self, images: Collection[str], why: str = "its images left the log") -> list[str]:
        """Drop the queries named ``images`` alone (e.g. the memory answers them now); their
        groups' other queries stay, grouped again. ``why``: what an id of a group that left
        says (:meth:`fate`). Returns the names that left the log."""
        names = set(images)
        with self._lock:
            gone = [i for i, name in enumerate(self._images) if name in names]
            return self._drop(gone, why)

    def groups(self, min_size: int = 2, shown: Shown | None = None) -> list[NovelGroup]:
        """The groups of at least ``min_size`` queries, largest first.

        Args:
            min_size: The smallest group listed (1: every unknown image, alone or not).
            shown: Whether an image named so counts (for one conversation, of a log others
                share); all count when ``None``.
        """
        with self._lock:
            by_gid: dict[int, list[int]] = {}
            for i in self._indices(shown):
                by_gid.setdefault(self._gid[i], []).append(i)
            found = [self._group(g, m) for g, m in by_gid.items() if len(m) >= min_size]
        return sorted(found, key=lambda g: (-g.size, g.id))

    def count(self, shown: Shown | None = None) -> int:
        """The unknown images logged (those ``shown`` only, when given)."""
        with self._lock:
            return len(self._indices(shown))

    def _indices(self, shown: Shown | None) -> list[int]:
        if shown is None:
            return list(range(len(self._images)))
        return [i for i, name in enumerate(self._images) if shown(name)]

    def members(self, group_id: str) -> list[str]:
        """Every image of a group, oldest first (the listing shows at most 20)."""
        number = _number(group_id)
        with self._lock:
            return [self._images[i] for i, g in enumerate(self._gid) if g == number]

    def fate(self, group_id: str, shown: Shown | None = None) -> str | None:
        """What became of a group this log gave ``group_id`` and no group has now, in words
        ("its images are now in group unknown-4", "its images were taught as 'bag'");
        ``None`` where a group has it or this log never gave it (or forgot: it keeps the
        last ``4 * capacity`` fates of groups (ids that ever had two images or more), and
        apart those of as many lone images, which come and go by the hundred; a new image's
        own id, before it joined a group in the same call, was never shown and has none).

        Args:
            group_id: The group's id (``unknown-4``).
            shown: Whether an image named so is the asker's (of a log others share); a
                group none of whose images when it went were is none of theirs: ``None``, as
                for an id never given. Every one when ``None``.
        """
        number = _number(group_id)
        with self._lock:
            found = (
                None if number is None else self._fates.get(number, self._lone_fates.get(number))
            )
        if found is None or (shown is not None and not any(map(shown, found.images))):
            return None
        return found.why

    def __len__(self) -> int:
        return len(self._images)

    def _seen(self, row: np.ndarray, image: str | None) -> int | None:
        """Where the log holds this image already: the same name and the same embedding."""
        for i, name in enumerate(self._images):
            if name == image and float(self._vectors[i] @ row) >= _SAME_IMAGE:
                return i
        return None

    def _alone(self) -> bool:
        """Whether the query logged last is less similar than the link to every other one:
        then it joins no group, and the others' groups stay as they were (each mean over
        pairs with it is below the link too, and it comes last, after every pair that ties),
        so the log need not be grouped again (500 queries: 13 ms regrouped, 0.3 ms without)."""
        n = len(self._images) - 1
        return self._link is None or n == 0 or float(self._sims[n, :n].max()) < self._link

    def _group_of(self, index: int, *, min_size: int) -> NovelGroup | None:
        gid = self._gid[index]
        members = [i for i, g in enumerate(self._gid) if g == gid]
        return self._group(gid, members) if len(members) >= min_size else None

    def _group(self, gid: int, members: Sequence[int]) -> NovelGroup:
        return NovelGroup(
            id=f"unknown-{gid}",
            size=len(members),
            images=[self._images[i] for i in members[:MAX_MEMBERS_SHOWN]],
        )

    def _fresh(self) -> int:
        """A number no query or group had (each query's sequence number comes from here)."""
        self._next += 1
        return self._next - 1

    def _evicted(self) -> str:
        return (
            "its images were among the older half of the unknown images seen, dropped to "
            f"make room (the log keeps the last {self.capacity})"
        )

    def _ids(self) -> dict[int, tuple[int, str]]:
        """Each logged query's group id and name, by its sequence number (before a change)."""
        return {s: (g, name) for s, g, name in zip(self._seq, self._gid, self._images, strict=True)}

    def _append(self, row: np.ndarray, image: str, seq: int) -> None:
        """Log one query (alone: its group's id is its own number): its similarity to every
        logged one joins the matrix."""
        n = len(self._images)
        vectors = row[None] if not n else np.vstack([self._vectors, row[None]])
        sims = np.empty((n + 1, n + 1), dtype=np.float32)
        sims[:n, :n] = self._sims
        sims[n, :] = sims[:, n] = vectors @ row
        self._vectors, self._sims = vectors, sims
        self._images.append(image)
        self._seq.append(seq)
        self._gid.append(seq)

    def _drop(self, gone: Sequence[int], why: str) -> list[str]:
        """Drop the queries at ``gone`` (ascending) and group the rest again; their names.
        ``why``: what became of a group whose queries all left."""
        left = [self._images[i] for i in gone]
        if gone:
            before = self._ids()
            dropped = set(gone)
            self._keep([i for i in range(len(self._images)) if i not in dropped])
            self._regroup(before, why)
        return left

    def _keep(self, keep: Sequence[int]) -> None:
        """Keep only the queries at ``keep`` (in order); :meth:`_regroup` groups them again."""
        index = np.asarray(list(keep), dtype=np.int64)
        self._vectors = self._vectors[index]
        self._sims = self._sims[np.ix_(index, index)]
        self._images = [self._images[i] for i in index]
        self._seq = [self._seq[i] for i in index]
        self._gid = [self._gid[i] for i in index]

    def _regroup(self, before: dict[int, tuple[int, str]], why: str) -> None:
        """Group the whole log anew by the current link (each query alone without one), each
        group under a lasting id (:meth:`_name`). ``before``: the queries' ids before the
        change; ``why``: what became of a group whose queries all left the log."""
        n = len(self._images)
        if self._link is not None and n >= 2:
            self._name(average_linkage(self._sims, self._link))
        else:
            self._name([[i] for i in range(n)])
        self._retire(before, why)

    def _name(self, groups: Sequence[Sequence[int]]) -> None:
        """Give each of ``groups`` (query indices, ascending) the id most of its queries had
        (an agent told that id finds them under it after others joined or left); larger
        groups choose first, and a group whose queries' ids are all taken (a group that
        split) gets a new one."""
        taken: set[int] = set()
        for members in sorted(groups, key=lambda m: (-len(m), m[0])):
            had = Counter(self._gid[i] for i in members if self._gid[i] not in taken)
            gid = max(had, key=lambda g: (had[g], -g)) if had else self._fresh()
            taken.add(gid)
            if len(members) > 1:
                self._grouped.add(gid)
            for i in members:
                self._gid[i] = gid

    def _retire(self, before: dict[int, tuple[int, str]], why: str) -> None:
        """Record what became of the ids that queries had ``before`` (their ids and names)
        and no group has now: where their queries went, or ``why`` when all of them left the
        log; with the names of the images each one held then."""
        now = {s: g for s, (g, _) in self._ids().items()}
        had: dict[int, list[int]] = {}
        for s, (g, _) in before.items():
            had.setdefault(g, []).append(s)
        for gid in had.keys() - set(now.values()):
            went = sorted({now[s] for s in had[gid] if s in now})
            if went:
                where = " and ".join(f"unknown-{g}" for g in went)
                why_here = f"its images are now in group{'s' if len(went) > 1 else ''} {where}"
            else:
                why_here = why
            # lone images come and go by the hundred: their fates never push out a group's
            fates = self._fates if gid in self._grouped else self._lone_fates
            self._grouped.discard(gid)
            fates[gid] = _Fate(why_here, tuple(before[s][1] for s in had[gid]))
            fates.move_to_end(gid)
        for fates in (self._fates, self._lone_fates):
            while len(fates) > 4 * self.capacity:
                fates.popitem(last=False)


def _number(group_id: str) -> int | None:
    """The number in a group id (``unknown-4``: 4), ``None`` when it has none."""
    try:
        return int(group_id.strip().rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def average_linkage(sims: np.ndarray, link: float) -> list[list[int]]:
    """Groups of the items whose pairwise similarities are ``sims``: starting from each item
    alone, the two groups closest on average over the pairs across them are joined while that
    average reaches ``link`` (UPGMA, cut at ``link``). The result depends on the items, not on
    their order (ties aside).

    Returns:
        Each group's item indices, ascending; groups ordered by their first item.
    """
    n = len(sims)
    mean = np.array(sims, dtype=np.float64)
    np.fill_diagonal(mean, -np.inf)
    size = np.ones(n)
    members = [[i] for i in range(n)]
    while n > 1:
        a, b = sorted(divmod(int(np.argmax(mean)), n))
        if not mean[a, b] >= link:
            break
        joined = (size[a] * mean[a] + size[b] * mean[b]) / (size[a] + size[b])
        mean[a, :] = mean[:, a] = joined
        mean[b, :] = mean[:, b] = mean[a, a] = -np.inf
        size[a] += size[b]
        members[a] += members[b]
        members[b] = []
    return sorted((sorted(m) for m in members if m), key=lambda m: m[0])


class SentImages:
    """The names of the images one caller of a shared log sent: a ``shown`` predicate for
    :meth:`NovelGroupLog.groups` (that caller lists and is told about these only).

    Bounded like the log: past ``capacity`` names, the oldest is forgotten (the log has
    dropped it by then, or will). Two callers who send the same image both keep its name,
    so each sees it. What the caller taught leaves the log and is forgotten here
    (:meth:`forget`), so it neither takes the room of an image still unknown nor makes
    another caller's later image of that name this caller's. Thread-safe.
    """

    def __init__(self, capacity: int = LOG_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._names: OrderedDict[str, None] = OrderedDict()
        self._left: OrderedDict[str, None] = OrderedDict()  # forgotten: they left the log

    def add(self, name: str) -> None:
        """Record that the caller sent an image named ``name`` (again: it becomes newest);
        the oldest past ``capacity`` is forgotten (:meth:`sent_lately` still knows it)."""
        with self._lock:
            self._left.pop(name, None)
            self._names[name] = None
            self._names.move_to_end(name)
            while len(self._names) > self.capacity:
                self._gone(self._names.popitem(last=False)[0])

    def forget(self, names: Collection[str]) -> None:
        """Forget the images named so (they left the log: the caller's question is answered);
        :meth:`sent_lately` still knows them."""
        with self._lock:
            for name in names:
                if name in self._names:
                    del self._names[name]
                    self._gone(name)

    def _gone(self, name: str) -> None:
        """Remember a forgotten name among the last ``4 * capacity`` (as many as the log
        keeps fates of), for :meth:`sent_lately`."""
        self._left[name] = None
        self._left.move_to_end(name)
        while len(self._left) > 4 * self.capacity:
            self._left.popitem(last=False)

    def sent_lately(self, name: str | None) -> bool:
        """Whether the caller sent an image named so lately, whether still unknown or gone
        from the log since: a ``shown`` predicate for :meth:`NovelGroupLog.fate` (the caller
        is told what became of the groups of its own images, and of no others)."""
        with self._lock:
            return name in self._names or name in self._left

    def __len__(self) -> int:
        with self._lock:
            return len(self._names)

    def __call__(self, name: str | None) -> bool:
        with self._lock:
            return name in self._names


class Senders:
    """Each named caller's :class:`SentImages`, for a log that callers share: a token's on
    the MCP server, a signed-in person's on the chat page (all of their conversations), so
    both doors scope unknown images by one rule. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[str, SentImages] = {}

    def of(self, name: str | None) -> SentImages | None:
        """The images the caller named ``name`` sent (an empty record at first); ``None``
        for a caller with no name (stdio, a server or page without tokens: one caller, who
        is shown every unknown image)."""
        if name is None:
            return None
        with self._lock:
            return self._by.setdefault(name, SentImages())


def purity(groups: Sequence[Sequence[str]]) -> float | None:
    """Share of grouped queries whose label is their group's most common one (for the eval:
    each group given as its members' true labels)."""
    members = sum(len(g) for g in groups)
    if not members:
        return None
    top = sum(max(list(g).count(label) for label in set(g)) for g in groups)
    return top / members
