"""Turns on the chat page run side by side, except two turns of one conversation (two tabs):
those take turns, so the second sees what the first added and no checkpoint is written by
two turns at once."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage

from rar_agent.conversations import ConversationStore
from rar_agent.ui import ChatSession


class OverlapAgent:
    """An agent whose every turn takes 0.2 s; it counts the turns running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    async def ainvoke(self, state: dict[str, Any], config: Any = None) -> dict[str, Any]:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.2)
        self.running -= 1
        return {"messages": [*state["messages"], AIMessage(content="seen")]}


def _overlap(conversations: list[str]) -> int:
    agent = OverlapAgent()
    with ConversationStore(":memory:") as store:
        session = ChatSession(agent, conversations=store)  # type: ignore[arg-type]

        async def turns() -> None:
            await asyncio.gather(*(session.respond("hello", [], c) for c in conversations))

        asyncio.run(turns())
    return agent.most


def test_turns_of_other_conversations_run_side_by_side() -> None:
    assert _overlap(["a" * 32, "b" * 32, "c" * 32]) == 3


def test_turns_of_one_conversation_take_turns() -> None:
    assert _overlap(["a" * 32, "a" * 32, "a" * 32]) == 1
