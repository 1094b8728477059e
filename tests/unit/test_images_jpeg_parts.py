"""A JPEG with restart markers (as iPhone and Samsung cameras write them) decodes in two
parts, on two CPUs where one image is decoded alone, to the very pixels of a one-piece decode;
damaged, truncated and other JPEGs keep the one-piece path and its errors."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from rar_agent.errors import ImageError
from rar_agent.images import DecodeNeed, decoding_alone, jpeg_parts, load_image
from rar_agent.images.jpeg_parts import MIN_SCAN_BYTES, decode_in_parts, restart_parts


@pytest.fixture(autouse=True)
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPUs, as the split needs, wherever the tests run (threads work on one too)."""
    monkeypatch.setattr(jpeg_parts, "_cpus", lambda: 2)


def _photo(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A noisy gradient (compresses like a detailed photo: over MIN_SCAN_BYTES at q95)."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 120, h), np.linspace(0, 120, w))[:, :, None]
    pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _jpeg(im: Image.Image, **save: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def _one_piece(data: bytes, scale: int) -> Image.Image:
    """Pillow's own decode at 1/``scale``, in one piece."""
    im = Image.open(io.BytesIO(data))
    im.draft(None, (im.width // scale, im.height // scale))
    im.load()
    return im


@pytest.mark.parametrize(
    ("mode", "save"),
    [
        ("RGB", {"restart_marker_rows": 1}),  # 4:2:0, one interval a row: an iPhone's
        ("RGB", {"restart_marker_rows": 2, "subsampling": "4:2:2"}),
        ("RGB", {"restart_marker_blocks": 63, "subsampling": "4:4:4"}),  # 2 a row
        ("L", {"restart_marker_rows": 1}),
        ("CMYK", {"restart_marker_rows": 1}),
    ],
)
@pytest.mark.parametrize("scale", [8, 4, 2])
def test_the_two_parts_give_a_one_piece_decodes_pixels(
    mode: str, save: dict[str, Any], scale: int
) -> None:
    data = _jpeg(_photo((1101, 827), mode), **save)  # sizes off the MCU grid
    parts = restart_parts(data)
    assert parts is not None and 0 < parts.split < 827
    with decoding_alone():
        whole = decode_in_parts(data, scale)
    assert whole is not None
    expected = _one_piece(data, scale)
    assert (whole.mode, whole.size) == (expected.mode, expected.size)
    assert whole.tobytes() == expected.tobytes()


def test_a_photo_decoded_alone_is_split_upright_and_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    data = _jpeg(_photo((1200, 900)), restart_marker_rows=1, exif=exif.tobytes())
    decoded: list[int] = []
    part = jpeg_parts._decode_part
    monkeypatch.setattr(jpeg_parts, "_decode_part", lambda p, s: decoded.append(s) or part(p, s))
    need = DecodeNeed(short=224)
    with decoding_alone():
        alone = load_image(data, need=need)
    assert decoded == [4, 4]  # the top and the bottom part, at 1/4 (900 / 224)
    beside = load_image(data, need=need)  # a batch's decode: one piece
    assert decoded == [4, 4]
    assert alone.full_size == beside.full_size == (900, 1200)
    assert alone.image.size == beside.image.size == (225, 300)
    assert alone.image.tobytes() == beside.image.tobytes()
    upright = ImageOps.exif_transpose(_one_piece(data, 4))
    assert alone.image.tobytes() == upright.tobytes()


def test_a_truncated_photo_still_fails_when_decoded_in_parts() -> None:
    data = _jpeg(_photo((1200, 900)), restart_marker_rows=1)
    cut = data[: len(data) * 3 // 4]
    assert restart_parts(cut) is not None  # the cut lies in the bottom part
    with decoding_alone(), pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(cut, need=DecodeNeed(short=224))


def test_other_jpegs_keep_the_one_piece_decode() -> None:
    photo = _photo((1200, 900))
    marked = _jpeg(photo, restart_marker_rows=1)
    assert len(marked) > MIN_SCAN_BYTES and restart_parts(marked) is not None
    assert restart_parts(_jpeg(photo)) is None  # no restart markers
    assert restart_parts(_jpeg(photo, restart_marker_rows=1, progressive=True)) is None
    small = _jpeg(photo.resize((300, 225)), restart_marker_rows=1)
    assert restart_parts(small) is None  # too little to decode to be worth a thread
    # a marker out of turn before the cut (a damaged file): libjpeg resynchronises it its
    # own way, in one piece
    second = marked.index(b"\xff\xd1")
    damaged = marked[:second] + b"\xff\xd5" + marked[second + 2 :]
    assert restart_parts(damaged) is None
    with decoding_alone():
        assert decode_in_parts(damaged, 8) is None
        assert decode_in_parts(marked, 1) is None  # full size: no draft, one piece
    assert decode_in_parts(marked, 8) is None  # not decoding alone (a batch, a build)
