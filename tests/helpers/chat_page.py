"""Driving the chat page in a browser (playwright): send a turn, wait for its reply."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cut_tables", "learning_page", "send_turn", "served_page", "wait_ready"]

_BOTS = "#rar-chat [data-testid='bot']"


@contextlib.contextmanager
def served_page(
    page: Any, recognizer: Any, port: int, auth: Callable[[str, str], bool] | None = None
) -> Iterator[str]:
    """``page`` served on ``port`` of 127.0.0.1 (``auth``: its login check, as
    :func:`rar_agent.ui.token_login` makes); yields its URL, then closes the page and
    ``recognizer``."""
    from rar_agent.ui import launch

    launch(page, "127.0.0.1", port, block=False, auth=auth)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()
        recognizer.close()


@contextlib.contextmanager
def learning_page(folder: Path, port: int) -> Iterator[tuple[str, Any]]:
    """A page with learning on and no sign-in over a small memory written under ``folder``
    (the hashing encoder), served on ``port``; yields its URL and recognizer."""
    import os

    from rar_agent.ui import build_chat_page
    from tests.helpers.encoder_factories import hashing_encoder
    from tests.helpers.small_memory import small_recognizer

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    recognizer = small_recognizer(folder, hashing_encoder())
    page = build_chat_page(recognizer, None, allow_learning=True)
    with served_page(page, recognizer, port) as url:
        yield url, recognizer


def open_page(context: Any, url: str) -> Any:
    """A new tab of the browser ``context`` on the chat page at ``url``, once the page's load
    events are over (they re-render what a key press or a click may land on)."""
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#rar-input textarea").wait_for(timeout=60_000)
    page.locator("#rar-header").get_by_text("Memory:").wait_for(timeout=30_000)
    page.locator("#rar-conversation").get_by_text("onversation").wait_for(timeout=30_000)
    return page


def wait_ready(page: Any, timeout_ms: int = 90_000) -> None:
    """Wait until the input is usable again: the previous turn is over.

    The reply shows before the turn ends; until it ends the input is disabled, and a file
    attached meanwhile is dropped when the turn re-enables it (seen on a loaded machine: the
    next message went without its photo).
    """
    page.wait_for_function(
        "() => { const t = document.querySelector('#rar-input textarea');"
        " return t && !t.disabled; }",
        timeout=timeout_ms,
    )


def send_turn(
    page: Any, text: str = "", files: Sequence[Path] = (), timeout_ms: int = 90_000
) -> Any:
    """Send one turn (text and photos) and return the locator of its reply, once the turn
    is over."""
    box = page.locator("#rar-input")
    before = page.locator(_BOTS).count()
    wait_ready(page, timeout_ms)
    if files:
        box.locator("input[type=file]").set_input_files([str(f) for f in files])
        # attached, not visible: the page hides the preview of a photo the browser cannot
        # show (HEIC), sometimes before a visibility check sees it
        box.locator("img").first.wait_for(state="attached", timeout=30_000)
    box.locator("textarea").fill(text)
    box.locator("textarea").press("Enter")
    page.wait_for_function(
        f'n => document.querySelectorAll("{_BOTS}").length > n', arg=before, timeout=timeout_ms
    )
    wait_ready(page, timeout_ms)
    return page.locator(_BOTS).last


_CUT_TABLES = """e => [...e.querySelectorAll('table')].filter(t => {
  const box = e.getBoundingClientRect(), r = t.getBoundingClientRect();
  return t.scrollWidth > t.clientWidth + 1 || r.right > box.right + 1 || r.right > innerWidth;
}).map(t => [t.innerText.slice(0, 40), t.scrollWidth, t.clientWidth])"""


def cut_tables(reply: Any) -> list[Any]:
    """The tables of a reply (a locator) that do not fit: wider than their box (they scroll
    sideways, which a phone does not show), or past the reply's or the window's right edge;
    each as ``[its first words, scroll width, visible width]``."""
    return list(reply.evaluate(_CUT_TABLES))
