"""Bad-input catalogue, images: every kind gives a clear ``ImageError`` or a correct image,
through loading, recognition and adding to a memory, and a refusal leaves the memory exactly
as it was (count, labels, point ids, search results)."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, features

from rar_agent.errors import ImageError, RarError
from rar_agent.images import load_image
from rar_agent.ingest.builders import add_images
from rar_agent.memory import CategoryMemory
from rar_agent.pipeline import Recognizer
from tests.helpers.crafted_images import png_declaring
from tests.helpers.http_server import LocalHTTPServer
from tests.helpers.small_memory import fill_memory, make_images

# ---------------------------------------------------------------------------- fixtures


def snapshot(memory: CategoryMemory, known_ids: list[str]) -> tuple[Any, ...]:
    """Everything observable about a memory: count, labels, stored ids, a probe search."""
    dim = memory.info.dim or 1
    probe = np.ones(dim, dtype=np.float32)
    hits = memory.search(probe, kind="image", limit=100) + memory.search(
        probe, kind="text", limit=100
    )
    return (
        memory.count(),
        memory.labels(),
        sorted(memory.existing_ids(known_ids)),
        [(h.id, round(h.score, 5)) for h in hits],
    )


@dataclass
class Setup:
    memory: CategoryMemory
    recognizer: Recognizer
    encoder: Any
    ids: list[str]
    before: tuple[Any, ...]

    def unchanged(self) -> bool:
        return snapshot(self.memory, self.ids) == self.before


@pytest.fixture()
def setup(tmp_path: Path, tiny_encoder: Any) -> Iterator[Setup]:
    memory = CategoryMemory.open(tmp_path / "memory", collection="catalogue")
    fill_memory(memory, tiny_encoder, make_images(tmp_path / "examples"))
    hits = memory.search(np.ones(tiny_encoder.dim, np.float32), kind="image", limit=100)
    hits += memory.search(np.ones(tiny_encoder.dim, np.float32), kind="text", limit=100)
    ids = [h.id for h in hits]
    assert len(ids) == 10
    recognizer = Recognizer(memory, tiny_encoder, k=3)
    yield Setup(memory, recognizer, tiny_encoder, ids, snapshot(memory, ids))
    memory.close()


# ---------------------------------------------------------------------------- image makers


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _noise(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


def _palette_with_transparency() -> bytes:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0] + [200, 20, 20] * 255)
    im.paste(0, (0, 0, 8, 16))  # left half: index 0, transparent
    return _encode(im, "PNG", transparency=0)


def _exif_rotated() -> bytes:
    """40x20 upright-left-red/right-blue picture stored with EXIF orientation 6."""
    im = Image.new("RGB", (40, 20), (230, 10, 10))
    im.paste((10, 10, 230), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return _encode(im, "JPEG", exif=exif, quality=95)


def _heic_like() -> bytes:
    """The ISO-BMFF header of a HEIC file and nothing an image needs after it."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp)) + ftyp + b"\x00" * 200


