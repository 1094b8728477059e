"""Tools from other MCP servers, for an agent that composes them with recognition.

:func:`mcp_server_tools` lists the tools of one or more MCP servers through
``langchain-mcp-adapters`` (``MultiServerMCPClient``), once, and returns them as LangChain
tools. Each call opens a short session to its server (stdio: the command is started for the
call; HTTP: one request exchange), so the tools work from any event loop and thread. The
adapters' tools are async only; here each also gets a sync path that runs the call on a
private event loop in a worker thread, so ``agent.invoke`` works as well as ``ainvoke``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from langchain_core.tools import BaseTool, StructuredTool

from rar_agent.errors import ConfigError

__all__ = ["MCPServers", "mcp_server_tools", "run_sync"]

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


def _with_sync_path(tool: BaseTool) -> BaseTool:
    """The adapter's async-only tool, plus a sync path over the same coroutine."""
    if not isinstance(tool, StructuredTool) or tool.func is not None or tool.coroutine is None:
        return tool
    coroutine = tool.coroutine

    def call(**kwargs: Any) -> Any:
        return run_sync(lambda: coroutine(**kwargs))

    return tool.model_copy(update={"func": call})


def mcp_server_tools(
    servers: MCPServers, *, prefix: bool = False, timeout_s: float = 60.0
) -> list[BaseTool]:
    """The tools of the MCP servers ``servers``, as LangChain tools (sync and async).

    Args:
        servers: Connections by server name (see :data:`MCPServers`).
        prefix: Name each tool ``<server>_<tool>`` (when two servers share tool names).
        timeout_s: Time limit for listing the tools.

    Returns:
        Every tool of every server.

    Raises:
        ConfigError: The adapters package is missing, a connection is malformed, or a
            server cannot be reached or listed.
    """
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
    return [_with_sync_path(tool) for tool in tools]
