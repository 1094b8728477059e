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

``server`` turns the tools into a server, ``transports`` serves it over stdio or HTTP.

Example::

    from rar_agent.mcp import create_server, serve_stdio
    server = create_server(recognizer, allowed_roots=["~/photos"])
    anyio.run(serve_stdio, server)
"""

from rar_agent.mcp.server import (
    SERVER_NAME,
    build_server,
    call_langchain_tool,
    create_server,
    mcp_tool,
    output_schema,
    require_mcp,
)
from rar_agent.mcp.transports import (
    DEFAULT_HTTP_PATH,
    MAX_HTTP_BODY_BYTES,
    http_app,
    is_loopback,
    serve_http,
    serve_stdio,
)

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
