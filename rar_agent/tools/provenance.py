"""Who teaches: the provenance recorded on every example a tool stores.

Every taught example's payload carries ``taught: {at, via, by}`` (ISO time in UTC; where it
came from: ``"cli" | "chat" | "tool" | "mcp" | "api"``; who: a token's or a login's name, or
``None``). The serving layer (the MCP server, the chat page) knows who is asking and says so
with :func:`teaching_as` around a tool call; the learning tool reads it with
:func:`taught_record`. A context variable carries it, so concurrent requests never mix
their names up, and ``asyncio.to_thread`` hands it to the worker thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["Teacher", "Via", "current_teacher", "taught_record", "teaching_as"]

Via = Literal["cli", "chat", "tool", "mcp", "api"]


@dataclass(frozen=True)
class Teacher:
    """Where a teaching request comes from and who sent it.

    Attributes:
        via: The door it came through.
        by: The token's or the login's name; ``None`` when nobody signed in.
    """

    via: Via = "tool"
    by: str | None = None


_TEACHER: contextvars.ContextVar[Teacher | None] = contextvars.ContextVar(
    "rar_agent_teacher", default=None
)


def current_teacher() -> Teacher:
    """Who is teaching in this context (``Teacher("tool", None)`` unless a server said)."""
    return _TEACHER.get() or Teacher()


@contextlib.contextmanager
def teaching_as(via: Via, by: str | None) -> Iterator[Teacher]:
    """Within the block, what tools teach is recorded as coming from ``via`` and ``by``."""
    teacher = Teacher(via, by)
    token = _TEACHER.set(teacher)
    try:
        yield teacher
    finally:
        _TEACHER.reset(token)


def taught_record() -> dict[str, str | None]:
    """The ``taught`` payload of an example stored now: ``{at, via, by}``."""
    teacher = current_teacher()
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"at": at, "via": teacher.via, "by": teacher.by}
