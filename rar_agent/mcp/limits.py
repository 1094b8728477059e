"""Limits of the HTTP server: body size, image pixels, requests in flight and per minute.

A request over a limit gets a clear answer and nothing else happens: a body over
``max_body_bytes`` gets 413 (the SDK's transport refuses it before parsing); a token (or,
without authentication, a client's MCP session) with ``max_concurrent`` requests in flight,
or ``per_minute`` requests in the last minute, is refused with ``Retry-After``: a JSON-RPC
request by a tool error or a JSON-RPC error, so that the client's session goes on, anything
else by HTTP 429; an image over ``max_pixels`` is a tool error before it is decoded. Other
clients are not slowed by one that hits its limits: the checks are constant-time and hold
no lock.
"""

from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from rar_agent.mcp.auth import token_name

__all__ = [
    "DEFAULT_LIMITS",
    "RATE_LIMITED",
    "RequestLimiter",
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
        max_pixels: Largest image, in declared pixels (default 25 million, e.g. 5000x5000).
        max_concurrent: Requests in flight per token (per MCP session without auth).
        per_minute: Requests per token (per session) in any 60 seconds.
    """

    max_body_bytes: int = _max_http_body()
    max_pixels: int = 25_000_000
    max_concurrent: int = 4
    per_minute: int = 600

    def __post_init__(self) -> None:
        from rar_agent.config import positive_int

        for name in ("max_body_bytes", "max_pixels", "max_concurrent", "per_minute"):
            positive_int(f"service limit {name}", getattr(self, name))


DEFAULT_LIMITS = ServiceLimits()

#: The JSON-RPC error code of a request refused by a limit (in JSON-RPC's range for
#: implementation-defined server errors).
RATE_LIMITED = -32029


class RequestLimiter:
    """ASGI wrapper: at most ``max_concurrent`` POSTs in flight and ``per_minute`` per minute.

    Counted per token (per client address and MCP session when the server has no
    authentication); the long-lived GET stream of a session is not counted.

    Args:
        app: The endpoint.
        limits: The limits.
    """

    def __init__(self, app: Any, limits: ServiceLimits) -> None:
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
            await _refuse(receive, send, *refusal, max_body=self.limits.max_body_bytes)
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
            await self.app(scope, receive, sending)
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
                f"{key} has {limits.max_concurrent} requests in flight, the most allowed: "
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
                f"{key} sent {limits.per_minute} requests in the last minute, the most allowed",
                wait,
            )
        recent.append(now)
        return None


def client_key(scope: Any) -> str:
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


async def _refuse(receive: Any, send: Any, why: str, retry_after: int, *, max_body: int) -> None:
    """Answer a request that a limit refuses, with ``Retry-After: retry_after``.

    A JSON-RPC request gets its own answer, so that the client's MCP session goes on (the
    official Python SDK ends the whole session on an HTTP error status,
    modelcontextprotocol/python-sdk#2110): a tool call a tool error that the model reads, any
    other request a JSON-RPC error (code :data:`RATE_LIMITED`). Anything else (a
    notification, a batch, a body that is not JSON-RPC or is over ``max_body`` bytes) gets
    HTTP 429.
    """
    text = f"{why}; retry in {retry_after} s"
    request = await _json_rpc_request(receive, max_body)
    if request is None:
        body: dict[str, Any] = {"error": "rate_limited", "error_description": text}
        await _answer(send, 429, body, retry_after)
        return
    if request["method"] == "tools/call":
        reply: dict[str, Any] = {
            "result": {"content": [{"type": "text", "text": text}], "isError": True}
        }
    else:
        data = {"retry_after": retry_after}
        reply = {"error": {"code": RATE_LIMITED, "message": text, "data": data}}
    await _answer(send, 200, {"jsonrpc": "2.0", "id": request["id"], **reply}, retry_after)


async def _json_rpc_request(receive: Any, max_body: int) -> dict[str, Any] | None:
    """The request's body if it is one JSON-RPC request (with an id), else ``None``."""
    body = bytearray()
    while True:
        message = await receive()
        if message.get("type") != "http.request":  # the client went away
            return None
        body += message.get("body", b"")
        if len(body) > max_body:
            return None
        if not message.get("more_body"):
            break
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        return None
    ident = data.get("id")
    has_id = isinstance(ident, (int, str)) and not isinstance(ident, bool)
    return data if has_id and isinstance(data.get("method"), str) else None


async def _answer(send: Any, status: int, body: dict[str, Any], retry_after: int) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
