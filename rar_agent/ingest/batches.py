"""One batch of a folder or manifest build, made ready in a background thread.

Each ``(source, label)`` is read and hashed (SHA-256 of the file bytes), checked against the
ids already stored, and decoded (no larger than the encoder needs, on a pool of decode
threads when the builder gives one): everything the builder needs before encoding. Each entry
keeps a small thumbnail (:func:`rar_agent.images.make_thumbnail`) for results to show.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
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
    "PreparedBatch",
    "decode_workers",
    "prepare_batch",
    "read_local_image",
]

REMOTE_PREFIXES = ("http://", "https://", "data:")
"""Sources that are fetched or decoded, not read from disk."""

BatchItem = tuple[str, str, bytes | None]
"""``(source, label, the image's bytes when the caller already holds them)``."""


@dataclass
class PreparedBatch:
    """A batch after reading, hashing, the stored-id check and decoding.

    Attributes:
        entries: The new entries, one per decoded image.
        images: Their decoded images, in the same order.
        skipped: Items already stored (or repeated within the build).
        failed: ``(source, reason)`` of every unusable item.
    """

    entries: list[MemoryEntry] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def decode_workers(encoder: object) -> int:
    """Decode threads for a build: enough to keep a GPU fed, few where torch uses the CPUs.

    A CPU encoder already keeps every core busy, so decoding takes half of them (at least
    one thread, overlapped with encoding as before); a GPU encoder leaves the CPUs to
    decoding (up to 8 threads).
    """
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    device = str(getattr(encoder, "device", "cpu")).split(":")[0]
    if device == "cpu":
        return max(1, cpus // 2)
    return max(1, min(8, cpus))


def read_local_image(path: Path) -> bytes:
    """The bytes of a local image file, refused when missing or over the size limit.

    Raises:
        ImageError: The file is missing, unreadable or too large.
    """
    from rar_agent.images import MAX_FILE_BYTES

    try:
        if not path.is_file():
            raise ImageError(f"image file not found (or not a file): {path}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path} is {size / 2**20:.0f} MiB, over the image size limit")
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from e


def prepare_batch(
    memory: CategoryMemory,
    batch: Sequence[BatchItem],
    seen: set[str],
    strict: bool,
    extra: Mapping[str, Any],
    *,
    need: int | None = None,
    decoders: Executor | None = None,
) -> PreparedBatch:
    """Read and hash each item, skip ids stored or ``seen``, decode the rest.

    Runs in the builder's background thread. ``seen`` (ids already taken by earlier batches
    of this build) gains the ids of the entries returned; ``extra`` goes into every payload.
    Images are decoded with their shorter side no smaller than ``need`` (the encoder's input
    side; ``None``: full size), on ``decoders`` when given (Pillow and libheif decode outside
    the GIL, so threads decode in parallel).

    Raises:
        ImageError, LabelError, UnsafeInputError: Under ``strict``, the first bad item.
    """
    from rar_agent.images import decode_image_bytes, load_image, make_thumbnail

    out = PreparedBatch()
    staged: list[tuple[MemoryEntry, bytes | None, Image.Image | None]] = []
    for source, label, data in batch:
        try:
            label = normalize_label(label)
            image = None
            if data is None and source.startswith(REMOTE_PREFIXES):
                loaded = load_image(source, need=need)
                image, digest = loaded.image, loaded.sha256
            else:
                data = read_local_image(Path(source)) if data is None else data
                digest = hashlib.sha256(data).hexdigest()
            entry = MemoryEntry(label, "image", source, digest, extra=dict(extra))
            staged.append((entry, data, image))
        except (ImageError, LabelError, UnsafeInputError) as e:
            if strict:
                raise
            out.failed.append((source, str(e)))
    stored = memory.existing_ids(entry.point_id for entry, _, _ in staged)
    todo = []
    for entry, data, image in staged:
        pid = entry.point_id
        if pid in stored or pid in seen:
            out.skipped += 1
            continue
        seen.add(pid)  # taken now, so a repeat later in this batch is skipped too
        todo.append((entry, data, image))

    def decode(item: tuple[MemoryEntry, bytes | None, Image.Image | None]) -> Any:
        """``(image, thumbnail data URI)``, or the ImageError (runs on a decode thread)."""
        entry, data, image = item
        try:
            if image is None:
                assert data is not None
                image = decode_image_bytes(data, what=entry.source, need=need)
        except ImageError as e:
            return e
        return image, make_thumbnail(image)

    results = decoders.map(decode, todo) if decoders is not None else map(decode, todo)
    for (entry, _, _), result in zip(todo, results, strict=True):
        if isinstance(result, ImageError):
            seen.discard(entry.point_id)
            if strict:
                raise result
            out.failed.append((entry.source, str(result)))
            continue
        image, thumbnail = result
        entry.extra["thumbnail"] = thumbnail  # not part of the id
        out.entries.append(entry)
        out.images.append(image)
    return out
