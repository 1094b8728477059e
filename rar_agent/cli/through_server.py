"""Asking the running rar-agent MCP server that holds a memory for what an operator does on
a stopped one (``memory snapshot --server``, ``memory undo --server``, ``memory history
--server``): one call of a tool (an admin tool of :mod:`rar_agent.mcp.admin`, or
``teaching_history``) with a bearer token.

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
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
        raise ConfigError(
            f"the server at {url} refused {asking} ({_status_of(e) or e}): check the URL and "
            f"that the token has the {scope} scope"
        ) from None
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

    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return str(error) or type(error).__name__
    for inner in getattr(error, "exceptions", ()):  # the client's task group wraps it
        found = _transport_error(inner)
        if found:
            return found
    return None


def _status_of(error: BaseException) -> str | None:
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    for inner in getattr(error, "exceptions", ()):
        found = _status_of(inner)
        if found:
            return found
    return None
