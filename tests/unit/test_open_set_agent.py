"""Unknown images in the tools, the agent and the chat page, and learning the new category."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from rar_agent.agent import create_rar_agent, last_tool_messages
from rar_agent.ingest.builders import add_images
from rar_agent.memory import CategoryMemory
from rar_agent.openset import load as load_calibration
from rar_agent.pipeline import Recognizer
from rar_agent.tools import ImageRegistry, make_tools
from rar_agent.ui import ChatSession, render_reply
from tests.helpers.clusters import KNOWN, STRANGER, Clusters, example_items
from tests.helpers.fake_chat import PolicyChatModel

LABELS = KNOWN
NEW = STRANGER


@pytest.fixture
def recognizer(tmp_path: Path, clusters: Clusters) -> Recognizer:
    memory = CategoryMemory.open(tmp_path / "mem", collection="learn")
    add_images(memory, clusters.encoder, example_items(clusters, LABELS, tmp_path / "examples"))
    rec = Recognizer.from_memory(memory, clusters.encoder, k=3)  # the factory calibrates
    yield rec
    rec.close()


def _image_block(clusters: Clusters, label: str, i: int, tmp: Path) -> dict[str, Any]:
    data = clusters.save(label, i, tmp / "uploads").read_bytes()
    return {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": "image/png"}


def _call(tool: Any, args: dict[str, Any]) -> ToolMessage:
    return tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": "c1"})


# ---------------------------------------------------------------------------- tools


def test_the_tool_says_plainly_that_the_image_is_not_in_memory(recognizer, clusters) -> None:
    registry = ImageRegistry()
    image_id = registry.register(
        clusters.save(NEW, 1, Path(recognizer.memory.info.location)).read_bytes()
    )
    recognize = make_tools(recognizer, registry=registry)[0]
    msg = _call(recognize, {"image": image_id})
    first = msg.text.splitlines()[0]
    assert first.startswith(f"Unknown for {image_id}: not a category in memory; closest: ")
    closest = [c["label"] for c in msg.artifact["candidates"]]
    assert all(label in first for label in closest)
    assert "looks less like the" in msg.text and "Ask the user what it shows." in msg.text
    assert msg.artifact["unknown"] is True and msg.artifact["label"] is None
    learner = make_tools(recognizer, registry=registry, allow_learning=True)[0]
    assert "add_category_example(label=...)" in _call(learner, {"image": image_id}).text
    # the reject setting reaches the tools: off answers with the closest category
    off = make_tools(recognizer, registry=registry, reject="off")[0]
    answer = _call(off, {"image": image_id})
    assert answer.text.startswith(f"Answer for {image_id}: ") and not answer.artifact["unknown"]
    assert recognizer.reject.mode == "auto"  # the tool got its own copy


def test_teaching_a_new_category_updates_the_calibration(recognizer, clusters) -> None:
    registry = ImageRegistry()
    image_id = registry.register(
        clusters.save(NEW, 0, Path(recognizer.memory.info.location)).read_bytes()
    )
    tools = make_tools(recognizer, registry=registry, allow_learning=True)
    add = next(t for t in tools if t.name == "add_category_example")
    msg = _call(add, {"label": NEW, "image": image_id})
    assert "first example of the new category 'bicycle'" in msg.text
    assert msg.artifact["new_category"] and msg.artifact["category_examples"] == 1
    cal = load_calibration(recognizer.memory)
    assert cal is not None and cal.seen == recognizer.memory.count("image")
    again = _call(add, {"label": NEW, "image": image_id})
    assert "already stored" in again.text and not again.artifact["new_category"]


# ---------------------------------------------------------------------------- the agent loop


def _teacher(messages: list[BaseMessage]) -> AIMessage:
    """A scripted model: recognize each photo; when it is unknown ask; learn the name given."""
    last_user = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    user = messages[last_user].text
    turn = [m for m in messages[last_user:] if isinstance(m, ToolMessage)]
    n = sum(isinstance(m, ToolMessage) for m in messages) + 1
    if not turn:
        if user.lower().startswith("it is a "):
            label = user[len("it is a ") :].strip(" .")
            return _tool("add_category_example", {"label": label}, n)
        return _tool("recognize_image", {}, n)
    last = turn[-1]
    if last.name == "add_category_example":
        return AIMessage(content=f"Thanks! I stored it. {last.text}")
    if "not a category in memory" in last.text:
        closest = last.text.split("closest: ", 1)[1].split("\n", 1)[0]
        return AIMessage(content=f"I don't know this one (closest: {closest}). What is it?")
    label = last.text.split(": ", 1)[1].split(" (", 1)[0]
    return AIMessage(content=f"That is a {label}.")


def _tool(name: str, args: dict[str, Any], n: int) -> AIMessage:
    call = {"name": name, "args": args, "id": f"call-{n}", "type": "tool_call"}
    return AIMessage(content="", tool_calls=[call])


def test_agent_asks_about_an_unknown_image_learns_it_and_then_recognizes_it(
    recognizer, clusters, tmp_path: Path
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    model = PolicyChatModel(policy=_teacher)
    agent = create_rar_agent(
        model, recognizer=recognizer, allow_learning=True, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "learn"}}

    def say(text: str, *blocks: dict[str, Any]) -> dict[str, Any]:
        content = [{"type": "text", "text": text}, *blocks] if blocks else text
        return agent.invoke({"messages": [HumanMessage(content=content)]}, config)

    out = say("What is this?", _image_block(clusters, NEW, 1, tmp_path))
    (seen,) = last_tool_messages(out["messages"])
    assert seen.artifact["unknown"] and "not a category in memory" in seen.text
    assert out["messages"][-1].text.startswith("I don't know this one (closest: ")

    out = say("It is a bicycle.")
    (learned,) = last_tool_messages(out["messages"])
    assert learned.name == "add_category_example" and learned.artifact["new_category"]
    assert "new category 'bicycle'" in out["messages"][-1].text

    out = say("And this one?", _image_block(clusters, NEW, 5, tmp_path))
    (again,) = last_tool_messages(out["messages"])
    assert again.artifact["label"] == NEW and not again.artifact["unknown"]
    assert out["messages"][-1].text == "That is a bicycle."
    assert "add_category_example" in model.bound_tools


def test_recognition_only_model_learns_a_name_when_learning_is_allowed(
    recognizer, clusters, tmp_path: Path
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    agent = create_rar_agent(
        None, recognizer=recognizer, allow_learning=True, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "solo"}}
    photo = _image_block(clusters, NEW, 1, tmp_path)
    agent.invoke({"messages": [HumanMessage(content=[photo])]}, config)
    out = agent.invoke({"messages": [HumanMessage("it's a bicycle")]}, config)
    (learned,) = last_tool_messages(out["messages"])
    assert learned.name == "add_category_example" and learned.artifact["label"] == NEW
    # without the learning tool the same words are not a tool call
    plain = create_rar_agent(None, recognizer=recognizer)
    out = plain.invoke({"messages": [HumanMessage("it's a bicycle")]})
    assert not last_tool_messages(out["messages"])


# ---------------------------------------------------------------------------- the chat page


def test_render_reply_shows_unknown_and_offers_to_name_it() -> None:
    artifact = {
        "label": None,
        "unknown": True,
        "candidates": [{"label": "lynx", "score": 0.61}, {"label": "red fox", "score": 0.58}],
        "ranking": {"status": "disabled"},
    }
    msg = ToolMessage(content="Unknown ...", tool_call_id="1", name="recognize_image")
    msg.artifact = artifact
    shown = render_reply("", [msg], can_learn=True)
    assert "**Unknown: not a category in memory.**" in shown
    assert "Tell me what it shows" in shown and "| 1 | **lynx** | 0.610 |" in shown
    assert "Tell me what it shows" not in render_reply("", [msg])
    assert "**Answer: None**" not in shown


async def test_chat_page_session_unknown_then_named_then_known(
    recognizer, clusters, tmp_path: Path
) -> None:
    agent = create_rar_agent(None, recognizer=recognizer, allow_learning=True)
    session = ChatSession(agent, recognition_only=True, can_learn=True)
    first_photo = str(clusters.save(NEW, 1, tmp_path / "page"))
    first = (await session.respond({"text": "", "files": [first_photo]}, []))["content"]
    assert "**Unknown: not a category in memory.**" in first and "Tell me what it shows" in first
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": first_photo}}]},
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    named = (await session.respond({"text": "it is a bicycle", "files": []}, history))["content"]
    assert "new category 'bicycle'" in named
    second_photo = str(clusters.save(NEW, 5, tmp_path / "page"))
    history += [
        {"role": "user", "content": [{"type": "text", "text": "it is a bicycle"}]},
        {"role": "assistant", "content": [{"type": "text", "text": named}]},
    ]
    known = (await session.respond({"text": "", "files": [second_photo]}, history))["content"]
    assert "**Answer: bicycle**" in known
