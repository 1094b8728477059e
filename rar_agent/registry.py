"""The image registry: a conversation's images by id, so a model passes short ids, never bytes.

:class:`ImageRegistry` is a thread-safe, bounded store (least recently used first out) keyed
by a hash of the image bytes; the agent middleware, the chat page and the tools share one.
Registration accepts bytes, data URIs, base64 text, PIL images and paths, and validates that
the data decodes as an image.

"The latest image" is a conversation's, never the registry's: :class:`ImageScope` holds one
conversation's image ids over the shared registry, and :meth:`ImageScope.latest_id` is the
only definition of "this conversation's latest image"; :func:`is_latest_ref` is the only list
of the words a model may use for it.
:func:`image_blocks_to_ids` registers the images in a user turn's content blocks (every
provider's block format) and replaces them by ``[image id img-...]`` text.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rar_agent.errors import ImageError, RarError, unreadable_reason
from rar_agent.images import (
    declared_size,
    decode_base64_image,
    decode_image_bytes,
    looks_like_base64,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "image_id_for",
    "image_id_from_sha256",
    "IMAGE_ID_PATTERN",
    "LATEST_IMAGE_REFS",
    "ImageRegistry",
    "ImageScope",
    "MessageContent",
    "RegisteredImage",
    "image_blocks_to_ids",
    "is_latest_ref",
    "unreadable_images",
]

logger = logging.getLogger(__name__)

IMAGE_ID_PATTERN = re.compile(r"img-[0-9a-f]{6,64}")

_LATEST = ("latest", "last", "current")
LATEST_IMAGE_REFS = frozenset(
    {
        *_LATEST,
        *(
            f"{the}{word} {noun}"
            for the in ("", "the ")
            for word in _LATEST
            for noun in ("image", "photo", "picture", "upload")
        ),
    }
)
"""The words that mean "this conversation's latest image" (as does no reference at all):
"latest", "the last photo", "current picture"..."""


def is_latest_ref(ref: object) -> bool:
    """Whether a model-chosen image reference means "this conversation's latest image".

    Nothing (``None``, an empty or blank string) does, and so does any of
    :data:`LATEST_IMAGE_REFS` in any case, with extra spaces or quotes.
    """
    if ref is None:
        return True
    if not isinstance(ref, str):
        return False
    words = " ".join(ref.strip().strip("'\"`").lower().split())
    return not words or words in LATEST_IMAGE_REFS


@dataclass(frozen=True)
class RegisteredImage:
    """One image held by an :class:`ImageRegistry`.

    Attributes:
        id: Its id (``img-`` + 12 hex digits of the SHA-256 of the bytes).
        data: The encoded image bytes (validated on registration).
        mime_type: MIME type, when known.
        name: Display name (an uploaded file name), when known.
        size: ``(width, height)`` in pixels.
        sha256: The SHA-256 of ``data`` (hex) that its id was taken from, handed on to a
            teacher so the bytes are not hashed again; ``None`` for an image read back from a
            saved conversation.
    """

    id: str
    data: bytes
    mime_type: str | None
    name: str | None
    size: tuple[int, int]
    sha256: str | None = field(default=None, repr=False)


class ImageRegistry:
    """A thread-safe, bounded store of images by id (the least recently used go first).

    Ids derive from the image bytes, so registering the same image twice gives the same id,
    and ids are not guessable across conversations sharing one registry. An image kept for
    an owner (:meth:`keep`: a served token) is that owner's alone: another owner's lookups
    of its id find nothing, as for an id never kept.

    Args:
        max_items: How many images to keep.
        max_bytes: How many encoded bytes to keep in total.
    """

    def __init__(self, *, max_items: int = 256, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._items: OrderedDict[tuple[str | None, str], RegisteredImage] = OrderedDict()
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
        digest = hashlib.sha256(data).hexdigest()
        image_id = image_id_from_sha256(digest)
        if self._touch(None, image_id):  # already validated: just make it the latest
            return image_id
        decoded = decode_image_bytes(data, what=name or "the image")
        mime = mime_type or detected_mime
        item = RegisteredImage(image_id, data, mime, name, decoded.size, digest)
        self._store(None, item)
        return image_id

    def keep(
        self, data: bytes, *, name: str, owner: str | None = None, sha256: str | None = None
    ) -> str:
        """Store image bytes that the caller has read itself (a server's tool, once it
        decoded them), so that their id can be passed back later; return the id. Nothing is
        decoded here (the size comes from the header, ``(0, 0)`` when it cannot be read);
        bytes an owner kept already keep their first name.

        Args:
            data: The encoded image.
            name: How the image came (e.g. "sent inline to recognize_image at 01:02:03 UTC").
            owner: Whose it is (a served token's name): only lookups by that owner find it;
                ``None``: a caller with no token (stdio), like a conversation's image.
            sha256: The SHA-256 of ``data`` (hex) where the caller has it already (a hash
                of every byte, not taken twice).
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        image_id = image_id_from_sha256(digest)
        if not self._touch(owner, image_id):
            size = declared_size(data) or (0, 0)
            self._store(owner, RegisteredImage(image_id, data, None, name, size, digest))
        return image_id

    def _touch(self, owner: str | None, image_id: str) -> bool:
        """Make ``owner``'s image ``image_id`` the most recently used; whether it is held."""
        with self._lock:
            held = (owner, image_id) in self._items
            if held:
                self._items.move_to_end((owner, image_id))
        return held

    def _store(self, owner: str | None, item: RegisteredImage) -> None:
        """Hold ``item`` as ``owner``'s newest image, dropping the least recently used (of
        any owner) past the bounds."""
        key, data = (owner, item.id), item.data
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data)
            self._items[key] = item
            self._bytes += len(data)
            while len(self._items) > 1 and (
                len(self._items) > self.max_items or self._bytes > self.max_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.data)
        logger.debug("registered %s (%d bytes)", item.id, len(data))

    def get(self, image_id: str) -> RegisteredImage:
        """The image with this id (registered, or kept with no owner).

        Raises:
            ImageError: No such id (never registered, or evicted).
        """
        item = self.find(image_id)
        if item is None:
            raise ImageError(
                f"no image with id {image_id!r} in this conversation: use an id shown as "
                "'[image id img-...]', or ask the user to upload the image again"
            )
        return item

    def find(self, image_id: str, *, owner: str | None = None) -> RegisteredImage | None:
        """``owner``'s image with this id (now the most recently used), or ``None``."""
        with self._lock:
            item = self._items.get((owner, image_id))
            if item is not None:
                self._items.move_to_end((owner, image_id))
        return item

    def name_of(self, image_id: str, *, owner: str | None = None) -> str | None:
        """The name of ``owner``'s image with this id (how a kept one came); ``None`` when it
        has none or this registry holds no such image of ``owner``'s."""
        with self._lock:
            item = self._items.get((owner, image_id))
        return item.name if item is not None else None

    def ids(self) -> list[str]:
        """Ids of the images with no owner (every conversation's), least recently registered
        or used first."""
        with self._lock:
            return [image_id for owner, image_id in self._items if owner is None]

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return (None, image_id) in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def scope(self, ids: Iterable[str] = ()) -> ImageScope:
        """A conversation's view of this registry (see :class:`ImageScope`)."""
        return ImageScope(self, ids)


