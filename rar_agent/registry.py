"""The image registry: a conversation's images by id, so a model passes short ids, never bytes.

:class:`ImageRegistry` is a thread-safe, bounded store (least recently used first out) keyed
by a hash of the image bytes; the agent middleware, the chat page and the tools share one.
Registration accepts bytes, data URIs, base64 text, PIL images and paths, and validates that
the data decodes as an image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ImageError
from rar_agent.images import decode_image_bytes

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_ID_PATTERN", "ImageRegistry", "RegisteredImage"]

logger = logging.getLogger(__name__)

IMAGE_ID_PATTERN = re.compile(r"img-[0-9a-f]{6,64}")


@dataclass(frozen=True)
class RegisteredImage:
    """One image held by an :class:`ImageRegistry`.

    Attributes:
        id: Its id (``img-`` + 12 hex digits of the SHA-256 of the bytes).
        data: The encoded image bytes (validated on registration).
        mime_type: MIME type, when known.
        name: Display name (an uploaded file name), when known.
        size: ``(width, height)`` in pixels.
    """

    id: str
    data: bytes
    mime_type: str | None
    name: str | None
    size: tuple[int, int]


class ImageRegistry:
    """A thread-safe, bounded store of images by id (the least recently used go first).

    Ids derive from the image bytes, so registering the same image twice gives the same id,
    and ids are not guessable across conversations sharing one registry.

    Args:
        max_items: How many images to keep.
        max_bytes: How many encoded bytes to keep in total.
    """

    def __init__(self, *, max_items: int = 256, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._items: OrderedDict[str, RegisteredImage] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes

    def register(
        self,
        image: bytes | str | os.PathLike[str] | Image.Image,
        *,
        name: str | None = None,
        mime_type: str | None = None,
    ) -> str:
        """Validate and store an image; return its id.

        Args:
            image: Encoded bytes, a ``data:image/...;base64,`` URI or raw base64 text, a PIL
                image, or a ``pathlib.Path`` to a file (for trusted callers such as the
                chat page; a plain ``str`` is never read as a path).
            name: Display name (e.g. the uploaded file name).
            mime_type: MIME type, if known.

        Returns:
            The image id, e.g. ``"img-3fa4c2d19b07"``.

        Raises:
            ImageError: The data is not a readable image.
        """
        data, detected_mime = _to_bytes(image)
        image_id = "img-" + hashlib.sha256(data).hexdigest()[:12]
        with self._lock:
            if image_id in self._items:  # already validated: just make it the latest
                self._items.move_to_end(image_id)
                return image_id
        decoded = decode_image_bytes(data, what=name or "the image")
        item = RegisteredImage(image_id, data, mime_type or detected_mime, name, decoded.size)
        with self._lock:
            old = self._items.pop(image_id, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._items[image_id] = item
            self._bytes += len(data)
            while len(self._items) > 1 and (
                len(self._items) > self.max_items or self._bytes > self.max_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.data)
        logger.debug("registered %s (%d bytes)", image_id, len(data))
        return image_id

    def get(self, image_id: str) -> RegisteredImage:
        """The image with this id.

        Raises:
            ImageError: No such id (never registered, or evicted).
        """
        with self._lock:
            item = self._items.get(image_id)
            if item is not None:
                self._items.move_to_end(image_id)
        if item is None:
            raise ImageError(
                f"no image with id {image_id!r} in this conversation: use an id shown as "
                "'[image id img-...]', or ask the user to upload the image again"
            )
        return item

    def latest(self) -> RegisteredImage | None:
        """The most recently registered (or used) image, or ``None`` when empty."""
        with self._lock:
            if not self._items:
                return None
            return next(reversed(self._items.values()))

    def ids(self) -> list[str]:
        """Ids, oldest first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _to_bytes(image: Any) -> tuple[bytes, str | None]:
    from PIL import Image

    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), None
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    if isinstance(image, os.PathLike):
        path = Path(image)
        try:
            return path.read_bytes(), None
        except OSError as e:
            raise ImageError(f"cannot read {path}: {e.strerror or e}") from e
    if isinstance(image, str):
        return _decode_base64_image(image)
    raise ImageError(
        f"cannot register a {type(image).__name__}: pass bytes, a data URI, base64 text, "
        "a PIL image or a pathlib.Path"
    )


def _decode_base64_image(text: str) -> tuple[bytes, str | None]:
    text = text.strip()
    mime = None
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ImageError("malformed data URI: expected data:image/<type>;base64,<data>")
        mime = header[5:].split(";", 1)[0] or None
        if mime and not mime.startswith("image/"):
            raise ImageError(f"data URI has type {mime!r}, not an image type")
    cleaned = re.sub(r"\s+", "", text)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4)), mime
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True), mime
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"invalid base64 image data ({e})") from e
