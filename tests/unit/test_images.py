"""Image loading: every input form, normalisation, and clear errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from rar_agent.errors import ImageError
from rar_agent.images import is_image_reference, load_image


def _png(mode: str = "RGB", size: tuple[int, int] = (8, 6), color: object = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_every_input_form_gives_the_same_rgb_image_and_hash(tmp_path: Path) -> None:
    data = _png()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    forms = [str(path), path, data, f"data:image/png;base64,{b64}"]
    loaded = [load_image(f) for f in forms]
    for item in loaded:
        assert item.image.mode == "RGB"
        assert item.image.size == (8, 6)
        assert item.image.getpixel((0, 0)) == (10, 200, 30)
    assert len({item.sha256 for item in loaded}) == 1
    assert loaded[0].source == str(path)


def test_the_content_hash_is_of_the_source_bytes_and_taken_on_first_use() -> None:
    import hashlib

    from rar_agent.images import LoadedImage

    data = _png()
    loaded = load_image(data)
    assert loaded._data is data and loaded._sha256 == ""  # recognition never pays for it
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded._data is None and loaded.sha256 == hashlib.sha256(data).hexdigest()
    image = Image.new("RGB", (2, 2))
    assert LoadedImage(image, "x", "abc").sha256 == "abc"
    for bad in ({}, {"sha256": "abc", "data": data}):
        with pytest.raises(ValueError, match="sha256 or the bytes"):
            LoadedImage(image, "x", **bad)


def test_pil_input_and_alpha_composited_on_white() -> None:
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    loaded = load_image(transparent)
    assert loaded.image.getpixel((1, 1)) == (255, 255, 255)


def test_palette_cmyk_and_16_bit_become_rgb() -> None:
    for mode, color in [("P", 3), ("CMYK", (0, 0, 0, 0)), ("I;16", 4000), ("L", 128)]:
        im = Image.new(mode, (5, 5), color)
        assert load_image(im).image.mode == "RGB"


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    im = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert load_image(path).image.size == (10, 20)


def test_first_frame_of_an_animated_gif(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    r, g, _ = load_image(path).image.getpixel((2, 2))
    assert r > 200 and g < 50


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not an image"),
        (b"%PDF-1.4 whatever", "PDF"),
        (b"<!DOCTYPE html><html>404</html>", "HTML"),
    ],
)
def test_non_images_are_refused_with_a_reason(tmp_path: Path, payload: bytes, needle: str) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=needle):
        load_image(path)


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    big = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(big, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _png("L", (2000, 2000), 0)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data, max_pixels=1_000_000)


def test_missing_file_directory_and_bad_references(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="empty"):
        load_image("   ")
    with pytest.raises(ImageError, match="scheme"):
        load_image("ftp://example.com/a.jpg")
    with pytest.raises(ImageError, match="not an image type"):
        load_image("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(ImageError, match="cannot read an image"):
        load_image(12345)  # type: ignore[arg-type]


def test_a_data_uri_of_untyped_bytes_is_read_by_its_content() -> None:
    """A browser that does not know HEIC (Chrome on Windows or Linux) reads an iPhone photo
    as ``data:application/octet-stream;base64,...``; it was refused as "not an image type"
    with nothing to do about it, though bare base64 of the same bytes was read."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    heic = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(heic, format="HEIF", quality=85)
    data = base64.b64encode(heic.getvalue()).decode()
    loaded = load_image("data:application/octet-stream;base64," + data)
    assert loaded.image.size == (64, 48)
    with pytest.raises(ImageError, match="not an image type.*data:image/"):
        load_image("data:text/html;base64," + data)


def test_is_image_reference(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    assert is_image_reference(str(path))
    assert is_image_reference("https://example.com/cat.jpg")
    assert is_image_reference("data:image/png;base64,AAAA")
    assert not is_image_reference("herons and egrets")


def test_a_portrait_photo_over_the_pixel_limit_is_named_by_its_upright_size(
    tmp_path: Path,
) -> None:
    """A phone stores a portrait photo sideways with an EXIF orientation: the refusal names
    the size a person sees (30x60), not the stored one (60x30)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (60, 30), (0, 0, 255)).save(path, exif=exif)
    with pytest.raises(ImageError, match="30x60"):
        load_image(path, max_pixels=1000)


def test_base64_that_is_not_base64_says_how_to_send_an_image() -> None:
    """A data URI whose data was not base64 said only "invalid base64 image data (Only
    base64 data is allowed)": it says how to send the image."""
    for sent in ("data:image/png;base64,!!!not-base64!!!", "data:image/png;base64,abc$def"):
        with pytest.raises(ImageError) as err:
            load_image(sent)
        said = str(err.value)
        assert said.startswith("invalid base64 image data"), said
        assert "send the image file's bytes base64-encoded" in said, said


def test_short_base64_is_read_as_base64_and_a_missing_name_as_a_path() -> None:
    """Bare base64 of 64 characters or less was read as a file path: a 1x1 GIF (60) was
    refused as "... does not exist: check the path", and so was ``aGVsbG8=`` ("hello"), no
    image. Padded base64 is read as base64 at any length; a name without padding stays a
    path."""
    gif = io.BytesIO()
    Image.new("L", (1, 1)).save(gif, format="GIF")
    sent = base64.b64encode(gif.getvalue()).decode()
    assert len(sent) <= 64 and sent.endswith("=")
    assert load_image(sent).image.size == (1, 1)
    with pytest.raises(ImageError, match=r"^base64 text is not an image .*\(it looks like text\)"):
        load_image("aGVsbG8=")
    for name in ("aGVsbG8", "cats", "a="):
        with pytest.raises(ImageError, match=f"^{name} does not exist: check the path"):
            load_image(name)
