"""Limits of the HTTP server: body size, image pixels, requests in flight and per minute.

A request over a limit gets a clear answer and nothing else happens. A JSON-RPC request is
answered as itself, so that the client's MCP session goes on: a tool call by a tool error,
any other request by a JSON-RPC error (:data:`TOO_LARGE`, :data:`RATE_LIMITED`); what has
no answer of its own (a notification, a body that is not JSON-RPC) gets HTTP 413 or 429.
Over ``max_body_bytes`` the body is read to its end but not kept (only its first and last
bytes, where the request's id lies); a token (or, without authentication, a client's MCP
session) with ``max_concurrent`` requests in flight, or ``per_minute`` requests in the last
minute, is refused with ``Retry-After``; an image over ``max_pixels`` is a tool error before
it is decoded. Other clients are not slowed by one that hits its limits: the checks are
constant-time and hold no lock.
"""

from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rar_agent.images import DEFAULT_MAX_PIXELS
from rar_agent.mcp.auth import token_name
from rar_agent.results import counted

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Scope

__all__ = [
    "DEFAULT_LIMITS",
    "RATE_LIMITED",
    "RequestLimiter",
    "TOO_LARGE",
    "ServiceLimits",
    "client_key",
]


def _max_http_body() -> int:
    from rar_agent.netfetch import MAX_DOWNLOAD_BYTES

    # A data URI may carry as large an image as a URL download may: base64 adds a third.
    return math.ceil(MAX_DOWNLOAD_BYTES * 4 / 3) + 64 * 1024


@dataclass(frozen=True)
class ServiceLimits:
    """How much one client may ask of the server.

    Attributes:
        max_body_bytes: Largest request body (default: a base64 image as large as a URL
            download may be, about 27 MiB).
        max_pixels: Largest image, in declared pixels (default: the limit of every other way
            in, :data:`~rar_agent.images.DEFAULT_MAX_PIXELS`, 64 million, so that 48 and 50 MP
            phone photos are served; decode-to-need reads a JPEG at the size the encoder
            needs, a HEIC in full).
        max_concurrent: Requests in flight per token (per MCP session without auth).
        per_minute: Requests per token (per session) in any 60 seconds.
    """

    max_body_bytes: int = _max_http_body()
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_concurrent: int = 4
    per_minute: int = 600

    def __post_init__(self) -> None:
        from rar_agent.config import positive_int

        for name in ("max_body_bytes", "max_pixels", "max_concurrent", "per_minute"):
            positive_int(f"service limit {name}", getattr(self, name))


DEFAULT_LIMITS = ServiceLimits()

#: The JSON-RPC error codes of a request refused by a limit (in JSON-RPC's range for
#: implementation-defined server errors, after the HTTP statuses 429 and 413).
RATE_LIMITED = -32029
TOO_LARGE = -32013


class RequestLimiter:
    """ASGI wrapper: at most ``max_concurrent`` POSTs in flight and ``per_minute`` per minute,
    each with a body of at most ``max_body_bytes``.

    Counted per token (per client address and MCP session when the server has no
    authentication); the long-lived GET stream of a session is not counted.

    Args:
        app: The endpoint.
        limits: The limits.
    """

    def __init__(self, app: ASGIApp, limits: ServiceLimits) -> None:
        self.app = app
        self.limits = limits
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        refusal = self._admit(key := client_key(scope))
        if refusal is not None:
            why, wait = refusal
            body = await _Body.read(receive, self.limits.max_body_bytes)
            text = f"{why}; retry in {wait} s"
            await _refuse(send, body, text, status=429, code=RATE_LIMITED, retry_after=wait)
            return
        self._in_flight[key] += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._in_flight[key] -= 1
                if not self._in_flight[key]:
                    del self._in_flight[key]

        async def sending(message: Any) -> None:
            # The answer's last part frees the slot before it leaves, so a client that waits
            # for each answer before its next request is never counted twice.
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                release()
            await send(message)

        try:
            body = await _Body.read(receive, self.limits.max_body_bytes)
            if not body.over:
                await self.app(scope, body.replay(receive), sending)
            elif not body.gone:
                text = _too_large(body.size, self.limits.max_body_bytes)
                await _refuse(sending, body, text, status=413, code=TOO_LARGE)
        finally:
            release()

    def in_flight(self, key: str) -> int:
        """Requests of ``key`` (``"token NAME"``, see :func:`client_key`) now in flight."""
        return self._in_flight.get(key, 0)

    def _admit(self, key: str) -> tuple[str, int] | None:
        """``None`` to go ahead, else (why, seconds to wait)."""
        limits = self.limits
        if self._in_flight[key] >= limits.max_concurrent:
            return (
                f"{key} has {counted(limits.max_concurrent, 'request')} in flight, "
                "the most allowed: "
                "wait for an answer before sending more",
                1,
            )
        now = time.monotonic()
        if len(self._recent) > 4096:  # forget clients quiet for a minute (bounded memory)
            self._recent = {k: q for k, q in self._recent.items() if q and now - q[-1] < 60.0}
        recent = self._recent.setdefault(key, collections.deque())
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= limits.per_minute:
            wait = max(1, math.ceil(60.0 - (now - recent[0])))
            return (
                f"{key} sent {counted(limits.per_minute, 'request')} in the last minute, "
                "the most allowed",
                wait,
            )
        recent.append(now)
        return None


