"""The chat page in a real browser: upload a photo, ask, read the ranked answer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool

from tests.helpers.chat_page import served_page
from tests.helpers.fake_chat import PolicyChatModel, recognize_then_lookup
from tests.helpers.small_memory import COLOURS, small_recognizer

pytestmark = pytest.mark.browser

KNOWLEDGE = Path(__file__).resolve().parents[2] / "examples" / "knowledge.json"


@tool
def lookup_knowledge(category: str) -> str:
    """Look up facts about a category in the local knowledge file."""
    facts = json.loads(KNOWLEDGE.read_text(encoding="utf-8"))
    entry = facts.get(category.strip().lower())
    return json.dumps(entry) if entry else f"No notes about {category!r}."


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any, free_port: int
) -> Iterator[Any]:
    """The chat page on 127.0.0.1 (a free port) over a small memory and a fake model."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.ui import build_chat_page

    recognizer = small_recognizer(tmp_path_factory.mktemp("page"), tiny_encoder)
    model = PolicyChatModel(policy=recognize_then_lookup)
    page = build_chat_page(recognizer, model, tools=[lookup_knowledge])
    with served_page(page, recognizer, free_port) as url:
        yield url, recognizer


def test_upload_ask_and_read_the_ranked_answer(
    served: tuple[str, Any], browser: Any, artifacts_dir: Path
) -> None:
    url, recognizer = served
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        box = page.locator("#rar-input")
        box.locator("textarea").wait_for(timeout=60_000)
        box.locator("input[type=file]").set_input_files(str(recognizer.example_images["blue jay"]))
        box.locator("img").first.wait_for(timeout=30_000)  # the upload's thumbnail
        box.locator("textarea").fill("What is this, and what do you know about it?")
        box.locator("textarea").press("Enter")

        bot = page.locator("#rar-chat [data-testid='bot']").last
        bot.get_by_text("Answer:").wait_for(timeout=60_000)
        reply = bot.inner_text()
        assert "This looks like a blue jay" in reply
        assert "Cyanocitta cristata" in reply  # from the second tool (knowledge lookup)
        assert "Answer: blue jay" in reply
        assert any(label in reply for label in COLOURS)
        page.locator("#rar-chat table").last.wait_for(timeout=10_000)  # the candidate table
        rows = page.locator("#rar-chat table").last.locator("tbody tr")
        assert rows.count() == 3
        first_row = rows.first.inner_text()
        assert "blue jay" in first_row and "1.000" in first_row
        page.screenshot(path=str(artifacts_dir / "chat_page.png"), full_page=True)
    finally:
        context.close()


def test_each_browser_session_has_its_own_conversation(
    served: tuple[str, Any], browser: Any, artifacts_dir: Path
) -> None:
    """A new session has no image yet: the tool error shows as a readable message."""
    url, _ = served
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    page = context.new_page()
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        box = page.locator("#rar-input textarea")
        box.wait_for(timeout=60_000)
        box.fill("What is in my photo?")
        box.press("Enter")
        bot = page.locator("#rar-chat [data-testid='bot']").last
        bot.get_by_text("Tool error").wait_for(timeout=60_000)
        reply = bot.inner_text()
        assert "no image in this conversation yet" in reply
        assert "Sorry, recognition failed" in reply
        page.screenshot(path=str(artifacts_dir / "chat_page_tool_error.png"))
    finally:
        context.close()


_PASTE = """(b64) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], 'pasted.png', {type: 'image/png'}));
  const event = new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true});
  document.querySelector('#rar-input textarea').dispatchEvent(event);
}"""


def test_paste_a_photo_without_a_chat_model(
    served: tuple[str, Any], browser: Any, artifacts_dir: Path, new_port: Any
) -> None:
    """Recognition-only page (no LLM): a pasted photo gets retrieval/ranking output."""
    import base64

    from rar_agent.ui import build_chat_page, launch

    _, recognizer = served
    plain = build_chat_page(recognizer, None)
    port = new_port()
    launch(plain, "127.0.0.1", port, block=False)
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
        box = page.locator("#rar-input textarea")
        box.wait_for(timeout=60_000)
        photo = recognizer.example_images["yellow banana"].read_bytes()
        page.evaluate(_PASTE, base64.b64encode(photo).decode())
        page.locator("#rar-input img").first.wait_for(timeout=30_000)
        box.press("Enter")
        bot = page.locator("#rar-chat [data-testid='bot']").last
        bot.get_by_text("Answer:").wait_for(timeout=60_000)
        reply = bot.inner_text()
        assert reply.startswith("The closest categories in memory")
        assert "Answer: yellow banana" in reply
        page.screenshot(path=str(artifacts_dir / "chat_page_no_llm.png"))
    finally:
        context.close()
        plain.close()
