"""Ranking conversations from labelled images: retrieve without the image itself, window the
labels around the truth, build the exact prompt and target the ranking chain uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rar_agent.config import MAX_K, positive_int
from rar_agent.errors import ConfigError, RarError

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.images import LoadedImage
    from rar_agent.memory import CategoryMemory, EntryKind, Hit
    from rar_agent.results import Candidate
    from rar_agent.retrieval import CategoryRetriever

__all__ = ["FinetuneOptions", "FinetuneSummary", "RankingSample", "iter_samples", "label_windows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneOptions:
    """How conversations are made.

    Attributes:
        k: Candidates per conversation (the ranker's ``k`` at inference).
        top_n: Distinct labels retrieved per image, the pool windows are taken from.
        windows: Conversations per image at most (different windows of ``k`` labels).
        shuffle: Shuffle the candidate order shown in the prompt (the target stays the
            true label first, then retrieval order); off = retrieval order, as served.
        seed: Seed for window choice and shuffling (per image, so order-independent).
        kind: Memory side to query: ``image``, ``text`` or ``auto`` (both, as recognition
            answers: :meth:`~rar_agent.retrieval.CategoryRetriever.lead`).
        hint: Domain hint in the prompt; ``None`` uses the memory's description.
        dedup: Skip images whose content was already seen, and repeated conversations.
        max_per_class: Stop emitting conversations for a class after this many.
        image_max_side: Longest side of the image sent (as the ranking chain's setting).
        batch_size: Images per encoder call.
    """

    k: int = 5
    top_n: int = 20
    windows: int = 1
    shuffle: bool = False
    seed: int = 0
    kind: Literal["auto", "image", "text"] = "auto"
    hint: str | None = None
    dedup: bool = True
    max_per_class: int | None = None
    image_max_side: int = 512
    batch_size: int = 32

    def __post_init__(self) -> None:
        ints = {
            "k": self.k,
            "top_n": self.top_n,
            "windows": self.windows,
            "batch_size": self.batch_size,
            "image_max_side": self.image_max_side,
        }
        for name, value in ints.items():
            positive_int(name, value)
        if not 2 <= self.k <= MAX_K:
            raise ConfigError(
                f"k must be a whole number from 2 to {MAX_K} (candidates per conversation, the "
                f"ranker's k at inference; a ranking needs 2), not {self.k!r}"
            )
        if self.top_n < self.k:
            raise ConfigError(f"top_n ({self.top_n}) must be at least k ({self.k})")
        if self.max_per_class is not None:
            positive_int("max_per_class", self.max_per_class)
        if self.kind not in ("auto", "image", "text"):
            raise ConfigError(f"kind must be auto, image or text, not {self.kind!r}")


@dataclass
class RankingSample:
    """One training conversation before formatting.

    Attributes:
        source: Where the image came from (a file path for the LLaVA format).
        label: The true label.
        candidates: Candidate labels in the order the prompt shows them.
        order: The target order: the true label first, the others in retrieval order.
        retrieved: The pool of distinct labels retrieved for this image, best first.
        messages: The exact chat messages the ranking chain would send (system + user).
        target: The exact reply text (``format_target(order)``).
    """

    source: str
    label: str
    candidates: list[str]
    order: list[str]
    retrieved: list[str]
    messages: list[BaseMessage]
    target: str


@dataclass
class FinetuneSummary:
    """What a build did: counts per outcome and per class."""

    images: int = 0
    conversations: int = 0
    duplicates: int = 0
    self_hits_excluded: int = 0
    not_retrieved: int = 0
    capped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    per_class: Counter[str] = field(default_factory=Counter)
    missed_per_class: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    kept: int = 0
    """Images whose conversations a stopped build keeps for ``--resume`` (its checkpoint)."""
    resumed: int = 0
    """Images a resumed build found done (their conversations kept, not made again)."""

    def counts(self) -> dict[str, Any]:
        """The counts a checkpoint keeps (:meth:`take_over` reads them back)."""
        return {
            name: dict(value) if isinstance(value, Counter) else value
            for name, value in vars(self).items()
            if name not in ("seconds", "kept", "resumed")
        }

    def take_over(self, counts: dict[str, Any]) -> None:
        """Go on from a stopped build's :meth:`counts`."""
        for name, value in counts.items():
            current = getattr(self, name)
            if isinstance(current, Counter):
                value = Counter(value)
            elif isinstance(current, list):
                value = [tuple(item) for item in value]
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "images": self.images,
            "conversations": self.conversations,
            "duplicates_skipped": self.duplicates,
            "self_hits_excluded": self.self_hits_excluded,
            "true_label_not_retrieved": self.not_retrieved,
            "capped_by_max_per_class": self.capped,
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
            "per_class": dict(sorted(self.per_class.items())),
            "missed_per_class": dict(sorted(self.missed_per_class.items())),
            "seconds": round(self.seconds, 3),
        }


def label_windows(pool: Sequence[str], truth: str, k: int) -> list[list[str]]:
    """Windows of ``k`` labels of ``pool`` that contain ``truth``, each in retrieval order.

    Window ``j`` is the truth plus the ``k - 1`` consecutive negatives starting at negative
    ``j`` (the pool without the truth), so window 0 holds the hardest negatives and equals the
    served top-``k`` whenever the truth is in it. A pool without the truth gives no window
    (negatives-only windows are never made); a pool shorter than ``k`` gives one window if it
    has two or more labels.
    """
    if truth not in pool or len(pool) < 2:
        return []
    rank = {name: i for i, name in enumerate(pool)}
    negatives = [name for name in pool if name != truth]
    width = min(k, len(pool)) - 1
    return [
        sorted([truth, *negatives[j : j + width]], key=rank.__getitem__)
        for j in range(len(negatives) - width + 1)
    ]


def _rng(seed: int, digest: str) -> random.Random:
    return random.Random(f"{seed}\x00{digest}")


def _exclude_self(hits: Iterable[Hit], digest: str, point_ids: set[str]) -> tuple[list[Hit], int]:
    kept, dropped = [], 0
    for hit in hits:
        if hit.id in point_ids or (hit.payload or {}).get("content_hash") == digest:
            dropped += 1
        else:
            kept.append(hit)
    return kept, dropped


def iter_samples(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    items: Iterable[tuple[str, str]],
    options: FinetuneOptions | None = None,
    *,
    summary: FinetuneSummary | None = None,
    progress: Callable[[int, int], None] | None = None,
    done: int = 0,
) -> Iterator[RankingSample]:
    """Yield ranking conversations for labelled images (see :mod:`rar_agent.finetune_data`).

    Args:
        memory: The category memory to retrieve from (usually built from the same images).
        encoder: The encoder the memory was built with.
        items: ``(source, label)`` pairs, e.g. from ``rar_agent.ingest.iter_image_folder``.
        options: How conversations are made.
        summary: Filled in as samples are produced (pass one to read the counts).
        progress: Optional ``progress(done, total)`` callback, called after each batch, once
            its conversations are consumed.
        done: Items already done by a stopped build (skipped; their images still count as
            seen for ``dedup``).

    Raises:
        EncoderMismatchError: The memory was built with another encoder.
        EmptyMemoryError: The memory has no entries of the requested kind.
    """
    from rar_agent.ingest import bind_memory
    from rar_agent.retrieval import CategoryRetriever, check_sides

    opts = options or FinetuneOptions()
    stats = summary if summary is not None else FinetuneSummary()
    start = time.perf_counter()
    bind_memory(memory, encoder)
    check_sides(memory, opts.kind)
    hint = opts.hint if opts.hint is not None else getattr(memory.info, "description", None)
    retriever = CategoryRetriever(memory=memory, encoder=encoder, kind=opts.kind)
    maker = _SampleMaker(memory, encoder, opts, stats, retriever, hint)
    todo = list(items)
    if opts.dedup:
        maker.seen_images.update(_digests(todo[:done]))
    if progress:  # the total from the start, not after the first batch is encoded
        progress(done, len(todo))
    for offset in range(done, len(todo), opts.batch_size):
        batch = maker.load(todo[offset : offset + opts.batch_size])
        for loaded, label, pool in maker.retrieve(batch):
            yield from maker.conversations(loaded, label, pool)
        if progress:
            progress(min(offset + opts.batch_size, len(todo)), len(todo))
        stats.seconds = time.perf_counter() - start


def _digests(items: Sequence[tuple[str, str]]) -> set[str]:
    """The content hashes of the images of ``items`` (as :func:`~rar_agent.images.load_image`
    hashes them; one that cannot be read has none)."""
    from rar_agent.images import load_image

    digests = set()
    for source, _ in items:
        with contextlib.suppress(RarError):
            digests.add(load_image(source).sha256)
    return digests


@dataclass
class _SampleMaker:
    """The steps of :func:`iter_samples`, sharing its options, counts and seen-sets."""

    memory: CategoryMemory
    encoder: ImageTextEncoder
    opts: FinetuneOptions
    stats: FinetuneSummary
    retriever: CategoryRetriever
    hint: str | None
    seen_images: set[str] = field(default_factory=set)
    seen_conversations: set[str] = field(default_factory=set)

    def load(self, items: Sequence[tuple[str, str]]) -> list[tuple[LoadedImage, str]]:
        """Decode a batch; unreadable items are recorded, repeated images skipped."""
        from rar_agent.encoders import input_size_of
        from rar_agent.images import DecodeNeed, load_image
        from rar_agent.memory.entries import normalize_label

        side = input_size_of(self.encoder)
        # the encoder's input, and the longer side the conversation's image is sent at
        need = None if side is None else DecodeNeed(side, self.opts.image_max_side)
        batch = []
        for source, raw_label in items:
            self.stats.images += 1
            try:
                label = normalize_label(raw_label)
                loaded = load_image(source, need=need)
            except RarError as e:
                self.stats.failed.append((str(source), str(e)))
                logger.debug("skipped %s: %s", source, e)  # the caller reports stats.failed
                continue
            if self.opts.dedup and loaded.sha256 in self.seen_images:
                self.stats.duplicates += 1
                continue
            self.seen_images.add(loaded.sha256)
            batch.append((loaded, label))
        return batch

    def retrieve(
        self, batch: Sequence[tuple[LoadedImage, str]]
    ) -> Iterator[tuple[LoadedImage, str, list[str]]]:
        """``(image, label, pool)``: the distinct labels retrieved without the image itself,
        from the sides recognition answers from (``auto`` in a memory of class names and
        example images: :meth:`~rar_agent.retrieval.CategoryRetriever.lead`)."""
        from rar_agent.memory.entries import MemoryEntry
        from rar_agent.retrieval import fetch_limit, fold_hits, search_sides

        if not batch:
            return
        vectors = self.encoder.embed_images([loaded.image for loaded, _ in batch])
        limit = fetch_limit(self.opts.top_n, None) + 8  # room for the image's own entries
        sides = search_sides(self.memory, vectors, self.opts.kind, limit)
        folded: dict[EntryKind, list[list[Candidate]]] = {side: [] for side in sides}
        for i, (loaded, label) in enumerate(batch):
            own = {MemoryEntry(label, "image", loaded.source, loaded.sha256).point_id}
            for side, results in sides.items():
                kept, dropped = _exclude_self(results[i], loaded.sha256, own)
                self.stats.self_hits_excluded += dropped
                folded[side].append(fold_hits(kept, self.opts.top_n))
        pools = self.retriever.lead(folded, self.opts.top_n, len(batch))
        for (loaded, label), pool in zip(batch, pools, strict=True):
            yield loaded, label, [c.label for c in pool]

    def conversations(
        self, loaded: LoadedImage, label: str, pool: list[str]
    ) -> Iterator[RankingSample]:
        """The conversations of one image: up to ``windows`` windows holding the truth."""
        from rar_agent.ranking import build_ranking_messages, format_target

        windows = label_windows(pool, label, self.opts.k)
        if not windows:
            self.stats.not_retrieved += 1
            self.stats.missed_per_class[label] += 1
            return
        rng = _rng(self.opts.seed, loaded.sha256)
        chosen = windows[:1] + rng.sample(windows[1:], len(windows) - 1)
        for window in chosen[: self.opts.windows]:
            cap = self.opts.max_per_class
            if cap is not None and self.stats.per_class[label] >= cap:
                self.stats.capped += 1
                break
            order = [label] + [name for name in window if name != label]
            shown = list(window)
            if self.opts.shuffle:
                rng.shuffle(shown)
            key = hashlib.sha256(json.dumps([loaded.sha256, shown, order]).encode()).hexdigest()
            if self.opts.dedup and key in self.seen_conversations:
                continue
            self.seen_conversations.add(key)
            messages = build_ranking_messages(
                loaded.image, shown, self.hint, image_max_side=self.opts.image_max_side
            )
            self.stats.conversations += 1
            self.stats.per_class[label] += 1
            yield RankingSample(
                source=loaded.source,
                label=label,
                candidates=shown,
                order=order,
                retrieved=pool,
                messages=messages,
                target=format_target(order),
            )
