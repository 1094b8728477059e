"""Asking the running rar-agent MCP server that holds a memory for what an operator does on
a stopped one (``memory snapshot --server``, ``memory undo --server``, ``memory history
--server``): one call of a tool (an admin tool of :mod:`rar_agent.mcp.admin`, or
``teaching_history``) with a bearer token.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from mcp import types

__all__ = ["TokenOpt", "call_server_tool", "text_of"]

TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token for --server.", envvar="RAR_TOKEN"),
]


def call_server_tool(
    url: str,
    token: str | None,
    tool: str,
    arguments: dict[str, Any],
    *,
    asking: str,
    scope: str = "admin",
) -> "types.CallToolResult":
    """Call ``tool`` of the server at ``url`` (its answer, a tool error included).

    Args:
        url: The server's MCP endpoint (http://HOST:PORT/mcp).
        token: A token with ``scope``.
        tool: The tool's name.
        arguments: Its arguments.
        asking: What is asked, for the errors (e.g. "the snapshot").
        scope: The token scope the tool needs, for the errors.

    Raises:
        ConfigError: No token, the server refused the request (HTTP 401/403/429, a
            refused connection) or does not serve ``tool``.
    """
    import anyio

    from rar_agent.errors import ConfigError

    if not token:
        raise ConfigError(f"--server needs a token with the {scope} scope: --token or RAR_TOKEN")
    try:
        result = anyio.run(_call, url, token, tool, arguments)
    except Exception as e:  # HTTP 401/403/429, refused connections: say which
        unreachable = _transport_error(e)
        if unreachable is not None:
            raise ConfigError(
                f"cannot reach the server at {url} for {asking} ({unreachable}): check the URL "
                "and that the server is running (rar-agent mcp --http)"
            ) from None
        raise ConfigError(_refused(url, asking, e)) from None
    if result.isError and text_of(result).startswith(f"unknown tool {tool!r}"):
        # A server started open (no tokens) serves no admin tools: no one has a scope there.
        raise ConfigError(
            f"the server at {url} does not serve {asking} ({tool}): a server started without "
            f"tokens has no admin tools; make one with `rar-agent auth add NAME --scope {scope}` "
            "on the serving machine, restart the server, and pass the token with --token"
        )
    return result


def text_of(result: "types.CallToolResult") -> str:
    """The text of a tool's answer."""
    return "".join(getattr(block, "text", "") for block in result.content)


async def _call(
    url: str, token: str, tool: str, arguments: dict[str, Any]
) -> "types.CallToolResult":
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    client = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30.0, read=600.0)
    )
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool(tool, arguments)


def _transport_error(error: BaseException) -> str | None:
    """Why no connection to the server was made, if that is what failed."""
    import httpx

    found = _found(error, lambda e: isinstance(e, httpx.ConnectError | httpx.ConnectTimeout))
    return None if found is None else str(found) or type(found).__name__


def _refused(url: str, asking: str, error: BaseException) -> str:
    """What was wrong when the server at ``url`` answered but refused the call (a scope
    refused is a tool error, never this)."""
    from mcp import McpError

    refused = f"the server at {url} refused {asking}"
    status = _found(error, lambda e: _status_code(e) is not None)
    if status is not None and _status_code(status) == 401:
        said = _described(status)  # the server's words: malformed, unknown or revoked
        if said is not None:
            return f"{refused} (HTTP 401: {said}); check --token (or RAR_TOKEN)"
        return (
            f"{refused} (HTTP 401): the server knows no such token, or it was revoked; check "
            "--token (or RAR_TOKEN): `rar-agent auth list` on the serving machine lists the "
            "tokens it accepts"
        )
    if status is not None:
        return f"{refused} (HTTP {_status_code(status)}): check the URL and the token"
    session = _found(error, lambda e: isinstance(e, McpError))
    why = session if session is not None else error
    return (
        f"cannot ask {url} for {asking} ({why}): no MCP endpoint answered there; check the "
        "URL: a rar-agent server's ends in /mcp, as `rar-agent mcp --http` prints it"
    )


def _described(error: BaseException) -> str | None:
    """The ``error_description`` of a 401's ``WWW-Authenticate: Bearer`` challenge, unless
    it is the MCP SDK's own "Authentication required" (a server that says no more)."""
    import re

    challenge = getattr(getattr(error, "response", None), "headers", {}).get("www-authenticate")
    found = re.search(r'error_description="([^"]*)"', challenge or "")
    said = found.group(1) if found else None
    return said if said and said != "Authentication required" else None


def _status_code(error: BaseException) -> int | None:
    import httpx

    return error.response.status_code if isinstance(error, httpx.HTTPStatusError) else None


def _found(error: BaseException, wanted: "Callable[[BaseException], bool]") -> BaseException | None:
    """The first error in ``error`` (the client's task groups wrap it) that is ``wanted``."""
    if wanted(error):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _found(inner, wanted)
        if found is not None:
            return found
    return None
