"""Tools from other MCP servers, for an agent that composes them with recognition.

:func:`mcp_server_tools` opens one session to each MCP server through
``langchain-mcp-adapters`` and keeps it for the tools' life: a stdio server is started once,
not for every call, and an HTTP server is initialized once. The sessions live on a private
event loop in a daemon thread of the tool set (an MCP session belongs to the loop and task
that opened it, while the tools are called from any loop and thread). The tool set is closed
by :meth:`MCPTools.close` or at the end of a ``with`` block, else at the interpreter's exit;
closing ends the stdio servers' processes and the thread. The adapters' tools are async only;
here each also gets a sync path over the same loop (no thread per call), so ``agent.invoke``
works as well as ``ainvoke``.

A server that fails the call itself (its process ends, its connection drops, it gives no
answer within ``call_timeout_s``) is a tool error the model reads, as an error the tool
reports is: never an exception that ends the agent's run or a wait without end. Its session
is then closed, and the next call opens a new one (starting a stdio server again).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import math
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from langchain_core.tools import BaseTool, StructuredTool, ToolException

from rar_agent.errors import ConfigError

__all__ = ["DEFAULT_CALL_TIMEOUT_S", "MCPServers", "MCPTools", "mcp_server_tools"]

DEFAULT_CALL_TIMEOUT_S = 300.0
"""Seconds one call of a composed MCP tool may take (the SDK's own limit on reading an HTTP
answer; over stdio it has none)."""

MCPServers = Mapping[str, Mapping[str, Any]]
"""MCP servers by name, each a ``langchain-mcp-adapters`` connection dict (``transport``
``stdio`` with ``command``/``args``, or ``streamable_http``/``sse`` with ``url``)."""

T = TypeVar("T")


def _guarded(tool: BaseTool, timeout_s: float, sessions: _Sessions) -> BaseTool:
    """The adapter's async-only tool, with a sync path over the same coroutine (run on the
    sessions' loop), a time limit, and the server's own failures as tool errors (see the
    module's docstring)."""
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
        return sessions.run(call(**kwargs))

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


class _Sessions:
    """One open session per MCP server, each held by a task of its own on a private loop.

    A task opens its server's session, lists the tools over it and holds it until told to
    close (leaving the adapters' session context in the task that entered it, as anyio
    requires); a call runs on this loop over the open session, opening it first if needed.

    Args:
        client: The adapters' client, with the servers' connections.
        prefix: Name each tool ``<server>_<tool>``.
    """

    def __init__(self, client: Any, *, prefix: bool) -> None:
        self._client, self._prefix = client, prefix
        self._loop = asyncio.new_event_loop()
        self._open: dict[str, tuple[dict[str, BaseTool], asyncio.Event]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: set[asyncio.Task[None]] = set()  # the loop keeps weak references only
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rar-mcp-sessions", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)  # unregistered by close(): nothing is kept after it

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coroutine`` on the sessions' loop and wait for it (from any thread)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running(coroutine))
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def arun(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the sessions' loop (from any event loop)."""
        loop = self._running(coroutine)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    def _running(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.AbstractEventLoop:
        """The sessions' loop to run ``coroutine`` on; closed, a tool error (and the
        coroutine closed unrun)."""
        if self._loop.is_closed():
            coroutine.close()
            raise ToolException(
                "this MCP tool set was closed: list its servers' tools again "
                "(mcp_server_tools) to call them"
            )
        return self._loop

    async def tools(self, server: str) -> dict[str, BaseTool]:
        """The tools of ``server`` over its open session, opened first if none is."""
        async with self._locks.setdefault(server, asyncio.Lock()):
            if server not in self._open:
                ready: asyncio.Future[dict[str, BaseTool]] = self._loop.create_future()
                closing = asyncio.Event()
                holder = self._loop.create_task(self._hold(server, ready, closing))
                self._holders.add(holder)
                holder.add_done_callback(self._holders.discard)
                try:
                    self._open[server] = (await ready, closing)
                except BaseException:  # a failed or abandoned start: no process is left behind
                    holder.cancel()
                    raise
            return self._open[server][0]

    async def call(self, server: str, name: str, arguments: dict[str, Any]) -> Any:
        """Call the tool ``name`` of ``server`` over its session."""
        tool = (await self.tools(server))[name]
        assert isinstance(tool, StructuredTool) and tool.coroutine is not None
        try:
            return await tool.coroutine(**arguments)
        except ToolException:
            raise
        except BaseException:
            # The session broke, or holds a call it never answered: the next call opens a
            # new one (a stdio server's process is ended and started again).
            self._drop(server)
            raise

    async def _hold(
        self, server: str, ready: asyncio.Future[dict[str, BaseTool]], closing: asyncio.Event
    ) -> None:
        from langchain_mcp_adapters.tools import load_mcp_tools

        try:
            async with self._client.session(server) as session:
                tools = await load_mcp_tools(
                    session, server_name=server, tool_name_prefix=self._prefix
                )
                ready.set_result({tool.name: tool for tool in tools})
                await closing.wait()
        except Exception as e:  # a session that breaks once open ends here; the next call reopens
            if not ready.done():
                ready.set_exception(e)
        finally:  # the session ended (closed, or broken): forget it, not a newer one
            if server in self._open and self._open[server][1] is closing:
                del self._open[server]

    def _drop(self, server: str) -> None:
        held = self._open.pop(server, None)
        if held is not None:
            held[1].set()

    def close(self) -> None:
        """Close every session (ending the stdio servers' processes), stop the loop and its
        thread; a second call does nothing."""
        if self._loop.is_closed() or not self._loop.is_running():
            return
        atexit.unregister(self.close)

        async def close_all() -> None:
            for server in list(self._open):
                self._drop(server)
            if self._holders:
                await asyncio.wait(list(self._holders), timeout=10)

        try:
            self.run(close_all(), timeout_s=15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
            if not self._thread.is_alive():
                self._loop.close()


class MCPTools(list[BaseTool]):
    """The tools of :func:`mcp_server_tools` (a list), and the sessions they call over.

    Close it (:meth:`close`, or a ``with`` block) when done: that ends the stdio servers'
    processes and the sessions' thread; its tools then answer with a tool error. Left open,
    it is closed at the interpreter's exit.
    """

    def __init__(self, tools: list[BaseTool], sessions: _Sessions) -> None:
        super().__init__(tools)
        self._sessions = sessions

    def close(self) -> None:
        """Close the servers' sessions (a second call does nothing)."""
        self._sessions.close()

    def __enter__(self) -> MCPTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _served(tool: BaseTool, server: str, sessions: _Sessions) -> BaseTool:
    """The listed tool, each call of which goes over its server's open session."""
    if not isinstance(tool, StructuredTool) or tool.coroutine is None:
        return tool
    name = tool.name

    async def call(**arguments: Any) -> Any:
        return await sessions.arun(sessions.call(server, name, arguments))

    return tool.model_copy(update={"coroutine": call})


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
) -> MCPTools:
    """The tools of the MCP servers ``servers``, as LangChain tools (sync and async).

    A call whose server fails it (ends, drops the connection, or gives no answer within
    ``call_timeout_s``) returns an error tool message, as an error the server reports does.

    Args:
        servers: Connections by server name (see :data:`MCPServers`).
        prefix: Name each tool ``<server>_<tool>`` (when two servers share tool names).
        timeout_s: Time limit for listing the tools.
        call_timeout_s: Time limit for one call of a tool.

    Returns:
        Every tool of every server, in a list to close when done (:class:`MCPTools`).

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
    sessions = _Sessions(MultiServerMCPClient(connections), prefix=prefix)  # type: ignore[arg-type]

    async def listed() -> list[tuple[str, BaseTool]]:
        found = await asyncio.gather(*(sessions.tools(name) for name in connections))
        pairs = zip(connections, found, strict=True)
        return [(name, tool) for name, tools in pairs for tool in tools.values()]

    try:
        tools = sessions.run(listed(), timeout_s=timeout_s)
    except concurrent.futures.TimeoutError as e:
        sessions.close()
        raise ConfigError(
            f"listing the tools of MCP servers {', '.join(servers)} took over {timeout_s:g} s"
        ) from e
    except Exception as e:  # the SDK raises many kinds (OSError, McpError, ExceptionGroup)
        sessions.close()
        raise ConfigError(
            f"could not list the tools of MCP servers {', '.join(servers)}: {type(e).__name__}: {e}"
        ) from e
    served = [
        _guarded(_served(tool, name, sessions), call_timeout_s, sessions) for name, tool in tools
    ]
    return MCPTools(served, sessions)
