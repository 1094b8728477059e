"""One batch of a folder or manifest build, made ready in a background thread.

Each ``(source, label)`` is read and hashed (SHA-256 of the file bytes), checked against the
ids already stored, and decoded: everything the builder needs before encoding. Each entry
keeps a small thumbnail (:func:`rar_agent.images.make_thumbnail`) for results to show.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ImageError, LabelError, UnsafeInputError
from rar_agent.memory.entries import MemoryEntry, normalize_label

if TYPE_CHECKING:
    from PIL import Image

    from rar_agent.memory.core import CategoryMemory

__all__ = ["REMOTE_PREFIXES", "BatchItem", "PreparedBatch", "prepare_batch", "read_local_image"]

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
) -> PreparedBatch:
    """Read and hash each item, skip ids stored or ``seen``, decode the rest.

    Runs in the builder's background thread. ``seen`` (ids already taken by earlier batches
    of this build) gains the ids of the entries returned; ``extra`` goes into every payload.

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
                loaded = load_image(source)
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
    for entry, data, image in staged:
        pid = entry.point_id
        if pid in stored or pid in seen:
            out.skipped += 1
            continue
        try:
            if image is None:
                assert data is not None
                image = decode_image_bytes(data, what=entry.source)
        except ImageError as e:
            if strict:
                raise
            out.failed.append((entry.source, str(e)))
            continue
        seen.add(pid)
        entry.extra["thumbnail"] = make_thumbnail(image)  # not part of the id
        out.entries.append(entry)
        out.images.append(image)
    return out
