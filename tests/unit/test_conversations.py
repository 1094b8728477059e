"""Conversations persist (SQLite under RAR_HOME, LangGraph's checkpointer) and stay apart."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from rar_agent.agent import create_rar_agent
from rar_agent.conversations import (
    ConversationStore,
    conversation_config,
    new_conversation_id,
)
from rar_agent.errors import ConfigError
from rar_agent.registry import ImageRegistry
from tests.helpers.fake_chat import PolicyChatModel, remember_photos
from tests.helpers.small_memory import small_recognizer


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Any:
    rec = small_recognizer(tmp_path_factory.mktemp("conversations"), tiny_encoder)
    yield rec
    rec.close()


def _photo_turn(recognizer: Any, label: str, text: str = "What is this?") -> HumanMessage:
    path = recognizer.example_images[label]
    block = {
        "type": "image",
        "base64": base64.b64encode(path.read_bytes()).decode(),
        "mime_type": "image/png",
        "name": path.name,
    }
    return HumanMessage(content=[{"type": "text", "text": text}, block])


def _agent(recognizer: Any, store: ConversationStore | Path) -> Any:
    return create_rar_agent(
        PolicyChatModel(policy=remember_photos),
        recognizer=recognizer,
        registry=ImageRegistry(),  # a fresh registry: as after a restart
        conversations=store,
    )


def test_a_restarted_agent_resumes_a_conversation_with_its_images(
    recognizer: Any, tmp_path: Path
) -> None:
    db = tmp_path / "home" / "conversations.sqlite"
    one, two = new_conversation_id(), new_conversation_id()
    with ConversationStore(db) as store:
        agent = _agent(recognizer, store)
        agent.invoke({"messages": [_photo_turn(recognizer, "blue jay")]}, conversation_config(one))
        agent.invoke({"messages": [_photo_turn(recognizer, "red apple")]}, conversation_config(one))
        agent.invoke({"messages": [_photo_turn(recognizer, "black cat")]}, conversation_config(two))

    with ConversationStore(db) as store:  # a new process would do exactly this
        agent = _agent(recognizer, store)
        first = agent.invoke(
            {"messages": [HumanMessage("what was the first photo?")]}, conversation_config(one)
        )
        assert first["messages"][-1].text.startswith("The first photo was blue_jay.png")
        assert first["messages"][-1].text.endswith(": blue jay.")
        again = agent.invoke(
            {"messages": [HumanMessage("recognize it again")]}, conversation_config(one)
        )
        tool = [m for m in again["messages"] if isinstance(m, ToolMessage)][-1]
        assert tool.status != "error", tool.text  # the image bytes came back from the store
        assert tool.artifact["label"] == "red apple"
        other = agent.invoke(
            {"messages": [HumanMessage("what was the first photo?")]}, conversation_config(two)
        )
        assert other["messages"][-1].text.startswith("The first photo was black_cat.png")
        assert {c.id for c in store.conversations()} == {one, two}
        assert len(store.image_ids(one)) == 2 and len(store.image_ids(two)) == 1


async def test_conversations_cannot_reach_each_others_messages_or_images(
    recognizer: Any, tmp_path: Path
) -> None:
    with ConversationStore(tmp_path / "c.sqlite") as store:
        agent = _agent(recognizer, store)
        mine, theirs = new_conversation_id(), new_conversation_id()
        out = await agent.ainvoke(
            {"messages": [_photo_turn(recognizer, "green leaf")]}, conversation_config(mine)
        )
        image_id = out["images"][-1]
        fresh = await agent.ainvoke(
            {"messages": [HumanMessage("what was the first photo?")]}, conversation_config(theirs)
        )
        assert fresh["messages"][-1].text == "There is no photo in this conversation."
        assert all("green" not in m.text for m in fresh["messages"])
        assert store.get_image(theirs, image_id) is None
        assert store.get_image(mine, image_id) is not None

        def thief(messages: list[BaseMessage]) -> AIMessage:
            if isinstance(messages[-1], ToolMessage):
                return AIMessage(messages[-1].text)
            calls = [
                {"name": "recognize_image", "args": {"image": image_id}, "id": "a",
                 "type": "tool_call"},
                {"name": "recognize_images", "args": {"images": [image_id]}, "id": "b",
                 "type": "tool_call"},
            ]  # fmt: skip
            return AIMessage("", tool_calls=calls)

        stealing = create_rar_agent(
            PolicyChatModel(policy=thief),
            recognizer=recognizer,
            conversations=store,
            allowed_roots=[tmp_path],
        )
        stolen = await stealing.ainvoke(
            {"messages": [HumanMessage("show me theirs")]}, conversation_config(theirs)
        )
        tools = [m for m in stolen["messages"] if isinstance(m, ToolMessage)]
        assert len(tools) == 2
        assert all(t.status == "error" and "not part of this conversation" in t.text
                   for t in tools)  # fmt: skip


def test_store_rules(tmp_path: Path, recognizer: Any) -> None:
    with pytest.raises(ConfigError, match="bad conversation id"):
        conversation_config("../../etc")
    with pytest.raises(ConfigError, match="not both"):
        create_rar_agent(
            None,
            recognizer=recognizer,
            conversations=tmp_path / "x.sqlite",
            checkpointer=ConversationStore(":memory:").checkpointer,
        )
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for home in (blocker, blocker / "below"):  # sqlite cannot open it; its folder cannot be made
        with pytest.raises(ConfigError, match="set RAR_HOME to such a folder") as refused:
            ConversationStore.under(home)
        # the folder in the way, not the system's "(File exists)" / "(Not a directory)"
        assert f"({blocker} is a file, not a folder)" in str(refused.value)
    store = ConversationStore.under(tmp_path / "home")
    assert Path(store.path) == tmp_path / "home" / "conversations.sqlite"
    registry = ImageRegistry()
    image = registry.get(registry.register(recognizer.example_images["blue jay"]))
    store.put_image("a", image)
    assert store.exists("a") and not store.exists("b")
    store.delete("a")
    assert not store.exists("a") and store.get_image("a", image.id) is None
    store.close()


async def test_chat_session_resumes_by_id_and_never_adopts_a_chosen_one(
    recognizer: Any, tmp_path: Path
) -> None:
    from rar_agent.ui import ChatSession

    db = tmp_path / "page.sqlite"
    with ConversationStore(db) as store:
        session = ChatSession(_agent(recognizer, store), conversations=store)
        conversation, history, _ = session.resume(None)
        assert history == []
        photo = recognizer.example_images["yellow banana"]
        reply = (await session.respond({"text": "", "files": [str(photo)]}, [], conversation))[
            "content"
        ]
        assert "Answer: yellow banana" in reply
    with ConversationStore(db) as store:  # the page restarted
        session = ChatSession(_agent(recognizer, store), conversations=store)
        same, history, note = session.resume(conversation)
        assert same == conversation and "Resumed" in note
        assert [h["role"] for h in history] == ["user", "assistant"]
        assert "🖼 yellow_banana.png" in history[0]["content"].replace("\\", "")
        assert "Answer: yellow banana" in history[1]["content"]
        answer = (await session.respond("what was the first photo?", [], conversation))["content"]
        assert answer.startswith("The first photo was yellow_banana.png")
        chosen = "0" * 32  # a well-formed id nobody created: a fresh random one instead
        other, history, note = session.resume(chosen)
        assert other != chosen and history == [] and "not found" in note
        fresh = (await session.respond("what was the first photo?", [], other))["content"]
        assert fresh == "There is no photo in this conversation."


async def test_a_signed_in_persons_conversation_is_theirs_alone(
    recognizer: Any, tmp_path: Path
) -> None:
    """On a page where people sign in, a conversation belongs to whoever started it: another
    person who opens its id gets a fresh conversation (told only that it was not found among
    theirs), and a turn sent to it anyway is refused; its owner resumes it, also after a
    restart, and a page without sign-in keeps ids as the key."""
    from rar_agent.ui import NOT_YOURS, ChatSession

    db = tmp_path / "team.sqlite"
    with ConversationStore(db) as store:
        session = ChatSession(_agent(recognizer, store), conversations=store)
        mine, _, _ = session.resume(None, "alice")
        photo = str(recognizer.example_images["blue jay"])
        reply = await session.respond({"text": "", "files": [photo]}, [], mine, "alice")
        assert "Answer: blue jay" in reply["content"]
        assert store.owner(mine) == "alice"

        other, history, note = session.resume(mine, "bob")
        assert other != mine and history == [] and "not found among yours" in note
        refused = await session.respond("what was the first photo?", [], mine, "bob")
        assert refused["content"] == NOT_YOURS
        assert store.owner(mine) == "alice"  # bob's try took nothing over

    with ConversationStore(db) as store:  # the page restarted
        session = ChatSession(_agent(recognizer, store), conversations=store)
        same, history, _ = session.resume(mine, "alice")
        assert same == mine and "Answer: blue jay" in history[-1]["content"]
        assert not store.opens_for(mine, None) and not store.opens_for(mine, "bob")
        unowned = new_conversation_id()  # a page without sign-in: nobody owns it
        registry = ImageRegistry()
        store.put_image(unowned, registry.get(registry.register(Path(photo))))
        assert store.opens_for(unowned, None) and store.owner(unowned) is None
        store.delete(mine)
        assert store.owner(mine) is None


async def test_a_resumed_conversation_offers_teaching_only_to_who_may_teach(
    tmp_path: Path, tiny_encoder: Any
) -> None:
    """A resumed conversation is rendered for the person who opens it: an unknown photo's
    offer to name it is made to someone who may teach, and someone who may not is told why."""
    from rar_agent.agent import LEARNING_NOT_GRANTED, RecognitionOnlyChatModel
    from rar_agent.ui import ChatSession

    rec = small_recognizer(tmp_path / "m", tiny_encoder).with_reject(0.9999)
    try:
        with ConversationStore(tmp_path / "c.sqlite") as store:
            reading = create_rar_agent(
                RecognitionOnlyChatModel(learning_off=LEARNING_NOT_GRANTED),
                recognizer=rec,
                conversations=store,
            )
            teaching = create_rar_agent(
                None, recognizer=rec, conversations=store, allow_learning=True
            )
            session = ChatSession(
                teaching,
                recognition_only=True,
                can_learn=True,
                conversations=store,
                reading_agent=reading,
                may_learn=lambda user: user == "alice",
            )
            photo = tmp_path / "odd.png"
            from PIL import Image

            Image.new("RGB", (40, 30), (90, 10, 200)).save(photo)
            conversation, _, _ = session.resume(None, "bob")
            turn = {"text": "", "files": [str(photo)]}
            said = await session.respond(turn, [], conversation, "bob")
            assert "Unknown" in said["content"], said["content"]
            _, history, _ = session.resume(conversation, "bob")
            assert "I will remember it" not in history[-1]["content"]
            assert LEARNING_NOT_GRANTED.strip() in history[-1]["content"]
    finally:
        rec.close()


async def test_a_tab_behind_its_conversation_is_told_to_reload(
    recognizer: Any, tmp_path: Path
) -> None:
    """Two tabs of one person on one conversation: a turn from the tab that does not show
    the other's newer answer is not run (its *yes* would be about a photo it does not show);
    reloaded, it goes on."""
    from rar_agent.ui import ELSEWHERE, ChatSession

    with ConversationStore(tmp_path / "tabs.sqlite") as store:
        session = ChatSession(_agent(recognizer, store), conversations=store)
        conversation, _, _ = session.resume(None, "alice")
        jay = {"text": "", "files": [str(recognizer.example_images["blue jay"])]}
        first = await session.respond(jay, [], conversation, "alice")
        _, one, _ = session.resume(conversation, "alice")  # tab one
        _, two, _ = session.resume(conversation, "alice")  # tab two, the same link
        apple = {"text": "", "files": [str(recognizer.example_images["red apple"])]}
        second = await session.respond(apple, one, conversation, "alice")
        assert "Answer: red apple" in second["content"] and "Answer: blue jay" in first["content"]
        stale = await session.respond("what was the first photo?", two, conversation, "alice")
        assert stale["content"] == ELSEWHERE
        _, reloaded, _ = session.resume(conversation, "alice")
        fresh = await session.respond("what was the first photo?", reloaded, conversation, "alice")
        assert fresh["content"].startswith("The first photo was blue_jay.png")
