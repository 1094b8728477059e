"""Checks on what goes into a memory: point ids and vector arrays (before anything is written)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from rar_agent.errors import ConfigError, EncoderMismatchError

__all__ = ["as_vector_rows", "check_point_ids"]


def check_point_ids(ids: Sequence[str], n: int) -> list[str]:
    """Validate explicit point ids: ``n`` UUID strings, returned in canonical form.

    Raises:
        ConfigError: The count differs from ``n`` or an id is not a UUID string.
    """
    if len(ids) != n:
        raise ConfigError(f"got {n} entries but {len(ids)} ids")
    out = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(str(i))))
        except ValueError as e:
            raise ConfigError(f"point id {i!r} is not a UUID string") from e
    return out


def as_vector_rows(
    vectors: ArrayLike,
    dim: int | None,
    *,
    what: str,
    collection: str,
    fingerprint: Callable[[], str | None],
) -> np.ndarray:
    """``vectors`` as a float32 ``(n, dim)`` array of finite numbers.

    Args:
        vectors: Array-like rows.
        dim: The memory's vector length, or None while it has none.
        what: How to name the rows in messages (``"vectors"``, ``"query vectors"``).
        collection: The memory's name, for messages.
        fingerprint: Gives the memory's encoder fingerprint (only called for a message).

    Raises:
        ConfigError: Not a numeric 2-D array, or a row holds NaN or infinity.
        EncoderMismatchError: The rows' length differs from ``dim``.
    """
    try:
        rows = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} are not a numeric array: {e}") from e
    if rows.ndim != 2:
        raise ConfigError(f"{what} must be a 2-D array (n, dim), got shape {rows.shape}")
    if dim is not None and rows.shape[0] and rows.shape[1] != dim:
        raise EncoderMismatchError(
            f"{what} have {rows.shape[1]} dimensions but memory {collection!r} holds "
            f"{dim}-d vectors of encoder {fingerprint()!r}: use the encoder it was built with"
        )
    if not np.all(np.isfinite(rows)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(rows), axis=1))[0])
        raise ConfigError(f"{what} row {bad} contains NaN or infinity: nothing was written")
    return rows
