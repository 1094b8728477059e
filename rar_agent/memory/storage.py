"""Storage settings of a memory: quantization, vector/payload placement, HNSW parameters.

Chosen when a memory is created, stored in its metadata under ``"storage"`` and applied the
same way by both backends (each translates them to its engine's configuration). This module
imports no engine: it holds the settings, their defaults by size, and the footprint model
that ``memory stats`` and ``docs/scaling.md`` use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from rar_agent.errors import ConfigError

__all__ = [
    "DISK_FROM_ENTRIES",
    "QUANTIZE_FROM_ENTRIES",
    "STORAGE_KEY",
    "Footprint",
    "Quantization",
    "StorageSettings",
    "estimate_footprint",
    "footprint_from_parts",
    "storage_problem",
]

Quantization = Literal["none", "int8"]
STORAGE_KEY = "storage"
# Defaults by size, measured on 2 cores (docs/scaling.md). From 10k entries (where builds
# start indexing) a memory searches an int8 copy and rescores with the float32 originals:
# at 10k x 1280-d a top-50 search took 1.2 ms instead of 2.7 ms at the same recall@10
# (0.49/0.50 on random vectors, 1.000/1.000 on clustered ones). From 100k the originals and
# payloads also move to disk: at 100k x 512-d the float32 memory mapped ~0.7 GB, the int8
# one ~0.2 GB resident, recall@10 0.9995 (oversampling 2) vs 1.0.
QUANTIZE_FROM_ENTRIES = 10_000
DISK_FROM_ENTRIES = 100_000
_QUANTIZATIONS = ("none", "int8")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """How a memory stores and searches its vectors.

    Attributes:
        quantization: ``"int8"`` keeps a scalar-quantized copy of every vector in RAM
            (4x smaller) and searches it; ``"none"`` searches the float32 vectors.
        vectors_on_disk: Keep the float32 originals on disk (memory-mapped, read on demand)
            instead of cached in RAM. With int8 they are read only to rescore candidates.
        payload_on_disk: Keep payloads (label, source, ...) on disk, read for the hits only.
        hnsw_m: HNSW edges per node (more: better recall, bigger graph, slower build).
        hnsw_ef_construct: HNSW build beam width (more: better graph, slower build).
        search_ef: HNSW search beam width (more: better recall, slower queries).
        oversampling: With int8: candidates fetched per result before rescoring them with
            the float32 originals (2.0 fetches 20 for a top-10).
    """

    quantization: Quantization = "none"
    vectors_on_disk: bool = False
    payload_on_disk: bool = False
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    search_ef: int = 128
    oversampling: float = 2.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            problem = storage_problem(field.name, getattr(self, field.name))
            if problem is not None:
                raise ConfigError(f"{field.name} {problem}")

    @staticmethod
    def check(value: object) -> None:
        """Refuse anything but ``None`` or a :class:`StorageSettings` (``ConfigError``)."""
        if value is not None and not isinstance(value, StorageSettings):
            raise ConfigError(f"storage must be StorageSettings, not {type(value).__name__}")

    @classmethod
    def for_entries(cls, entries: int | None) -> StorageSettings:
        """The default for a memory expected to hold ``entries`` (``None``: unknown, small).

        From :data:`QUANTIZE_FROM_ENTRIES` on: int8 copy searched, float32 rescoring. From
        :data:`DISK_FROM_ENTRIES` on, also the float32 originals and payloads on disk.
        Below: float32 vectors and payloads cached in RAM.
        """
        n = entries or 0
        big = n >= DISK_FROM_ENTRIES
        return cls(
            quantization="int8" if n >= QUANTIZE_FROM_ENTRIES else "none",
            vectors_on_disk=big,
            payload_on_disk=big,
        )

    @classmethod
    def from_dict(cls, data: object) -> StorageSettings:
        """Settings from a memory's metadata (missing keys take the defaults).

        A memory created before storage settings existed has none: it gets the defaults,
        which are what such a memory was created with.

        Raises:
            ConfigError: An unknown key or an invalid value.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"storage settings must be a mapping, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown storage settings {unknown}: known are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in the memory's metadata."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> StorageSettings:
        """A copy with some settings changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        """One line for people: ``int8 (x2.0 rescored), vectors on disk, ...``."""
        quant = (
            f"int8 (rescored, oversampling x{self.oversampling:g})"
            if self.quantization == "int8"
            else "float32"
        )
        return (
            f"{quant}; vectors {'on disk' if self.vectors_on_disk else 'in RAM'}; payload "
            f"{'on disk' if self.payload_on_disk else 'in RAM'}; HNSW m={self.hnsw_m} "
            f"ef_construct={self.hnsw_ef_construct}, search ef={self.search_ef}"
        )


#: The whole-number settings and their ranges.
_INT_RANGES = {"hnsw_m": (4, 128), "hnsw_ef_construct": (4, 4096), "search_ef": (1, 4096)}


def storage_problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the storage setting ``name``, worded to follow the
    setting's name or its option's (``"must be an integer from 4 to 128, not 2"``), or
    ``None`` when it is fine."""
    if name == "quantization":
        if value not in _QUANTIZATIONS:
            return f"must be one of {', '.join(_QUANTIZATIONS)}, not {value!r}"
    elif name in ("vectors_on_disk", "payload_on_disk"):
        if not isinstance(value, bool):
            return f"must be true or false, not {value!r}"
    elif name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer from {low} to {high}, not {value!r}"
    elif name == "oversampling" and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 1.0 <= value <= 16.0
    ):
        return f"must be a number from 1 to 16, not {value!r}"
    return None


