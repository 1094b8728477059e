"""Load and validate images from paths, URLs, bytes, base64 and PIL objects.

Every failure raises :class:`~rar_agent.errors.ImageError` with a message that says what was
wrong and what to do. A returned image is always a fully decoded, upright RGB ``PIL.Image``:
at full size, or (given a ``need``) at the smallest size its consumers can use, with the full
size recorded beside it (:mod:`rar_agent.images.decode`). JPEG, PNG, WebP, GIF, BMP, TIFF,
HEIC/HEIF (pillow-heif) and AVIF are read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Union

from rar_agent.errors import ImageError, file_in_the_way_reason, unreadable_reason
from rar_agent.images.decode import (
    IMAGE_SUFFIXES,
    DecodeNeed,
    NeedSpec,
    check_declared_size,
    declared_size,
    decode_to_need,
    image_files,
    register_image_plugins,
    to_rgb,
    upright_size,
)
from rar_agent.images.jpeg_parts import decoding_alone

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodeNeed",
    "ImageInput",
    "decoding_alone",
    "LoadedImage",
    "image_files",
    "NeedSpec",
    "register_image_plugins",
    "check_declared_size",
    "declared_size",
    "load_image",
    "decode_base64_image",
    "decode_image_bytes",
    "inline_image_name",
    "check_image_file",
    "read_image_bytes",
    "read_image_file",
    "reference_problem",
    "to_rgb",
    "upright_size",
    "is_image_reference",
    "looks_like_base64",
    "DEFAULT_MAX_PIXELS",
    "MAX_FILE_BYTES",
    "THUMBNAIL_MAX_BYTES",
    "THUMBNAIL_SIDE",
    "make_thumbnail",
]

ImageInput = Union[str, os.PathLike, bytes, "Image.Image"]

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; larger declared sizes are treated as bombs
MAX_FILE_BYTES = 64 * 1024 * 1024
THUMBNAIL_SIDE = 64
"""Longest side of a thumbnail stored with an example image, in pixels."""
THUMBNAIL_MAX_BYTES = 4096
"""Largest stored thumbnail (JPEG bytes, before base64); quality is lowered to fit. A
thumbnail costs 1-3 KB of payload per image entry (about 2 KB on photos), so 2 GB at 1M
entries: payloads go to disk from 100k entries by default."""
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?),(?P<data>.*)$", re.DOTALL
)
_UNTYPED = frozenset({"application/octet-stream", "binary/octet-stream"})
"""Data URI types that say only "some bytes": the image's own header tells what it is."""
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")


