"""Storage settings in each engine's terms: qdrant-edge shard config, qdrant-client collection
config, and the search parameters of both.

One place decides how a :class:`~rar_agent.memory.storage.StorageSettings` maps onto Qdrant,
so the embedded memory and a server store and search the same way. Engines are imported
inside the functions.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from rar_agent.memory.entries import KINDS
from rar_agent.memory.storage import StorageSettings

if TYPE_CHECKING:
    import qdrant_edge
    from qdrant_client import models

__all__ = [
    "collection_config",
    "edge_config",
    "edge_search_params",
    "server_search_params",
]

# Qdrant's default: segments below this many KB of vectors are searched exactly.
_FULL_SCAN_KB = 10_000
# Scalar quantization clips the 1% most extreme values of each dimension's range.
_QUANTILE = 0.99


def edge_config(dim: int, storage: StorageSettings) -> qdrant_edge.EdgeConfig:
    """The qdrant-edge shard configuration of a memory with ``dim``-long vectors."""
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeVectorParams,
        HnswIndexConfig,
        Memory,
        ScalarQuantizationConfig,
        ScalarType,
    )

    quantization = (
        ScalarQuantizationConfig(ScalarType.Int8, quantile=_QUANTILE, memory=Memory.Pinned)
        if storage.quantization == "int8"
        else None
    )
    vectors = Memory.Cold if storage.vectors_on_disk else Memory.Cached
    return EdgeConfig(
        vectors={
            k: EdgeVectorParams(size=dim, distance=Distance.Cosine, memory=vectors) for k in KINDS
        },
        hnsw_config=HnswIndexConfig(
            m=storage.hnsw_m,
            ef_construct=storage.hnsw_ef_construct,
            full_scan_threshold=_FULL_SCAN_KB,
        ),
        quantization_config=quantization,
        payload_memory=Memory.Cold if storage.payload_on_disk else Memory.Cached,
    )


@functools.lru_cache(maxsize=8)
def edge_search_params(storage: StorageSettings) -> qdrant_edge.SearchParams:
    """qdrant-edge search parameters: HNSW ``ef``, and int8 rescoring with oversampling."""
    from qdrant_edge import QuantizationSearchParams, SearchParams

    if storage.quantization == "none":
        return SearchParams(hnsw_ef=storage.search_ef)
    return SearchParams(
        hnsw_ef=storage.search_ef,
        quantization=QuantizationSearchParams(rescore=True, oversampling=storage.oversampling),
    )


def collection_config(
    dim: int,
    storage: StorageSettings,
    *,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    write_consistency_factor: int | None = None,
) -> dict[str, Any]:
    """``create_collection`` arguments for a memory: vectors, storage and cluster layout.

    The same settings as the embedded backend's shard: int8 scalar quantization kept in RAM,
    float32 originals on disk, payload on disk, HNSW ``m`` / ``ef_construct``.
    """
    from qdrant_client import models

    quantization = (
        models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=_QUANTILE, always_ram=True
            )
        )
        if storage.quantization == "int8"
        else None
    )
    return {
        "vectors_config": {
            k: models.VectorParams(
                size=dim, distance=models.Distance.COSINE, on_disk=storage.vectors_on_disk
            )
            for k in KINDS
        },
        "hnsw_config": models.HnswConfigDiff(
            m=storage.hnsw_m, ef_construct=storage.hnsw_ef_construct
        ),
        "quantization_config": quantization,
        "on_disk_payload": storage.payload_on_disk,
        "shard_number": shard_number,
        "replication_factor": replication_factor,
        "write_consistency_factor": write_consistency_factor,
    }


@functools.lru_cache(maxsize=8)
def server_search_params(storage: StorageSettings) -> models.SearchParams:
    """qdrant-client search parameters, the same as :func:`edge_search_params`."""
    from qdrant_client import models

    if storage.quantization == "none":
        return models.SearchParams(hnsw_ef=storage.search_ef)
    return models.SearchParams(
        hnsw_ef=storage.search_ef,
        quantization=models.QuantizationSearchParams(
            rescore=True, oversampling=storage.oversampling
        ),
    )
