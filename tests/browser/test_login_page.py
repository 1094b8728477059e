"""The shared chat page in a real browser: sign in with a token, teach by the token's scopes.

A team's page asks for a login (a token's name and the token); a person whose token has the
``learn`` scope teaches the memory from the page, under their name; one whose token lacks it
is told so (not that the page was started without learning), and nothing is stored.
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

SCOPE_NOTE = "signed in to recognize photos, not to teach"


@pytest.fixture(scope="module")
def team_page(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    """The page with learning on, behind a login: alice may teach, bob may not."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.auth import TokenStore
    from rar_agent.ui import build_chat_page, token_login

    folder = tmp_path_factory.mktemp("team-page")
    store = TokenStore(folder / "auth.toml")
    tokens = {"alice": store.add("alice", ["learn"])[1], "bob": store.add("bob", ["recognize"])[1]}
    recognizer = small_recognizer(folder, hashing_encoder()).with_reject(0.9)
    page = build_chat_page(recognizer, None, allow_learning=True, logins=store)
    with served_page(page, recognizer, new_port(), auth=token_login(store)) as url:
        yield url, tokens, recognizer, folder


def _photo(path: Path) -> Path:
    """A picture unlike the memory's (an unknown image at the 0.9 threshold)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 56), (120, 200, 210))
    ImageDraw.Draw(image).ellipse((10, 8, 50, 48), fill=(30, 30, 30))
    image.save(path)
    return path


def _say(page: Any, text: str = "", files: tuple[Path, ...] = ()) -> str:
    return str(send_turn(page, text, files).inner_text())


def _sign_in(browser: Any, url: str, name: str, token: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.get_by_text("Sign in with your token").wait_for(timeout=60_000)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(token)
    page.get_by_role("button", name="Login").click()
    page.locator("#rar-input textarea").wait_for(timeout=60_000)
    return context, page


def test_sign_in_then_teach_by_the_tokens_scope(team_page: Any, browser: Any) -> None:
    url, tokens, recognizer, folder = team_page
    before = recognizer.memory.count()

    context, page = _sign_in(browser, url, "bob", tokens["bob"])
    try:
        page.wait_for_function(
            "s => document.querySelector('#rar-header').innerText.includes(s)",
            arg=SCOPE_NOTE,
            timeout=30_000,
        )  # the header says why bob cannot teach, and offers no teaching
        assert "call it X" not in page.locator("#rar-header").inner_text()
        seen = _say(page, files=(_photo(folder / "bob.png"),))
        assert "Unknown" in seen and SCOPE_NOTE in seen and "--allow-learning" not in seen
        refused = _say(page, "call it teal moon")
        assert SCOPE_NOTE in refused and "--allow-learning" not in refused
        # in words for the person at the page: who to ask, not a command to run
        assert "ask whoever runs this page" in refused and "rar-agent" not in refused
        assert recognizer.memory.count() == before
    finally:
        context.close()

    context, page = _sign_in(browser, url, "alice", tokens["alice"])
    try:
        assert "call it X" in page.locator("#rar-header").inner_text()
        seen = _say(page, files=(_photo(folder / "alice.png"),))
        assert "Unknown" in seen and "I will remember it" in seen
        stored = _say(page, "call it teal moon")
        assert "'teal moon'" in stored and "not stored" not in stored
    finally:
        context.close()
    assert recognizer.memory.count() == before + 1
    points, _ = recognizer.memory.scroll(None, 100)
    [taught] = [p[3]["taught"] for p in points if p[3].get("label") == "teal moon"]
    assert taught["by"] == "alice" and taught["via"] == "chat"


def test_a_refused_sign_in_says_where_tokens_come_from(team_page: Any, browser: Any) -> None:
    """A wrong token was answered with Gradio's "Incorrect Credentials" and nothing more; the
    login page says what to check and where tokens come from (rar-agent auth add, the learn
    scope to teach), beside that refusal."""
    url, tokens, _, _ = team_page
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.get_by_text("Sign in with your token").wait_for(timeout=60_000)
        page.locator("input[type=text]").first.fill("bob")
        page.locator("input[type=password]").fill(tokens["alice"])  # another person's token
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)
        shown = " ".join(page.locator("body").inner_text().split())
        assert "If it is refused, check both" in shown, shown
        assert "rar-agent auth add NAME --scope recognize" in shown, shown
        assert "--scope learn" in shown and "rar-agent auth list" in shown, shown
        assert not page.locator("#rar-input textarea").count()  # not signed in
    finally:
        context.close()


def test_the_header_names_the_sign_in_and_a_revoked_token_is_answered_nothing(
    team_page: Any, browser: Any
) -> None:
    """The page says who is signed in and how to sign out; a token revoked while its
    person is signed in (``rar-agent auth revoke``) gets no more answers, not even
    recognition, and signing out leads back to the login."""
    url, _, recognizer, folder = team_page
    from rar_agent.auth import TokenStore

    store = TokenStore(folder / "auth.toml")
    token = store.add("carol", ["recognize"])[1]
    context, page = _sign_in(browser, url, "carol", token)
    try:
        page.wait_for_function(
            "() => document.querySelector('#rar-header').innerText.includes('Signed in as carol')",
            timeout=30_000,
        )
        assert "Answer" in _say(page, files=(recognizer.example_images["red apple"],))
        store.revoke("carol")
        refused = _say(page, files=(recognizer.example_images["blue jay"],))
        assert "no longer valid" in refused and "blue jay" not in refused, refused
        link = page.locator("#rar-header").get_by_role("link", name="sign out")
        page.goto(url + str(link.get_attribute("href")), wait_until="domcontentloaded")
        page.get_by_text("Sign in with your token").wait_for(timeout=60_000)
    finally:
        context.close()


def test_two_people_at_once_each_see_only_their_own_conversations(
    team_page: Any, browser: Any, artifacts_dir: Path
) -> None:
    """Alice and bob signed in at the same time, in two browsers: bob opening the link of
    alice's conversation gets a new one of his own (nothing of hers shown, and his turns
    never join hers); alice, in a second tab, gets hers back with its answer."""
    import re

    url, tokens, recognizer, _ = team_page
    alice_context, alice = _sign_in(browser, url, "alice", tokens["alice"])
    bob_context = None
    try:
        assert "Answer: blue jay" in _say(alice, files=(recognizer.example_images["blue jay"],))
        note = alice.locator("#rar-conversation").inner_text()
        found = re.search(r"conversation=([0-9a-f]{32})", note)
        assert found is not None, note
        link = f"{url}?conversation={found[1]}"

        bob_context, bob = _sign_in(browser, link, "bob", tokens["bob"])
        bob.locator("#rar-conversation").get_by_text("not found among yours").wait_for(
            timeout=30_000
        )
        assert found[1] not in bob.locator("#rar-conversation").inner_text()
        assert "blue jay" not in bob.locator("#rar-chat").inner_text()
        assert "Answer: red apple" in _say(bob, files=(recognizer.example_images["red apple"],))
        bob.screenshot(path=str(artifacts_dir / "two-people-bob.png"), full_page=True)

        again = alice_context.new_page()  # alice's second tab, on her link
        again.goto(link, wait_until="domcontentloaded", timeout=60_000)
        again.locator("#rar-conversation").get_by_text("Resumed conversation").wait_for(
            timeout=30_000
        )
        shown = again.locator("#rar-chat").inner_text()
        assert "Answer: blue jay" in shown and "Answer: red apple" not in shown
    finally:
        alice_context.close()
        if bob_context is not None:
            bob_context.close()


def test_a_second_tab_behind_the_conversation_asks_for_a_reload(
    team_page: Any, browser: Any
) -> None:
    """Alice in two tabs on one conversation: the tab that does not show the other's newer
    answer does not act on it ("yes, keep it" there would keep a photo it never showed);
    reloaded, it shows that answer."""
    import re

    url, tokens, recognizer, _ = team_page
    context, first = _sign_in(browser, url, "alice", tokens["alice"])
    try:
        assert "Answer: blue jay" in _say(first, files=(recognizer.example_images["blue jay"],))
        found = re.search(
            r"conversation=([0-9a-f]{32})", first.locator("#rar-conversation").inner_text()
        )
        assert found is not None
        second = context.new_page()
        second.goto(f"{url}?conversation={found[1]}", wait_until="domcontentloaded")
        second.locator("#rar-conversation").get_by_text("Resumed conversation").wait_for(
            timeout=30_000
        )
        assert "Answer: red apple" in _say(first, files=(recognizer.example_images["red apple"],))
        before = recognizer.memory.count()
        stale = _say(second, "yes, keep it")
        assert "went on in another tab" in stale and "reload the page" in stale, stale
        assert recognizer.memory.count() == before
        second.reload(wait_until="domcontentloaded")
        second.locator("#rar-chat").get_by_text("Answer: red apple").wait_for(timeout=30_000)
    finally:
        context.close()
