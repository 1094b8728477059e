"""The agent: image blocks become ids, the latest image is the default, tools compose."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from rar_agent.agent import create_rar_agent, last_tool_messages
from rar_agent.registry import ImageRegistry, image_blocks_to_ids
from tests.helpers.fake_chat import PolicyChatModel, recognize_then_lookup
from tests.helpers.small_memory import small_recognizer

KNOWLEDGE = Path(__file__).resolve().parents[2] / "examples" / "knowledge.json"


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("agent"), tiny_encoder)
    yield rec
    rec.close()


def _b64(recognizer: Any, label: str) -> str:
    return base64.b64encode(recognizer.example_images[label].read_bytes()).decode()


def _user(text: str, *blocks: dict[str, Any]) -> HumanMessage:
    return HumanMessage(content=[{"type": "text", "text": text}, *blocks])


def _no_bytes_seen(model: PolicyChatModel, b64: str) -> bool:
    return all(b64[:40] not in str(m.content) for call in model.seen for m in call)


@tool
def lookup_knowledge(category: str) -> str:
    """Look up facts about a category in the local knowledge file."""
    facts = json.loads(KNOWLEDGE.read_text(encoding="utf-8"))
    entry = facts.get(category.strip().lower())
    return json.dumps(entry) if entry else f"No notes about {category!r}."


# ---------------------------------------------------------------------------- image blocks


def test_every_image_block_form_is_registered(recognizer: Any) -> None:
    reg = ImageRegistry()
    data = _b64(recognizer, "red apple")
    uri = f"data:image/png;base64,{data}"
    forms = [
        {"type": "image", "base64": data, "mime_type": "image/png"},  # v1 standard
        {"type": "image", "source_type": "base64", "data": data, "mime_type": "image/png"},  # v0
        {
            "type": "image",
            "source_type": "base64",
            "mimeType": "image/png",
            "data": data,
            "metadata": {"name": "apple.png"},
        },  # LangChain's agent chat UI
        {"type": "image_url", "image_url": {"url": uri}},  # OpenAI
        {"type": "image_url", "image_url": uri},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "file", "mime_type": "image/png", "base64": data},
    ]
    for block in forms:
        content, ids = image_blocks_to_ids([{"type": "text", "text": "hi"}, block], reg)
        assert len(ids) == 1, block
        assert content[0] == {"type": "text", "text": "hi"}
        assert content[1]["text"].startswith(f"[image id {ids[0]}")
    assert len(reg) == 1  # one picture, one id
    named, _ = image_blocks_to_ids([forms[2]], reg)
    assert named[0]["text"].endswith(", file apple.png]")


def test_non_image_content_is_left_alone(recognizer: Any) -> None:
    reg = ImageRegistry()
    url_block = {"type": "image", "url": "https://example.com/cat.jpg"}
    pdf = {"type": "file", "mime_type": "application/pdf", "base64": "JVBERi0="}
    for content in ["plain text", [{"type": "text", "text": "x"}], [url_block], [pdf]]:
        new, ids = image_blocks_to_ids(content, reg)
        assert new is content and ids == []
    broken, ids = image_blocks_to_ids([{"type": "image", "base64": "bm90IGFuIGltYWdl"}], reg)
    assert ids == [] and broken[0]["text"].startswith("[an image that could not be read:")
    # A block whose data is not base64 says so, not that a str is never read as a path
    # (advice for Python callers of ImageRegistry.register, which a chat client cannot take).
    garbled, ids = image_blocks_to_ids([{"type": "image", "base64": "@@@", "mime_type": "x"}], reg)
    assert ids == [] and "invalid base64 image data" in garbled[0]["text"]
    assert "pathlib" not in garbled[0]["text"]


# ---------------------------------------------------------------------------- agents


def test_recognition_only_agent_answers_from_the_tool(recognizer: Any) -> None:
    registry = ImageRegistry()
    agent = create_rar_agent(None, recognizer=recognizer, registry=registry)
    data = _b64(recognizer, "blue jay")
    out = agent.invoke(
        {
            "messages": [
                _user(
                    "what bird is this?",
                    {"type": "image", "base64": data, "mime_type": "image/png"},
                )
            ]
        }
    )
    final = out["messages"][-1]
    assert isinstance(final, AIMessage)
    assert final.text.startswith("Retrieval/ranking output")
    assert "Answer for img-" in final.text and ": blue jay (" in final.text
    (tool_msg,) = last_tool_messages(out["messages"])
    assert tool_msg.artifact["label"] == "blue jay"
    assert out["images"] == registry.ids()[-1:]
    # The stored history holds the id, not the picture.
    assert data[:40] not in str(out["messages"][0].content)
    no_image = agent.invoke({"messages": [HumanMessage("hello")]})
    assert "No chat model is configured" in no_image["messages"][-1].text


def test_the_stand_in_names_the_python_arguments_and_the_page_its_options(
    recognizer: Any, tmp_path: Path
) -> None:
    """`create_rar_agent(None, ...)` in Python answered 'it is a tabby' with '... Learning is
    off here, so names you give are not stored (start the page with --allow-learning to teach
    it)': a page and an option its caller does not have. In Python it names allow_learning=True
    (and folders= and a chat model for its folders); the chat page keeps its own words."""
    from rar_agent.conversations import ConversationStore
    from rar_agent.ui import _chat_session

    agent = create_rar_agent(None, recognizer=recognizer, folders=[tmp_path])
    said = agent.invoke({"messages": [HumanMessage("hello")]})["messages"][-1].text
    assert "allow_learning=True" in said and "(folders=)" in said, said
    assert "page" not in said and "--allow" not in said and "--model" not in said, said
    with ConversationStore(":memory:") as store:
        session = _chat_session(recognizer, None, tools=(), registry=ImageRegistry(),
                                conversations=store, logins=None, agent_options={})  # fmt: skip
        config = {"configurable": {"thread_id": "t"}}
        page = session.agent.invoke({"messages": [HumanMessage("hello")]}, config)
    page = page["messages"][-1].text
    assert "this page recognizes photos" in page and "--allow-learning" in page, page


def test_the_python_stand_in_says_why_a_photo_could_not_be_read(recognizer: Any) -> None:
    """`create_rar_agent(None, ...)` sent a corrupt JPEG answered only 'No photo in this
    message could be read, so nothing was recognized or stored.', the reason left in the
    rewritten message (the chat page shows it beside the reply; Python shows nothing else)."""
    agent = create_rar_agent(None, recognizer=recognizer)
    broken = base64.b64encode(b"\xff\xd8\xffgarbage").decode()
    turn = _user("what is this?", {"type": "image", "base64": broken, "mime_type": "image/jpeg"})
    said = agent.invoke({"messages": [turn]})["messages"][-1].text
    assert said.startswith("No photo in this message could be read"), said
    assert "Why: " in said and "not an image this installation can read" in said, said


def test_composition_recognize_then_knowledge_lookup(recognizer: Any) -> None:
    model = PolicyChatModel(policy=recognize_then_lookup)
    agent = create_rar_agent(model, recognizer=recognizer, tools=[lookup_knowledge])
    data = _b64(recognizer, "blue jay")
    out = agent.invoke(
        {
            "messages": [
                _user(
                    "What is this and what do you know about it?",
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                )
            ]
        }
    )
    assert model.bound_tools == [
        "recognize_image",
        "search_categories",
        "list_categories",
        "list_unknown_groups",
        "lookup_knowledge",
    ]
    tools = last_tool_messages(out["messages"])
    assert [t.name for t in tools] == ["recognize_image", "lookup_knowledge"]
    assert tools[0].artifact["label"] == "blue jay"
    assert json.loads(tools[1].text)["summary"].startswith("Cyanocitta cristata")
    final = out["messages"][-1].text
    assert final.startswith("This looks like a blue jay. Cyanocitta cristata")
    assert _no_bytes_seen(model, data)
    assert "[image id img-" in model.seen[0][-1].text


async def test_latest_image_default_and_foreign_ids(recognizer: Any) -> None:
    registry = ImageRegistry()
    foreign = registry.register(recognizer.example_images["black cat"].read_bytes())
    calls: list[dict[str, Any]] = [{}, {"image": foreign}]

    def policy(messages: list[Any]) -> AIMessage:
        if isinstance(messages[-1], ToolMessage) and not calls:
            return AIMessage(content="done")
        args = calls.pop(0)
        return AIMessage(
            content="",
            tool_calls=[
                {
                    "name": "recognize_image",
                    "args": args,
                    "id": f"c{len(calls)}",
                    "type": "tool_call",
                }
            ],
        )

    agent = create_rar_agent(
        PolicyChatModel(policy=policy), recognizer=recognizer, registry=registry
    )
    first, second = _b64(recognizer, "green leaf"), _b64(recognizer, "yellow banana")
    out = await agent.ainvoke(
        {
            "messages": [
                _user(
                    "two pictures",
                    {"type": "image", "base64": first, "mime_type": "image/png"},
                    {"type": "image", "base64": second, "mime_type": "image/png"},
                )
            ]
        }
    )
    tools = last_tool_messages(out["messages"])
    assert tools[0].artifact["label"] == "yellow banana"  # the latest of this conversation
    assert tools[1].status == "error"
    assert "not part of this conversation" in tools[1].text  # another conversation's image


def test_missing_image_is_a_tool_error_not_a_crash(recognizer: Any) -> None:
    registry = ImageRegistry()
    registry.register(recognizer.example_images["black cat"].read_bytes())  # someone else's
    model = PolicyChatModel(policy=recognize_then_lookup)
    agent = create_rar_agent(
        model, recognizer=recognizer, registry=registry, tools=[lookup_knowledge]
    )
    out = agent.invoke({"messages": [HumanMessage("what is in my photo?")]})
    (tool_msg,) = last_tool_messages(out["messages"])
    assert tool_msg.status == "error" and "no image in this conversation" in tool_msg.text
    assert out["messages"][-1].text.startswith("Sorry, recognition failed: no image")


def test_an_argument_the_tool_does_not_take_is_named_before_the_latest_photo(
    recognizer: Any,
) -> None:
    """A model that passed {"path": ...} in a conversation without a photo was told 'no image
    in this conversation yet' (the middleware's default): the tool names the argument."""
    call = {"name": "recognize_image", "args": {"path": "cat.jpg"}, "id": "c1", "type": "tool_call"}
    model = PolicyChatModel(
        policy=lambda m: (
            AIMessage("ok") if isinstance(m[-1], ToolMessage) else AIMessage("", tool_calls=[call])
        )
    )
    agent = create_rar_agent(model, recognizer=recognizer, registry=ImageRegistry())
    out = agent.invoke({"messages": [HumanMessage("what is cat.jpg?")]})
    (tool_msg,) = last_tool_messages(out["messages"])
    assert tool_msg.status == "error" and "'path': not an argument" in tool_msg.text


@tool
def flaky_lookup(category: str) -> str:
    """Look a category up in a knowledge base that is down (a tool error, as LangChain
    tools report one: ``ToolException``, with the tool's own error handling left off)."""
    from langchain_core.tools import ToolException

    raise ToolException(f"the knowledge base is down; {category!r} cannot be looked up now")


@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
async def test_a_composed_tools_error_reaches_the_model_not_a_crash(
    recognizer: Any, run: str
) -> None:
    """Recognition composed with the integrator's tool: when that tool raises
    ``ToolException`` the model gets an error tool message and answers; the agent goes on."""
    model = PolicyChatModel(policy=_lookup_with(flaky_lookup.name))
    agent = create_rar_agent(model, recognizer=recognizer, tools=[flaky_lookup])
    photo = {"type": "image", "base64": _b64(recognizer, "red apple"), "mime_type": "image/png"}
    question = {"messages": [_user("what is it?", photo)]}
    out = agent.invoke(question) if run == "invoke" else await agent.ainvoke(question)
    seen, failed = last_tool_messages(out["messages"])
    assert seen.name == "recognize_image" and seen.status == "success"
    assert failed.name == "flaky_lookup" and failed.status == "error"
    assert "the knowledge base is down" in failed.text
    assert out["messages"][-1].text.startswith("This looks like a red apple.")


def _lookup_with(name: str) -> Any:
    """``recognize_then_lookup`` calling the lookup tool ``name``."""

    def policy(messages: list[Any]) -> AIMessage:
        reply = recognize_then_lookup(messages)
        for call in reply.tool_calls:
            if call["name"] == "lookup_knowledge":
                call["name"] = name
        return reply

    return policy


def test_conversation_memory_keeps_the_latest_image(recognizer: Any) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    model = PolicyChatModel(policy=recognize_then_lookup)
    agent = create_rar_agent(
        model, recognizer=recognizer, tools=[lookup_knowledge], checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t1"}}
    data = _b64(recognizer, "red apple")
    agent.invoke(
        {"messages": [_user("look", {"type": "image", "base64": data, "mime_type": "image/png"})]},
        config,
    )
    out = agent.invoke({"messages": [HumanMessage("and once more?")]}, config)
    assert last_tool_messages(out["messages"])[0].artifact["label"] == "red apple"
    other = agent.invoke(
        {"messages": [HumanMessage("and mine?")]}, {"configurable": {"thread_id": "t2"}}
    )
    assert last_tool_messages(other["messages"])[0].status == "error"


def _recognize_the_named_image(messages: list[Any]) -> AIMessage:
    """Policy: recognize the image id the user's last words name (none: the latest image),
    then repeat the tool's text."""
    last = messages[-1]
    if isinstance(last, ToolMessage):
        return AIMessage(content=last.text)
    named = [w.strip("[],.?") for w in last.text.split() if w.strip("[],.?").startswith("img-")]
    args = {"image": named[0]} if named else {}
    call = {"name": "recognize_image", "args": args, "id": f"c{len(messages)}", "type": "tool_call"}
    return AIMessage(content="", tool_calls=[call])


def test_a_conversation_passed_back_as_its_messages_keeps_its_images(recognizer: Any) -> None:
    # No checkpointer: the caller keeps the conversation by passing back the messages it got
    # (LangChain's usual way). Their photos had become id placeholders, and the image tools
    # answered "no image in this conversation yet" (no id), or refused the photo's own id as
    # "not part of this conversation": the photo could be neither recognized nor taught.
    registry = ImageRegistry()
    model = PolicyChatModel(policy=_recognize_the_named_image)
    agent = create_rar_agent(model, recognizer=recognizer, registry=registry)
    data = _b64(recognizer, "red apple")
    block = {"type": "image", "base64": data, "mime_type": "image/png"}
    first = agent.invoke({"messages": [_user("look", block)]})
    (photo,) = first["images"]
    for words in ("and once more?", f"what about {photo}?"):
        again = agent.invoke({"messages": [*first["messages"], HumanMessage(words)]})
        (answer,) = last_tool_messages(again["messages"])
        assert answer.status == "success" and answer.artifact["label"] == "red apple", answer.text
        assert again["images"] == [photo]
    # an id merely typed into the conversation stays another conversation's image
    other = registry.register(base64.b64decode(_b64(recognizer, "blue jay")))
    typed = agent.invoke({"messages": [*first["messages"], HumanMessage(f"[image id {other}]")]})
    (refused,) = last_tool_messages(typed["messages"])
    assert refused.status == "error" and "not part of this conversation" in refused.text


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        ("nosuchprovider:some-model", "RankerError", "Unknown ranker 'nosuchprovider:some-model'"),
        ("openai:gpt-4o-mini", "MissingApiKeyError", "Chat model 'openai:gpt-4o-mini' needs"),
        ("hf:/nonexistent-model-dir", "ModelLoadError", "/nonexistent-model-dir"),
    ],
)
def test_a_model_string_that_cannot_drive_the_agent_is_a_rar_error(
    spec: str, error: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create_rar_agent("nosuch:model")`` raised LangChain's ValueError (its whole provider
    list) and a missing key the provider's own OpenAIError: neither is a RarError."""
    from rar_agent import errors

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(errors.RarError) as info:
        create_rar_agent(spec)
    assert type(info.value).__name__ == error and words in str(info.value)
    assert "\n" not in str(info.value)


def test_a_model_string_of_none_is_the_recognition_only_stand_in() -> None:
    reply = create_rar_agent("none").invoke({"messages": [HumanMessage("hello")]})
    assert reply["messages"][-1].text.startswith("No chat model is configured")
