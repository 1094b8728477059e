"""The embedded engine's shard behind a wrapper that counts what it is asked.

For tests of what a memory asks its engine (a search of a side found empty, a full count
of the categories): not timings, the requests themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["CountingShard", "counting_shard"]


class CountingShard:
    """The engine's shard, counting the searches and facets it is asked for."""

    def __init__(self, shard: object) -> None:
        self.shard, self.queries, self.facets = shard, 0, 0

    def query(self, request: object) -> object:
        self.queries += 1
        return self.shard.query(request)  # type: ignore[attr-defined]

    def facet(self, request: object) -> object:
        self.facets += 1
        return self.shard.facet(request)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.shard, name)


@contextlib.contextmanager
def counting_shard(memory: Any) -> Iterator[CountingShard]:
    """Put a :class:`CountingShard` in front of an embedded memory's shard while inside (the
    shard every handle on that directory in this process shares)."""
    shared = memory._backend._s
    shared.shard = counting = CountingShard(shared.shard)
    try:
        yield counting
    finally:
        shared.shard = counting.shard
