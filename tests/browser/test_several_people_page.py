"""Several people on one chat page: one person's slow turn does not hold up the others.

Gradio runs one turn of an event at a time by default, for everyone on the page: while a
ranker took 30 s over one person's photo, every other person's photo waited behind it. Here
the first ranker call waits until the test releases it (or 60 s): a second person, in a
browser session of their own, sends a photo meanwhile and must be answered first.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from tests.helpers.chat_page import open_page, send_turn, served_page, wait_ready
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer

pytestmark = pytest.mark.browser

_BOTS = "#rar-chat [data-testid='bot']"


class HeldRanker(FakeListChatModel):
    """A ranking model whose first call waits for ``release`` (at most 60 s): a slow turn."""

    release: Any = None
    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls == 1:
            self.release.wait(60)
        return super()._call(*args, **kwargs)


@pytest.fixture()
def slow_page(tmp_path: Path, new_port: Any) -> Iterator[tuple[str, Any, threading.Event]]:
    """A page (no chat model) whose recognizer ranks with :class:`HeldRanker`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.pipeline import Recognizer
    from rar_agent.ui import build_chat_page

    release = threading.Event()
    small = small_recognizer(tmp_path, hashing_encoder())
    ranker = HeldRanker(responses=[""], release=release)  # no order: retrieval's stands
    recognizer = Recognizer(small.memory, small.encoder, ranker=ranker, k=3)
    page = build_chat_page(recognizer, None)
    try:
        with served_page(page, recognizer, new_port()) as url:
            yield url, small.example_images, release
    finally:
        release.set()  # a failed test leaves no turn waiting


def _open(browser: Any, url: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    return context, open_page(context, url)


def test_a_slow_turn_does_not_hold_up_another_persons_turn(
    slow_page: tuple[str, Any, threading.Event], browser: Any, artifacts_dir: Path
) -> None:
    url, photos, release = slow_page
    (ana, ana_page), (ben, ben_page) = _open(browser, url), _open(browser, url)
    try:
        box = ana_page.locator("#rar-input")
        box.locator("input[type=file]").set_input_files(str(photos["blue jay"]))
        box.locator("img").first.wait_for(timeout=30_000)
        box.locator("textarea").press("Enter")
        # Ana's turn is under way (her input is disabled until it ends)
        ana_page.wait_for_function(
            "() => document.querySelector('#rar-input textarea').disabled", timeout=30_000
        )
        started = time.monotonic()
        reply = send_turn(ben_page, "", [photos["red apple"]], timeout_ms=40_000)
        waited = time.monotonic() - started
        assert "Answer: red apple" in reply.inner_text()
        assert ana_page.locator(_BOTS).count() == 0  # Ana's slow turn is still going
        release.set()
        ana_page.locator(_BOTS).first.wait_for(timeout=60_000)
        wait_ready(ana_page)
        assert "Answer:" in ana_page.locator(_BOTS).first.inner_text()
        print(f"Ben's turn took {waited:.1f} s while Ana's was held")
        ben_page.screenshot(path=str(artifacts_dir / "several-people-ben.png"))
    finally:
        release.set()
        ana.close()
        ben.close()