class LoadedImage:
    """A decoded RGB image, where it came from, and the SHA-256 of its source bytes.

    Attributes:
        image: The upright RGB image (smaller than the original when decoded to a need).
        source: Where it came from (a path, URL or given name).
        sha256: SHA-256 of the source bytes; given, or hashed from ``data`` on first use
            (recognition never asks: 0.5 ms of a 12 MP JPEG's 780 KiB saved).
        original_size: The upright ``(width, height)`` of the full image, when the image was
            decoded smaller; ``None`` means ``image`` is full size.
    """

    __slots__ = ("image", "source", "original_size", "_sha256", "_data")

    def __init__(
        self,
        image: Image.Image,
        source: str,
        sha256: str | None = None,
        original_size: tuple[int, int] | None = None,
        *,
        data: bytes | None = None,
    ) -> None:
        if (sha256 is None) == (data is None):
            raise ValueError("a LoadedImage takes its sha256 or the bytes to hash, not both")
        self.image = image
        self.source = source
        self.original_size = original_size
        self._sha256 = sha256 or ""
        self._data = data

    def __repr__(self) -> str:
        return f"LoadedImage(source={self.source!r}, size={self.image.size}, full={self.full_size})"

    @property
    def sha256(self) -> str:
        """SHA-256 of the source bytes (hex)."""
        data = self._data  # read once: another thread may hash and drop it meanwhile
        if data is not None:
            self._sha256 = hashlib.sha256(data).hexdigest()
            self._data = None
        return self._sha256

    @property
    def full_size(self) -> tuple[int, int]:
        """The upright ``(width, height)`` of the full image: boxes refer to this size."""
        return self.original_size or self.image.size

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: full-size pixels per decoded pixel (``(1.0, 1.0)`` at full size)."""
        (fw, fh), (w, h) = self.full_size, self.image.size
        return (fw / w, fh / h)


def is_image_reference(text: str, *, files: bool = True) -> bool:
    """Whether a string looks like an image reference (URL, data URI or, if ``files``, a file)."""
    t = text.strip()
    if t.startswith(("data:image/", "http://", "https://")):
        return True
    if not files or len(t) > 4096 or "\n" in t:
        return False
    try:
        return Path(t).expanduser().is_file()
    except (OSError, ValueError):
        return False


def load_image(
    src: ImageInput,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    allow_private_urls: bool = True,
    need: NeedSpec = None,
) -> LoadedImage:
    """Load, validate and normalise an image from any supported input.

    A string is trusted input (a path or URL its caller chose). References chosen by a model
    or a remote user go through :mod:`rar_agent.safety` (allowed roots, public URLs only)
    instead, or at least pass ``allow_private_urls=False``.

    Args:
        src: A file path, an ``http(s)`` URL, a ``data:image/...;base64,`` URI, raw base64
            text, raw bytes, or a ``PIL.Image.Image``.
        max_pixels: Refuse images whose declared size exceeds this many pixels.
        name: Optional display name used as ``source`` (e.g. an uploaded file name).
        allow_private_urls: Let URLs reach loopback, private and link-local addresses (the
            default, for a CLI user's own network); ``False`` allows public addresses only.
        need: Decode only as large as this (a :class:`DecodeNeed`, an encoder's input side,
            or a function of the full upright size); ``None`` decodes the full image. A PIL
            image is never resized.

    Returns:
        A :class:`LoadedImage` with an RGB image, its source, a content hash and, when decoded
        smaller, the full size.

    Raises:
        ImageError: The input is missing, unreadable, not an image, truncated or too large.
        UnsafeInputError: A URL is not allowed (scheme, credentials, or a non-public
            address with ``allow_private_urls=False``).
    """
    from PIL import Image

    if isinstance(src, Image.Image):
        image = to_rgb(src)
        digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
        return LoadedImage(image, name or "<PIL image>", digest)
    if isinstance(src, bytes | bytearray | memoryview):
        return _from_bytes(bytes(src), name or "bytes", name or "<bytes>", max_pixels, need)
    if isinstance(src, os.PathLike):
        return read_image_file(Path(src), max_pixels=max_pixels, name=name, need=need)
    if not isinstance(src, str):
        raise ImageError(
            f"cannot read an image from a {type(src).__name__}: pass a file path, URL, "
            "data URI, base64 text, bytes or a PIL image"
        )
    return _load_reference(src.strip(), max_pixels, name, allow_private_urls, need)


def _from_bytes(
    data: bytes, what: str, source: str, max_pixels: int, need: NeedSpec = None
) -> LoadedImage:
    image, full = decode_to_need(data, need=need, max_pixels=max_pixels, what=what)
    original = full if image.size != full else None
    return LoadedImage(image, source, original_size=original, data=data)


def looks_like_base64(text: str) -> bool:
    """Whether a string reference reads as bare base64 image data (no ``data:`` prefix): all
    of the base64 alphabet (standard or URL-safe, whitespace allowed), and over 64 characters
    or ending in base64's padding ``=`` after whole groups of four (a 1x1 GIF is 60: such a
    short one read as a file path was "does not exist", as was ``aGVsbG8=``, no image)."""
    if _B64_CHARS.match(text) is None:
        return False
    packed = "".join(text.split())
    return len(text) > 64 or (packed.endswith("=") and len(packed) % 4 == 0)


def _file_of(text: str) -> Path | None:
    """The file a string reference names; ``None`` for a URL, a data URI, raw base64 or
    nothing (the one reading of a reference, for :func:`load_image` and its checks)."""
    if not text or text.startswith(("http://", "https://", "data:")):
        return None
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return None
    path = Path(text).expanduser()
    if not path.exists() and looks_like_base64(text):
        return None
    return path


def reference_problem(src: str) -> ImageError | None:
    """Why the file a string reference names cannot be an image file, found without reading
    it (missing, a folder, a special file, over the size limit); ``None`` when it may be one,
    or the reference is no file (a URL, a data URI, base64: those are checked when loaded).

    A command asks before it loads a model, so that a mistyped path is refused at once.
    """
    path = _file_of(src.strip())
    if path is None:
        return None
    try:
        check_image_file(path)
    except ImageError as e:
        return e
    except OSError:  # its status cannot be read: loading it says why
        return None
    return None


def _load_reference(
    text: str, max_pixels: int, name: str | None, allow_private_urls: bool, need: NeedSpec
) -> LoadedImage:
    """A string reference: URL, data URI, raw base64 or a file path."""
    path = _file_of(text)
    if path is not None:
        return read_image_file(path, max_pixels=max_pixels, name=name, need=need)
    if not text:
        raise ImageError("the image reference is empty: pass a file path, URL or data URI")
    if text.startswith(("http://", "https://")):
        from rar_agent.netfetch import fetch_url

        data = fetch_url(text, allow_private=allow_private_urls)
        return _from_bytes(data, text, name or text, max_pixels, need)
    if text.startswith("data:"):
        data = decode_base64_image(text)[0]
        uri_name = name or inline_image_name("data URI", hashlib.sha256(data).hexdigest())
        return _from_bytes(data, "data URI", uri_name, max_pixels, need)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        scheme = text.split("://", 1)[0]
        raise ImageError(f"unsupported URL scheme {scheme!r}: use a file path or http(s) URL")
    data = decode_base64_image(text)[0]  # what _file_of leaves: raw base64
    base64_name = name or inline_image_name("base64", hashlib.sha256(data).hexdigest())
    return _from_bytes(data, "base64 text", base64_name, max_pixels, need)


def read_image_file(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    need: NeedSpec = None,
) -> LoadedImage:
    """Read and decode one image file (see :func:`load_image`)."""
    data = read_image_bytes(path)
    return _from_bytes(data, str(path), name or str(path), max_pixels, need)


def read_image_bytes(path: Path) -> bytes:
    """The bytes of one image file, refused with what to do when it cannot be an image file.

    Raises:
        ImageError: ``path`` is missing, a directory or special file, over the size limit,
            or unreadable.
    """
    try:
        check_image_file(path)
        return path.read_bytes()
    except PermissionError as e:
        raise ImageError(f"no permission to read {path}: check the file's permissions") from e
    except OSError as e:
        raise ImageError(f"cannot read {path}: {unreadable_reason(e, path)}: check the path") from e


def check_image_file(path: Path) -> None:
    """Refuse, without reading it, a path that cannot be an image file.

    Raises:
        ImageError: ``path`` is missing, a directory or special file, or over the size limit.
        OSError: Its status cannot be read.
    """
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file: pass a file inside it")
    if not path.exists():
        in_the_way = file_in_the_way_reason(path.parent)  # "afile/x.jpg": afile is no folder
        if in_the_way is not None:
            raise ImageError(f"cannot read {path}: {in_the_way}: check the path")
        raise ImageError(f"{path} does not exist: check the path")
    if not path.is_file():
        raise ImageError(f"{path} is not a regular file (device, socket or pipe?)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"{path} is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB "
            "limit: downscale or re-encode it first"
        )


def decode_image_bytes(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    what: str = "image",
    need: NeedSpec = None,
) -> Image.Image:
    """Decode image bytes into an upright RGB image, validating size and integrity.

    Full size unless ``need`` says less is enough (see :func:`load_image`).
    """
    return decode_to_need(data, need=need, max_pixels=max_pixels, what=what)[0]


def inline_image_name(kind: str, sha256: str) -> str:
    """What an image given inline (``kind``: a data URI, base64 text) is called in answers and
    in the unknown images' groups: ``<data URI 3f9a1c2b>``, from the SHA-256 of its bytes
    (hex), so that two such images are told apart and the same one is known again."""
    return f"<{kind} {sha256[:8]}>"


def decode_base64_image(text: str) -> tuple[bytes, str | None]:
    """``(bytes, MIME type or None)`` of a ``data:image/...;base64,`` URI or raw base64 text
    (standard or URL-safe alphabet, whitespace and missing padding allowed). A data URI
    typed ``application/octet-stream`` (what a browser sends for a file type it does not know,
    such as HEIC) is read by its content, as bare base64 is.

    Raises:
        ImageError: A malformed data URI, a non-image MIME type, or invalid base64.
    """
    text = text.strip()
    if not text.startswith("data:"):
        return _b64decode(text), None
    match = _DATA_URI.match(text)
    if not match:
        raise ImageError("malformed data URI: expected data:image/<type>;base64,<data>")
    mime = (match.group("mime") or "").lower()
    if mime in _UNTYPED:  # a type the sender did not know (HEIC, often): read the bytes
        mime = ""
    if mime and not mime.startswith("image/"):
        raise ImageError(
            f"data URI has type {mime!r}, not an image type: send the image as "
            "data:image/<type>;base64,<data> (or as bare base64)"
        )
    if ";base64" not in (match.group("params") or ""):
        raise ImageError("data URI is not base64-encoded: use data:image/<type>;base64,<data>")
    return _b64decode(match.group("data")), mime or None


def _b64decode(text: str) -> bytes:
    cleaned = re.sub(r"\s+", "", text)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(
            f"invalid base64 image data ({e}): send the image file's bytes base64-encoded, as "
            "data:image/<type>;base64,<data> or bare base64"
        ) from e


def make_thumbnail(image: Image.Image) -> str:
    """A small JPEG data URI of ``image`` (longest side ``THUMBNAIL_SIDE``, at most
    ``THUMBNAIL_MAX_BYTES`` bytes), stored with each example so results can show it."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    data = b""
    for quality in (75, 60, 45, 30):
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
        if len(data) <= THUMBNAIL_MAX_BYTES:
            break
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
