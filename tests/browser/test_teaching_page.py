"""Correcting answers on the chat page in a real browser (no chat model, learning on): the
controls under an answer, free text, an image with its name, two images at once; the layout
at desktop and phone sizes. Screenshots go to the gitignored browser artifacts folder.

``RAR_UPDATE_DOCS_IMG=1`` writes them to docs/img/ instead, to refresh the docs' pictures
(so a plain test run leaves the tree as it was), and runs the same steps on real photos: the
offline EfficientNet-Lite0 over a few-shot memory of Fashion-MNIST garments (Debian's
``dataset-fashion-mnist``), so that the pictures show a loop a person would recognize (a
shirt answered "t-shirt or top" and corrected, an unknown bag named, an ankle boot taught).
A plain run uses coloured squares and a hashing encoder: fast, and the answers are known."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rar_agent.errors import RarError
from tests.helpers.chat_page import send_turn, served_page, wait_ready
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer

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


@dataclass
class Photos:
    """What one size's run sends: a photo to correct (and its true label, when known), a
    photo to name, an ankle boot, and two stored examples with their labels."""

    odd: Path
    truth: str | None
    new: Path
    name: str
    boot: Path
    pair: list[tuple[Path, str]]


def _squares(recognizer: Any, folder: Path) -> dict[str, Photos]:
    """Coloured squares the hashing encoder tells apart (no true label for the odd one)."""
    examples = recognizer.example_images
    pair = [(examples["blue jay"], "blue jay"), (examples["green leaf"], "green leaf")]
    photos = {}
    for index, size in enumerate(SIZES):
        shade = 40 * index  # other pictures at each size
        photos[size] = Photos(
            _png(folder / f"odd-{size}.png", (200, 40 + shade, 30), 7), None,
            _png(folder / f"new-{size}.png", (20, 20 + shade, 20), 11), f"mystery {size}",
            _png(folder / f"boot-{size}.png", (90, 60 + shade, 30), 2), pair,
        )  # fmt: skip
    return photos


GARMENTS = ("t-shirt or top", "trouser", "pullover", "dress", "coat", "shirt", "sneaker")
"""The docs' memory: 3 photos of each; bags, sandals and ankle boots are taught on the page."""


def _garments(folder: Path) -> tuple[Any, dict[str, Photos]]:
    """A recognizer over Fashion-MNIST garments with EfficientNet-Lite0, and real photos:
    per size a photo answered wrongly with its true label second, an unknown thing to name
    (a bag, then a sandal), an ankle boot; the pair are two stored examples."""
    from rar_agent.datasets import export_imagefolder
    from rar_agent.encoders import load_encoder
    from rar_agent.ingest.builders import add_images
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    shown = [*GARMENTS, "bag", "sandal", "ankle boot"]
    try:
        train = export_imagefolder(folder / "train", "train", 3, classes=GARMENTS)
        test = export_imagefolder(folder / "test", "test", 12, classes=shown)
    except RarError as e:
        pytest.skip(f"the docs' pictures need Fashion-MNIST: {e}")
    for path, _label in train + test:  # 28 px is a speck on the page; the encoder resizes
        _enlarge(Path(path))
    memory = CategoryMemory.open(folder / "memory", collection="garments")
    encoder = load_encoder("efficientnet-lite0")
    add_images(memory, encoder, train)
    served = Recognizer.from_memory(memory, encoder, k=3)
    picker = Recognizer(memory, encoder, k=3)  # its unknown answers stay off the page's log
    by_label: dict[str, list[Path]] = {}
    for path, label in test:
        by_label.setdefault(label, []).append(Path(path))
    pair = [next((Path(p), x) for p, x in train if x == label) for label in ("trouser", "sneaker")]
    photos = {}
    for size, truth, new in zip(SIZES, ("shirt", "pullover"), ("bag", "sandal"), strict=True):
        photos[size] = Photos(
            _misanswered(picker, by_label[truth], truth), truth,
            _unknown(picker, by_label[new]), new,
            by_label["ankle boot"][list(SIZES).index(size)], pair,
        )  # fmt: skip
    return served, photos


def _enlarge(path: Path, side: int = 112) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(path)


def _misanswered(recognizer: Any, paths: list[Path], truth: str) -> Path:
    """The first photo answered with another known label and ``truth`` second."""
    for path in paths:
        result = recognizer.recognize(path)
        labels = [c.label for c in result.candidates]
        if not result.unknown and labels[0] != truth and labels[1:2] == [truth]:
            return path
    raise AssertionError(f"no photo of {truth} has it second: pick another class")


def _unknown(recognizer: Any, paths: list[Path]) -> Path:
    """The first photo answered unknown (what a person then names), else the first."""
    return next((p for p in paths if recognizer.recognize(p).unknown), paths[0])


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, new_port: Any) -> Iterator[Any]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rar_agent.ui import build_chat_page

    folder = tmp_path_factory.mktemp("teach-page")
    if _UPDATE_DOCS_IMG:
        recognizer, photos = _garments(folder)
    else:
        recognizer = small_recognizer(folder, hashing_encoder())
        photos = _squares(recognizer, folder)
    page = build_chat_page(recognizer, None, allow_learning=True)
    with served_page(page, recognizer, new_port()) as url:
        yield url, recognizer, photos


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
    url, recognizer, all_photos = page_url
    photos = all_photos[size]
    width, height = SIZES[size]
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
        bot = _send(page, files=[photos.odd])
        reply = bot.inner_text()
        assert "Answer:" in reply and "img-" not in reply
        chat = page.locator("#rar-chat")
        box = chat.bounding_box()
        assert box is not None and box["height"] > 0.5 * height  # fills the window
        page.screenshot(path=str(_shots(artifacts_dir) / f"teach-answer-{size}.png"))

        # "No, it's ..." control: a correction stored under the other category
        wrong = f"No, it's {photos.truth}" if photos.truth else "No, it's"
        option = page.get_by_role("button", name=wrong).first
        option.wait_for(timeout=10_000)
        before = page.locator("#rar-chat [data-testid='bot']").count()
        option.click()
        fixed = _next_reply(page, before).inner_text()
        assert f"Corrected: stored {photos.odd.name} as an example of" in fixed  # the upload
        assert "had been answered" in fixed and "img-" not in fixed

        # free text names a new category for the next photo
        _send(page, files=[photos.new])
        named = _send(page, f"call it {photos.name}").inner_text()
        assert f"'{photos.name}'" in named
        # the header counts the category just learned (it went stale before)
        _wait_for_count(page, known + 1)
        assert _categories(page) == known + 1 == len(recognizer.memory.labels())

        # an image and its name in one message; then two images, each answered
        stored = _send(page, "this is an ankle boot", files=[photos.boot]).inner_text()
        assert "'ankle boot'" in stored and "not stored" not in stored
        both = _send(page, files=[path for path, _label in photos.pair]).inner_text()
        assert all(f"Answer: {label}" in both for _path, label in photos.pair), both
        page.screenshot(
            path=str(_shots(artifacts_dir) / f"teach-conversation-{size}.png"), full_page=True
        )
        assert recognizer.memory.count("image", label="ankle boot") >= 1
    finally:
        context.close()
