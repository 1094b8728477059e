"""Ranking fine-tuning data (the RAR paper's section 3.3), built from a labelled image set.

For every labelled image: retrieve the top-N memory entries *excluding the image itself*
(same content hash or same point id; the paper's released code lets each query find itself,
which teaches the model to trust a perfect first hit), fold them into distinct labels, take
windows of ``k`` labels that contain the true label, and emit a conversation whose target is
the window with the true label first and the others in retrieval order (window 0 is the served
top-``k``; further windows pair the true label with the next negatives). The prompt comes from
:func:`rar_agent.ranking.build_ranking_messages` and the reply from
:func:`rar_agent.ranking.format_target`, exactly what the ranking chain sends at inference.

Formats: ``llava`` (LLaVA / ShareGPT JSON: image path, ``system`` and ``conversations`` with an
``<image>`` token) and ``openai`` (chat fine-tuning JSONL, the image as a ``data:`` URL).
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rar_agent.errors import ConfigError, RarError

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory, Hit

__all__ = [
    "FORMATS",
    "FinetuneOptions",
    "FinetuneSummary",
    "RankingSample",
    "iter_samples",
    "label_windows",
    "to_llava",
    "to_openai",
    "write_samples",
    "build_finetune_data",
]

logger = logging.getLogger(__name__)

Format = Literal["llava", "openai"]
FORMATS: tuple[str, ...] = ("llava", "openai")
IMAGE_TOKEN = "<image>"


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
        kind: Memory side to query: ``image``, ``text`` or ``auto`` (image if any).
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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.k < 2:
            raise ConfigError(f"k must be at least 2 to make a ranking, got {self.k}")
        if self.top_n < self.k:
            raise ConfigError(f"top_n ({self.top_n}) must be at least k ({self.k})")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"max_per_class must be positive, got {self.max_per_class}")
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
) -> Iterator[RankingSample]:
    """Yield ranking conversations for labelled images (see the module docstring).

    Args:
        memory: The category memory to retrieve from (usually built from the same images).
        encoder: The encoder the memory was built with.
        items: ``(source, label)`` pairs, e.g. from ``memory.builders.iter_image_folder``.
        options: How conversations are made.
        summary: Filled in as samples are produced (pass one to read the counts).
        progress: Optional ``progress(done, total)`` callback.

    Raises:
        EncoderMismatchError: The memory was built with another encoder.
        EmptyMemoryError: The memory has no entries of the requested kind.
    """
    from rar_agent.images import load_image
    from rar_agent.memory.entries import MemoryEntry, normalize_label
    from rar_agent.ranking import build_ranking_messages, format_target
    from rar_agent.retrieval import fetch_limit, fold_hits, resolve_kind

    opts = options or FinetuneOptions()
    stats = summary if summary is not None else FinetuneSummary()
    start = time.perf_counter()
    memory.bind_encoder(encoder.fingerprint, encoder.dim)
    side = resolve_kind(memory, opts.kind)
    hint = opts.hint if opts.hint is not None else getattr(memory.info, "description", None)
    todo = list(items)
    seen_images: set[str] = set()
    seen_conversations: set[str] = set()
    for offset in range(0, len(todo), opts.batch_size):
        batch = []
        for source, raw_label in todo[offset : offset + opts.batch_size]:
            stats.images += 1
            try:
                label = normalize_label(raw_label)
                loaded = load_image(source)
            except RarError as e:
                stats.failed.append((str(source), str(e)))
                logger.warning("skipped %s: %s", source, e)
                continue
            if opts.dedup and loaded.sha256 in seen_images:
                stats.duplicates += 1
                continue
            seen_images.add(loaded.sha256)
            batch.append((loaded, label))
        if batch:
            vectors = encoder.embed_images([loaded.image for loaded, _ in batch])
            limit = fetch_limit(opts.top_n, None) + 8  # room for the image's own entries
            results = memory.search_batch(vectors, kind=side, limit=limit)
            for (loaded, label), hits in zip(batch, results, strict=True):
                own = {MemoryEntry(label, "image", loaded.source, loaded.sha256).point_id}
                kept, dropped = _exclude_self(hits, loaded.sha256, own)
                stats.self_hits_excluded += dropped
                pool = [c.label for c in fold_hits(kept, opts.top_n)]
                windows = label_windows(pool, label, opts.k)
                if not windows:
                    stats.not_retrieved += 1
                    stats.missed_per_class[label] += 1
                    continue
                rng = _rng(opts.seed, loaded.sha256)
                chosen = windows[:1] + rng.sample(windows[1:], len(windows) - 1)
                for window in chosen[: opts.windows]:
                    if opts.max_per_class is not None and (
                        stats.per_class[label] >= opts.max_per_class
                    ):
                        stats.capped += 1
                        break
                    order = [label] + [name for name in window if name != label]
                    shown = list(window)
                    if opts.shuffle:
                        rng.shuffle(shown)
                    key = hashlib.sha256(
                        json.dumps([loaded.sha256, shown, order]).encode()
                    ).hexdigest()
                    if opts.dedup and key in seen_conversations:
                        continue
                    seen_conversations.add(key)
                    messages = build_ranking_messages(
                        loaded.image, shown, hint, image_max_side=opts.image_max_side
                    )
                    stats.conversations += 1
                    stats.per_class[label] += 1
                    yield RankingSample(
                        source=loaded.source,
                        label=label,
                        candidates=shown,
                        order=order,
                        retrieved=pool,
                        messages=messages,
                        target=format_target(order),
                    )
        if progress:
            progress(min(offset + opts.batch_size, len(todo)), len(todo))
        stats.seconds = time.perf_counter() - start


def _text_of(content: Any) -> tuple[str, int]:
    """The text of a message's content, with ``<image>`` for each image; and the image count."""
    if isinstance(content, str):
        return content, 0
    parts, images = [], 0
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") in ("image", "image_url"):
            parts.append(IMAGE_TOKEN)
            images += 1
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "\n".join(parts), images