def client_key(scope: Scope) -> str:
    """Whom a request counts against: its token; without one, its address and MCP session.

    Without authentication every process on one machine shares an address, so each of their
    sessions has its own allowance (a session's opening request counts for the address).
    """
    name = token_name(scope)
    if name:
        return f"token {name}"
    address = (scope.get("client") or ("?",))[0]
    session = dict(scope.get("headers") or []).get(b"mcp-session-id", b"").decode("latin-1")
    return f"address {address}" + (f" session {session[:64]}" if session else "")


async def _refuse(
    send: Any,
    body: _Body,
    text: str,
    *,
    status: int,
    code: int,
    retry_after: int | None = None,
) -> None:
    """Answer a request that a limit refuses, saying ``text``.

    A JSON-RPC request gets its own answer, so that the client's MCP session goes on (the
    official Python SDK ends the whole session on an HTTP error status,
    modelcontextprotocol/python-sdk#2110): a tool call a tool error that the model reads, any
    other request a JSON-RPC error of ``code``. Anything else (a notification, a batch, a body
    that is not JSON-RPC or whose id cannot be found) gets HTTP ``status``.
    """
    request = body.request()
    if request is None:
        error = "rate_limited" if status == 429 else "request_too_large"
        await _answer(send, status, {"error": error, "error_description": text}, retry_after)
        return
    ident, method = request
    if method == "tools/call":
        reply: dict[str, Any] = {
            "result": {"content": [{"type": "text", "text": text}], "isError": True}
        }
    else:
        data = {} if retry_after is None else {"data": {"retry_after": retry_after}}
        reply = {"error": {"code": code, "message": text, **data}}
    await _answer(send, 200, {"jsonrpc": "2.0", "id": ident, **reply}, retry_after)


def _too_large(size: int, max_body: int) -> str:
    return (
        f"this request is {_bytes(size)}, over this server's limit of {_bytes(max_body)}: "
        "send a smaller image (fewer pixels, or as JPEG)"
    )


def _bytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


#: Bytes kept from each end of a body over the size limit, where a JSON-RPC request's id and
#: method lie (before its params, or after them as the official Python client sends them).
_EDGE = 1024


class _Body:
    """A request's body as read: whole while within the size limit; past it, only its first
    and last :data:`_EDGE` bytes are kept (and its size counted), the rest read and dropped."""

    def __init__(self) -> None:
        self.messages: collections.deque[Any] = collections.deque()
        self.size = 0
        self.over = False
        self.gone = False
        self.head = b""
        self.tail = b""

    @classmethod
    async def read(cls, receive: Any, max_body: int) -> _Body:
        """Read the body of the request that ``receive`` gives, holding at most ``max_body``
        bytes of it.

        A body over the limit is still read to its end: the client is sending it anyway, and
        an answer before the end of its upload may reach it as a broken connection instead.
        """
        body = cls()
        while True:
            message = await receive()
            if message.get("type") != "http.request":  # the client went away
                body.messages.append(message)
                body.gone = True
                return body
            chunk = message.get("body", b"")
            body.size += len(chunk)
            body.head += chunk[: _EDGE - len(body.head)]
            body.tail = (body.tail + chunk[-_EDGE:])[-_EDGE:]
            if body.size > max_body:
                body.over = True
                body.messages.clear()
            else:
                body.messages.append(message)
            if not message.get("more_body"):
                return body

    def replay(self, receive: Any) -> Any:
        """A ``receive`` that gives the messages read, then what ``receive`` gives."""

        async def again() -> Any:
            return self.messages.popleft() if self.messages else await receive()

        return again

    def request(self) -> tuple[int | str, str] | None:
        """The id and method of the JSON-RPC request the body holds; ``None`` for anything
        else (a notification, a batch, not JSON-RPC, an id that is not at either end)."""
        if self.over:
            members = _members_at_ends(self.head, self.tail)
        else:
            members = _parsed(b"".join(m.get("body", b"") for m in self.messages))
        if not isinstance(members, dict) or members.get("jsonrpc") != "2.0":
            return None
        ident, method = members.get("id"), members.get("method")
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            return None
        return (ident, method) if isinstance(method, str) else None


def _members_at_ends(head: bytes, tail: bytes) -> dict[str, Any]:
    """The members of a JSON object, known only by its first bytes ``head`` and last bytes
    ``tail``, that lie whole before or after its first or last long member.

    ``head`` up to a comma, closed, parses as the members before the comma; an opening put
    before ``tail`` from a comma on parses as the members after it (only from a comma
    between the object's own members: one inside a member leaves brackets unbalanced).
    """
    first, last = head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")
    found: dict[str, Any] = {}
    for cut in reversed([i for i, c in enumerate(first) if c == ","]):
        leading = _object(first[:cut] + "}")
        if leading is not None:
            found.update(leading)
            break
    for cut in [i for i, c in enumerate(last) if c == ","]:
        trailing = _object("{" + last[cut + 1 :])
        if trailing is not None:
            found.update(trailing)
            break
    return found


def _object(text: str) -> dict[str, Any] | None:
    value = _parsed(text)
    return value if isinstance(value, dict) else None


def _parsed(text: str | bytes) -> Any:
    """``text`` parsed as JSON, ``None`` where it is not (or nests too deep to parse)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


async def _answer(send: Any, status: int, body: dict[str, Any], retry_after: int | None) -> None:
    content = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
