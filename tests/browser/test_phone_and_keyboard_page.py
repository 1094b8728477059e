"""The chat page on a phone and from the keyboard alone, in a real browser.

On a 390x844 screen the box to send a photo shows without scrolling, and nothing floats over
an answer; a person who uses only the keyboard sends a photo (Tab to the upload button,
Enter), answers with the buttons under the answer (Shift+Tab, Enter) and types on, the focus
back in the input after every turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_page import cut_tables, learning_page, open_page, send_turn, wait_ready

pytestmark = pytest.mark.browser

_BOTS = "#rar-chat [data-testid='bot']"


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    """The page with learning on (no sign-in), over a small memory."""
    with learning_page(tmp_path_factory.mktemp("phone-page"), new_port()) as served:
        yield served


def _open(browser: Any, url: str, width: int, height: int) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": width, "height": height})
    return context, open_page(context, url)


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
        # (once its thumbnails have loaded: the page scrolls to the bottom when they do)
        reply.evaluate(
            "e => Promise.all([...e.querySelectorAll('img')].map(i => i.decode().catch(() => 0)))"
        )
        page.wait_for_timeout(500)
        reply.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        top, covered = reply.evaluate(
            "e => { const r = e.getBoundingClientRect(); const out = [];"
            " for (let i = 0; i <= 8; i++) {"
            "  const x = r.left + 4 + i * (r.width - 8) / 8;"
            "  const hit = document.elementFromPoint(x, r.top + 14);"
            "  if (!e.contains(hit)) out.push(hit && hit.outerHTML.slice(0, 100)); }"
            " return [r.top, out]; }"
        )
        assert 0 <= top < 844 - 14, top  # the answer's first line is in view
        assert covered == [], covered
        page.screenshot(path=str(artifacts_dir / "phone-answer.png"))
    finally:
        context.close()


LONG_NAMES = (
    "German short-haired pointer", "African grey parrot", "Egyptian Mau", "tiger cat",
    "tabby cat", "Border collie",
)  # fmt: skip
"""ImageNet names, as the built-in memory answers with them."""


@pytest.fixture(scope="module")
def long_names_url(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    """A page over a memory of long category names with stored thumbnails (so an answer
    shows the closest examples too), and a photo to ask about."""
    from PIL import Image, ImageDraw

    from rar_agent.ingest.builders import add_images
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer
    from rar_agent.ui import build_chat_page
    from tests.helpers.chat_page import served_page
    from tests.helpers.encoder_factories import hashing_encoder

    folder = tmp_path_factory.mktemp("long-names")
    items = []
    for i, label in enumerate(LONG_NAMES):
        image = Image.new("RGB", (96, 80), (40 + 30 * i, 120, 200 - 25 * i))
        ImageDraw.Draw(image).ellipse((10 + 5 * i, 10, 50 + 5 * i, 60), fill=(240, 230, 90))
        image.save(folder / f"{i}.png")
        items.append((str(folder / f"{i}.png"), label))
    memory = CategoryMemory.open(folder / "memory", collection="long-names")
    encoder = hashing_encoder()
    add_images(memory, encoder, items)
    recognizer = Recognizer(memory, encoder, k=5)
    with served_page(build_chat_page(recognizer, None), recognizer, new_port()) as url:
        yield url, Path(items[0][0])


@pytest.mark.parametrize("width", [320, 375])
def test_on_a_phone_the_answers_tables_fit_the_window(
    long_names_url: Any, browser: Any, artifacts_dir: Path, width: int
) -> None:
    """The candidate table and the examples beside the photo fit a phone's width: their last
    column (the scores) was cut at the window's right edge, with no sign that the table
    scrolled sideways (a phone shows no scroll bar until it is touched)."""
    url, photo = long_names_url
    context, page = _open(browser, url, width, 667)
    try:
        reply = send_turn(page, "", [photo])
        reply.evaluate(
            "e => Promise.all([...e.querySelectorAll('img')].map(i => i.decode().catch(() => 0)))"
        )
        page.screenshot(path=str(artifacts_dir / f"phone-{width}-tables.png"))
        assert reply.locator("table").count() == 2, reply.inner_text()  # candidates, examples
        assert reply.locator("table").first.locator("tbody tr").count() == 5
        assert cut_tables(reply) == []
    finally:
        context.close()


def _focused(page: Any) -> str:
    """What has the keyboard focus: its tag, accessible name and text."""
    return str(
        page.evaluate(
            "() => { const e = document.activeElement; return e.tagName + ' '"
            " + (e.getAttribute('aria-label') || '') + ' ' + (e.innerText || '').trim(); }"
        )
    )


def _tab_to(page: Any, wanted: str, key: str = "Tab", most: int = 40) -> None:
    """Press ``key`` until the focus is on something whose name or text holds ``wanted``."""
    for _ in range(most):
        page.keyboard.press(key)
        if wanted in _focused(page):
            return
    raise AssertionError(f"{wanted!r} not reached with {key}; focus on {_focused(page)!r}")


def _choose_file(page: Any, photo: Path, tries: int = 4) -> None:
    """Tab to *Upload a file*, press it from the keyboard, pick ``photo`` in the file chooser
    (the page may still be settling: the press is tried again, with Enter and with Space,
    the two keys that press a button; Enter alone once opened no chooser three times in a
    row in CI)."""
    for attempt in range(tries):
        wait_ready(page)
        _tab_to(page, "Upload a file")
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Enter" if attempt % 2 == 0 else "Space")
        except Exception:  # playwright's TimeoutError: no chooser opened
            if attempt == tries - 1:
                raise AssertionError(f"no file chooser; focus on {_focused(page)!r}") from None
            continue
        chooser.value.set_files(str(photo))
        return


def _turn_over(page: Any, before: int) -> str:
    page.wait_for_function(
        f'n => document.querySelectorAll("{_BOTS}").length > n', arg=before, timeout=90_000
    )
    wait_ready(page)
    return str(page.locator(_BOTS).last.inner_text())


def test_the_teaching_loop_from_the_keyboard_alone(
    page_url: Any, browser: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    """Tab to the upload button, Enter, pick the photo; Tab to the input, Enter: the answer
    comes and the focus is back in the input (it fell to the page's body, so the next Tab
    started from the top); Shift+Tab reaches the answer's buttons, Enter keeps the photo;
    then "undo" is typed straight away."""
    from PIL import Image, ImageDraw

    url, recognizer = page_url
    photo = tmp_path / "apple.png"  # another photo of the red apple (its mark moved)
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((6, 5, 16, 15), fill=(255, 255, 255))
    image.save(photo)
    context, page = _open(browser, url, 1280, 900)
    try:
        _choose_file(page, photo)
        page.locator("#rar-input img").first.wait_for(timeout=30_000)
        _tab_to(page, "TEXTAREA")
        page.keyboard.press("Enter")
        assert "Answer: red apple" in _turn_over(page, 0)
        page.wait_for_function("() => document.activeElement.tagName === 'TEXTAREA'")

        _tab_to(page, "Yes, keep this photo", key="Shift+Tab")
        page.keyboard.press("Enter")
        kept = _turn_over(page, 1)
        assert "'red apple'" in kept and "not stored" not in kept, kept
        page.wait_for_function("() => document.activeElement.tagName === 'TEXTAREA'")
        page.keyboard.type("undo")
        page.keyboard.press("Enter")
        assert "Undid 1 teaching event" in _turn_over(page, 2)
        page.screenshot(path=str(artifacts_dir / "keyboard-loop.png"))
    finally:
        context.close()
