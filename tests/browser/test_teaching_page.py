"""Correcting answers on the chat page in a real browser (no chat model, learning on): the
controls under an answer, free text, an image with its name, two images at once; the layout
at desktop and phone sizes. Screenshots go to the gitignored browser artifacts folder;
``RAR_UPDATE_DOCS_IMG=1`` writes them to docs/img/ instead, to refresh the docs' pictures
(so a plain test run leaves the tree as it was)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_page import learning_page, send_turn, wait_ready

pytestmark = pytest.mark.browser

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
_UPDATE_DOCS_IMG = os.environ.get("RAR_UPDATE_DOCS_IMG") == "1"


def _shots(artifacts_dir: Path) -> Path:
    """Where this run's screenshots go: docs/img/ only when asked to refresh them."""
    folder = DOCS_IMG if _UPDATE_DOCS_IMG else artifacts_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def _png(path: Path, colour: tuple[int, int, int], mark: int) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 56), colour)
    ImageDraw.Draw(image).rectangle((4 + mark, 4, 16 + mark, 16), fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("teach-page")
    with learning_page(folder, new_port()) as (url, recognizer):
        yield url, recognizer, folder


def _send(page: Any, text: str = "", files: list[Path] = ()) -> Any:  # type: ignore[assignment]
    return send_turn(page, text, files)


def _categories(page: Any) -> int:
    """The category count the page's header shows."""
    import re

    text = page.locator("#rar-header").inner_text()
    found = re.search(r"Memory: (\d+) categories", text)
    assert found, text
    return int(found.group(1))


def _wait_for_count(page: Any, count: int) -> None:
    """Wait until the header shows ``count`` categories (it is recounted after a reply)."""
    page.wait_for_function(
        "n => /Memory: (\\d+) categories/.exec("
        "document.querySelector('#rar-header').innerText)?.[1] == n",
        arg=count,
        timeout=10_000,
    )


def _next_reply(page: Any, before: int) -> Any:
    page.wait_for_function(
        "n => document.querySelectorAll(\"#rar-chat [data-testid='bot']\").length > n",
        arg=before,
        timeout=90_000,
    )
    wait_ready(page)
    return page.locator("#rar-chat [data-testid='bot']").last


@pytest.mark.parametrize("size", list(SIZES))
def test_correct_an_answer_with_the_controls_and_in_words(
    page_url: tuple[str, Any, Path], browser: Any, size: str, artifacts_dir: Path
) -> None:
    url, recognizer, folder = page_url
    width, height = SIZES[size]
    shade = 40 * list(SIZES).index(size)  # other pictures at each size
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.locator("#rar-input textarea").wait_for(timeout=60_000)
        header = page.locator("body").inner_text()
        assert "No chat model is configured" in header and "call it X" in header
        # the page is built with the count at start and recounted on load: wait for the
        # memory's current count (an earlier run's teaching included)
        known = len(recognizer.memory.labels())
        _wait_for_count(page, known)

        # a photo: the answer, the evidence, the controls under it
        photo = _png(folder / f"odd-{size}.png", (200, 40 + shade, 30), 7)
        bot = _send(page, files=[photo])
        reply = bot.inner_text()
        assert "Answer:" in reply and "img-" not in reply
        chat = page.locator("#rar-chat")
        box = chat.bounding_box()
        assert box is not None and box["height"] > 0.5 * height  # fills the window
        page.screenshot(path=str(_shots(artifacts_dir) / f"teach-answer-{size}.png"))

        # "No, it's ..." control: a correction stored under the other category
        option = page.get_by_role("button", name="No, it's").first
        option.wait_for(timeout=10_000)
        before = page.locator("#rar-chat [data-testid='bot']").count()
        option.click()
        fixed = _next_reply(page, before).inner_text()
        assert "Corrected: stored this photo as an example of" in fixed
        assert "had been answered" in fixed and "img-" not in fixed

        # free text names a new category for the next photo
        other = _png(folder / f"new-{size}.png", (20, 20 + shade, 20), 11)
        _send(page, files=[other])
        named = _send(page, f"call it mystery {size}").inner_text()
        assert f"'mystery {size}'" in named
        # the header counts the category just learned (it went stale before)
        _wait_for_count(page, known + 1)
        assert _categories(page) == known + 1 == len(recognizer.memory.labels())

        # an image and its name in one message; then two images, each answered
        boot = _png(folder / f"boot-{size}.png", (90, 60 + shade, 30), 2)
        stored = _send(page, "this is an ankle boot", files=[boot]).inner_text()
        assert "'ankle boot'" in stored and "not stored" not in stored
        pair = [recognizer.example_images["blue jay"], recognizer.example_images["green leaf"]]
        both = _send(page, files=pair).inner_text()
        assert "Answer: blue jay" in both and "Answer: green leaf" in both
        page.screenshot(
            path=str(_shots(artifacts_dir) / f"teach-conversation-{size}.png"), full_page=True
        )
        assert recognizer.memory.count("image", label="ankle boot") >= 1
    finally:
        context.close()
