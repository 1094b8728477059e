"""The chat page on a phone, in a real browser: on a 390x844 screen the box to send a photo
shows without scrolling, and nothing floats over an answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_page import send_turn, served_page
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    """The page with learning on (no sign-in), over a small memory."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.ui import build_chat_page

    folder = tmp_path_factory.mktemp("phone-page")
    recognizer = small_recognizer(folder, hashing_encoder())
    page = build_chat_page(recognizer, None, allow_learning=True)
    with served_page(page, recognizer, new_port()) as url:
        yield url, recognizer


def _open(browser: Any, url: str, width: int, height: int) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#rar-input textarea").wait_for(timeout=60_000)
    page.locator("#rar-header").get_by_text("Memory:").wait_for(timeout=30_000)
    return context, page


def test_on_a_phone_the_photo_box_shows_and_nothing_covers_an_answer(
    page_url: Any, browser: Any, artifacts_dir: Path
) -> None:
    url, recognizer = page_url
    context, page = _open(browser, url, 390, 844)
    try:
        page.screenshot(path=str(artifacts_dir / "phone-first-view.png"))
        box = page.locator("#rar-input").bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 844, box
        reply = send_turn(page, "", [recognizer.example_images["blue jay"]])
        assert "Answer: blue jay" in reply.inner_text()
        # the answer's first line, scrolled to the top of the conversation, is not covered
        # (a floating label badge and the conversation's buttons were drawn over it)
        reply.evaluate("e => e.scrollIntoView({block: 'start'})")
        covered = reply.evaluate(
            "e => { const r = e.getBoundingClientRect(); const out = [];"
            " for (let i = 0; i <= 8; i++) {"
            "  const x = r.left + 4 + i * (r.width - 8) / 8;"
            "  const hit = document.elementFromPoint(x, r.top + 14);"
            "  if (!e.contains(hit)) out.push(hit && hit.outerHTML.slice(0, 100)); }"
            " return out; }"
        )
        assert covered == [], covered
        page.screenshot(path=str(artifacts_dir / "phone-answer.png"))
    finally:
        context.close()