class ImageScope:
    """The images of one conversation, over a registry that many conversations share.

    It knows which ids this conversation has shown, in order; its :meth:`latest_id` is the
    one definition of "this conversation's latest image", and :meth:`get` refuses ids of
    other conversations. The agent keeps a conversation's ids in its state and scopes them
    here on every tool call; a tool bound to a scope (instead of the bare registry) resolves
    "latest" with it.

    Args:
        registry: The shared store of image bytes.
        ids: The conversation's image ids so far, oldest first.
    """

    def __init__(self, registry: ImageRegistry, ids: Iterable[str] = ()) -> None:
        self.registry = registry
        self._ids: list[str] = []
        self._lock = threading.Lock()
        for image_id in ids:
            self.add(image_id)

    def add(self, image_id: str) -> None:
        """Record that the conversation showed ``image_id`` (again): it becomes the latest."""
        with self._lock:
            if image_id in self._ids:
                self._ids.remove(image_id)
            self._ids.append(image_id)

    def register(
        self,
        image: bytes | str | os.PathLike[str] | Image.Image,
        *,
        name: str | None = None,
        mime_type: str | None = None,
    ) -> str:
        """Store an image in the registry as this conversation's latest; return its id.

        Raises:
            ImageError: The data is not a readable image.
        """
        image_id = self.registry.register(image, name=name, mime_type=mime_type)
        self.add(image_id)
        return image_id

    def ids(self) -> list[str]:
        """This conversation's image ids, oldest first."""
        with self._lock:
            return list(self._ids)

    def lists(self, name: str | None) -> bool:
        """Whether this conversation lists an image named so (an unknown image, in groups):
        its own uploads, and what is named by path, URL or inline data (which any
        conversation may name), never another conversation's upload."""
        return name is None or IMAGE_ID_PATTERN.fullmatch(name) is None or name in self

    def latest_id(self) -> str | None:
        """The id of this conversation's latest image, or ``None`` when it has none."""
        with self._lock:
            return self._ids[-1] if self._ids else None

    def get(self, image_id: str) -> RegisteredImage:
        """One of this conversation's images.

        Raises:
            ImageError: The id is not one of this conversation's, or the registry dropped it.
        """
        with self._lock:
            mine = image_id in self._ids
        if not mine:
            raise ImageError(
                f"image {image_id} is not part of this conversation; its images are: "
                f"{', '.join(self.ids()) or 'none'}"
            )
        return self.registry.get(image_id)

    def latest(self) -> RegisteredImage:
        """This conversation's latest image.

        Raises:
            ImageError: The conversation has no image yet (or the registry dropped it).
        """
        image_id = self.latest_id()
        if image_id is None:
            raise ImageError(
                "no image in this conversation yet: ask the user to upload or paste a photo"
            )
        return self.registry.get(image_id)

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


