"""An MCP server that misbehaves, for tests of composed tools: over stdio, one tool whose
server process dies mid-call (``crash``), one that never answers (``stall``), one that
answers (``echo``) and one that names its process (``pid``). Run as
``python tests/helpers/flaky_mcp_server.py``."""

from __future__ import annotations

import os
import time

from mcp.server.fastmcp import FastMCP

server = FastMCP("flaky")


@server.tool()
def crash(text: str) -> str:
    """End the server's process before answering."""
    os._exit(3)


@server.tool()
def stall(text: str) -> str:
    """Never answer (within any test's patience)."""
    time.sleep(3600)
    return text


@server.tool()
def echo(text: str) -> str:
    """Answer with the text."""
    return f"echo: {text}"


@server.tool()
def pid() -> str:
    """This server's process id."""
    return str(os.getpid())


if __name__ == "__main__":
    server.run("stdio")
