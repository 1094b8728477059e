"""Retrieval: query the category memory and fold entries into distinct labels."""

from __future__ import annotations

import itertools
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SkipValidation

from rar_agent.config import MemoryKind, validate_k, validate_kind
from rar_agent.encoders import ImageTextEncoder, input_size_of, same_thing_bar
from rar_agent.errors import ConfigError, EmptyMemoryError
from rar_agent.images import (
    IMAGE_SUFFIXES,
    ImageInput,
    is_image_reference,
    load_image,
    reference_problem,
)
from rar_agent.memory import KINDS, CategoryMemory, EntryKind, Hit
from rar_agent.memory.entries import content_id
from rar_agent.results import Candidate, MatchedExample, counted

__all__ = [
    "EXAMPLES_PER_CANDIDATE",
    "LABEL_SCORES",
    "NEAR_DUPLICATE",
    "RANK_HITS",
    "STORED_ROWS",
    "StoredRows",
    "category_scores",
    "fold_hits",
    "base_side",
    "lead_side",
    "mean_members",
    "CategoryRetriever",
    "Retrieved",
    "candidates_to_documents",
    "check_sides",
    "search_sides",
    "sides_of",
    "take_turns",
    "fetch_limit",
]


LABEL_SCORES = 5
"""Similarities kept per candidate category (its closest entries among the hits)."""


RANK_HITS = 20
"""Nearest entries of a query whose per-category means rank the categories
(:func:`category_scores`)."""
TAPER = 0.02
"""Similarity over which an entry's weight in its category's local mean rises from 0 (at
the first entry beyond the nearest ``RANK_HITS``) to 1."""
NEAR_DUPLICATE = 0.95
"""Cosine similarity from which two images count as the same picture: an example this close
to a query decides its category's score, and the teacher flags one of another category."""


def category_scores(
    query: np.ndarray, rows: np.ndarray, labels: Sequence[str], sims: Sequence[float]
) -> dict[str, float]:
    """How well each category matches a query, from the query's nearest entries: the rule
    by which categories are ranked (the recognizer and the evaluations use this one).

    A category's score is the cosine between the query and the weighted mean of its entries
    among the ``RANK_HITS`` nearest (a local class mean: one odd example, often a taught
    correction near another category, does not outweigh the rest of its category). Every
    entry weighs 1 except those within ``TAPER`` of the similarity of the first entry
    beyond the nearest (of 0 when there is none), whose weight falls to 0 there: the score
    changes smoothly with the query, with no jump when an entry enters the nearest. A
    category with one weighted entry, or whose closest entry is a near-duplicate of the
    query (``NEAR_DUPLICATE``: the query *is* that example), scores that entry's similarity.
    A score is never below the weighted mean of its entries' similarities (when positive),
    so a category with entries among the nearest outranks any without.

    Args:
        query: ``(d,)`` unit vector.
        rows: ``(m, d)`` vectors of its nearest entries, best first (``RANK_HITS + 1`` are
            enough: the last one only sets the weights' zero). Only the rows
            :func:`mean_members` names are read: the others may hold anything (zeros).
        labels: Their categories.
        sims: Their similarities to ``query``.

    Returns:
        The score of each category among the first ``RANK_HITS`` entries.
    """
    return _scores(query, rows, _local(labels, sims))


def mean_members(labels: Sequence[str], sims: Sequence[float]) -> list[int]:
    """The positions (in the nearest entries given to :func:`category_scores`) of the
    entries whose vectors it reads: those of categories scored by a local mean. The others
    are scored by a similarity alone, so their vectors need not be fetched."""
    return _positions(_local(labels, sims))


class _Local(NamedTuple):
    """A query's nearest entries as :func:`category_scores` reads them."""

    weights: list[float]
    """Each of the first ``RANK_HITS`` entries' weight (``TAPER``)."""
    best: dict[str, float]
    """Each category's best similarity among them, in the order the categories come."""
    means: dict[str, list[int]]
    """The positions of the entries of each category scored by their local mean: two or
    more entries, none a near-duplicate of the query, some weight (the others score their
    best similarity)."""