def _heic(size: tuple[int, int] = (48, 32), **save: Any) -> bytes:
    """A real HEIC (pillow-heif's encoder): left half red, right half blue."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    im = Image.new("RGB", size, (230, 10, 10))
    im.paste((10, 10, 230), (size[0] // 2, 0, size[0], size[1]))
    return _encode(im, "HEIF", quality=90, **save)


def _truncated_heic() -> bytes:
    data = _heic((64, 64))
    return data[: len(data) * 2 // 3]


# ---------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Bad:
    """An input that must be refused: where it is written and what the error must say."""

    filename: str
    make: Callable[[], bytes]
    says: tuple[str, ...]


@dataclass(frozen=True)
class Good:
    """An input that must work: ``check(image)`` inspects the decoded RGB image."""

    filename: str
    make: Callable[[], bytes]
    check: Callable[[Image.Image], None]


def _jpeg() -> bytes:
    return _encode(_noise(), "JPEG", quality=90)


def _png() -> bytes:
    return _encode(_noise(), "PNG")


REFUSED: dict[str, Bad] = {
    "zero-byte file": Bad("empty.jpg", lambda: b"", ("empty", "0 bytes")),
    "truncated JPEG": Bad("cut.jpg", lambda: _jpeg()[: len(_jpeg()) // 2], ("truncated",)),
    "JPEG without its end marker": Bad("noeoi.jpg", lambda: _jpeg()[:-2], ("truncated",)),
    "truncated PNG": Bad("cut.png", lambda: _png()[: len(_png()) // 2], ("truncated",)),
    "PNG cut inside its header": Bad("head.png", lambda: _png()[:20], ("truncated",)),
    "plain text named .png": Bad("notes.png", lambda: b"shopping list: milk, eggs\n", ("text",)),
    "PDF named .jpg": Bad("scan.jpg", lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", ("PDF",)),
    "HTML error page saved as .jpg": Bad(
        "photo.jpg",
        lambda: b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
        ("HTML page", "error page"),
    ),
    "JSON error body": Bad("api.png", lambda: b'{"error": "rate limited"}', ("text",)),
    "SVG (vector, unsupported)": Bad(
        "logo.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', ("not an image",)
    ),
    "random binary": Bad("blob.jpg", lambda: os.urandom(512), ("not an image",)),
    "decompression bomb (declares 100000x100000)": Bad(
        "bomb.png",
        lambda: png_declaring(100_000, 100_000),
        ("is 10,000,000,000 pixels, over the limit of 64,000,000 pixels (possible", "downscale"),
    ),
    "decompression bomb (declares 9000x9000, under Pillow's own limit)": Bad(
        "bomb2.png", lambda: png_declaring(9000, 9000), ("decompression bomb", "downscale")
    ),
    "HEIC header and nothing else": Bad("phone.heic", _heic_like, ("HEIC", "corrupt")),
    "truncated HEIC": Bad("cut.heic", _truncated_heic, ("truncated", "re-download")),
}

ACCEPTED: dict[str, Good] = {
    "1x1 pixel": Good(
        "dot.png",
        lambda: _encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
        lambda im: _expect(im.size == (1, 1) and im.getpixel((0, 0)) == (9, 99, 199), im),
    ),
    "extreme aspect 4000x1": Good(
        "wide.png",
        lambda: _encode(Image.new("RGB", (4000, 1), (0, 120, 0)), "PNG"),
        lambda im: _expect(im.size == (4000, 1), im),
    ),
    "extreme aspect 1x4000": Good(
        "tall.png",
        lambda: _encode(Image.new("RGB", (1, 4000), (0, 0, 120)), "PNG"),
        lambda im: _expect(im.size == (1, 4000), im),
    ),
    "PNG with a .jpg extension": Good(
        "really_png.jpg", _png, lambda im: _expect(im.size == (64, 48), im)
    ),
    "animated GIF (first frame)": Good(
        "anim.gif", lambda: _animated("GIF"), lambda im: _close(im.getpixel((5, 5)), (250, 0, 0))
    ),
    "animated WebP (first frame)": Good(
        "anim.webp",
        lambda: _animated("WEBP"),
        lambda im: _close(im.getpixel((5, 5)), (250, 0, 0), tol=12),
    ),
    "animated PNG (first frame)": Good(
        "anim.png", lambda: _animated("PNG"), lambda im: _close(im.getpixel((5, 5)), (250, 0, 0))
    ),
    "CMYK JPEG": Good(
        "print.jpg",
        lambda: _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        lambda im: _close(im.getpixel((8, 8)), (255, 0, 0), tol=12),
    ),
    "16-bit greyscale PNG": Good(
        "depth.png",
        lambda: _encode(
            Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257), "PNG"
        ),
        lambda im: _expect(im.getpixel((0, 0))[0] < 5 and im.getpixel((15, 15))[0] > 250, im),
    ),
    "palette with transparency": Good(
        "pal.png",
        _palette_with_transparency,
        lambda im: _expect(
            im.getpixel((2, 2)) == (255, 255, 255) and im.getpixel((12, 2)) == (200, 20, 20), im
        ),
    ),
    "RGBA with alpha": Good(
        "alpha.png",
        lambda: _encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"),
        lambda im: _expect(im.getpixel((3, 3)) == (255, 255, 255), im),
    ),
    "EXIF-rotated JPEG (orientation honoured)": Good(
        "rotated.jpg",
        _exif_rotated,
        lambda im: (
            _expect(im.size == (20, 40), im),
            _close(im.getpixel((10, 5)), (230, 10, 10), tol=25),
            _close(im.getpixel((10, 35)), (10, 10, 230), tol=25),
        ),
    ),
}
ACCEPTED["HEIC (pillow-heif)"] = Good(
    "phone.heic",
    _heic,
    lambda im: _expect(
        im.size == (48, 32) and im.getpixel((4, 16))[0] > 180 and im.getpixel((44, 16))[2] > 180,
        im,
    ),
)
if features.check("avif"):
    ACCEPTED["AVIF (decoder present)"] = Good(
        "modern.avif",
        lambda: _encode(Image.new("RGB", (16, 16), (20, 200, 20)), "AVIF", quality=90),
        lambda im: _close(im.getpixel((8, 8)), (20, 200, 20), tol=16),
    )
else:  # pragma: no cover - depends on the Pillow build
    REFUSED["AVIF (no decoder)"] = Bad(
        "modern.avif",
        lambda: struct.pack(">I", 20) + b"ftypavif" + b"\x00" * 200,
        ("AVIF", "convert it to JPEG"),
    )


def _expect(ok: bool, im: Image.Image) -> None:
    assert ok, f"unexpected image {im.mode} {im.size}"


def _close(pixel: Any, want: tuple[int, int, int], tol: int = 3) -> None:
    assert all(abs(int(a) - b) <= tol for a, b in zip(pixel, want, strict=True)), (pixel, want)


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", list(REFUSED), ids=list(REFUSED))
def test_refused_everywhere_and_memory_untouched(kind: str, setup: Setup, tmp_path: Path) -> None:
    bad = REFUSED[kind]
    path = tmp_path / bad.filename
    data = bad.make()
    path.write_bytes(data)

    for src in (path, str(path), data):
        with pytest.raises(ImageError) as err:
            load_image(src)
        message = str(err.value)
        assert all(s.lower() in message.lower() for s in bad.says), message

    with pytest.raises(ImageError):
        setup.recognizer.recognize(path)
    [batch] = setup.recognizer.recognize_batch([path])
    assert batch.label is None and batch.error and any(s in batch.error for s in bad.says)

    report = add_images(setup.memory, setup.encoder, [(str(path), "new label")])
    assert report.added == 0 and len(report.failed) == 1, report
    with pytest.raises(ImageError):
        add_images(setup.memory, setup.encoder, [(str(path), "new label")], strict=True)
    assert setup.unchanged()


@pytest.mark.parametrize("kind", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted_decoded_right_recognized_and_stored_once(
    kind: str, setup: Setup, tmp_path: Path
) -> None:
    good = ACCEPTED[kind]
    path = tmp_path / good.filename
    path.write_bytes(good.make())

    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    good.check(loaded.image)

    result = setup.recognizer.recognize(path)
    assert result.error is None and result.label is not None and len(result.candidates) == 3

    report = add_images(setup.memory, setup.encoder, [(str(path), "odd image")], strict=True)
    assert report.added == 1 and not report.failed
    assert setup.memory.count() == 11 and setup.memory.labels()["odd image"] == 1
    # the stored vector is the decoded (rotated, first-frame, composited) image's vector
    again = setup.recognizer.recognize(loaded.image)
    assert again.label == "odd image"
    assert again.candidates[0].score == pytest.approx(1.0, abs=1e-4)
    # adding it again is a no-op: same id
    assert add_images(setup.memory, setup.encoder, [(str(path), "odd image")]).added == 0
    assert setup.memory.count() == 11


def test_directory_where_a_file_was_expected(setup: Setup, tmp_path: Path) -> None:
    folder = tmp_path / "holiday.jpg"
    folder.mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        load_image(folder)
    with pytest.raises(ImageError, match="directory"):
        setup.recognizer.recognize(str(folder))
    report = add_images(setup.memory, setup.encoder, [(str(folder), "holiday")])
    assert report.added == 0 and "is a directory, not an image file" in report.failed[0][1]
    assert setup.unchanged()


def test_missing_file(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist: check the path"):
        setup.recognizer.recognize(tmp_path / "nowhere.png")
    report = add_images(setup.memory, setup.encoder, [(str(tmp_path / "nowhere.png"), "x")])
    assert report.added == 0 and report.failed
    assert setup.unchanged()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="runs as root: chmod 000 does not stop root from reading (see the simulated test)",
)
def test_unreadable_permissions_real(setup: Setup, tmp_path: Path) -> None:  # pragma: no cover
    path = tmp_path / "secret.png"
    path.write_bytes(_png())
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission"):
            load_image(path)
        assert add_images(setup.memory, setup.encoder, [(str(path), "x")]).failed
    finally:
        path.chmod(0o644)
    assert setup.unchanged()


def test_unreadable_permissions_simulated(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OS refuses the read (EACCES), simulated because tests run as root."""
    path = tmp_path / "secret.png"
    path.write_bytes(_png())
    real_read = Path.read_bytes

    def refusing_read(self: Path) -> bytes:
        if self.name == "secret.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", refusing_read)
    with pytest.raises(ImageError, match="permission"):
        load_image(path)
    with pytest.raises(ImageError):
        setup.recognizer.recognize(path)
    report = add_images(setup.memory, setup.encoder, [(str(path), "secret")])
    assert report.added == 0 and "no permission to read" in report.failed[0][1]
    assert setup.unchanged()


