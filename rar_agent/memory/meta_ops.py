"""The record a memory keeps about itself: its encoder, description and other metadata
(mixed into ``CategoryMemory``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory.backend import MemoryBackend
from rar_agent.memory.entries import MemoryInfo
from rar_agent.memory.meta import ENCODER_SPEC_KEY, memory_info, record_encoder
from rar_agent.memory.storage import StorageSettings

__all__ = ["MetaOps"]


class MetaOps:
    """Binding an encoder and reading or writing the memory's metadata."""

    collection: str
    read_only: bool
    _backend: MemoryBackend
    _lock: threading.RLock
    _bound: tuple[str, int] | None
    _storage_request: StorageSettings | None

    if TYPE_CHECKING:  # provided by CategoryMemory and StorageOps

        def _check_open(self) -> None: ...
        def _check_writable(self, what: str) -> None: ...
        def _check_storage(self, meta: dict[str, Any]) -> None: ...

    def bind_encoder(
        self,
        fingerprint: str,
        dim: int,
        *,
        description: str | None = None,
        expected_entries: int | None = None,
    ) -> None:
        """Record the encoder on first use (creating the storage); refuse another one later.

        When the encoder was loaded with :func:`rar_agent.encoders.load_encoder`, how it was
        loaded (its :class:`~rar_agent.encoders.EncoderSpec`) is recorded too, as
        ``info.encoder_spec``, so the memory can be opened later without naming the encoder.

        Args:
            fingerprint: The encoder's fingerprint (model + weights identity).
            dim: The encoder's embedding length.
            description: Optional domain description to record (a hint for the ranker).
            expected_entries: How many entries the first build will add; picks the storage
                settings when none were given to :meth:`open`.

        Raises:
            EncoderMismatchError: The memory was built with another encoder.
            ConfigError: ``dim`` is not a positive integer, the fingerprint is empty, or
                the storage settings given to :meth:`open` differ from the memory's.
        """
        from rar_agent.encoders.loader import spec_for

        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError("the encoder fingerprint must be a non-empty string")
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError(f"the embedding dimension must be a positive integer, not {dim!r}")
        dim = int(dim)
        spec = spec_for(fingerprint)
        with self._lock:
            self._check_open()
            if self.read_only:  # record_encoder writes in these two cases only
                meta = self._backend.read_meta(refresh=True) or {}
                if not meta.get("fingerprint"):
                    self._check_writable("record its encoder (it has none yet: build it first)")
                if description is not None and description != meta.get("description"):
                    self._check_writable("record a description")
            storage = self._storage_request or StorageSettings.for_entries(expected_entries)
            record_encoder(
                self._backend,
                self.collection,
                fingerprint,
                dim,
                description,
                None if self.read_only else spec,  # a read-only memory records nothing
                storage,
            )
            self._check_storage(self._backend.read_meta() or {})
            self._bound = (fingerprint, dim)

    def set_encoder_spec(self, spec: dict[str, str | None] | None) -> None:
        """Record how to load the memory's encoder (``EncoderSpec.to_meta()``'s form)."""
        self._update_meta(ENCODER_SPEC_KEY, spec)

    def set_description(self, description: str | None) -> None:
        """Record a domain description (e.g. "bird species"); requires a bound encoder."""
        self._update_meta("description", description)

    def set_gate_margin(self, margin: float | None) -> None:
        """Record the ranking-gate margin the evaluation harness chose (for ``gate="auto"``)."""
        self._update_meta("gate_margin", None if margin is None else float(margin))

    def get_meta(self, key: str) -> Any:
        """One value of the memory's metadata (``None`` when it is not recorded)."""
        self._check_open()
        return (self._backend.read_meta() or {}).get(key)

    def set_meta(self, key: str, value: Any) -> None:
        """Record one JSON-serialisable value in the memory's metadata (bind an encoder first).

        Raises:
            MemoryStoreError: No encoder was bound yet.
        """
        self._update_meta(key, value)

    def _update_meta(self, key: str, value: Any) -> None:
        self._check_writable(f"set the {key.replace('_', ' ')}")
        with self._lock:
            self._check_open()
            meta = self._backend.read_meta(refresh=True)
            if not meta:
                raise MemoryStoreError(f"bind an encoder before setting the {key}")
            self._backend.write_meta({**meta, key: value})

    @property
    def info(self) -> MemoryInfo:
        """What the memory records: encoder fingerprint, dim, backend, description."""
        self._check_open()
        return memory_info(self._backend, self.collection)
