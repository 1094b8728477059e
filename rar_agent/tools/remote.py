"""Tools from other MCP servers, for an agent that composes them with recognition.

:func:`mcp_server_tools` lists the tools of one or more MCP servers through
``langchain-mcp-adapters`` (``MultiServerMCPClient``), once, and returns them as LangChain
tools. Each call opens a short session to its server (stdio: the command is started for the
call; HTTP: one request exchange), so the tools work from any event loop and thread. The
adapters' tools are async only; here each also gets a sync path that runs the call on a
private event loop in a worker thread, so ``agent.invoke`` works as well as ``ainvoke``.

A server that fails the call itself (its process ends, its connection drops, it gives no
answer within ``call_timeout_s``) is a tool error the model reads, as an error the tool
reports is: never an exception that ends the agent's run or a wait without end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from langchain_core.tools import BaseTool, StructuredTool, ToolException

from rar_agent.errors import ConfigError

__all__ = ["DEFAULT_CALL_TIMEOUT_S", "MCPServers", "mcp_server_tools", "run_sync"]

DEFAULT_CALL_TIMEOUT_S = 300.0
"""Seconds one call of a composed MCP tool may take (the SDK's own limit on reading an HTTP
answer; over stdio it has none)."""

MCPServers = Mapping[str, Mapping[str, Any]]
"""MCP servers by name, each a ``langchain-mcp-adapters`` connection dict (``transport``
``stdio`` with ``command``/``args``, or ``streamable_http``/``sse`` with ``url``)."""

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
    """Run the coroutine ``factory()`` makes on a private event loop in a worker thread.

    Safe whether or not the calling thread already runs an event loop.
    """

    def work() -> T:
        async def main() -> T:
            return await factory()

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rar-mcp") as pool:
        return pool.submit(work).result(timeout=timeout_s)


def _guarded(tool: BaseTool, timeout_s: float) -> BaseTool:
    """The adapter's async-only tool, with a sync path over the same coroutine, a time limit,
    and the server's own failures as tool errors (see the module's docstring)."""
    if not isinstance(tool, StructuredTool) or tool.coroutine is None:
        return tool
    coroutine, name, handler = tool.coroutine, tool.name, tool.handle_tool_error

    async def call(**kwargs: Any) -> Any:
        deadline = time.monotonic() + timeout_s
        try:
            return await asyncio.wait_for(coroutine(**kwargs), timeout_s)
        except ToolException:
            raise
        except Exception as e:  # the SDK raises many kinds (McpError, OSError, ExceptionGroup)
            # A call cancelled at the deadline may end in the transport's own error instead
            # of TimeoutError (its clean-up breaks a stream): the clock says which it was.
            if isinstance(e, TimeoutError) or time.monotonic() >= deadline:
                raise ToolException(
                    f"{name} failed: its MCP server gave no answer within {timeout_s:g} s; go "
                    "on without it or try again later"
                ) from e
            raise ToolException(
                f"{name} failed: its MCP server did not complete the call ({_cause(e)})"
            ) from e

    def call_sync(**kwargs: Any) -> Any:
        return run_sync(lambda: call(**kwargs))

    def handle(error: ToolException) -> Any:
        if callable(handler):  # the adapter's: formats the server's own error results
            try:
                return handler(error)
            except ToolException:  # not one of those: ours
                pass
        return str(error)

    return tool.model_copy(
        update={"coroutine": call, "func": call_sync, "handle_tool_error": handle}
    )


def _cause(error: BaseException) -> str:
    """``Type: message`` of what went wrong, out of any exception groups around it."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def mcp_server_tools(
    servers: MCPServers,
    *,
    prefix: bool = False,
    timeout_s: float = 60.0,
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
) -> list[BaseTool]:
    """The tools of the MCP servers ``servers``, as LangChain tools (sync and async).

    A call whose server fails it (ends, drops the connection, or gives no answer within
    ``call_timeout_s``) returns an error tool message, as an error the server reports does.

    Args:
        servers: Connections by server name (see :data:`MCPServers`).
        prefix: Name each tool ``<server>_<tool>`` (when two servers share tool names).
        timeout_s: Time limit for listing the tools.
        call_timeout_s: Time limit for one call of a tool.

    Returns:
        Every tool of every server.

    Raises:
        ConfigError: The adapters package is missing, a connection is malformed, a time
            limit is not a positive number, or a server cannot be reached or listed.
    """
    if not (isinstance(call_timeout_s, int | float) and 0 < call_timeout_s < math.inf):
        raise ConfigError(
            f"call_timeout_s must be a positive number of seconds, not {call_timeout_s!r}"
        )
    try:
        from langchain_mcp_adapters.client import MultiServerMCPClient
    except ImportError as e:  # pragma: no cover - an install without the agent extra
        raise ConfigError(
            "composing MCP servers needs langchain-mcp-adapters: pip install 'rar-agent[agent]'"
        ) from e
    connections = {name: dict(conn) for name, conn in servers.items()}
    for name, conn in connections.items():
        if "transport" not in conn:
            raise ConfigError(
                f"MCP server {name!r} needs a transport: 'stdio' (command, args) or "
                "'streamable_http' (url)"
            )
    client = MultiServerMCPClient(connections, tool_name_prefix=prefix)  # type: ignore[arg-type]
    try:
        tools = run_sync(client.get_tools, timeout_s=timeout_s)
    except concurrent.futures.TimeoutError as e:
        raise ConfigError(
            f"listing the tools of MCP servers {', '.join(servers)} took over {timeout_s:g} s"
        ) from e
    except Exception as e:  # the SDK raises many kinds (OSError, McpError, ExceptionGroup)
        raise ConfigError(
            f"could not list the tools of MCP servers {', '.join(servers)}: {type(e).__name__}: {e}"
        ) from e
    return [_guarded(tool, call_timeout_s) for tool in tools]
