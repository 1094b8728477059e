"""``MemoryRecord``: what a memory records about itself, typed.

A memory's record says which encoder made its vectors (fingerprint, length, how to load it
again), its description, its storage settings, when it was created, and a ``revision``
that grows by one with every change. Anything a higher layer keeps with the memory (the
open-set calibration, ...) is an *extension*: a named JSON object in ``extensions``, read
with :meth:`CategoryMemory.extension <rar_agent.memory.CategoryMemory.extension>` and
changed atomically with :meth:`CategoryMemory.update_extension
<rar_agent.memory.CategoryMemory.update_extension>`.

Both backends store the record as one JSON object (a file beside an embedded shard, the
collection metadata on a server). Records written before this model (version 1: a flat dict
with ``calibration`` and other values at the top level) are read by :meth:`from_stored`:
the known keys become fields and every other key an extension.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from rar_agent.errors import MemoryStoreError
from rar_agent.memory.storage import StorageSettings

__all__ = ["LEGACY_EXTENSION", "RECORD_VERSION", "EncoderRecord", "MemoryRecord"]

logger = logging.getLogger(__name__)

#: The layout :meth:`MemoryRecord.to_stored` writes (1 was the flat dict of before).
RECORD_VERSION = 2
#: The extension that receives old top-level values that were not JSON objects.
LEGACY_EXTENSION = "legacy"

_V1_FIELDS = (
    "fingerprint",
    "dim",
    "collection",
    "description",
    "created_at",
    "encoder_spec",
    "storage",
    "gate_margin",
)


class EncoderRecord(BaseModel):
    """How to load a memory's encoder again: ``load_encoder(model, pretrained=pretrained)``.

    The memory layer keeps it as plain data; ``rar_agent.encoders.EncoderSpec`` is the
    encoders' own form of it (``EncoderSpec(record.model, record.pretrained)``).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    pretrained: str | None = None

    @property
    def label(self) -> str:
        """A short name for messages: ``ViT-B-16/openai``, ``efficientnet-lite0``..."""
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model

    @classmethod
    def parse(cls, data: object) -> EncoderRecord | None:
        """An ``EncoderRecord`` from ``{"model", "pretrained"}`` or one itself; ``None`` for
        anything else (older memories recorded no spec)."""
        if isinstance(data, EncoderRecord):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return None
        pretrained = data.get("pretrained")
        return cls(
            model=data["model"], pretrained=pretrained if isinstance(pretrained, str) else None
        )


class MemoryRecord(BaseModel):
    """What a memory records about itself.

    Attributes:
        fingerprint: The encoder's fingerprint (model + weights identity).
        dim: The encoder's embedding length.
        collection: The memory's name.
        description: A domain description (a hint for the ranker), if any.
        created_at: ISO time the encoder was bound (the memory created).
        encoder_spec: How to load the encoder again, when it was known.
        storage: Storage settings, fixed at creation.
        gate_margin: The ranking-gate margin ``rar-agent eval --gate auto`` chose, if any.
        revision: Grows by one with every change of the record (compare-and-set).
        extensions: Named JSON objects kept by higher layers (``"calibration"``, ...).
        version: The stored layout (:data:`RECORD_VERSION`).
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    version: int = RECORD_VERSION
    fingerprint: str = Field(min_length=1)
    dim: int = Field(gt=0)
    collection: str
    description: str | None = None
    created_at: str | None = None
    encoder_spec: EncoderRecord | None = None
    storage: StorageSettings = Field(default_factory=StorageSettings)
    gate_margin: float | None = None
    revision: int = Field(default=0, ge=0)
    extensions: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, value: object) -> StorageSettings:
        return value if isinstance(value, StorageSettings) else StorageSettings.from_dict(value)

    @field_validator("encoder_spec", mode="before")
    @classmethod
    def _encoder_spec(cls, value: object) -> EncoderRecord | None:
        return EncoderRecord.parse(value)

    @field_serializer("storage")
    def _dump_storage(self, storage: StorageSettings) -> dict[str, Any]:
        return storage.to_dict()

    @classmethod
    def new(
        cls,
        collection: str,
        fingerprint: str,
        dim: int,
        *,
        description: str | None = None,
        encoder_spec: EncoderRecord | None = None,
        storage: StorageSettings | None = None,
    ) -> MemoryRecord:
        """The record of a memory created now."""
        return cls(
            fingerprint=fingerprint,
            dim=dim,
            collection=collection,
            description=description,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            encoder_spec=encoder_spec,
            storage=storage or StorageSettings(),
        )

    @classmethod
    def from_stored(
        cls, data: dict[str, Any], *, collection: str = "default", where: str = ""
    ) -> MemoryRecord:
        """Read a stored record, migrating the flat dict of version 1.

        Version 1 kept every value at the top level: the known keys become fields, any
        other key an extension of the same name (values that are not JSON objects go into
        the :data:`LEGACY_EXTENSION` extension), so an old memory keeps its calibration.

        Args:
            data: The stored JSON object.
            collection: The memory's name, for a record that does not say it.
            where: The memory's location, for the message.

        Raises:
            MemoryStoreError: The record is not readable (what to do is in the message).
        """
        if data.get("version", 1) < RECORD_VERSION or "extensions" not in data:
            data = _migrate_v1(data)
        if "collection" not in data:
            data = {**data, "collection": collection}
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}"
                for err in e.errors()
            )
            raise MemoryStoreError(
                f"the memory record{f' at {where}' if where else ''} is not readable "
                f"({problems}); restore it from a copy, or rebuild the memory"
            ) from e
        except ValueError as e:  # e.g. ConfigError from the storage settings
            raise MemoryStoreError(
                f"the memory record{f' at {where}' if where else ''} is not readable ({e}); "
                "restore it from a copy, or rebuild the memory"
            ) from e

    def to_stored(self) -> dict[str, Any]:
        """The JSON object both backends store."""
        return self.model_dump(mode="json")

    def changed(self, **fields: Any) -> MemoryRecord:
        """A copy with ``fields`` set and the revision one higher (validated)."""
        data = {**self.model_dump(), **fields, "revision": self.revision + 1}
        return MemoryRecord.model_validate(data)


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """The version-2 form of a version-1 (flat) record."""
    out: dict[str, Any] = {k: data[k] for k in _V1_FIELDS if k in data}
    extensions: dict[str, dict[str, Any]] = {}
    legacy: dict[str, Any] = {}
    for key, value in data.items():
        if key in _V1_FIELDS or key in ("version", "revision", "extensions"):
            continue
        if isinstance(value, dict):
            extensions[key] = value
        elif value is not None:
            legacy[key] = value
    if legacy:
        extensions[LEGACY_EXTENSION] = legacy
    out.update(
        version=RECORD_VERSION, revision=int(data.get("revision") or 0), extensions=extensions
    )
    if extensions:
        logger.info("memory record migrated: extensions %s", sorted(extensions))
    return out
