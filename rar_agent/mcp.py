"""The MCP server: the LangChain tools of :func:`rar_agent.tools.make_tools`, served over MCP.

One definition: every MCP tool is made from a LangChain tool. Its name, description and
argument schema become the MCP tool's; its declared artifact type (``artifact_type``)
becomes the output schema; a call invokes the LangChain tool with a tool call and turns the
tool message into an MCP result: the short text as content, the artifact (the full result)
as structured content, and a tool error as an MCP tool error (``isError``) carrying the same
message. Argument checks, path and URL rules and limits are the LangChain tools' own.

``langchain-mcp-adapters``' ``to_fastmcp`` is not used: it calls ``tool.ainvoke(args)``,
which returns only the text of a ``content_and_artifact`` tool (the full result is lost) and
returns a handled tool error as an ordinary answer, so a client could not tell the two apart.

Example::

    from rar_agent.mcp import create_server, serve_stdio
    server = create_server(recognizer, allowed_roots=["~/photos"])
    anyio.run(serve_stdio, server)
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import math
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rar_agent import __version__

if TYPE_CHECKING:
    import os

    from langchain_core.tools import BaseTool
    from mcp import types
    from mcp.server.lowlevel import Server
    from starlette.applications import Starlette

    from rar_agent.pipeline import Recognizer

__all__ = [
    "DEFAULT_HTTP_PATH",
    "MAX_HTTP_BODY_BYTES",
    "SERVER_NAME",
    "build_server",
    "call_langchain_tool",
    "create_server",
    "http_app",
    "is_loopback",
    "mcp_tool",
    "output_schema",
    "require_mcp",
    "serve_http",
    "serve_stdio",
]

logger = logging.getLogger(__name__)

SERVER_NAME = "rar-agent"
DEFAULT_HTTP_PATH = "/mcp"


def _max_http_body() -> int:
    from rar_agent.netfetch import MAX_DOWNLOAD_BYTES

    # A data URI may carry as large an image as a URL download may: base64 adds a third.
    return math.ceil(MAX_DOWNLOAD_BYTES * 4 / 3) + 64 * 1024


#: Largest HTTP request body accepted (a base64 image up to the URL download limit).
MAX_HTTP_BODY_BYTES = _max_http_body()

# The result model gets its rejection field from open-set rejection (issue 13); until it
# does, the published schema already names the slot, so clients can rely on it.
_REJECTION_SLOT: dict[str, Any] = {
    "anyOf": [{"type": "object"}, {"type": "null"}],
    "default": None,
    "description": "Why the answer is unknown (label null), when the result was rejected.",
}

# ---------------------------------------------------------------------------- tools


def output_schema(tool: BaseTool) -> tuple[dict[str, Any] | None, bool]:
    """The JSON schema of a tool's structured content, from its ``artifact_type``.

    MCP structured content is a JSON object: an artifact that is not one (a list) is
    wrapped as ``{"result": artifact}``.

    Args:
        tool: A LangChain tool; without an ``artifact_type`` it has no output schema.

    Returns:
        ``(schema, wrapped)``: the schema (``None`` when undeclared) and whether the
        artifact is wrapped under ``"result"``.
    """
    declared = getattr(type(tool), "artifact_type", None)
    if declared is None:
        return None, False
    text, wrapped = _schema_of(declared)
    return json.loads(text), wrapped  # a fresh copy: the cached one stays as made


@functools.cache
def _schema_of(declared: Any) -> tuple[str, bool]:
    """(schema as JSON text, wrapped) for an artifact type; made once per type."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(declared).json_schema(mode="serialization")
    result = schema.get("$defs", {}).get("RecognitionResult")
    if result is not None:
        result.setdefault("properties", {}).setdefault("rejection", _REJECTION_SLOT)
    if schema.get("type") == "object" or "anyOf" in schema:
        return json.dumps({**schema, "type": "object"}), False
    defs = schema.pop("$defs", None)
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {"result": schema},
        "required": ["result"],
    }
    if defs:
        wrapped["$defs"] = defs
    return json.dumps(wrapped), True


