"""Decode to need: JPEG DCT scaling, HEIC thumbnails, ``reduce``; HEIC and AVIF; the same
answers as a full decode; boxes in the full image's coordinates; builds on decode threads."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, features

from rar_agent.errors import ImageError
from rar_agent.images import DecodeNeed, decode_image_bytes, load_image
from rar_agent.images.decode import REDUCE_GAP

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [ROOT / "examples" / "images" / "cat.jpg", ROOT / "examples" / "images" / "coffee.jpg"]
# Upright colours of the four quadrants (top-left, top-right, bottom-left, bottom-right).
QUADRANTS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 40)]


def _encode(im: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _quadrants(size: tuple[int, int]) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size)
    draw = ImageDraw.Draw(im)
    boxes = [
        (0, 0, w // 2, h // 2),
        (w // 2, 0, w, h // 2),
        (0, h // 2, w // 2, h),
        (w // 2, h // 2, w, h),
    ]
    for box, colour in zip(boxes, QUADRANTS, strict=True):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    return im


def _stored_for(orientation: int, upright: Image.Image) -> Image.Image:
    """The stored pixels that show as ``upright`` once EXIF ``orientation`` is applied."""
    T = Image.Transpose
    inverse = {
        1: None,
        2: T.FLIP_LEFT_RIGHT,
        3: T.ROTATE_180,
        4: T.FLIP_TOP_BOTTOM,
        5: T.TRANSPOSE,
        6: T.ROTATE_90,
        7: T.TRANSVERSE,
        8: T.ROTATE_270,
    }[orientation]
    return upright if inverse is None else upright.transpose(inverse)


def _quadrant_colours(im: Image.Image) -> list[tuple[int, ...]]:
    w, h = im.size
    points = [
        (w // 4, h // 4),
        (3 * w // 4, h // 4),
        (w // 4, 3 * h // 4),
        (3 * w // 4, 3 * h // 4),
    ]
    return [tuple(im.getpixel(p)) for p in points]  # type: ignore[arg-type]


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 24) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def _heic(im: Image.Image, **save: Any) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _encode(im, "HEIF", quality=85, **save)


# ---------------------------------------------------------------------------- the need


def test_need_arithmetic() -> None:
    need = DecodeNeed(short=224)
    assert need.reduction(4032, 3024) == pytest.approx(3024 / 224)
    w, h = need.target(4032, 3024)
    assert min(w, h) >= 224 and min(w, h) < 226
    assert DecodeNeed(short=224).reduction(100, 80) == 1.0  # never enlarged
    both = DecodeNeed(short=224) | DecodeNeed(long=512)
    assert both == DecodeNeed(224, 512)
    assert both.reduction(4032, 3024) == pytest.approx(4032 / 512)
    with pytest.raises(ValueError, match="negative"):
        DecodeNeed(short=-1)


def test_load_image_keeps_its_old_form_and_full_decode_by_default(tmp_path: Path) -> None:
    data = _encode(_quadrants((1600, 1200)), "JPEG", quality=92)
    loaded = load_image(data)
    assert loaded.image.size == (1600, 1200) and loaded.original_size is None
    assert loaded.full_size == (1600, 1200) and loaded.scale == (1.0, 1.0)
    assert decode_image_bytes(data).size == (1600, 1200)


# ---------------------------------------------------------------------------- JPEG


def test_jpeg_decodes_with_dct_scaling_to_the_smallest_size_that_meets_the_need() -> None:
    data = _encode(_quadrants((2400, 1600)), "JPEG", quality=92)
    loaded = load_image(data, need=224)
    # 1/4 gives 600x400 (400 >= 224); 1/8 would give 200 < 224
    assert loaded.image.size == (600, 400)
    assert loaded.original_size == (2400, 1600) and loaded.scale == (4.0, 4.0)
    assert loaded.image.mode == "RGB"
    for got, want in zip(_quadrant_colours(loaded.image), QUADRANTS, strict=True):
        assert _close(got, want), (got, want)
    # the long side too, for a ranker that sends 1000 pixels
    assert load_image(data, need=DecodeNeed(224, 1000)).image.size == (1200, 800)
    # an image already at or under the need is decoded as it is
    small = _encode(_quadrants((300, 200)), "JPEG")
    assert load_image(small, need=224).image.size == (300, 200)


def test_a_50_mp_jpeg_is_drafted_then_reduced() -> None:
    data = _encode(Image.new("RGB", (8160, 6120), (90, 120, 150)), "JPEG", quality=80)
    loaded = load_image(data, need=224)
    assert loaded.original_size == (8160, 6120)
    assert 224 <= min(loaded.image.size) < 224 * 8
    assert loaded.image.size == (1020, 765)  # 1/8; a reduce by 3 would leave under 2x the need


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_honoured_at_any_decode_size(orientation: int) -> None:
    upright = _quadrants((1600, 1200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_stored_for(orientation, upright), "JPEG", quality=92, exif=exif)
    full = load_image(data)
    small = load_image(data, need=224)
    assert full.image.size == (1600, 1200)
    assert small.full_size == (1600, 1200)
    assert small.image.size == (400, 300)  # 1/4, upright
    for got, want in zip(_quadrant_colours(small.image), QUADRANTS, strict=True):
        assert _close(got, want), (orientation, got, want)
    # a need computed from the upright size sees the upright size
    seen: list[tuple[int, int]] = []

    def need(size: tuple[int, int]) -> int:
        seen.append(size)
        return 224

    assert load_image(data, need=need).image.size == (400, 300)
    assert seen == [(1600, 1200)]


def test_truncated_jpeg_still_fails_when_decoded_small() -> None:
    data = _encode(_quadrants((1600, 1200)), "JPEG", quality=92)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2], need=224)


def test_declared_size_limit_holds_for_a_decode_to_need() -> None:
    data = _encode(Image.new("RGB", (3000, 3000)), "JPEG")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data, need=224, max_pixels=1_000_000)


# ---------------------------------------------------------------------------- other formats


@pytest.mark.parametrize(
    ("mode", "colour", "want"),
    [
        ("RGB", (200, 20, 20), (200, 20, 20)),
        ("L", 90, (90, 90, 90)),
        ("RGBA", (0, 0, 255, 0), (255, 255, 255)),  # transparent: composited on white
        ("P", 7, None),
        ("I;16", 4000, (0, 0, 0)),  # one value: scaled to black, as in a full decode
    ],
)
def test_png_modes_are_reduced_and_converted_as_a_full_decode(
    mode: str, colour: Any, want: tuple[int, int, int] | None
) -> None:
    im = Image.new(mode, (1200, 900), colour)
    if mode == "P":
        im.putpalette([0, 0, 0] * 7 + [10, 180, 90] + [0, 0, 0] * 248)
        want = (10, 180, 90)
    data = _encode(im, "PNG")
    full = load_image(data).image
    small = load_image(data, need=100)
    factor = int(900 / 100 / REDUCE_GAP)
    assert small.image.size == (math.ceil(1200 / factor), math.ceil(900 / factor))
    assert small.full_size == (1200, 900) and small.image.mode == "RGB"
    assert small.image.getpixel((10, 10)) == full.getpixel((10, 10)) == want


def test_heic_is_read_and_a_big_enough_thumbnail_is_used() -> None:
    data = _heic(_quadrants((640, 480)), thumbnails=[160])
    full = load_image(data)
    assert full.image.size == (640, 480) and full.original_size is None
    for got, want in zip(_quadrant_colours(full.image), QUADRANTS, strict=True):
        assert _close(got, want, tol=40), (got, want)
    thumb = load_image(data, need=100)  # the 160x120 thumbnail is enough
    assert thumb.image.size == (160, 120) and thumb.full_size == (640, 480)
    for got, want in zip(_quadrant_colours(thumb.image), QUADRANTS, strict=True):
        assert _close(got, want, tol=40), (got, want)
    bigger = load_image(data, need=200)  # the thumbnail is too small: the image, reduced
    assert bigger.full_size == (640, 480) and min(bigger.image.size) >= 200


def test_heic_orientation_is_applied_once() -> None:
    upright = _quadrants((480, 320))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _heic(_stored_for(6, upright), exif=exif.tobytes())
    for need in (None, 100):
        loaded = load_image(data, need=need)
        assert loaded.full_size == (480, 320)
        for got, want in zip(_quadrant_colours(loaded.image), QUADRANTS, strict=True):
            assert _close(got, want, tol=40), (need, got, want)


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_a_heic_without_thumbnail_is_reduced_straight_from_libheifs_buffer(
    orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from rar_agent.images import decode

    upright = _quadrants((1203, 902))  # not a multiple of the factor: narrower last blocks
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _heic(_stored_for(orientation, upright), exif=exif.tobytes())
    taken: list[bool] = []
    reduced = decode._heif_reduced

    def spy(*args: Any) -> Any:
        taken.append(True)
        return reduced(*args)

    monkeypatch.setattr(decode, "_heif_reduced", spy)
    small = load_image(data, need=100)
    factor = int(902 / 100 / REDUCE_GAP)
    assert taken and factor == 4
    assert small.full_size == (1203, 902) and small.image.mode == "RGB"
    assert small.image.size == (math.ceil(1203 / factor), math.ceil(902 / factor))
    for got, want in zip(_quadrant_colours(small.image), QUADRANTS, strict=True):
        assert _close(got, want, tol=40), (orientation, got, want)
    # the pixels of the ordinary path: the full decode, reduced by Pillow
    ordinary = load_image(data).image.reduce(factor)
    diff = np.abs(np.asarray(small.image, dtype=int) - np.asarray(ordinary, dtype=int))
    assert diff.max() <= 1


def test_heic_in_l_mode_is_reduced_from_the_buffer_and_rgba_takes_the_ordinary_path() -> None:
    from rar_agent.images import decode

    im = _quadrants((1200, 900)).convert("RGBA")
    im.putpixel((0, 0), (0, 0, 0, 0))
    data = _heic(im)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "RGBA"
        assert decode._heif_reduced(opened, data, DecodeNeed(100)) is None
    loaded = load_image(data, need=100)
    assert loaded.full_size == (1200, 900) and loaded.image.mode == "RGB"
    assert loaded.image.size == (300, 225)
    grey = load_image(_heic(Image.new("L", (1200, 900), 90)), need=100)  # L: from the buffer
    assert grey.image.mode == "RGB" and grey.image.size == (300, 225)
    assert _close(grey.image.getpixel((150, 110)), (90, 90, 90), tol=2)  # type: ignore[arg-type]
    for got, want in zip(_quadrant_colours(loaded.image), QUADRANTS, strict=True):
        assert _close(got, want, tol=40), (got, want)


@pytest.mark.parametrize(
    ("shape", "factor"),
    [((60, 48, 3), 6), ((61, 50, 3), 6), ((7, 5, 1), 2), ((40, 40, 3), 17), ((5, 5, 1), 8)],
)
def test_box_means_are_pillows_reduce(shape: tuple[int, int, int], factor: int) -> None:
    import numpy as np

    from rar_agent.images.decode import box_means

    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels[:4] = 255  # sums at the top of the range (uint16 / uint32 accumulators)
    means = box_means(pixels, factor)
    image = Image.fromarray(pixels[:, :, 0] if shape[2] == 1 else pixels)
    want = np.asarray(image.reduce(factor), dtype=int).reshape(means.shape)
    assert means.dtype == np.uint8
    assert np.abs(means.astype(int) - want).max() <= 1


def test_broken_heic_files_get_a_clear_error() -> None:
    data = _heic(_quadrants((256, 256)))
    with pytest.raises(ImageError, match="truncated") as err:
        load_image(data[: len(data) - 200])
    assert "re-download" in str(err.value)
    garbage = data[:40] + bytes(len(data) - 40)
    with pytest.raises(ImageError, match="HEIC/HEIF|corrupt"):
        load_image(garbage, need=224)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF decoder")
def test_avif_is_read_at_need() -> None:
    data = _encode(_quadrants((1200, 900)), "AVIF", quality=90)
    loaded = load_image(data, need=100)
    assert loaded.full_size == (1200, 900) and min(loaded.image.size) >= 100
    for got, want in zip(_quadrant_colours(loaded.image), QUADRANTS, strict=True):
        assert _close(got, want, tol=40), (got, want)


def test_heic_and_avif_files_are_listed_by_folder_builds(tmp_path: Path) -> None:
    from rar_agent.ingest.builders import iter_image_folder

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.HEIC").write_bytes(_heic(_quadrants((64, 48))))
    (tmp_path / "cat" / "b.avif").write_bytes(b"")
    assert sorted(Path(p).name for p, _ in iter_image_folder(tmp_path)) == ["a.HEIC", "b.avif"]


# ---------------------------------------------------------------------------- encoders


def test_encoders_say_their_input_size(tiny_encoder: Any) -> None:
    from rar_agent.encoders import input_size_of

    assert input_size_of(tiny_encoder) == 32
    assert input_size_of(object()) is None

    class Sized:
        input_size = (224, 336)

    assert input_size_of(Sized()) == 336


def test_hf_encoder_input_size(tiny_hf_clip_spec: str) -> None:
    from rar_agent.encoders import input_size_of, load_encoder

    assert input_size_of(load_encoder(tiny_hf_clip_spec, device="cpu")) == 32
