"""Composing with other MCP servers' tools (langchain-mcp-adapters) against our own server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage

from rar_agent.agent import create_rar_agent
from rar_agent.errors import ConfigError
from rar_agent.tools.remote import mcp_server_tools
from tests.helpers.fake_chat import PolicyChatModel, recognize_then_lookup
from tests.helpers.small_memory import small_recognizer

SERVER = Path(__file__).resolve().parents[1] / "helpers" / "kb_mcp_server.py"
KB = {"kb": {"transport": "stdio", "command": sys.executable, "args": [str(SERVER)]}}


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("mcp-compose"), tiny_encoder)
    yield rec
    rec.close()


def _photo(recognizer: Any, label: str) -> HumanMessage:
    import base64

    data = base64.b64encode(recognizer.example_images[label].read_bytes()).decode()
    return HumanMessage(
        content=[
            {"type": "text", "text": "What is this and what do you know about it?"},
            {"type": "image", "base64": data, "mime_type": "image/png"},
        ]
    )


async def test_agent_recognizes_then_asks_our_mcp_server(recognizer: Any) -> None:
    model = PolicyChatModel(policy=recognize_then_lookup)
    agent = create_rar_agent(model, recognizer=recognizer, mcp_servers=KB)
    out = await agent.ainvoke({"messages": [_photo(recognizer, "blue jay")]})
    assert {"recognize_image", "lookup_knowledge"} <= set(model.bound_tools)
    lookup = [m for m in out["messages"] if isinstance(m, ToolMessage)][-1]
    assert lookup.name == "lookup_knowledge" and lookup.status != "error"
    assert "Cyanocitta cristata" in lookup.text  # from the server's knowledge file
    assert out["messages"][-1].text.startswith("This looks like a blue jay.")


def test_mcp_tools_also_run_synchronously(recognizer: Any) -> None:
    (tool,) = mcp_server_tools(KB, prefix=True)
    assert tool.name == "kb_lookup_knowledge"
    message = tool.invoke(
        {"type": "tool_call", "name": tool.name, "args": {"category": "red apple"}, "id": "1"}
    )
    assert "Malus domestica" in message.text
    agent = create_rar_agent(
        PolicyChatModel(policy=recognize_then_lookup), recognizer=recognizer, mcp_servers=KB
    )
    out = agent.invoke({"messages": [_photo(recognizer, "red apple")]})
    assert out["messages"][-1].text.startswith("This looks like a red apple.")


def test_unreachable_or_malformed_servers_are_clear_errors(recognizer: Any) -> None:
    with pytest.raises(ConfigError, match="needs a transport"):
        mcp_server_tools({"kb": {"command": sys.executable}})
    with pytest.raises(ConfigError, match="could not list the tools of MCP servers nowhere"):
        mcp_server_tools(
            {"nowhere": {"transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}},
            timeout_s=20,
        )
    with pytest.raises(ConfigError, match="two tools are named recognize_image"):
        create_rar_agent(
            None, recognizer=recognizer, tools=[recognizer_tool_named("recognize_image")]
        )


def recognizer_tool_named(name: str) -> Any:
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(lambda: "x", name=name, description="a clash")