def mcp_tool(tool: BaseTool) -> types.Tool:
    """The MCP definition of a LangChain tool: name, description, input and output schemas."""
    from mcp import types
    from pydantic import BaseModel

    arguments = tool.tool_call_schema
    if isinstance(arguments, type) and issubclass(arguments, BaseModel):
        input_schema = arguments.model_json_schema()
    elif isinstance(arguments, dict):
        input_schema = arguments
    else:
        raise TypeError(f"tool {tool.name}: give it a pydantic v2 args_schema or a JSON schema")
    schema, _ = output_schema(tool)
    writes = bool(getattr(type(tool), "writes_memory", False))
    return types.Tool(
        name=tool.name,
        description=tool.description,
        inputSchema=input_schema,
        outputSchema=schema,
        annotations=types.ToolAnnotations(
            readOnlyHint=not writes,
            destructiveHint=False,
            idempotentHint=True,
            # Only a tool that fetches image URLs reaches beyond this machine and its memory.
            openWorldHint=bool(getattr(tool, "allow_urls", False)) and "image" in tool.args,
        ),
    )


async def call_langchain_tool(tool: BaseTool, arguments: dict[str, Any]) -> types.CallToolResult:
    """Invoke a LangChain tool as an MCP tool call.

    Args:
        tool: The tool (``content_and_artifact`` tools give structured content).
        arguments: The call's arguments, validated by the tool's own schema.

    Returns:
        The text as content and the artifact as structured content; a tool error (bad
        arguments, an unsafe path, an unreadable image...) as ``isError`` with its message.
    """
    from mcp import types

    call = {"type": "tool_call", "name": tool.name, "args": arguments, "id": uuid.uuid4().hex}
    try:
        message = await tool.ainvoke(call)
    except Exception as e:  # a bug, not bad input: keep serving, say where to look
        logger.exception("tool %s failed", tool.name)
        return _error(f"{tool.name} failed unexpectedly ({type(e).__name__}: {e}); see the log")
    text: str = message.text
    if message.status == "error":
        return _error(text)
    artifact = message.artifact
    declared = getattr(type(tool), "artifact_type", None)
    wrapped = declared is not None and _schema_of(declared)[1]
    structured = {"result": artifact} if wrapped else artifact
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structuredContent=structured if isinstance(structured, dict) else None,
    )


def _error(message: str) -> types.CallToolResult:
    from mcp import types

    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], isError=True
    )


@dataclass(frozen=True)
class _Served:
    """One LangChain tool and its MCP definition."""

    tool: BaseTool
    definition: types.Tool


def build_server(
    tools: Sequence[BaseTool], *, name: str = SERVER_NAME, instructions: str | None = None
) -> Server:
    """An MCP server (the official SDK's low-level ``Server``) over LangChain tools.

    Args:
        tools: The tools to serve, each under its own name.
        name: The server's name, as clients show it.
        instructions: What the server is for, as clients pass it to their model.

    Returns:
        The server; run it with :func:`serve_stdio` or :func:`serve_http`.
    """
    from mcp.server.lowlevel import Server

    served = {tool.name: _Served(tool, mcp_tool(tool)) for tool in tools}
    server: Server = Server(name, version=__version__, instructions=instructions)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [entry.definition for entry in served.values()]

    # Arguments are checked by each LangChain tool, so errors read the same everywhere.
    @server.call_tool(validate_input=False)
    async def call_tool(tool_name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        entry = served.get(tool_name)
        if entry is None:
            known = ", ".join(served)
            return _error(f"unknown tool {tool_name!r}: this server has {known}")
        return await call_langchain_tool(entry.tool, arguments or {})

    return server


def require_mcp() -> None:
    """Check that the ``mcp`` extra is installed.

    Raises:
        ConfigError: It is not, with the command that installs it.
    """
    try:
        import mcp.server.lowlevel  # noqa: F401
    except ImportError as e:
        from rar_agent.errors import ConfigError

        raise ConfigError(
            f"the MCP server needs the mcp package ({e}): pip install 'rar-agent[mcp]'"
        ) from None


def create_server(
    recognizer: Recognizer,
    *,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
    name: str = SERVER_NAME,
) -> Server:
    """The rar-agent MCP server over one recognizer.

    Tools: ``recognize_image``, ``search_categories``, ``list_categories``, and
    ``add_category_example`` with ``allow_learning``. Images come as file paths inside
    ``allowed_roots``, public ``http(s)`` URLs when ``allow_urls``, or base64 data URIs.

    Args:
        recognizer: The recognizer the tools use (its memory, encoder, ranker and gate).
        allowed_roots: Directories whose image files clients may name (none by default).
        allow_urls: Let clients pass public ``http(s)`` image URLs.
        allow_learning: Serve the tool that adds examples to the memory.
        name: The server's name.

    Returns:
        The server.

    Raises:
        ConfigError: An allowed root is missing or a system directory.
    """
    from rar_agent.tools import make_tools

    require_mcp()
    tools = make_tools(
        recognizer,
        allowed_roots=allowed_roots,
        allow_urls=allow_urls,
        allow_learning=allow_learning,
        image_ids=False,
    )
    memory = recognizer.memory.info
    about = f" ({memory.description})" if memory.description else ""
    instructions = (
        f"Visual recognition with the category memory {memory.collection!r}{about}: "
        "recognize_image retrieves the closest known categories for an image and ranks them; "
        "list_categories and search_categories tell what the memory knows."
        + (" add_category_example teaches it a new example." if allow_learning else "")
    )
    return build_server(tools, name=name, instructions=instructions)


# ---------------------------------------------------------------------------- transports


async def serve_stdio(server: Server) -> None:
    """Serve over standard input/output until the client closes it (stdout is the protocol)."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Endpoint:
    """The streamable HTTP endpoint as a raw ASGI app (Starlette calls it as one)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)