def image_id_for(data: bytes) -> str:
    """The id an image's bytes get in a registry (``img-`` + 12 hex digits of its SHA-256)."""
    return image_id_from_sha256(hashlib.sha256(data).hexdigest())


def image_id_from_sha256(sha256: str) -> str:
    """:func:`image_id_for` of the bytes whose SHA-256 (hex) is ``sha256``."""
    return "img-" + sha256[:12]


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
            reason = unreadable_reason(e, path)
            raise ImageError(f"cannot read {path}: {reason}: check the path") from e
    if isinstance(image, str):
        try:
            return decode_base64_image(image)
        except ImageError:
            if image.startswith("data:") or looks_like_base64(image.strip()):
                raise
            raise ImageError(  # a path, most likely
                f"{image[:80]!r} is not base64 image data, and a str is never read as a file "
                "path here: pass pathlib.Path(...) for a file, or the image's bytes"
            ) from None
    raise ImageError(
        f"cannot register a {type(image).__name__}: pass bytes, a data URI, base64 text, "
        "a PIL image or a pathlib.Path"
    )


# ---------------------------------------------------------------------------- content blocks

MessageContent = str | list[str | dict[str, Any]]
"""A chat message's content, as LangChain messages hold it."""

# (data: base64 text, a data URI or an http(s) URL; MIME type; display name)
_BlockImage = tuple[str | bytes, str | None, str | None]
_Found = _BlockImage | None


def image_blocks_to_ids(
    content: MessageContent,
    registry: ImageRegistry,
    *,
    fetch_url: Callable[[str], bytes] | None = None,
) -> tuple[MessageContent, list[str]]:
    """Register the images in a message's content and replace them by id placeholders.

    Args:
        content: A message's content (a string or a list of blocks).
        registry: Where the images go.
        fetch_url: How to download ``http(s)`` image URLs; ``None`` leaves URL blocks as
            they are (the model may still see them; the tools cannot).

    Returns:
        ``(new_content, ids)``: the content with each image replaced by a text block
        ``[image id img-...]`` (or a note saying why it could not be read) and the ids of
        the registered images, in order. Content without images comes back unchanged.
    """
    if not isinstance(content, list):
        return content, []
    new: list[str | dict[str, Any]] = []
    ids: list[str] = []
    changed = False
    for block in content:
        found = _block_image(block)
        replaced = None if found is None else _register_block(found, registry, fetch_url)
        if replaced is None:
            new.append(block)
            continue
        text, image_id = replaced
        new.append({"type": "text", "text": text})
        ids += [image_id] if image_id else []
        changed = True
    return (new if changed else content), ids


