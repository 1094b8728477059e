"""A tool-calling fake chat model driven by a policy function (for agent and UI tests).

LangChain's built-in fakes have no ``bind_tools``, so agents cannot use them. This one
accepts tools, records every message list it was called with, and asks ``policy`` for the
next message, so a test can script a multi-step tool conversation whose later steps depend
on what the tools actually returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

__all__ = ["PolicyChatModel", "recognize_then_lookup", "remember_photos"]

_ID_AND_FILE = re.compile(r"\[image id (img-[0-9a-f]+), file ([^\]]+)\]")


class PolicyChatModel(GenericFakeChatModel):
    """A fake chat model whose next message is ``policy(messages)``.

    Attributes:
        policy: Maps the conversation so far to the next ``AIMessage``.
        seen: Every message list the model was called with (for assertions).
        bound_tools: Names of the tools bound with :meth:`bind_tools`.
    """

    messages: Any = Field(default_factory=lambda: iter(()))
    policy: Callable[[list[BaseMessage]], AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    bound_tools: list[str] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> PolicyChatModel:
        self.bound_tools = [getattr(t, "name", None) or t.__name__ for t in tools]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.policy(list(messages)))])


def _call(name: str, args: dict[str, Any], n: int) -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": f"call-{n}", "type": "tool_call"}],
    )


def recognize_then_lookup(messages: list[BaseMessage]) -> AIMessage:
    """Policy: recognize the latest image, look the answer up, then answer with both.

    Step 1 (after a user turn): ``recognize_image`` with no id (the latest image).
    Step 2 (after the recognition result): ``lookup_knowledge`` with the answer parsed from
    the tool's text. Step 3: a reply quoting both tool results.
    """
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    last_user = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    turn_tools = [m for m in messages[last_user:] if isinstance(m, ToolMessage)]
    if not turn_tools:
        return _call("recognize_image", {}, len(tools) + 1)
    last = turn_tools[-1]
    if last.name == "recognize_image":
        if last.status == "error":
            return AIMessage(content=f"Sorry, recognition failed: {last.text}")
        label = last.text.split(": ", 1)[1].split(" (", 1)[0]
        return _call("lookup_knowledge", {"category": label}, len(tools) + 1)
    facts = json.loads(last.text) if last.text.startswith("{") else {"summary": last.text}
    label = next(
        m.text.split(": ", 1)[1].split(" (", 1)[0]
        for m in turn_tools
        if m.name == "recognize_image"
    )
    return AIMessage(content=f"This looks like a {label}. {facts.get('summary', '')}".strip())


def remember_photos(messages: list[BaseMessage]) -> AIMessage:
    """Policy: recognize each new photo; answer "what was the first photo?" from the history.

    A user turn with an image id calls ``recognize_image`` (the latest image); "... again"
    recognizes the latest image once more (so its bytes must still be at hand); "what was
    the first photo?" is answered from the conversation's own messages: the first image
    placeholder and the recognition result that named it.
    """
    last = messages[-1]
    if isinstance(last, ToolMessage):
        return AIMessage(content=last.text.splitlines()[0])
    text = last.text
    if "first photo" in text:
        seen = [_ID_AND_FILE.search(m.text) for m in messages if isinstance(m, HumanMessage)]
        first = next((m for m in seen if m), None)
        if first is None:
            return AIMessage(content="There is no photo in this conversation.")
        answer = next(
            m.text.split(": ", 1)[1].split(" (", 1)[0]
            for m in messages
            if isinstance(m, ToolMessage) and first[1] in m.text
        )
        return AIMessage(content=f"The first photo was {first[2]} ({first[1]}): {answer}.")
    if "again" in text or _ID_AND_FILE.search(text):
        return _call("recognize_image", {}, len(messages))
    return AIMessage(content="Send me a photo.")
