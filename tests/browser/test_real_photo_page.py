"""The chat page as ``rar-agent chat`` serves it with no options on a machine without a model
hub (the offline EfficientNet-Lite0 and its built-in memory of the 1000 ImageNet classes, no
ranker, no chat model), asked about a real photo (``examples/images/cat.jpg``) on a laptop and
on a phone.

``RAR_UPDATE_DOCS_IMG=1`` writes the laptop's picture to ``docs/img/chat_page.png`` (the
README's picture of the page) instead of the gitignored browser artifacts folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_page import cut_tables, open_page, send_turn, served_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CAT = ROOT / "examples" / "images" / "cat.jpg"
DOCS_IMG = ROOT / "docs" / "img"
DOMESTIC_CATS = {"tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian Mau"}


@pytest.fixture(scope="module")
def default_page(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[str]:
    """The page of ``rar-agent chat`` with its defaults, over an empty ``RAR_HOME``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.config import Settings
    from rar_agent.pipeline import Recognizer
    from rar_agent.ui import build_chat_page

    home = tmp_path_factory.mktemp("rar-home")
    settings = Settings(home=home, clip_model="efficientnet-lite0", ranker="none")
    recognizer = Recognizer.from_settings(settings, read_only=True)
    with served_page(build_chat_page(recognizer, None), recognizer, new_port()) as url:
        yield url


_BOTH_IN_VIEW = """() => {
  const box = document.querySelector('#rar-chat .bubble-wrap').getBoundingClientRect();
  const photo = document.querySelector('#rar-chat [data-testid=user] img').getBoundingClientRect();
  const rows = document.querySelectorAll('#rar-chat [data-testid=bot] table tbody tr');
  const last = rows[rows.length - 1].getBoundingClientRect();
  return {photo: Math.min(photo.bottom, box.bottom) - Math.max(photo.top, box.top),
          table: last.bottom <= box.bottom, box: [box.top, box.bottom], last: last.bottom};
}"""


def _ask_about_the_cat(browser: Any, url: str, width: int, height: int) -> tuple[Any, Any, Any]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = open_page(context, url)
    reply = send_turn(page, "What is in this photo?", [CAT])
    page.locator("#rar-chat [data-testid='user'] img").first.evaluate(
        "i => i.decode().catch(() => 0)"
    )
    return context, page, reply


def test_a_person_asks_about_a_photo_of_a_cat_on_a_laptop(
    default_page: str, browser: Any, artifacts_dir: Path
) -> None:
    context, page, reply = _ask_about_the_cat(browser, default_page, 1280, 900)
    try:
        text = reply.inner_text()
        answer = text.split("Answer: ", 1)[1].splitlines()[0].strip()
        assert answer in DOMESTIC_CATS, text
        assert "no chat model to talk with" in text
        assert "ordered by similarity to the memory only" in text
        assert reply.locator("table tbody tr").count() == 5
        assert cut_tables(reply) == []
        header = page.locator("#rar-header").inner_text()
        assert "Memory: 998 categories in 1000 entries" in header, header
        page.evaluate("() => { document.querySelector('#rar-chat .bubble-wrap').scrollTop = 0; }")
        page.wait_for_timeout(300)
        folder = DOCS_IMG if os.environ.get("RAR_UPDATE_DOCS_IMG") == "1" else artifacts_dir
        page.screenshot(path=str(folder / "chat_page.png"))
        # the photo and the answer about it are seen together: the photo showed 300 px
        # high, which pushed the answer's table out of the conversation's view
        photo = page.locator("#rar-chat [data-testid='user'] img").first
        photo.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        seen = page.evaluate(_BOTH_IN_VIEW)
        assert seen["photo"] > 0 and seen["table"], seen
    finally:
        context.close()


def test_the_same_on_a_phone(default_page: str, browser: Any, artifacts_dir: Path) -> None:
    context, page, reply = _ask_about_the_cat(browser, default_page, 375, 667)
    try:
        assert reply.locator("table tbody tr").count() == 5
        assert cut_tables(reply) == []
        reply.locator("table").first.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "chat_page_phone.png"))
    finally:
        context.close()


_BROKEN = """() => [...document.querySelectorAll('#rar-chat img, #rar-input img')]
  .filter(i => i.complete && i.naturalWidth === 0 && i.offsetParent !== null)
  .map(i => i.outerHTML.slice(0, 80))"""


def test_a_heic_photo_from_an_iphone_shows_its_name_where_the_browser_cannot_show_it(
    default_page: str, browser: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    """Chromium (and Firefox) cannot show HEIC: the photo was answered, but the person's own
    message showed a blank box where the photo should be."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    heic = tmp_path / "IMG_0042.heic"
    with Image.open(CAT) as image:
        image.save(heic, format="HEIF", quality=80)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(default_page, wait_until="domcontentloaded", timeout=60_000)
        page.locator("#rar-input textarea").wait_for(timeout=60_000)
        reply = send_turn(page, "", [heic])
        answer = reply.inner_text().split("Answer: ", 1)[1].splitlines()[0].strip()
        assert answer in DOMESTIC_CATS
        user = page.locator("#rar-chat [data-testid='user']").last
        user.get_by_text("IMG_0042.heic").wait_for(timeout=10_000)
        assert page.evaluate(_BROKEN) == []
        page.screenshot(path=str(artifacts_dir / "chat_page_heic.png"))
    finally:
        context.close()