@dataclass(frozen=True, slots=True)
class Footprint:
    """Bytes a memory takes, by where they live.

    Attributes:
        ram_resident: Held on the heap whatever the OS does (quantized vectors, id tracker,
            payload indexes): the process's anonymous memory.
        ram_cached: Memory-mapped files kept warm in the page cache for speed (HNSW graph,
            and the float32 vectors / payloads when they are "in RAM"); the OS may evict them.
        disk: Everything on disk (also the files that are mapped).
        computed: Whether the figures come from the model below, not from files.
    """

    ram_resident: int
    ram_cached: int
    disk: int
    computed: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with MiB figures."""
        mib = 2**20
        return {
            "ram_resident_mib": round(self.ram_resident / mib, 1),
            "ram_cached_mib": round(self.ram_cached / mib, 1),
            "disk_mib": round(self.disk / mib, 1),
            "computed": self.computed,
        }


# Per-entry bytes not proportional to the dimension, measured on a 1M-entry memory
# (docs/scaling.md): id tracker + payload indexes ~85 (plus the process's own), HNSW links
# ~2 per edge (compressed; 2*m edges per entry on the base layer), stored payload ~140.
_IDS_BYTES = 100
_LINK_BYTES = 2
_PAYLOAD_BYTES = 140


def estimate_footprint(settings: StorageSettings, entries: int, dim: int) -> Footprint:
    """Model of a memory's footprint once indexed, fitted on measured 100k and 1M memories.

    Every entry holds a slot in both named vectors (``image`` and ``text``): Qdrant keeps
    dense storage per named vector for every point of a segment, so the vectors' bytes count
    twice even when one kind has no entries (the empty one is never read, but it is stored,
    quantized, and pre-warmed when "in RAM").
    """
    if entries < 0 or dim < 1:
        raise ConfigError(f"need entries >= 0 and dim >= 1, got {entries} and {dim}")
    floats = 2 * entries * dim * 4
    quantized = 2 * entries * dim if settings.quantization == "int8" else 0
    graph = entries * settings.hnsw_m * 2 * _LINK_BYTES
    payload = entries * _PAYLOAD_BYTES
    ids = entries * _IDS_BYTES
    cached = graph
    cached += 0 if settings.vectors_on_disk else floats
    cached += 0 if settings.payload_on_disk else payload
    return Footprint(quantized + ids, cached, floats + quantized + graph + payload + ids)


def footprint_from_parts(settings: StorageSettings, parts: dict[str, int]) -> Footprint:
    """A measured footprint from bytes on disk per component (see ``edge.disk_usage``).

    Quantized vectors and id/payload indexes are resident; the HNSW graph, and the float32
    vectors / payloads when they are "in RAM", are cached files; the rest stays on disk.
    """
    cached_parts = ["hnsw"]
    cached_parts += [] if settings.vectors_on_disk else ["vectors"]
    cached_parts += [] if settings.payload_on_disk else ["payload"]
    resident = parts.get("quantized", 0) + parts.get("ids_and_indexes", 0)
    cached = sum(parts.get(k, 0) for k in cached_parts)
    return Footprint(resident, cached, sum(parts.values()), computed=False)