def http_app(
    server: Server, *, host: str = "127.0.0.1", path: str = DEFAULT_HTTP_PATH
) -> Starlette:
    """A Starlette app serving ``server`` over streamable HTTP at ``path``.

    On a loopback ``host`` the Host and Origin headers must name the loopback too (DNS
    rebinding protection: a web page cannot reach the server through a name it controls).

    Args:
        server: The MCP server.
        host: The interface it will listen on.
        path: The endpoint path.

    Returns:
        The ASGI app; its lifespan runs the session manager.
    """
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    security = None
    if is_loopback(host):
        names = ["127.0.0.1", "localhost", "[::1]"]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"{n}:*" for n in names],
            allowed_origins=[f"http://{n}:*" for n in names],
        )
    manager = StreamableHTTPSessionManager(
        app=server, security_settings=security, max_request_body_size=MAX_HTTP_BODY_BYTES
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route(path, endpoint=_Endpoint(manager))], lifespan=lifespan)


async def serve_http(
    server: Server,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = DEFAULT_HTTP_PATH,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve over streamable HTTP until Ctrl+C or SIGTERM, then return after a clean stop.

    Args:
        server: The MCP server.
        host: The interface: loopback by default; another one serves the network.
        port: The port; 0 picks a free one.
        path: The endpoint path.
        on_ready: Called with the endpoint URL (the real port) once it accepts connections.

    Raises:
        ConfigError: The address cannot be bound (the port is taken, the host is unknown).
    """
    import anyio
    import uvicorn

    sock = _bind(host, port)
    config = uvicorn.Config(
        http_app(server, host=host, path=path), log_level="warning", timeout_graceful_shutdown=5
    )
    web = uvicorn.Server(config)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    with sock, _stop_signals(web):
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(web.serve, sockets=[sock]))
            while not web.started and not web.should_exit:
                await anyio.sleep(0.02)
            if web.started and on_ready is not None:
                on_ready(f"http://{shown}:{bound}{path}")


def _bind(host: str, port: int) -> socket.socket:
    from rar_agent.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise ConfigError(
            f"cannot serve on {host}:{port} ({e.strerror or e}): pick another --port (0 picks "
            "a free one) or --host"
        ) from None


@contextlib.contextmanager
def _stop_signals(web: Any) -> Iterator[None]:
    """Ctrl+C and SIGTERM ask the web server to stop, also before it has started.

    uvicorn raises the stop signal again once it has shut down; the handler here takes it,
    so :func:`serve_http` returns and the caller closes the memory.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        web.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