_UNREADABLE = "[an image that could not be read: "


def unreadable_images(content: MessageContent) -> list[str]:
    """Why each image of a message's content could not be read: the notes
    :func:`image_blocks_to_ids` put in their place, in order (none for other content)."""
    if not isinstance(content, list):
        return []
    texts = [str(b.get("text", "")) for b in content if isinstance(b, dict)]
    return [
        t[len(_UNREADABLE) : -1] for t in texts if t.startswith(_UNREADABLE) and t.endswith("]")
    ]


def _register_block(
    found: _BlockImage, registry: ImageRegistry, fetch_url: Callable[[str], bytes] | None
) -> tuple[str, str | None] | None:
    """``(placeholder text, id or None)`` for one image block; ``None`` keeps the block."""
    data, mime, name = found
    try:
        if isinstance(data, str) and data.startswith(("http://", "https://")):
            if fetch_url is None:
                return None
            image_id = registry.register(fetch_url(data), name=name or data, mime_type=mime)
        else:
            if isinstance(data, str):  # a block's text is base64, never a file path
                data, detected = decode_base64_image(data)
                mime = mime or detected
            image_id = registry.register(data, name=name, mime_type=mime)
    except RarError as e:
        logger.info("could not register an image from a user turn: %s", e)
        return f"{_UNREADABLE}{e}]", None
    return f"[image id {image_id}" + (f", file {name}]" if name else "]"), image_id


def _block_image(block: object) -> _BlockImage | None:
    """``(data, mime, name)`` of an image content block, or ``None`` if it is not one."""
    if not isinstance(block, dict):
        return None
    reader = _BLOCK_READERS.get(block.get("type"))
    if reader is None:
        return None
    raw_meta = block.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = block.get("name") or block.get("filename") or meta.get("name") or meta.get("filename")
    mime = block.get("mime_type") or block.get("mimeType") or block.get("media_type")
    return reader(block, mime, name)


def _text(value: object, mime: str | None, name: str | None) -> _BlockImage | None:
    return (value, mime, name) if isinstance(value, str) and value else None


def _openai_chat_block(block: dict[str, Any], mime: str | None, name: str | None) -> _Found:
    inner = block.get("image_url")  # {"url": ...} or the URL itself
    return _text(inner.get("url") if isinstance(inner, dict) else inner, mime, name)


def _openai_responses_block(block: dict[str, Any], mime: str | None, name: str | None) -> _Found:
    return _text(block.get("image_url"), mime, name)


def _image_block(block: dict[str, Any], mime: str | None, name: str | None) -> _Found:
    source = block.get("source")
    if not isinstance(source, dict):
        return _inline_block(block, mime, name)
    # Anthropic: {"source": {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}
    if source.get("type") == "base64" and source.get("data"):
        return source["data"], source.get("media_type") or mime, name
    if source.get("type") == "url" and source.get("url"):
        return source["url"], mime, name
    return None


def _file_block(block: dict[str, Any], mime: str | None, name: str | None) -> _Found:
    return _inline_block(block, mime, name) if str(mime or "").startswith("image/") else None


def _inline_block(block: dict[str, Any], mime: str | None, name: str | None) -> _Found:
    # v1 standard blocks ("base64"/"url"), v0 ("source_type" + "data"/"url"), chat UI
    # (camelCase "mimeType" + "data").
    data = _text(block.get("base64") or block.get("data"), mime, name)
    return data or _text(block.get("url"), mime, name)


_BLOCK_READERS: dict[object, Callable[[dict[str, Any], str | None, str | None], _Found]] = {
    "image_url": _openai_chat_block,  # OpenAI chat completions
    "input_image": _openai_responses_block,  # OpenAI responses API
    "image": _image_block,  # LangChain standard (v1, v0, chat UI) and Anthropic
    "file": _file_block,  # a file block with an image MIME type
}
