"""A memory's record of itself: which encoder made it (and how it loads), its description and
gate margin.

Both backends store the record as one JSON object (a file beside an embedded shard, the
collection metadata on a server); this module decides what it holds.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from rar_agent.encoders.spec import EncoderSpec
from rar_agent.errors import EncoderMismatchError
from rar_agent.memory.backend import META_VERSION, MemoryBackend
from rar_agent.memory.entries import MemoryInfo

__all__ = ["ENCODER_SPEC_KEY", "memory_info", "record_encoder"]

logger = logging.getLogger(__name__)

#: The key under which a memory records how to load its encoder (``EncoderSpec.to_meta()``).
ENCODER_SPEC_KEY = "encoder_spec"


def record_encoder(
    backend: MemoryBackend,
    collection: str,
    fingerprint: str,
    dim: int,
    description: str | None = None,
    spec: EncoderSpec | None = None,
) -> None:
    """Record the encoder in a new memory (creating its storage), or check it in an old one.

    Args:
        backend: The memory's storage.
        collection: The memory's name, for messages and the record.
        fingerprint: The encoder's fingerprint.
        dim: The encoder's embedding length.
        description: A domain description to record, if given.
        spec: How the encoder loads (recorded under ``encoder_spec`` if not recorded yet).

    Raises:
        EncoderMismatchError: The memory was built with another encoder.
    """
    meta = backend.read_meta(refresh=True)
    if meta and meta.get("fingerprint"):
        if meta["fingerprint"] != fingerprint or meta.get("dim") != dim:
            raise EncoderMismatchError(
                _mismatch(meta, backend.location, collection, fingerprint, dim, spec)
            )
        update: dict[str, Any] = {}
        if description is not None and description != meta.get("description"):
            update["description"] = description
        if spec is not None and not meta.get(ENCODER_SPEC_KEY):
            update[ENCODER_SPEC_KEY] = spec.to_meta()
        if update:
            backend.write_meta({**meta, **update})
        return
    record: dict[str, Any] = {
        "version": META_VERSION,
        "fingerprint": fingerprint,
        "dim": dim,
        "collection": collection,
        "description": description,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ENCODER_SPEC_KEY: spec.to_meta() if spec is not None else None,
    }
    backend.create(dim, record)
    logger.info("memory %r bound to encoder %s (%d-d)", collection, fingerprint, dim)


def _mismatch(
    meta: dict[str, Any],
    location: str,
    collection: str,
    fingerprint: str,
    dim: int,
    spec: EncoderSpec | None,
) -> str:
    """The refusal naming both encoders (by spec where known) and what to do."""
    stored = EncoderSpec.from_meta(meta.get(ENCODER_SPEC_KEY))
    stored_dim = meta.get("dim")
    built = f"{meta['fingerprint']!r} ({stored_dim}-d)"
    built = f"{stored.label} ({meta['fingerprint']}, {stored_dim}-d)" if stored else built
    given = f"{spec.label} ({fingerprint}, {dim}-d)" if spec else f"{fingerprint!r} ({dim}-d)"
    own = (
        " or leave them out and its own loads (in Python: Recognizer(memory) with no encoder)"
        if stored
        else ""
    )
    return (
        f"memory {collection!r} at {location} was built with encoder {built}, not {given}: "
        f"use the same --clip-model / --encoder it was built with (in Python: load_encoder of "
        f"that spec){own}, or build a memory for this encoder under another collection"
    )


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
        encoder_spec=meta.get(ENCODER_SPEC_KEY),
    )
