"""One batch of a folder or manifest build, made ready in a background thread.

Each ``(source, label)`` is read and hashed (SHA-256 of the file bytes), checked against the
ids already stored, and decoded (no larger than the encoder needs, on a pool of decode
threads when the builder gives one): everything the builder needs before encoding. Each entry
keeps a small thumbnail (:func:`rar_agent.images.make_thumbnail`) for results to show.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ImageError, LabelError, UnsafeInputError
from rar_agent.memory.entries import MemoryEntry, normalize_label

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.memory.core import CategoryMemory

__all__ = [
    "REMOTE_PREFIXES",
    "BatchItem",
    "Decoded",
    "PreparedBatch",
    "decode_workers",
    "prepare_batch",
]

REMOTE_PREFIXES = ("http://", "https://", "data:")
"""Sources that are fetched or decoded, not read from disk."""

BatchItem = tuple[str, str, bytes | None]
"""``(source, label, the image's bytes when the caller already holds them)``."""


Decoded = tuple["Image.Image", str]
"""A decoded image and its thumbnail (a JPEG data URI)."""


@dataclass
class PreparedBatch:
    """A batch after reading, hashing and the stored-id check, its images being decoded.

    Attributes:
        entries: The new entries, in order, each with its image decoding.
        decoding: For each entry, the decode: ``(image, thumbnail)`` or the
            :class:`~rar_agent.errors.ImageError` that made it unusable (whose id is then
            no longer taken).
        skipped: Items already stored (or repeated within the build).
        failed: ``(source, reason)`` of every item found unusable before decoding.
        repeats: Items with the same id as an entry of this batch: ``(source, index of that
            entry)``; each counts as skipped once that entry is stored, as failed when it
            fails (the same bytes).
    """

    entries: list[MemoryEntry] = field(default_factory=list)
    decoding: list[Future[Decoded | ImageError]] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    repeats: list[tuple[str, int]] = field(default_factory=list)

    def decoded(self, strict: bool) -> Iterator[tuple[MemoryEntry, Image.Image]]:
        """Each usable entry with its image, in order, as soon as it is decoded.

        The thumbnail goes into the entry's payload; unusable ones are added to
        ``failed``, with their :attr:`repeats` (the others of those are counted skipped).

        Raises:
            ImageError: Under ``strict``, the first image that could not be decoded.
        """
        for index, (entry, future) in enumerate(zip(self.entries, self.decoding, strict=True)):
            result = future.result()
            repeats = [source for source, of in self.repeats if of == index]
            if isinstance(result, ImageError):
                if strict:
                    raise result
                self.failed.append((entry.source, str(result)))
                self.failed.extend(
                    (source, f"{source} holds the same bytes as {entry.source}: {result}")
                    for source in repeats
                )
                continue
            self.skipped += len(repeats)
            image, thumbnail = result
            entry.extra["thumbnail"] = thumbnail  # not part of the id
            yield entry, image


def decode_workers(encoder: object) -> int:
    """Decode threads for a build: a quarter of the CPUs beside a CPU encoder (at least
    one), up to 8 beside a GPU one.

    Beside a CPU torch encoder these threads share the CPUs with the build's forward passes,
    one per CPU on one torch thread each
    (:func:`rar_agent.encoders.torch_base.parallel_passes`), which no thread spins waiting
    for: a 12 MP JPEG decodes to need in about a third of the time EfficientNet-Lite0 takes
    to encode it on one CPU, and heavier encoders need still less decoding beside them. A
    GPU encoder leaves the CPUs to decoding.
    """
    from rar_agent.encoders.torch_base import usable_cpus

    cpus = usable_cpus()
    device = str(getattr(encoder, "device", "cpu")).split(":")[0]
    if device == "cpu":
        return max(1, cpus // 4)
    return max(1, min(8, cpus))


def prepare_batch(
    memory: CategoryMemory,
    batch: Sequence[BatchItem],
    seen: set[str],
    strict: bool,
    extra: Mapping[str, Any],
    *,
    need: int | None = None,
    decoders: Executor | None = None,
    after: Sequence[Future[Any]] = (),
    bound: Future[None] | None = None,
) -> PreparedBatch:
    """Read and hash each item, skip ids stored or ``seen``, start decoding the rest.

    Runs in the builder's background thread and returns once the decodes are started (on
    ``decoders`` when given: Pillow and libheif decode outside the GIL, so threads decode in
    parallel; else here), so that the encoder can take each image as soon as it is ready.
    Images are decoded with their shorter side no smaller than ``need`` (the encoder's input
    side; ``None``: full size). ``seen`` (ids already taken by earlier batches of this
    build) gains the ids of the entries returned and loses those whose image fails to
    decode; ``after`` (the previous batch's decodes) are waited for before ``seen`` is read,
    so a repeat of an image that failed is tried again. ``extra`` goes into every payload.
    ``bound`` (a new memory being created meanwhile, so nothing is stored in it yet): the
    decodes start before the stored-id check, which waits for it.

    Raises:
        ImageError, LabelError, UnsafeInputError: Under ``strict``, the first bad item found
            before decoding (a decode failure surfaces from :meth:`PreparedBatch.decoded`).
    """
    out = PreparedBatch()
    staged = _read_and_hash(batch, strict, extra, need, out.failed)
    wait(after)
    if bound is not None:
        return _prepare_early(memory, staged, seen, out, (need, decoders), bound)
    stored = memory.existing_ids(entry.point_id for entry, _, _ in staged)
    here: dict[str, int] = {}  # id -> index of its entry in this batch
    for entry, data, image in staged:
        pid = entry.point_id
        if pid in here:
            out.repeats.append((entry.source, here[pid]))
            continue
        if pid in stored or pid in seen:
            out.skipped += 1
            continue
        seen.add(pid)  # taken now: a later batch skips it (or retries it, should it fail)
        here[pid] = len(out.entries)
        out.entries.append(entry)
        out.decoding.append(_start(_decode_job(entry, data, image, need, seen), decoders))
    return out


def _prepare_early(
    memory: CategoryMemory,
    staged: list[Staged],
    seen: set[str],
    out: PreparedBatch,
    decoding: tuple[int | None, Executor | None],
    bound: Future[None],
) -> PreparedBatch:
    """:func:`prepare_batch`'s end while its new memory is being created: each id not
    ``seen`` is taken and its decode started at once; the stored-id check waits for the
    memory (an entry found stored after all is skipped, its decode cancelled if not begun)."""
    need, decoders = decoding
    taken: list[tuple[MemoryEntry, Future[Decoded | ImageError]]] = []
    repeats: list[tuple[str, str]] = []  # (source, id) of a repeat of an item taken here
    here: set[str] = set()
    for entry, data, image in staged:
        if entry.point_id in here:
            repeats.append((entry.source, entry.point_id))
            continue
        if entry.point_id in seen:
            out.skipped += 1
            continue
        seen.add(entry.point_id)
        here.add(entry.point_id)
        taken.append((entry, _start(_decode_job(entry, data, image, need, seen), decoders)))
    bound.result()
    stored = memory.existing_ids(entry.point_id for entry, _ in taken)
    index: dict[str, int] = {}
    for entry, future in taken:
        if entry.point_id in stored:
            out.skipped += 1
            future.cancel()
            continue
        index[entry.point_id] = len(out.entries)
        out.entries.append(entry)
        out.decoding.append(future)
    for source, pid in repeats:
        if pid in index:
            out.repeats.append((source, index[pid]))
        else:
            out.skipped += 1  # its first was stored already
    return out


Staged = tuple[MemoryEntry, "bytes | None", "Image.Image | None"]


def _read_and_hash(
    batch: Sequence[BatchItem],
    strict: bool,
    extra: Mapping[str, Any],
    need: int | None,
    failed: list[tuple[str, str]],
) -> list[Staged]:
    """Each item's entry with its bytes (a local file, read) or its image (a URL, loaded)."""
    from rar_agent.images import load_image, read_image_bytes

    staged: list[Staged] = []
    for source, label, data in batch:
        try:
            label = normalize_label(label)
            image = None
            if data is None and source.startswith(REMOTE_PREFIXES):
                loaded = load_image(source, need=need)
                image, digest = loaded.image, loaded.sha256
            else:
                data = read_image_bytes(Path(source)) if data is None else data
                digest = hashlib.sha256(data).hexdigest()
            entry = MemoryEntry(label, "image", source, digest, extra=dict(extra))
            staged.append((entry, data, image))
        except (ImageError, LabelError, UnsafeInputError) as e:
            if strict:
                raise
            failed.append((source, str(e)))
    return staged


def _decode_job(
    entry: MemoryEntry,
    data: bytes | None,
    image: Image.Image | None,
    need: int | None,
    seen: set[str],
) -> Callable[[], Decoded | ImageError]:
    """The decode of one entry's image and its thumbnail, to run on a decode thread."""
    from rar_agent.images import decode_image_bytes, make_thumbnail

    def job() -> Decoded | ImageError:
        try:
            decoded = image
            if decoded is None:
                assert data is not None
                decoded = decode_image_bytes(data, what=entry.source, need=need)
        except ImageError as e:
            seen.discard(entry.point_id)  # before the next batch reads ``seen``
            return e
        return decoded, make_thumbnail(decoded)

    return job


def _start(
    job: Callable[[], Decoded | ImageError], decoders: Executor | None
) -> Future[Decoded | ImageError]:
    """``job`` submitted to ``decoders``, or run here when there are none (a future already
    holding its result)."""
    if decoders is not None:
        return decoders.submit(job)
    future: Future[Decoded | ImageError] = Future()
    future.set_result(job())
    return future
