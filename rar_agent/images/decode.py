"""Image bytes -> an upright RGB image, decoded no larger than its consumers need.

Decode to need: a 12-megapixel phone photo is shown to an encoder as a 224-pixel square, so
most of a full decode is thrown away. Given a :class:`DecodeNeed`, a JPEG is decoded with DCT
scaling (``Image.draft``: 1/2, 1/4 or 1/8 of its size, the smallest that still meets the
need), a HEIC with an embedded thumbnail when one is big enough (pillow-heif's ``draft``), and
whatever is left over the need (any format) is shrunk by an integer box filter
(``Image.reduce``) before the EXIF rotation and the colour conversion. Every check (declared
size, truncation, bombs) runs as in a full decode; only the pixels kept are fewer.

HEIC/HEIF is read through pillow-heif (registered here on first use), AVIF through Pillow's
own plugin (Pillow 11.2 and later).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rar_agent.errors import ImageError
from rar_agent.images.jpeg_parts import decode_in_parts

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodeNeed",
    "NeedSpec",
    "box_means",
    "check_declared_size",
    "declared_size",
    "decode_to_need",
    "image_files",
    "register_image_plugins",
    "to_rgb",
    "upright_size",
]

#: File name endings of the image formats this package reads (folders are listed by them).
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".heic",
        ".heif",
        ".avif",
    }
)


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its sub-folders (by :data:`IMAGE_SUFFIXES`), sorted;
    hidden files and folders are left out. A linked sub-folder is read like any other (a
    dataset linked in: ``rglob`` skips it), each real folder once, so a link back up ends."""
    found: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root, f)
            for f in files
            if not f.startswith(".")
            and Path(f).suffix.lower() in IMAGE_SUFFIXES
            and os.path.isfile(os.path.join(root, f))
        ]
    return sorted(found)


# Shrink by ``Image.reduce`` only down to this multiple of the need: a box filter aliases
# more than the bicubic resize that follows it, so that resize keeps a 2x margin (as Pillow's
# own ``thumbnail`` does). DCT scaling (``draft``) filters properly and goes down to 1x.
REDUCE_GAP = 2.0
_ISOBMFF_BRANDS = (b"ftyp",)
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a JPEG with more pictures after its first
_PLUGINS_LOCK = threading.Lock()
_plugins_registered = False


@dataclass(frozen=True)
class DecodeNeed:
    """The smallest decoded size an image's consumers can use without losing detail.

    Attributes:
        short: The decoded image's shorter side must be at least this many pixels (an
            encoder's input side: its transform resizes the shorter side to it, then crops).
        long: Its longer side must be at least this many pixels (a ranker that sends the
            image with its longer side scaled to this).
    """

    short: int = 0
    long: int = 0

    def __post_init__(self) -> None:
        if self.short < 0 or self.long < 0:
            raise ValueError(f"decode sizes must not be negative, got {self.short}, {self.long}")

    def __or__(self, other: DecodeNeed) -> DecodeNeed:
        """The need that satisfies both (the larger of each side)."""
        return DecodeNeed(max(self.short, other.short), max(self.long, other.long))

    def reduction(self, width: int, height: int) -> float:
        """By how much a ``width`` x ``height`` image may be shrunk and still meet the need
        (``inf`` when nothing is needed, at least 1)."""
        short, long_ = min(width, height), max(width, height)
        factor = math.inf
        if self.short:
            factor = min(factor, short / self.short)
        if self.long:
            factor = min(factor, long_ / self.long)
        return max(1.0, factor)

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The smallest size, in the image's own proportions, that meets the need."""
        factor = self.reduction(width, height)
        if math.isinf(factor):
            return (1, 1)
        return (max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor)))


NeedSpec = DecodeNeed | int | Callable[[tuple[int, int]], DecodeNeed | int | None] | None
"""What a loader is told about the size needed: a :class:`DecodeNeed`, an ``int`` (the shorter
side, as an encoder's input size), a function of the image's upright full size (for a need that
depends on it, such as boxes' crops), or ``None`` for a full decode."""


