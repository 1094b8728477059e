"""The pixel limit decides alone, before Pillow's own decompression-bomb check speaks (89 MP
warns, 178 MP refuses), and names whose limit it is: a server's, or the caller's own."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from rar_agent.errors import ImageError
from rar_agent.images import check_declared_size, load_image
from rar_agent.tools import make_tools
from rar_agent.tools.provenance import teaching_as
from tests.helpers.crafted_images import png_declaring
from tests.helpers.encoder_factories import hashing_encoder
from tests.helpers.small_memory import small_recognizer


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture()
def no_warning() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised in the test, however the filters stood (none may be)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
    assert [str(w.message) for w in seen] == []


def test_a_100_megapixel_image_is_refused_by_our_limit_without_pillows_warning(
    tmp_path: Path, no_warning: list[warnings.WarningMessage]
) -> None:
    bomb = png_declaring(10_000, 10_000)  # between Pillow's warning (89 MP) and refusal (178)
    with pytest.raises(ImageError, match="is 10000x10000 pixels, over the limit of 64,000,000"):
        load_image(bomb)
    with small_recognizer(tmp_path, hashing_encoder()) as recognizer:
        tool = make_tools(recognizer, max_pixels=64_000_000)[0]
        answer = tool.invoke({"image": _data_uri(bomb)})
    # it printed Pillow's DecompressionBombWarning on stderr first
    assert "is 10000x10000 pixels, over the limit of 64,000,000 pixels" in answer, answer


def test_a_limit_above_pillows_warning_accepts_what_it_allows(
    no_warning: list[warnings.WarningMessage],
) -> None:
    big = png_declaring(10_000, 10_000)
    check_declared_size(big, max_pixels=150_000_000, what="big.png")  # nothing said
    with pytest.raises(ImageError, match="truncated") as decoded:
        load_image(big, max_pixels=150_000_000)  # its header passes; it holds no pixels
    # it read "declares 100,000,000 pixels, over the limit of 150,000,000"
    assert "over the limit" not in str(decoded.value)
    huge = png_declaring(20_000, 10_000)  # over Pillow's refusal: said as Pillow's own
    with pytest.raises(ImageError, match="200,000,000 pixels, over Pillow's own limit of"):
        check_declared_size(huge, max_pixels=300_000_000, what="huge.png")
    with pytest.raises(ImageError, match="200,000,000 pixels, over the limit of 64,000,000"):
        load_image(huge)


def test_the_limit_is_the_servers_only_where_a_server_serves_the_call(tmp_path: Path) -> None:
    wide = _data_uri(png_declaring(60, 30))
    with small_recognizer(tmp_path, hashing_encoder()) as recognizer:
        tool = make_tools(recognizer, max_pixels=1000)[0]
        in_process = tool.invoke({"image": wide})
        with teaching_as("mcp", "alice"):
            served = tool.invoke({"image": wide})
    # in process it said "over this server's limit", with no server anywhere
    assert "is 60x30 pixels, over the limit of 1,000 pixels" in in_process, in_process
    assert "is 60x30 pixels, over this server's limit of 1,000 pixels" in served, served


def test_an_image_kept_for_a_caller_with_no_conversation_is_refused_without_pillows_warning(
    tmp_path: Path, no_warning: list[warnings.WarningMessage]
) -> None:
    """The MCP server's tools keep each image sent inline under its id: keeping it read its
    header past our limit, and Pillow warned on stderr again before the refusal."""
    bomb = _data_uri(png_declaring(10_000, 10_000))
    with small_recognizer(tmp_path, hashing_encoder()) as recognizer:
        tool = make_tools(recognizer, max_pixels=64_000_000, image_ids=False)[0]
        answer = tool.invoke({"image": bomb})
    assert "is 10000x10000 pixels, over the limit of 64,000,000 pixels" in answer, answer


def test_an_image_sent_inline_and_refused_is_not_named_by_an_id(tmp_path: Path) -> None:
    """An MCP walk: bare base64 that is no image ("aGVsbG8=") was refused as
    "img-2cf24dba5fb0 is not an image ...", an id the agent never saw and no later call
    finds (a refused image is not kept). The refusal names what was sent."""
    wide = _data_uri(png_declaring(60, 30))
    with small_recognizer(tmp_path, hashing_encoder()) as recognizer:
        tool = make_tools(recognizer, max_pixels=1000, image_ids=False)[0]
        text = tool.invoke({"image": "aGVsbG8="})
        big = tool.invoke({"image": wide})
    assert text.startswith("the data sent inline is not an image this installation can read")
    assert big.startswith("the data sent inline is 60x30 pixels, over the limit"), big
    assert "img-" not in text + big
