"""Value types of the category memory: entries, search hits, memory info, label rules."""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rar_agent.errors import ConfigError, LabelError
from rar_agent.memory.storage import StorageSettings

__all__ = [
    "ENTRY_NAMESPACE",
    "KINDS",
    "MAX_LABEL_CHARS",
    "RESERVED_PAYLOAD_KEYS",
    "StoredPoint",
    "EntryKind",
    "Hit",
    "MemoryEntry",
    "MemoryInfo",
    "check_kind",
    "content_id",
    "normalize_label",
]

StoredPoint = tuple[str, str, list[float], dict[str, Any]]
"""``(id, kind, vector, payload)`` of one stored entry, as ``CategoryMemory.scroll`` gives."""
EntryKind = Literal["image", "text"]
KINDS: tuple[EntryKind, ...] = ("image", "text")
MAX_LABEL_CHARS = 200
# Fixed forever: changing it would change every point id and break resumed builds.
ENTRY_NAMESPACE = uuid.UUID("6b3f0b8e-5d1c-5e0a-9a57-7261722d6d65")
_NAMESPACE_BYTES = ENTRY_NAMESPACE.bytes
RESERVED_PAYLOAD_KEYS = frozenset({"label", "kind", "source", "content_hash"})


def normalize_label(label: object) -> str:
    """Return the canonical form of a category label.

    Unicode NFC, surrounding whitespace stripped, inner whitespace runs collapsed to one
    space. Any script works; quotes and commas are kept as they are.

    Args:
        label: The label as given by a user, a folder name or a manifest.

    Returns:
        The normalised label.

    Raises:
        LabelError: The label is not a string, is empty, longer than ``MAX_LABEL_CHARS`` or
            contains control characters.
    """
    if not isinstance(label, str):
        raise LabelError(f"a label must be a string, not {type(label).__name__}: {label!r}")
    text = " ".join(unicodedata.normalize("NFC", label).split())
    if not text:
        raise LabelError("a label is empty: give every category a non-blank name")
    if len(text) > MAX_LABEL_CHARS:
        raise LabelError(
            f"label {text[:40]!r}... has {len(text)} characters; the limit is "
            f"{MAX_LABEL_CHARS}: use a shorter category name"
        )
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cs") or c in _BIDI_CONTROLS]
    if bad:
        raise LabelError(
            f"label {text!r} contains control characters ({', '.join(map(repr, bad[:3]))}): "
            "remove them from the category name"
        )
    return text


# Bidirectional embeddings, overrides and isolates can make a label display as another one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_kind(kind: object) -> EntryKind:
    """Return ``kind`` if it is ``"image"`` or ``"text"``; raise ``ConfigError`` otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"entry kind must be 'image' or 'text', not {kind!r}")
    return kind


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One memory entry: a labelled example image or a class-name prototype.

    The label is normalised on creation (see :func:`normalize_label`).

    Attributes:
        label: Category name.
        kind: ``"image"`` (an example image) or ``"text"`` (a class-name prototype); it is
            also the name of the vector the entry is stored under.
        source: Where it came from: a file path, URL or a description of the prompts.
        content_hash: Hash of the content (file bytes, template set); with kind and label it
            makes the point id.
        extra: Additional JSON-serialisable payload fields.
    """

    label: str
    kind: EntryKind
    source: str
    content_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", normalize_label(self.label))
        check_kind(self.kind)
        if not isinstance(self.content_hash, str) or not self.content_hash:
            raise ConfigError(f"entry {self.label!r} needs a non-empty content_hash string")
        if not isinstance(self.source, str):
            raise ConfigError(f"entry {self.label!r}: source must be a string")
        clash = RESERVED_PAYLOAD_KEYS.intersection(self.extra)
        if clash:
            raise ConfigError(
                f"entry {self.label!r}: extra fields {sorted(clash)} are reserved; rename them"
            )

    @property
    def point_id(self) -> str:
        """Deterministic id: UUIDv5 of kind, label and content hash (:func:`content_id`)."""
        return content_id(self.kind, self.label, self.content_hash)

    def payload(self) -> dict[str, Any]:
        """The payload stored with the vector."""
        return {
            **self.extra,
            "label": self.label,
            "kind": self.kind,
            "source": self.source,
            "content_hash": self.content_hash,
        }


def content_id(kind: str, label: str, content_hash: str) -> str:
    """The point id of an entry stored under its content's own id: UUIDv5 of its kind,
    (normalised) label and content hash. Entries written with ids of their own (the vector
    store's documents) have other ids."""
    name = f"{kind}\x00{label}\x00{content_hash}".encode()
    # uuid.uuid5's bytes, without its UUID object: the retriever checks an id per stored
    # vector it keeps (1.4 against 3.7 us)
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Hit:
    """One memory entry returned by a search.

    Attributes:
        id: Point id.
        score: Cosine similarity to the query (higher is closer).
        label: Category name.
        kind: ``"image"`` or ``"text"``.
        source: Where the entry came from.
        payload: The full stored payload.
        read_vector: Reads the entry's stored vector (of its kind) out of the search's own
            answer, where the search was asked for vectors and the backend hands them over
            (``CategoryMemory.search_batch(..., with_vectors=True)``); ``None`` otherwise.
            Not part of the hit's value (equality, repr).
    """

    id: str
    score: float
    label: str
    kind: str
    source: str
    payload: dict[str, Any]
    read_vector: Callable[[], list[float] | None] | None = field(
        default=None, compare=False, repr=False
    )

    @classmethod
    def from_point(
        cls,
        point_id: object,
        score: float,
        payload: dict[str, Any] | None,
        read_vector: Callable[[], list[float] | None] | None = None,
    ) -> Hit:
        """Build a hit from a backend's id, score, (fresh, owned) payload dict and, where the
        search returned it, a reader of its stored vector."""
        data = payload if payload is not None else {}
        get = data.get
        return cls(
            str(point_id),
            float(score),
            get("label", ""),
            get("kind", ""),
            get("source", ""),
            data,
            read_vector,
        )


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """What a memory records about itself.

    Attributes:
        fingerprint: Fingerprint of the encoder it was built with (``None`` until bound).
        dim: Embedding length (``None`` until bound).
        collection: Collection name.
        backend: ``"edge"`` (embedded) or ``"server"`` (qdrant-client).
        description: Optional domain description (used as a hint for the ranker).
        location: The memory's directory or server URL.
        created_at: ISO timestamp of when the encoder was bound, if known.
        gate_margin: Ranking-gate margin chosen by ``rar-agent eval --gate auto``, if any.
        encoder_spec: How to load the encoder (``{"model": ..., "pretrained": ...}``, see
            ``rar_agent.encoders.EncoderSpec``), if it was recorded.
        storage: Storage settings (quantization, placement, HNSW), once created.
    """

    fingerprint: str | None
    dim: int | None
    collection: str
    backend: str
    description: str | None = None
    location: str = ""
    created_at: str | None = None
    gate_margin: float | None = None
    encoder_spec: dict[str, str | None] | None = None
    storage: StorageSettings | None = None
