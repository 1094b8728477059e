"""The chat page keeps conversations: resumed after a restart, invisible to another one."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_page import open_page, send_turn
from tests.helpers.fake_chat import PolicyChatModel, remember_photos
from tests.helpers.small_memory import small_recognizer

pytestmark = pytest.mark.browser


def _serve(recognizer: Any, db: Path, port: int) -> tuple[Any, Any, str]:
    """A chat page over the conversation store in ``db`` (a fresh page: a restart)."""
    from rar_agent.conversations import ConversationStore
    from rar_agent.ui import build_chat_page, launch

    store = ConversationStore(db)
    page = build_chat_page(recognizer, PolicyChatModel(policy=remember_photos), conversations=store)
    launch(page, "127.0.0.1", port, block=False)
    return page, store, f"http://127.0.0.1:{port}/"


def _ask(page: Any, text: str, photo: Path | None = None) -> str:
    """Send one turn and return the new reply's text."""
    return str(send_turn(page, text, [photo] if photo else [], timeout_ms=60_000).inner_text())


def test_a_conversation_resumes_after_a_restart_and_another_cannot_see_it(
    tmp_path: Path,
    tiny_encoder: Any,
    browser: Any,
    new_port: Callable[[], int],
    artifacts_dir: Path,
) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    recognizer = small_recognizer(tmp_path / "memory", tiny_encoder)
    db = tmp_path / "home" / "conversations.sqlite"
    served, store, url = _serve(recognizer, db, new_port())
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = open_page(context, url)
        first = _ask(page, "What is this?", recognizer.example_images["blue jay"])
        assert "Answer: blue jay" in first
        second = _ask(page, "And this?", recognizer.example_images["red apple"])
        assert "Answer: red apple" in second
        note = page.locator("#rar-conversation").inner_text()
        conversation = re.search(r"conversation=([0-9a-f]{32})", note)
        assert conversation is not None, note
    finally:
        context.close()
        served.close()
        store.close()

    served, store, url = _serve(recognizer, db, new_port())  # the page restarted
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = open_page(context, f"{url}?conversation={conversation[1]}")
        shown = page.locator("#rar-chat").inner_text()
        assert "blue_jay.png" in shown and "Answer: red apple" in shown  # history is back
        answer = _ask(page, "what was the first photo?")
        assert "The first photo was blue_jay.png" in answer and answer.rstrip().endswith(
            ": blue jay."
        )
        page.screenshot(path=str(artifacts_dir / "chat_page_resumed.png"), full_page=True)

        other = open_page(context, url)  # a second conversation, same page and store
        assert conversation[1] not in other.locator("#rar-conversation").inner_text()
        assert "blue" not in other.locator("#rar-chat").inner_text()
        assert _ask(other, "what was the first photo?") == (
            "There is no photo in this conversation."
        )
    finally:
        context.close()
        served.close()
        store.close()
        recognizer.close()


def test_reloading_the_page_keeps_the_conversation(
    tmp_path: Path, tiny_encoder: Any, browser: Any, new_port: Callable[[], int]
) -> None:
    """A reload (F5, or a phone's pull-to-refresh) started a new, empty conversation: the
    answers seemed lost, though the link under the conversation would have brought them back.
    The page's address now names its conversation; clearing the chat names the new one."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    recognizer = small_recognizer(tmp_path / "memory", tiny_encoder)
    served, store, url = _serve(recognizer, tmp_path / "conversations.sqlite", new_port())
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = open_page(context, url)
        photo = recognizer.example_images["blue jay"]
        assert "Answer: blue jay" in _ask(page, "What is this?", photo)
        note = page.locator("#rar-conversation").inner_text()
        first = re.search(r"conversation=([0-9a-f]{32})", note)
        assert first is not None and page.url.endswith(f"?conversation={first[1]}"), page.url
        page.reload(wait_until="domcontentloaded")
        page.locator("#rar-conversation").get_by_text("Resumed").wait_for(timeout=30_000)
        assert "Answer: blue jay" in page.locator("#rar-chat").inner_text()
        page.locator("#rar-chat").get_by_label("Clear").first.click()
        page.wait_for_function(
            "old => !location.search.includes(old)", arg=first[1], timeout=30_000
        )
        assert re.search(r"\?conversation=[0-9a-f]{32}$", page.url), page.url
    finally:
        context.close()
        served.close()
        store.close()
        recognizer.close()
