"""An MCP server over stdio that starts well once: run as ``python hanging_mcp_server.py
MARKER``, the first process (no MARKER file yet) creates MARKER and serves the tools ``crash``
(ends the process mid-call) and ``echo``; every later one writes its process id into MARKER
and never answers ``initialize`` (it hangs while starting), for tests of composed tools."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("hanging")


@server.tool()
def crash(text: str) -> str:
    """End the server's process before answering."""
    os._exit(3)


@server.tool()
def echo(text: str) -> str:
    """Answer with the text."""
    return f"echo: {text}"


if __name__ == "__main__":
    marker = Path(sys.argv[1])
    if marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(3600)  # reads nothing: the client's initialize is never answered
    marker.write_text("served")
    server.run("stdio")