def _as_need(spec: DecodeNeed | int | None) -> DecodeNeed | None:
    if spec is None:
        return None
    if isinstance(spec, DecodeNeed):
        return spec if (spec.short or spec.long) else None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return DecodeNeed(short=spec) if spec > 0 else None
    raise TypeError(f"a decode need is a DecodeNeed, an int or None, not {type(spec).__name__}")


def register_image_plugins() -> None:
    """Let Pillow open HEIC/HEIF (pillow-heif), once per process; a no-op without it."""
    global _plugins_registered
    if _plugins_registered:
        return
    with _PLUGINS_LOCK:
        if _plugins_registered:
            return
        try:
            from pillow_heif import register_heif_opener
        except ImportError:  # an installation without it says so when a HEIC arrives
            pass
        else:
            register_heif_opener()
        _plugins_registered = True


def decode_to_need(
    data: bytes, *, need: NeedSpec = None, max_pixels: int, what: str
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode, validate and make upright RGB, at the smallest size that meets ``need``.

    Args:
        data: The encoded image.
        need: What the image's consumers need (see :data:`NeedSpec`); ``None``: full size.
        max_pixels: Refuse images whose declared size exceeds this many pixels.
        what: How the image is named in error messages.

    Returns:
        ``(image, full size)``: the RGB image, and the upright size a full decode would give
        (boxes and other coordinates refer to that size).

    Raises:
        ImageError: Empty, not an image, truncated or corrupt, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{what} is empty (0 bytes): pass a real image file")
    register_image_plugins()
    _check_container(data, what)
    try:
        with _our_pixel_limit(max_pixels, what, "the"):
            return _decode(Image.open(io.BytesIO(data)), data, need, max_pixels, what)
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        kind = _phone_format(data)
        if kind is not None and _can_read(kind):
            raise ImageError(
                f"{what} is a {kind} file that could not be decoded, it may be truncated or "
                "corrupt: re-export or re-download the file"
            ) from e
        raise ImageError(
            f"{what} is not an image this installation can read ({sniff(data)}): pass a "
            "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF file"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:
        raise ImageError(
            f"{what} could not be decoded, it may be truncated or corrupt ({e}): "
            "re-export or re-download the file"
        ) from e


def check_declared_size(
    source: bytes | Path, *, max_pixels: int, what: str, whose: str = "the"
) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, reading the
    header only (nothing is decoded); a header Pillow cannot read passes (decoding says what
    is wrong with it).

    Args:
        source: The encoded image, or its file.
        max_pixels: The most pixels an image may declare.
        what: How the image is named in the error.
        whose: Whose limit it is, in the error: ``"the"``, or ``"this server's"`` where a
            server set it for its clients.

    Raises:
        ImageError: It declares more.
    """
    from PIL import Image, UnidentifiedImageError

    register_image_plugins()
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with handle, _our_pixel_limit(max_pixels, what, whose), Image.open(handle) as im:
            _refuse_over(im, max_pixels, what, whose)
    except (OSError, UnidentifiedImageError):
        return


@contextlib.contextmanager
def _our_pixel_limit(max_pixels: int, what: str, whose: str) -> Iterator[None]:
    """Within the block ``max_pixels`` decides, not Pillow's ``MAX_IMAGE_PIXELS`` (89 MP):
    its DecompressionBombWarning, printed for 89-178 MP before the size is checked (with
    :func:`_refuse_over`, right after opening), is silenced; its DecompressionBombError
    (over 178 MP, raised while opening) becomes the same refusal."""
    from PIL import Image

    with _pillow_quiet():
        try:
            yield
        except Image.DecompressionBombError as e:  # its message holds the pixel count
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = int(found[1]) if found else None
            if pixels is not None and pixels <= max_pixels:  # a limit set over Pillow's own
                raise ImageError(
                    f"{what} is {pixels:,} pixels, over Pillow's own limit of "
                    f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} (PIL.Image.MAX_IMAGE_PIXELS, "
                    "twice): send a smaller image (downscale it first)"
                ) from e
            declared = f"{pixels:,}" if pixels is not None else "more than that"
            raise _too_many_pixels(what, declared, max_pixels, whose) from e


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The upright ``(width, height)`` the header of ``data`` declares (nothing decoded, and
    nothing printed by Pillow's decompression-bomb check, whose limit is not ours); ``None``
    where Pillow cannot read the header or refuses it."""
    from PIL import Image, UnidentifiedImageError

    register_image_plugins()
    try:
        with _pillow_quiet(), Image.open(io.BytesIO(data)) as im:
            return upright_size(im)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


@contextlib.contextmanager
def _pillow_quiet() -> Iterator[None]:
    """Within the block Pillow's DecompressionBombWarning (89-178 MP) is not printed: the
    caller's own limit speaks of an image's size."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _refuse_over(im: Image.Image, max_pixels: int, what: str, whose: str) -> None:
    """Refuse ``im`` (opened, not decoded) if it declares more than ``max_pixels`` pixels,
    named by the size a person sees (a portrait photo stored sideways, upright)."""
    width, height = im.size
    if width * height > max_pixels:
        seen_width, seen_height = upright_size(im)
        raise _too_many_pixels(what, f"{seen_width}x{seen_height}", max_pixels, whose)


def _too_many_pixels(what: str, declared: str, max_pixels: int, whose: str) -> ImageError:
    """The refusal of an image that declares more than ``max_pixels`` pixels."""
    return ImageError(
        f"{what} is {declared} pixels, over {whose} limit of {max_pixels:,} pixels (possible "
        "decompression bomb): send a smaller image (downscale it first)"
    )


def _decode(
    im: Image.Image, data: bytes, need: NeedSpec, max_pixels: int, what: str
) -> tuple[Image.Image, tuple[int, int]]:
    """The checks, then draft, load, upright, colour and reduce (see :func:`decode_to_need`);
    ``im`` is ``data`` opened."""
    from PIL import ImageOps

    _refuse_over(im, max_pixels, what, "the")
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{what} has an empty size {width}x{height}")
    if getattr(im, "is_animated", False):
        im.seek(0)  # animated GIF/WebP/PNG: recognise the first frame
    wanted = _as_need(need(upright_size(im)) if callable(need) else need)
    if wanted is not None and (reduced := _draft(im, data, wanted)) is not None:
        return reduced, (width, height)  # libheif applied the orientation: upright, full size
    decoded_size = im.size
    image = _load(im, data)
    if wanted is None:  # a full decode, exactly as before decode-to-need existed
        upright: Image.Image = ImageOps.exif_transpose(image) or image
    else:  # in place: an upright photo is not copied at full size (36 MB for 12 MP)
        ImageOps.exif_transpose(image, in_place=True)
        upright = image
    turned = upright.size != decoded_size and upright.size == decoded_size[::-1]
    full = (height, width) if turned else (width, height)
    if wanted is None:
        return to_rgb(upright), full
    if upright.mode in {"RGB", "L"}:
        out = to_rgb(_reduce(upright, wanted))
    else:
        out = _reduce(to_rgb(upright), wanted)
    return (out.copy() if out is im else out), full  # a plain image, never the file object


def _load(im: Image.Image, data: bytes) -> Image.Image:
    """``im``'s pixels: a JPEG drafted smaller that carries restart markers may be decoded
    in two parts on two CPUs (:func:`~rar_agent.images.jpeg_parts.decode_in_parts`: the
    same pixels, as a plain image with ``im``'s info), anything else by ``im.load()``."""
    from PIL import ImageFile

    if im.format not in _JPEG_FORMATS or not isinstance(im, ImageFile.ImageFile):
        im.load()
        return im
    whole = decode_in_parts(data, im.decoderconfig[0] if im.decoderconfig else 1)
    if whole is not None and whole.size == im.size and whole.mode == im.mode:
        whole.info = dict(im.info)  # its EXIF: the orientation is applied next
        return whole
    # a JPEG goes to libjpeg whole, not in 64 KiB pieces (a 12 MP one: 15 calls, each
    # resuming the entropy decoding from a short buffer; 0.5-1 ms less)
    im.decodermaxblock = max(im.decodermaxblock, len(data))
    im.load()
    return im


def _reduce(image: Image.Image, need: DecodeNeed) -> Image.Image:
    """``image`` shrunk by :func:`_reduce_factor` (unchanged below a factor of 2)."""
    factor = _reduce_factor(image.size, need)
    return image.reduce(factor) if factor >= 2 else image


def _reduce_factor(size: tuple[int, int], need: DecodeNeed) -> int:
    """The largest integer factor an image of ``size`` shrinks by and keeps
    :data:`REDUCE_GAP` x ``need``."""
    return int(need.reduction(*size) / REDUCE_GAP)


def _draft(im: Image.Image, data: bytes, need: DecodeNeed) -> Image.Image | None:
    """Prepare ``im`` to decode small: JPEG DCT scaling or a HEIC's embedded thumbnail
    (``draft``; other formats ignore it). A HEIC without a thumbnail big enough is decoded and
    reduced here (:func:`_heif_reduced`): the image is returned, ``None`` otherwise."""
    drafted = im.draft(None, need.target(*im.size))
    if drafted is None and im.format == "HEIF":
        return _heif_reduced(im, data, need)
    return None


def _heif_reduced(im: Image.Image, data: bytes, need: DecodeNeed) -> Image.Image | None:
    """A HEIC without a big-enough thumbnail, decoded by libheif and shrunk as
    :func:`_reduce` would, straight from libheif's buffer; ``None`` where :func:`_reduce`
    would not shrink it or the mode is not 8-bit RGB or L (the ordinary path then runs).

    The ordinary path copies libheif's 12 MP into a Pillow image and reduces that: 7 + 12 ms
    of CPU where the allocator reuses freed memory (a warm server), 40 + 12 ms where the
    copy maps fresh pages (a first decode, a CLI run). The box means over libheif's own
    buffer cost 14-18 ms either way.
    """
    import numpy as np
    from PIL import Image
    from pillow_heif import open_heif

    factor = _reduce_factor(im.size, need)
    channels = {"RGB": 3, "L": 1}.get(im.mode)
    if factor < 2 or channels is None:
        return None
    # the frame the plugin opened, with the plugin's own decoding settings
    frame = open_heif(
        io.BytesIO(data), convert_hdr_to_8bit=True, hdr_to_16bit=True, remove_stride=False
    )[im.tell()]
    if frame.size != im.size or frame.mode != im.mode:
        return None
    width, height = frame.size
    rows = np.frombuffer(frame.data, np.uint8).reshape(height, frame.stride)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    means = box_means(pixels, factor)
    return to_rgb(Image.fromarray(means[:, :, 0] if channels == 1 else means))


def box_means(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block of an ``(h, w, c)`` uint8 array, rounded,
    as ``Image.reduce(factor)`` gives it (the last row and column of blocks may be narrower;
    within 1 of Pillow's own rounding)."""
    import numpy as np

    height, width = pixels.shape[:2]
    dtype = np.uint16 if factor * factor * 255 <= 0xFFFF else np.uint32
    sums = _column_sums(_row_sums(pixels, factor, dtype), factor, dtype)
    counts = np.multiply.outer(_group_sizes(height, factor), _group_sizes(width, factor))
    scale = (1.0 / counts).astype(np.float32)[:, :, None]
    return (sums * scale + np.float32(0.5)).astype(np.uint8)


def _row_sums(a: np.ndarray, factor: int, dtype: type) -> np.ndarray:
    """Sums of each ``factor`` consecutive rows (the last group may be shorter)."""
    import numpy as np

    n = a.shape[0]
    whole = n // factor * factor
    sums = a[:whole].reshape(n // factor, factor, *a.shape[1:]).sum(axis=1, dtype=dtype)
    if whole < n:
        sums = np.concatenate([sums, a[whole:].sum(axis=0, dtype=dtype)[None]])
    return sums


def _column_sums(a: np.ndarray, factor: int, dtype: type) -> np.ndarray:
    """Sums of each ``factor`` consecutive columns (``einsum``: a ``sum`` over a middle axis
    this short is several times slower)."""
    import numpy as np

    rows, n = a.shape[:2]
    whole = n // factor * factor
    groups = a[:, :whole].reshape(rows, n // factor, factor, a.shape[2])
    sums = np.einsum("rgfc->rgc", groups, dtype=dtype)
    if whole < n:
        sums = np.concatenate([sums, a[:, whole:].sum(axis=1, dtype=dtype)[:, None]], axis=1)
    return sums


def _group_sizes(n: int, factor: int) -> np.ndarray:
    """How many of ``n`` items each group of ``factor`` holds (the last may hold fewer)."""
    import numpy as np

    return np.minimum(factor, n - np.arange(0, n, factor))


def upright_size(im: Image.Image) -> tuple[int, int]:
    """The size ``im`` (opened, not yet decoded) will have once its EXIF orientation is
    applied: a portrait phone photo stored sideways is named by the size a person sees."""
    width, height = im.size
    try:
        orientation = im.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):  # a header without its data: as stored
        return width, height
    return (height, width) if orientation in {5, 6, 7, 8} else (width, height)


def _check_container(data: bytes, what: str) -> None:
    """Refuse a HEIF/AVIF file whose top-level boxes run past its end (a truncated file).

    libheif fills the missing tiles of a cut-off grid image instead of failing, so the
    truncation is caught here, from the box sizes.
    """
    if data[4:8] not in _ISOBMFF_BRANDS:
        return
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            break  # trailing padding shorter than a box header
        size, header = int.from_bytes(data[pos : pos + 4], "big"), 8
        if size == 1 and pos + 16 <= end:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos  # the last box runs to the end of the file
        if size < header:
            raise ImageError(
                f"{what} is a corrupt HEIF/AVIF file (a box of {size} bytes at offset {pos}): "
                "re-export or re-download the file"
            )
        if pos + size > end:
            raise ImageError(
                f"{what} is truncated: its {data[pos + 4 : pos + 8].decode('latin-1')!r} box "
                f"needs {pos + size - end:,} more bytes than the file holds; re-export or "
                "re-download the file"
            )
        pos += size


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; transparency is composited on white."""
    from PIL import Image

    if im.mode == "RGB":
        return im.copy() if im.readonly else im
    if im.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    if im.mode == "P" or im.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def sniff(data: bytes) -> str:
    """A short guess at what unreadable bytes are, for an error message."""
    head = data[:64].lstrip()
    lowered = head.lower()
    if head.startswith(b"%PDF"):
        return "it is a PDF"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page, maybe an error page instead of the image"
    kind = _phone_format(data)
    if kind == "HEIC/HEIF":
        return "it is HEIC/HEIF: install pillow-heif (pip install pillow-heif) to read it"
    if kind == "AVIF":
        return "it is AVIF, which this Pillow cannot decode: upgrade to Pillow 11.2 or later"
    try:
        head.decode("utf-8")
        return "it looks like text"
    except UnicodeDecodeError:
        return "unknown format"


def _phone_format(data: bytes) -> str | None:
    """``HEIC/HEIF`` or ``AVIF`` when the bytes start like one, else None."""
    brand = data[4:12]
    if brand in {b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc", b"ftypheim"}:
        return "HEIC/HEIF"
    if brand in {b"ftypavif", b"ftypavis"}:
        return "AVIF"
    return None


def _can_read(kind: str) -> bool:
    """Whether this installation has a decoder for ``kind`` (see :func:`_phone_format`)."""
    if kind == "AVIF":
        from PIL import features

        return bool(features.check("avif"))
    import importlib.util

    return importlib.util.find_spec("pillow_heif") is not None