def _local(labels: Sequence[str], sims: Sequence[float]) -> _Local:
    """Group nearest entries (best first) by category, as :func:`category_scores` reads them.

    Plain Python floats throughout: for at most ``RANK_HITS`` numbers, each numpy call costs
    more than the arithmetic (the same IEEE operations, so the same weights)."""
    n = min(len(sims), RANK_HITS)
    top = [float(s) for s in sims[:n]]
    cut = float(sims[n]) if len(sims) > n else 0.0
    weight = [min(max((v - cut) / TAPER, 0.0), 1.0) for v in top]
    groups: dict[str, list[int]] = {}
    for i in range(n):
        groups.setdefault(labels[i], []).append(i)
    best = {label: max(top[i] for i in members) for label, members in groups.items()}
    means = {
        label: members
        for label, members in groups.items()
        if len(members) > 1 and best[label] < NEAR_DUPLICATE and any(weight[i] > 0 for i in members)
    }
    return _Local(weight, best, means)


def _positions(local: _Local) -> list[int]:
    """The positions of the entries whose vectors the local means read, in order."""
    return sorted(i for members in local.means.values() for i in members)


def _scores(
    query: np.ndarray, rows: np.ndarray | Mapping[int, np.ndarray], local: _Local
) -> dict[str, float]:
    """:func:`category_scores` of nearest entries already grouped (:func:`_local`); ``rows``
    gives the vector at each of :func:`_positions` (the only ones read).

    The rows of every local mean are made float64 in one block (what each product would
    make of them, once): the same products, on the same numbers."""
    out = dict(local.best)
    if not local.means:
        return out
    groups = list(local.means.items())
    block = np.array([rows[i] for _, members in groups for i in members], dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    start = 0
    for label, members in groups:
        stop = start + len(members)
        mean = np.array([local.weights[i] for i in members]) @ block[start:stop]
        norm = math.sqrt(float(mean.dot(mean)))  # what np.linalg.norm computes, minus its checks
        if norm > 0:
            out[label] = float(q @ mean) / norm
        start = stop
    return out


def fetch_limit(k: int, fetch_k: int | None) -> int:
    """How many entries to fetch so that ``k`` distinct labels are likely among them."""
    return max(fetch_k or 0, k * 10, 50)


def fold_hits(
    hits: Iterable[Hit], k: int, ranks: Mapping[str, float] | None = None
) -> list[Candidate]:
    """Fold memory entries into distinct labels and keep the best ``k``.

    Args:
        hits: Entries from a memory search, in any order.
        k: How many distinct labels to keep.
        ranks: Category scores (:func:`category_scores`) of the labels among the nearest
            hits; any other label scores its best similarity (the only score without them).

    Returns:
        Candidates sorted by score (ties keep the first label seen), ``retrieval_rank`` set
        (1 for the best), ``scores`` = the label's ``LABEL_SCORES`` best similarities among
        ``hits``, best first (the open-set statistic's input), ``examples`` its
        ``EXAMPLES_PER_CANDIDATE`` closest entries (id, score, stored thumbnail).
    """
    by_label: dict[str, list[Hit]] = {}
    for hit in hits:
        by_label.setdefault(hit.label, []).append(hit)
    for group in by_label.values():
        group.sort(key=lambda h: -h.score)
    given = ranks or {}
    score = {label: given.get(label, g[0].score) for label, g in by_label.items()}
    ranked = sorted(by_label.values(), key=lambda g: -score[g[0].label])[:k]
    out = []
    for i, group in enumerate(ranked, 1):
        h = group[0]
        out.append(
            Candidate(
                label=h.label,
                score=float(score[h.label]),
                retrieval_rank=i,
                kind=h.kind,
                source=h.source,
                scores=[float(x.score) for x in group[:LABEL_SCORES]],
                examples=[_matched(x) for x in group[:EXAMPLES_PER_CANDIDATE]],
            )
        )
    return out


EXAMPLES_PER_CANDIDATE = 2
"""Closest entries each candidate carries as its evidence."""


def _matched(hit: Hit) -> MatchedExample:
    thumb = hit.payload.get("thumbnail")
    taught = hit.payload.get("taught")
    by = taught.get("by") if isinstance(taught, dict) else None
    return MatchedExample(
        id=hit.id,
        score=float(hit.score),
        kind=hit.kind or None,
        thumbnail=thumb if isinstance(thumb, str) and thumb.startswith("data:image/") else None,
        taught_by=by if isinstance(by, str) else None,
    )


def _local_of(hits: Sequence[Hit]) -> _Local:
    """:func:`_local` of hits."""
    return _local([h.label for h in hits], [h.score for h in hits])


def _mean_hits(hits: Sequence[Hit], local: _Local) -> list[Hit]:
    """The hits (nearest first) whose vectors :func:`category_scores` reads."""
    return [hits[i] for i in _positions(local)]


def _unit_rows(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """Stored vectors of one length as float32 unit rows ``(n, d)``.

    The backend hands vectors over as lists of Python floats; ``struct`` packs them in one C
    loop a row, less than half of what ``np.fromiter`` or ``np.array`` take to read them
    (0.18-0.22 against 0.49-0.58 ms for 20 vectors of 1281), and packed row by row as float32
    (the stored numbers are float32) rather than all at once as doubles, 10 vectors of 512
    take 0.049 against 0.061 ms: the same values. Normalised as one block, not row by row
    (15 vectors of 512: 0.20 against 0.31 ms; thread CPU, a loaded machine).
    """
    dim = len(vectors[0])
    row = struct.Struct(f"={dim}f")
    packed = bytearray(row.size * len(vectors))
    for i, vector in enumerate(vectors):
        row.pack_into(packed, i * row.size, *vector)
    rows = np.frombuffer(packed, dtype=np.float32).reshape(len(vectors), dim)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)
    return rows


#: Stored vectors a retriever keeps as float32 rows (about 5 KB each at 1,281 dimensions).
STORED_ROWS = 2048


class StoredRows:
    """The stored vectors a retriever read, kept for the next queries (least recently used
    out, at most ``size``; safe to share between threads).

    The local class means of a query's nearest entries read the same examples query after
    query, and each read turns the engine's lists of floats into arrays: 1-2 ms of CPU per
    query for 20 vectors of 1,281 numbers, measured here, against a few microseconds from
    here. A row is kept only for an entry stored under its content's own id (derived from
    its kind, label and content hash, :func:`~rar_agent.memory.entries.content_id`), under
    that id and hash: such an id names one content whoever writes it, in this process or
    another, so a kept row stays that entry's vector, and nothing needs to be forgotten when
    examples are added, relabelled (a new id), undone or removed (no longer found). An entry
    written under an id of its own (a vector store's document, whose image at the same
    address may change) or without a content hash is read every time.
    """

    def __init__(self, size: int = STORED_ROWS) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(hit: Hit) -> tuple[str, str, str] | None:
        """Where ``hit``'s vector is kept (None: it is never kept)."""
        digest = hit.payload.get("content_hash")
        return (hit.kind, hit.id, digest) if isinstance(digest, str) and digest else None

    def get(self, hits: Sequence[Hit]) -> list[np.ndarray | None]:
        """Each hit's kept row (read-only), or None."""
        keys = [self.key(hit) for hit in hits]
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                row = None if key is None else self._rows.get(key)
                if key is not None and row is not None:
                    self._rows.move_to_end(key)
                out.append(row)
        return out

    def put(self, hits: Sequence[Hit], rows: np.ndarray) -> list[np.ndarray]:
        """Keep ``rows``, the stored vectors of ``hits`` as float32 unit rows, for the hits
        stored under their content's own id; each row as returned: a read-only copy where
        kept, else the row itself."""
        out: list[np.ndarray] = []
        fresh: list[tuple[tuple[str, str, str], np.ndarray]] = []
        for hit, row in zip(hits, rows, strict=True):
            key = self.key(hit)
            if key is not None and self.size > 0 and _under_content_id(hit, key[2]):
                row = row.copy()  # not a view: a kept row would hold its whole block alive
                row.flags.writeable = False
                fresh.append((key, row))
            out.append(row)
        with self._lock:
            for key, row in fresh:
                self._rows[key] = row
                self._rows.move_to_end(key)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return out

    def __len__(self) -> int:
        return len(self._rows)


def _under_content_id(hit: Hit, digest: str) -> bool:
    """Whether ``hit`` is stored under its content's own id (so its vector never changes)."""
    return hit.id == content_id(hit.kind, hit.label, digest)


def sides_of(kind: str) -> tuple[EntryKind, ...]:
    """Memory sides ``kind`` selects: ``auto`` both, image examples first."""
    side = validate_kind(kind)
    return ("image", "text") if side == "auto" else (side,)


_SIDES: dict[str, tuple[str, str]] = {
    "image": (
        "example image",
        "add example photos (rar-agent teach LABEL PHOTO..., or memory build --from-folder DIR)",
    ),
    "text": (
        "class name",
        "add class names (rar-agent memory build --from-names FILE, with an encoder that has "
        "a text tower)",
    ),
}
"""What an entry of each memory side is, and how to fill that side (:func:`_empty_error`)."""


def _empty_error(memory: CategoryMemory, kind: str) -> EmptyMemoryError:
    """Nothing on the side(s) ``kind`` selects: what the memory holds instead and what to do
    (ask the other side, or fill this one), not to build a memory that exists."""
    if kind in ("image", "text"):
        other = "text" if kind == "image" else "image"
        held = memory.count(other)
        if held:
            return EmptyMemoryError(
                f"the memory holds no {_SIDES[kind][0]}s, only {counted(held, _SIDES[other][0])}: "
                f"ask its {other} side (kind {other} or auto: finetune-data --kind {other}, "
                f"RAR_KIND={other}), or {_SIDES[kind][1]}"
            )
    return EmptyMemoryError(
        "the memory is empty: add categories with `rar-agent memory build --from-names FILE` "
        "or `--from-folder DIR` (in Python rar_agent.ingest), or give labels (--labels; in "
        "Python labels=[...])"
    )


def search_sides(
    memory: CategoryMemory,
    vectors: np.ndarray,
    kind: MemoryKind,
    limit: int,
    *,
    with_vectors: bool = False,
) -> dict[EntryKind, list[list[Hit]]]:
    """Search the memory sides ``kind`` selects (``auto``: both, so that a memory of class
    names and taught photos answers from either, :func:`lead_side`); each side that holds
    entries, with its hits.

    Nothing is counted up front (an exact count costs more than an indexed search on a large
    memory; searching an empty side costs about an eighth of a search of 10k entries): a
    side with entries always returns hits, so an empty answer means an empty side.
    ``with_vectors``: the hits carry readers of their stored vectors where the backend hands
    them over (:meth:`~rar_agent.memory.CategoryMemory.search_batch`).

    Raises:
        EmptyMemoryError: No side ``kind`` selects holds entries.
    """
    if len(vectors) == 0:
        return {}
    found: dict[EntryKind, list[list[Hit]]] = {}
    for side in sides_of(kind):
        batches = memory.search_batch(vectors, kind=side, limit=limit, with_vectors=with_vectors)
        if any(batches):
            found[side] = batches
    if not found:
        raise _empty_error(memory, kind)
    return found


def base_side(categories: Mapping[str, int]) -> EntryKind:
    """The side of a memory holding both example images and class names that answers a
    query no stored example is the same thing as (:func:`lead_side`): the class names where
    they hold more categories than the example images, else the example images.

    The built-in memory (1000 class names, a few taught photos) is answered by its class
    names; a memory of photos to which a class name was added, or one holding a photo and a
    name of each category, by its photos (which ``auto`` preferred before the class names
    joined in: a person who gave photos of each category gave them to be used).

    Args:
        categories: Distinct labels per side (:meth:`CategoryMemory.category_counts`).
    """
    return "text" if categories.get("text", 0) > categories.get("image", 0) else "image"


def lead_side(
    image: Sequence[Candidate],
    text: Sequence[Candidate],
    k: int,
    same_thing: float,
    *,
    base: EntryKind,
) -> list[Candidate]:
    """One query's candidates in a memory holding both example images and class names: the
    rule by which a taught photo and the class names share one answer.

    The two sides' similarities live on different scales (for EfficientNet-Lite0, a photo
    is 0.5-0.9 from another photo of the same thing and 0.05-0.3 from an unrelated one,
    while 0.28 from a class row is a strong match), so neither a merge by score nor one
    side always first is right. The ``base`` side (:func:`base_side`) answers, except that
    where it is the class names, the image categories whose closest example is at least
    ``same_thing`` from the query (the query *is* the thing taught) lead, best first, and
    the class names follow (a label already led by its examples is not repeated). Where no
    example is that close, the class names answer as if no photo had been taught. Where
    the photos are the base, the class names never lead: a photo's similarity to a class
    name says nothing on the photos' scale, so they answer as if no name had been added.

    Args:
        image: The image side's candidates, best first.
        text: The text side's candidates, best first.
        k: How many to keep.
        same_thing: The similarity from which a query is the same thing as an example.
        base: The side that answers where no example is the same thing.

    Returns:
        Up to ``k`` candidates, ``retrieval_rank`` renumbered; those of the image categories
        that lead are marked ``leads_names`` (the decision the ranker's skip reads:
        :func:`rar_agent.ranking.skip_reason`, rule ``taught``).
    """
    if base == "image":
        return list(image[:k])
    same = [
        c.model_copy(update={"leads_names": True})
        for c in image
        if (c.scores[0] if c.scores else c.score) >= same_thing
    ]
    if not same:
        return list(text[:k])
    taken = {c.label for c in same}
    merged = [*same, *(c for c in text if c.label not in taken)][:k]
    return [c.model_copy(update={"retrieval_rank": i}) for i, c in enumerate(merged, 1)]


def take_turns(
    text: Sequence[Candidate], image: Sequence[Candidate], k: int, *, base: EntryKind
) -> list[Candidate]:
    """One word query's candidates in a memory holding both class names and example images:
    the rule by which a word search answers from both.

    A word query's similarity to a class name (words to words) and to a photo (words to a
    picture, the scale on which a photo matches a class name) live on different scales, and
    the same-thing bar of :func:`lead_side` is a similarity between two photos, which no
    word query reaches: neither a merge by score nor that bar lets a taught category be
    found by words. So each side keeps its own order and the two take turns, the ``base``
    side first (:func:`base_side`, the one that answers image queries: the class names of
    the built-in memory, the photos of a memory of photos with a class name added); a label
    already listed is not repeated.

    Args:
        text: The class names' candidates, best first.
        image: The example images' candidates, best first.
        k: How many to keep.
        base: The side listed first.

    Returns:
        Up to ``k`` candidates, ``retrieval_rank`` renumbered.
    """
    merged: dict[str, Candidate] = {}
    for pair in itertools.zip_longest(*((text, image) if base == "text" else (image, text))):
        for c in pair:
            if c is not None and c.label not in merged:
                merged[c.label] = c
    kept = list(merged.values())[:k]
    return [c.model_copy(update={"retrieval_rank": i}) for i, c in enumerate(kept, 1)]


def check_sides(memory: CategoryMemory, kind: MemoryKind) -> None:
    """Check that a side ``kind`` selects holds entries (before a long run searches them).

    Raises:
        EmptyMemoryError: None does.
    """
    if not any(memory.count(side) > 0 for side in sides_of(kind)):
        raise _empty_error(memory, kind)


class Retrieved(NamedTuple):
    """Each query's candidates (:meth:`CategoryRetriever.retrieve_vectors`), with the search
    they were folded from."""

    candidates: list[list[Candidate]]
    hits: dict[EntryKind, list[list[Hit]]]
    """Per memory side searched (those holding entries), each query's entries, nearest first."""
    limit: int
    """The entries asked of each side."""
    kind: MemoryKind
    """The memory sides searched, as the retriever's ``kind`` names them."""


class CategoryRetriever(BaseRetriever):
    """A LangChain retriever over a category memory.

    ``invoke`` accepts an image (a path, URL or data URI, its bytes, or a PIL image) or free
    text; it returns one ``Document`` per distinct label (``page_content`` is the label,
    ``metadata`` holds ``score``, ``rank``, ``kind`` and ``source``). URL queries reach public
    addresses only
    (``allow_private_urls``); give an agent a retriever with ``read_files=False`` so that its
    queries cannot name local files.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: SkipValidation[CategoryMemory] = Field(description="The category memory.")
    encoder: SkipValidation[ImageTextEncoder] = Field(description="The memory's encoder.")
    k: int = 5
    fetch_k: int | None = None
    kind: MemoryKind = "auto"
    read_files: bool = Field(
        default=True, description="Treat a query naming an existing file as an image path."
    )
    allow_private_urls: bool = Field(
        default=False, description="Let URL queries reach loopback/private addresses."
    )
    same_thing: float | None = Field(
        default=None,
        description="Similarity from which an image query is the same thing as a stored "
        "example (:func:`lead_side`), for a memory of class names and example images. None: "
        "the encoder's measured bar (:func:`rar_agent.encoders.same_thing_bar`), and for an "
        "encoder without one NEAR_DUPLICATE, so that only a near copy of a taught photo "
        "outranks the class names.",
    )
    _stored: StoredRows = PrivateAttr(default_factory=StoredRows)

    @property
    def bar(self) -> float:
        """The same-thing bar in use: ``same_thing``, else the encoder's measured one, else
        ``NEAR_DUPLICATE``."""
        if self.same_thing is not None:
            return self.same_thing
        measured = same_thing_bar(getattr(self.encoder, "fingerprint", None))
        return NEAR_DUPLICATE if measured is None else measured

    def retrieve(self, image: ImageInput, *, k: int | None = None) -> list[Candidate]:
        """Top-k distinct labels for one image (URLs obey ``allow_private_urls``)."""
        loaded = load_image(
            image, allow_private_urls=self.allow_private_urls, need=input_size_of(self.encoder)
        )
        vector = self.encoder.embed_images([loaded.image])[0]
        return self.retrieve_vectors(vector[None, :], k=k)[0]

    def retrieve_vectors(
        self,
        vectors: np.ndarray,
        *,
        k: int | None = None,
        kind: MemoryKind | None = None,
    ) -> list[list[Candidate]]:
        """Top-k distinct labels for each row of an ``(n, dim)`` array of image embeddings
        (``kind`` overrides the retriever's; ``auto`` in a memory of example images and class
        names: :func:`lead_side`)."""
        return self.retrieve_searched(vectors, k=k, kind=kind).candidates

    def retrieve_searched(
        self,
        vectors: np.ndarray,
        *,
        k: int | None = None,
        kind: MemoryKind | None = None,
    ) -> Retrieved:
        """:meth:`retrieve_vectors`, with what each query's search of the memory returned."""
        k = validate_k(k if k is not None else self.k)
        limit = fetch_limit(k, self.fetch_k)
        rows = np.asarray(vectors, dtype=np.float32)
        kind = kind or self.kind
        sides = search_sides(self.memory, rows, kind, limit, with_vectors=True)
        folded = {
            side: [fold_hits(h, k, r) for h, r in zip(b, self._ranks(rows, b), strict=True)]
            for side, b in sides.items()
        }
        return Retrieved(self.lead(folded, k, len(rows)), sides, limit, kind)

    def lead(
        self, folded: Mapping[EntryKind, list[list[Candidate]]], k: int, n: int
    ) -> list[list[Candidate]]:
        """Each of ``n`` queries' candidates from the sides searched, each side's folded
        (:func:`fold_hits`): the one side that answered, or where both did,
        :func:`lead_side` with the memory's :func:`base_side` and :attr:`bar` (recognition
        and fine-tuning data both answer here)."""
        if len(folded) < 2:
            return next(iter(folded.values()), [[] for _ in range(n)])
        bar = self.bar
        base = base_side(self.memory.category_counts())
        return [
            lead_side(image, text, k, bar, base=base)
            for image, text in zip(folded["image"], folded["text"], strict=True)
        ]

    def _ranks(self, vectors: np.ndarray, batches: list[list[Hit]]) -> list[dict[str, float]]:
        """The category scores of each query's nearest entries (one fetch of the vectors the
        local means need, for all queries; an entry whose vector is gone is left out).
        ``batches``: each query's hits best first, as the memory's searches return them."""
        nearest = [hits[: RANK_HITS + 1] for hits in batches]
        stored: dict[str, np.ndarray] = {}
        asked: set[str] = set()
        local = [_local_of(hits) for hits in nearest]
        wanted = [
            h for hits, near in zip(nearest, local, strict=True) for h in _mean_hits(hits, near)
        ]
        while wanted:
            stored.update(self._vectors(wanted))
            asked.update(h.id for h in wanted)
            if all(h.id in stored for h in wanted):
                break  # the same entries, so the same ones to fetch: no second look
            # gone meanwhile: leave it out and look again
            nearest = [[h for h in hits if h.id in stored or h.id not in asked] for hits in nearest]
            local = [_local_of(hits) for hits in nearest]
            wanted = [
                h
                for hits, near in zip(nearest, local, strict=True)
                for h in _mean_hits(hits, near)
                if h.id not in asked
            ]
        out: list[dict[str, float]] = []
        for query, hits, near in zip(vectors, nearest, local, strict=True):
            if not near.means:  # each category scores its best similarity
                out.append(dict(near.best))
                continue
            q = query / max(float(np.linalg.norm(query)), 1e-12)
            out.append(_scores(q, {i: stored[hits[i].id] for i in _positions(near)}, near))
        return out

    def _vectors(self, hits: Sequence[Hit]) -> dict[str, np.ndarray]:
        """The stored vectors of ``hits`` as unit rows: those kept from earlier queries
        (:class:`StoredRows`), then those the search handed over (``Hit.read_vector``), the
        others in one read per kind among them, of that vector alone (no payloads)."""
        kept = self._stored
        out: dict[str, np.ndarray] = {}
        carried: list[Hit] = []
        vectors: list[list[float]] = []
        by_kind: dict[str, list[Hit]] = {}
        for hit, row in zip(hits, kept.get(hits), strict=True):
            vector = None if row is not None or hit.read_vector is None else hit.read_vector()
            if row is not None:
                out[hit.id] = row
            elif vector:
                carried.append(hit)
                vectors.append(vector)
            else:
                by_kind.setdefault(hit.kind, []).append(hit)
        for kind, group in by_kind.items():
            ids = [h.id for h in group]
            read = self.memory.get_vectors(ids, kind=kind if kind in KINDS else None)
            found = [h for h in group if h.id in read]
            carried += found
            vectors += [read[h.id] for h in found]
        if carried:
            rows = kept.put(carried, _unit_rows(vectors))
            out.update(zip([h.id for h in carried], rows, strict=True))
        return out

    def search_text(self, text: str, *, k: int | None = None) -> list[Candidate]:
        """Categories whose entries best match a text query (text embedding; ``auto`` in a
        memory of class names and example images: :func:`take_turns`, its
        :func:`base_side` first)."""
        k = validate_k(k if k is not None else self.k)
        vector = self.encoder.embed_texts([text])
        sides = search_sides(self.memory, vector, self.kind, fetch_limit(k, self.fetch_k))
        folded = {side: fold_hits(b[0], k) for side, b in sides.items()}
        base = base_side(self.memory.category_counts()) if len(folded) > 1 else "text"
        return take_turns(folded.get("text", []), folded.get("image", []), k, base=base)

    def _check_words(self, query: str) -> None:
        """Refuse a query that is not words: empty, or naming an image file that is not there
        (a mistyped path would otherwise be answered as if it were a description)."""
        text = query.strip()
        if not text:
            raise ConfigError(
                "the query is empty: pass an image (a file path, URL or data URI) or words"
            )
        if self.read_files and "\n" not in text and Path(text).suffix.lower() in IMAGE_SUFFIXES:
            problem = reference_problem(text)
            if problem is not None:
                raise problem

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        if not isinstance(query, str):  # bytes or a PIL image: LangChain's hint says str only
            return candidates_to_documents(self.retrieve(query, k=k))
        is_image = is_image_reference(query, files=self.read_files)
        if not is_image:
            self._check_words(query)
        candidates = self.retrieve(query, k=k) if is_image else self.search_text(query, k=k)
        return candidates_to_documents(candidates)


def candidates_to_documents(candidates: Sequence[Candidate]) -> list[Document]:
    """Turn candidates into LangChain documents (label as content, the rest as metadata)."""
    return [
        Document(
            page_content=c.label,
            metadata={
                "score": c.score,
                "rank": c.retrieval_rank,
                "kind": c.kind,
                "source": c.source,
                "label": c.label,
            },
        )
        for c in candidates
    ]
