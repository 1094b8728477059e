"""A small MCP server of our own for composition tests: a knowledge base over stdio.

Run as ``python tests/helpers/kb_mcp_server.py``; it serves one tool, ``lookup_knowledge``,
over examples/knowledge.json (the official SDK's FastMCP, stdio transport).
"""

from __future__ import annotations

import json
from pathlib import Path

from mcp.server.fastmcp import FastMCP

KNOWLEDGE = Path(__file__).resolve().parents[2] / "examples" / "knowledge.json"

server = FastMCP("knowledge-base")


@server.tool()
def lookup_knowledge(category: str) -> str:
    """Look up facts about a category in the knowledge base."""
    facts = json.loads(KNOWLEDGE.read_text(encoding="utf-8"))
    entry = facts.get(category.strip().lower())
    return json.dumps(entry) if entry else f"No notes about {category!r}."


if __name__ == "__main__":
    server.run("stdio")