def test_html_error_page_from_a_url(setup: Setup) -> None:
    """A URL that answers 200 with an HTML page instead of the picture (CLI user's own URL)."""
    page = b"<!doctype html><html><title>Sign in</title></html>"
    with LocalHTTPServer() as server:
        url = server.route("/cat.jpg", body=page, content_type="text/html")
        with pytest.raises(ImageError, match="HTML page"):
            load_image(url)
        missing = server.url("/gone.jpg")
        with pytest.raises(ImageError, match="HTTP 404"):
            load_image(missing)
        report = add_images(setup.memory, setup.encoder, [(url, "cat"), (missing, "cat")])
    assert report.added == 0 and len(report.failed) == 2
    assert setup.unchanged()


def test_a_bad_image_in_a_batch_does_not_stop_the_good_ones(setup: Setup, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    results = setup.recognizer.recognize_batch([good, bad, good])
    assert [r.error is None for r in results] == [True, False, True]
    assert results[0].candidates == results[2].candidates
    report = add_images(setup.memory, setup.encoder, [(str(good), "g"), (str(bad), "b")])
    assert report.added == 1 and len(report.failed) == 1
    assert setup.memory.labels().get("b") is None


def test_every_refusal_is_a_rar_error_subclass() -> None:
    """Callers can catch one base class; the CLI/tools turn it into a message, not a crash."""
    assert issubclass(ImageError, RarError) and issubclass(ImageError, ValueError)
