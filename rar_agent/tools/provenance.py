"""Who teaches: the request a served tool call comes from.

Every taught example's payload carries ``taught: {at, via, by, ...}`` (written by
:class:`~rar_agent.pipeline.teacher.Teacher`). The tools are made once per server, but ``by``
differs per request: the serving layer (the MCP server, the chat page) knows who is asking
and says so with :func:`teaching_as` around a tool call; the teaching tools read it with
:func:`serving_teacher` and record it instead of their own ``via``/``by``. A context variable
carries it, so concurrent requests never mix their names up, and ``asyncio.to_thread`` hands
it to the worker thread.

The same request says whose unknown images a served tool lists: a caller with its own
:class:`~rar_agent.openset.groups.SentImages` (a token of a shared MCP server, a person
signed in to the chat page: :class:`~rar_agent.openset.groups.Senders`) is told about the
groups of the unknown images it sent itself, not of other callers' images.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from rar_agent.openset.groups import SentImages
from rar_agent.results import TeachVia

__all__ = ["Caller", "serving_name", "serving_teacher", "teaching_as"]


@dataclass(frozen=True)
class Caller:
    """Where a teaching request comes from and who sent it.

    Attributes:
        via: The door it came through.
        by: The token's or the login's name; ``None`` when nobody signed in.
        sent: The unknown images this caller (a token, a signed-in person) sent, the only
            ones its groups hold; ``None``: it shares the recognizer's log with every caller
            (a conversation still keeps other conversations' uploads out).
        may_teach: Whether this caller may call the teaching tools (a token with the learn
            scope): an unknown answer offers teaching only to who may.
        reads_all: Whether this caller reads everyone's teaching (a token with the admin
            scope; any caller with no name): the whole history, and the pictures and photo
            names of the examples others taught; else its own events and examples only.
    """

    via: TeachVia = "tool"
    by: str | None = None
    sent: SentImages | None = None
    may_teach: bool = True
    reads_all: bool = True


_TEACHER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "rar_agent_teacher", default=None
)


def serving_teacher() -> Caller | None:
    """Who the request being served comes from, if a server said (else ``None``)."""
    return _TEACHER.get()


def serving_name() -> str | None:
    """The name of who the request being served comes from (a token's, a login's); ``None``
    when no server said or nobody signed in (stdio, an open loopback server). Images sent
    inline are kept for it (:attr:`~rar_agent.tools.base.ImageResolver.kept`)."""
    caller = _TEACHER.get()
    return caller.by if caller is not None else None


@contextlib.contextmanager
def teaching_as(
    via: TeachVia,
    by: str | None,
    sent: SentImages | None = None,
    *,
    may_teach: bool = True,
    reads_all: bool = True,
) -> Iterator[Caller]:
    """Within the block, what tools teach is recorded as coming from ``via`` and ``by``,
    the unknown images they list are those in ``sent`` (all when ``None``), ``may_teach``
    says whether the caller may teach and ``reads_all`` whether it reads everyone's
    teaching history (see :class:`Caller`)."""
    teacher = Caller(via, by, sent, may_teach, reads_all)
    token = _TEACHER.set(teacher)
    try:
        yield teacher
    finally:
        _TEACHER.reset(token)