def to_llava(sample: RankingSample, *, image_root: Path | None = None) -> dict[str, Any]:
    """A LLaVA / ShareGPT record: ``id``, ``image``, ``system``, ``conversations``.

    The human turn is the user message with ``<image>`` where the image goes; the ``gpt`` turn
    is the target reply.

    Args:
        sample: The conversation.
        image_root: Write the image path relative to this folder (else as given).
    """
    system, conversations = None, []
    for message in sample.messages:
        text, _ = _text_of(message.content)
        if message.type == "system":
            system = text
        else:
            conversations.append(
                {"from": "human" if message.type == "human" else "gpt", "value": text}
            )
    conversations.append({"from": "gpt", "value": sample.target})
    image = sample.source
    if image_root is not None:
        with contextlib.suppress(ValueError):  # outside the root: keep the path as given
            image = str(Path(sample.source).resolve().relative_to(image_root.resolve()))
    key = json.dumps([sample.source, sample.candidates]).encode()
    record: dict[str, Any] = {
        "id": hashlib.sha256(key).hexdigest()[:16],
        "image": image,
        "label": sample.label,
        "candidates": sample.candidates,
    }
    if system is not None:
        record["system"] = system
    record["conversations"] = conversations
    return record


def to_openai(sample: RankingSample) -> dict[str, Any]:
    """An OpenAI chat fine-tuning record: ``{"messages": [...]}`` with a data-URL image."""
    from langchain_core.messages import AIMessage, convert_to_openai_messages

    messages = convert_to_openai_messages([*sample.messages, AIMessage(content=sample.target)])
    return {"messages": messages}


def write_samples(
    samples: Iterable[RankingSample],
    path: str | Path,
    fmt: Format = "llava",
    *,
    image_root: Path | None = None,
) -> int:
    """Write samples to ``path`` (JSON array for ``llava``, JSONL for ``openai``); return count.

    Raises:
        ConfigError: Unknown format, or the file cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(path)
    count = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            if fmt == "llava":
                f.write("[")
            for sample in samples:
                if fmt == "llava":
                    record = json.dumps(to_llava(sample, image_root=image_root), ensure_ascii=False)
                    f.write(("\n" if count == 0 else ",\n") + record)
                else:
                    f.write(json.dumps(to_openai(sample), ensure_ascii=False) + "\n")
                count += 1
            if fmt == "llava":
                f.write("\n]\n")
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from e
    return count


def build_finetune_data(
    memory: CategoryMemory,
    encoder: ImageTextEncoder,
    items: Iterable[tuple[str, str]],
    out: str | Path,
    *,
    fmt: Format = "llava",
    options: FinetuneOptions | None = None,
    image_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FinetuneSummary:
    """Build the conversations and write them to ``out``; return the summary.

    Raises:
        ConfigError: Bad options or an unwritable output.
        MemoryStoreError: The memory cannot be searched (empty, other encoder...).
    """
    summary = FinetuneSummary()
    samples = iter_samples(memory, encoder, items, options, summary=summary, progress=progress)
    write_samples(samples, out, fmt, image_root=image_root)
    if summary.conversations == 0:
        logger.warning("no conversations were written: see the summary for why")
    return summary
