"""A memory's record of itself: which encoder made it, its description and gate margin.

Both backends store the record as one JSON object (a file beside an embedded shard, the
collection metadata on a server); this module decides what it holds.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from rar_agent.errors import EncoderMismatchError
from rar_agent.memory.backend import META_VERSION, MemoryBackend
from rar_agent.memory.entries import MemoryInfo

__all__ = ["memory_info", "record_encoder"]

logger = logging.getLogger(__name__)


def record_encoder(
    backend: MemoryBackend,
    collection: str,
    fingerprint: str,
    dim: int,
    description: str | None = None,
) -> None:
    """Record the encoder in a new memory (creating its storage), or check it in an old one.

    Args:
        backend: The memory's storage.
        collection: The memory's name, for messages and the record.
        fingerprint: The encoder's fingerprint.
        dim: The encoder's embedding length.
        description: A domain description to record, if given.

    Raises:
        EncoderMismatchError: The memory was built with another encoder.
    """
    meta = backend.read_meta(refresh=True)
    if meta and meta.get("fingerprint"):
        stored, stored_dim = meta["fingerprint"], meta.get("dim")
        if stored != fingerprint or stored_dim != dim:
            raise EncoderMismatchError(
                f"memory {collection!r} at {backend.location} was built with "
                f"encoder {stored!r} ({stored_dim}-d), not {fingerprint!r} ({dim}-d): "
                "use the same --clip-model / --clip-pretrained it was built with, or "
                "rebuild it with this encoder into another --collection"
            )
        if description is not None and description != meta.get("description"):
            backend.write_meta({**meta, "description": description})
        return
    record: dict[str, Any] = {
        "version": META_VERSION,
        "fingerprint": fingerprint,
        "dim": dim,
        "collection": collection,
        "description": description,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    backend.create(dim, record)
    logger.info("memory %r bound to encoder %s (%d-d)", collection, fingerprint, dim)


def memory_info(backend: MemoryBackend, collection: str) -> MemoryInfo:
    """What the record says, with the backend's name and location."""
    meta = backend.read_meta() or {}
    return MemoryInfo(
        fingerprint=meta.get("fingerprint"),
        dim=meta.get("dim"),
        collection=collection,
        backend=backend.name,
        description=meta.get("description"),
        location=backend.location,
        created_at=meta.get("created_at"),
        gate_margin=meta.get("gate_margin"),
    )
