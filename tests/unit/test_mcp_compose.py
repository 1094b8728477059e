"""Composing with other MCP servers' tools (langchain-mcp-adapters) against our own server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
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


FLAKY = {
    "flaky": {
        "transport": "stdio",
        "command": sys.executable,
        "args": [str(SERVER.with_name("flaky_mcp_server.py"))],
    }
}


def _calls(tool: str, args: dict[str, Any] | None = None) -> Any:
    """A policy: call ``tool`` once (with ``args``, default a text), then answer with what
    it returned."""
    from langchain_core.messages import AIMessage

    def policy(messages: list[Any]) -> AIMessage:
        done = [m for m in messages if isinstance(m, ToolMessage)]
        if not done:
            given = {"text": "hi"} if args is None else args
            call = {"name": tool, "args": given, "id": "c1", "type": "tool_call"}
            return AIMessage(content="", tool_calls=[call])
        return AIMessage(content=f"The tool said: {done[-1].text}")

    return policy


async def test_a_server_that_dies_mid_call_is_a_tool_error_not_a_crash(recognizer: Any) -> None:
    """The MCP server's process ends during the call: the model gets an error tool message
    (and answers), the agent run goes on instead of raising the SDK's McpError."""
    agent = create_rar_agent(
        PolicyChatModel(policy=_calls("crash")), recognizer=recognizer, mcp_servers=FLAKY
    )
    out = await agent.ainvoke({"messages": [HumanMessage("go")]})
    (message,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert message.name == "crash" and message.status == "error"
    assert message.text.startswith("crash failed: its MCP server did not complete the call")
    assert out["messages"][-1].text.startswith("The tool said: crash failed")
    again = agent.invoke({"messages": [HumanMessage("go")]})  # the sync path too
    assert [m.status for m in again["messages"] if isinstance(m, ToolMessage)] == ["error"]


def test_a_server_that_never_answers_is_bounded(recognizer: Any) -> None:
    """A stalled call ends at ``call_timeout_s`` as an error tool message, in a plain
    LangChain agent too (the tool handles its own errors), and the next call still works."""
    from langchain.agents import create_agent

    # The stalled session is closed, so the next call starts the server's process again: the
    # bound leaves room for a start on a loaded machine (2 s failed the echo call at load 12).
    tools = {t.name: t for t in mcp_server_tools(FLAKY, call_timeout_s=8)}
    agent = create_agent(PolicyChatModel(policy=_calls("stall")), list(tools.values()))
    out = agent.invoke({"messages": [HumanMessage("go")]})
    (message,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error"
    assert message.text == (
        "stall failed: its MCP server gave no answer within 8 s; go on without it or try "
        "again later"
    )
    echo = tools["echo"].invoke(
        {"type": "tool_call", "name": "echo", "args": {"text": "still here"}, "id": "2"}
    )
    assert echo.status == "success" and "echo: still here" in echo.text


def test_call_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="call_timeout_s"):
        mcp_server_tools(FLAKY, call_timeout_s=0)


PID_CALL = {"type": "tool_call", "name": "pid", "args": {}, "id": "p"}


def _server_pid(tool: Any) -> int:
    message = tool.invoke(PID_CALL)
    assert message.status == "success", message.text
    return int(message.text)


def _ended(pid: int) -> bool:
    """Whether process ``pid`` ends within a minute (polled: no timing is asserted)."""
    import os

    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_one_server_process_serves_every_call_and_a_dead_one_is_started_again() -> None:
    """A stdio server is started once for the tools' life, not once per call (the call's
    time limit held the start too); after it dies, the next call starts a new one."""
    tools = {t.name: t for t in mcp_server_tools(FLAKY, call_timeout_s=60)}
    first = _server_pid(tools["pid"])
    assert _server_pid(tools["pid"]) == first
    asked = asyncio.run(tools["pid"].ainvoke(PID_CALL))  # from an event loop of its own too
    assert int(asked.text) == first
    crashed = tools["crash"].invoke(
        {"type": "tool_call", "name": "crash", "args": {"text": "x"}, "id": "c"}
    )
    assert crashed.status == "error" and "did not complete the call" in crashed.text
    assert _ended(first)
    again = _server_pid(tools["pid"])
    assert again != first and _server_pid(tools["pid"]) == again


def test_the_servers_end_with_the_program() -> None:
    """The sessions are closed at the interpreter's exit: no stdio server is left running."""
    script = (
        "import sys\n"
        "from rar_agent.tools.remote import mcp_server_tools\n"
        f"servers = {FLAKY!r}\n"
        "tool = {t.name: t for t in mcp_server_tools(servers)}['pid']\n"
        f"print(tool.invoke({PID_CALL!r}).text, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _ended(int(done.stdout.strip()))


def test_a_tool_set_closes_and_nothing_of_it_is_kept() -> None:
    """``mcp_server_tools`` registered a close at exit and a thread for every tool set, so a
    program that built many kept each one's server process, thread and sessions until it
    exited. A tool set now closes (``close()``, or a ``with`` block): its server's process
    ends, its thread stops, its tools answer with a tool error, and nothing holds it."""
    import gc
    import weakref

    for _ in range(2):
        with mcp_server_tools(FLAKY, call_timeout_s=60) as tools:
            pid = _server_pid({t.name: t for t in tools}["pid"])
            sessions = weakref.ref(tools._sessions)
            thread = tools._sessions._thread
        assert _ended(pid) and not thread.is_alive()
        called = {t.name: t for t in tools}["pid"].invoke(PID_CALL)
        assert called.status == "error" and "this MCP tool set was closed" in called.text
        tools.close()  # a second close does nothing
        del tools
        gc.collect()
        assert sessions() is None


def _session_threads(besides: set[Any]) -> list[Any]:
    """The MCP sessions' threads running now that were not in ``besides``."""
    import threading

    return [t for t in threading.enumerate() if t.name == "rar-mcp-sessions" and t not in besides]


def test_the_agent_closes_the_mcp_sessions_it_opened(recognizer: Any, tmp_path: Path) -> None:
    """``create_rar_agent(mcp_servers=...)`` opened sessions (a stdio server's process, a
    thread) that nothing could close before the program's exit. The agent closes them, and a
    conversation store it opened from a path, with ``close()`` or at the end of a ``with``."""
    import sqlite3
    import threading

    before = set(threading.enumerate())
    model = PolicyChatModel(policy=_calls("pid", {}))
    store = tmp_path / "conversations.sqlite"
    with create_rar_agent(
        model, recognizer=recognizer, mcp_servers=FLAKY, conversations=store
    ) as agent:
        copy = agent.with_config({"recursion_limit": 10})
        config = {"configurable": {"thread_id": "t1"}}
        out = copy.invoke({"messages": [HumanMessage("which process?")]}, config)
        (answer,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
        pid = int(answer.text)
        (thread,) = _session_threads(before)
    assert _ended(pid) and not thread.is_alive()
    with pytest.raises(sqlite3.ProgrammingError):  # the store it opened is closed
        agent.checkpointer.conn.execute("select 1")  # type: ignore[union-attr]
    agent.close()  # a second close does nothing


def test_an_agent_that_cannot_be_built_leaves_no_session_open(recognizer: Any) -> None:
    """The servers' tools were listed (their processes started), then the agent was
    refused: the sessions stayed open, with no agent to close them."""
    import threading

    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="two tools are named echo"):
        create_rar_agent(
            None, recognizer=recognizer, tools=[recognizer_tool_named("echo")], mcp_servers=FLAKY
        )
    assert _session_threads(before) == []


def test_a_sync_call_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sync call of a composed tool started a thread (and an event loop) of its own;
    it runs on the tool set's loop."""
    import threading

    with mcp_server_tools(FLAKY, call_timeout_s=60) as tools:
        tool = {t.name: t for t in tools}["pid"]
        first = _server_pid(tool)
        started: list[str] = []
        start = threading.Thread.start

        def counted(thread: threading.Thread) -> None:
            started.append(thread.name)
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", counted)
        assert [_server_pid(tool) for _ in range(3)] == [first] * 3
        assert started == []


def _hanging(marker: Path) -> dict[str, dict[str, Any]]:
    script = SERVER.with_name("hanging_mcp_server.py")
    return {
        "hang": {
            "transport": "stdio",
            "command": sys.executable,
            "args": [str(script), str(marker)],
        }
    }


def _hung_pid(marker: Path) -> int:
    """The process id the hanging server wrote once it hung (polled, nothing timed)."""
    for _ in range(600):
        text = marker.read_text() if marker.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise AssertionError(f"no hung server wrote {marker}")


def test_a_server_that_hangs_while_starting_is_cancelled_at_the_time_limit(
    tmp_path: Path,
) -> None:
    """A server started again after a failed call, which never answers ``initialize``: the
    call that started it ends at ``call_timeout_s`` as an error tool message, and the hung
    process is ended; listing a server that hangs so is a clear error at ``timeout_s``."""
    marker = tmp_path / "started"
    with mcp_server_tools(_hanging(marker), call_timeout_s=8) as tools:
        by_name = {t.name: t for t in tools}
        crash = {"type": "tool_call", "name": "crash", "args": {"text": "x"}, "id": "c"}
        assert by_name["crash"].invoke(crash).status == "error"
        echo = {"type": "tool_call", "name": "echo", "args": {"text": "hi"}, "id": "e"}
        hung = by_name["echo"].invoke(echo)  # starts the server again: it hangs
        assert hung.status == "error"
        assert hung.text == (
            "echo failed: its MCP server gave no answer within 8 s; go on without it or try "
            "again later"
        )
        assert _ended(_hung_pid(marker))
    marker.write_text("hangs from the start")
    with pytest.raises(ConfigError, match=r"listing the tools of MCP servers hang took over 3 s"):
        mcp_server_tools(_hanging(marker), timeout_s=3)
    assert _ended(_hung_pid(marker))


def test_a_chat_page_with_logins_starts_each_mcp_server_once(
    recognizer: Any, tmp_path: Path
) -> None:
    """``build_chat_page(..., mcp_servers=..., logins=..., allow_learning=True)`` builds two
    agents (one for people who may teach, one for those who may not), and each started its
    own process of every stdio server: two knowledge bases that could drift apart. Both
    agents now call the one session of each server."""
    from rar_agent.auth import TokenStore
    from rar_agent.conversations import ConversationStore
    from rar_agent.registry import ImageRegistry
    from rar_agent.ui import _chat_session

    logins = TokenStore(tmp_path / "auth.toml")
    logins.add("alice", ["learn"])
    with ConversationStore(":memory:") as store:
        session = _chat_session(
            recognizer,
            PolicyChatModel(policy=_calls("pid", {})),
            tools=(),
            registry=ImageRegistry(),
            conversations=store,
            logins=logins,
            agent_options={"allow_learning": True, "mcp_servers": FLAKY},
        )
        assert session.reading_agent is not None
        pids = set()
        for n, agent in enumerate((session.agent, session.reading_agent)):
            config = {"configurable": {"thread_id": f"t{n}"}}
            out = agent.invoke({"messages": [HumanMessage("which process?")]}, config)
            pids |= {int(m.text) for m in out["messages"] if isinstance(m, ToolMessage)}
        assert len(pids) == 1


def test_a_chat_page_that_cannot_be_built_leaves_no_mcp_session_open(recognizer: Any) -> None:
    """``build_chat_page(..., mcp_servers=...)`` listed the servers' tools (starting their
    processes), then its agent was refused (two tools with one name): the sessions stayed
    open until the program's exit, with no page to close them."""
    import threading

    from rar_agent.ui import build_chat_page

    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="two tools are named echo"):
        build_chat_page(recognizer, tools=[recognizer_tool_named("echo")], mcp_servers=FLAKY)
    assert _session_threads(before) == []


async def test_an_agent_in_async_with_closes_the_mcp_sessions_it_opened(recognizer: Any) -> None:
    """Async code closes the agent with ``async with`` (or ``await agent.aclose()``)."""
    import threading

    before = set(threading.enumerate())
    model = PolicyChatModel(policy=_calls("pid", {}))
    async with create_rar_agent(model, recognizer=recognizer, mcp_servers=FLAKY) as agent:
        out = await agent.ainvoke({"messages": [HumanMessage("which process?")]})
        (answer,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
        pid = int(answer.text)
        (thread,) = _session_threads(before)
    assert _ended(pid) and not thread.is_alive()
    await agent.aclose()  # a second close does nothing
