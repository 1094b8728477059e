"""LangChain messages -> a transformers processor's chat format (text turns + image slots).

Text, standard base64 image blocks and OpenAI ``image_url`` data URLs are understood; remote
image URLs are refused (a local model gets the bytes, it never fetches).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

from langchain_core.messages import BaseMessage, ChatMessage

from rar_agent.errors import RankerError

__all__ = ["merge_system_turns", "to_processor_messages"]

logger = logging.getLogger(__name__)

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def _decode_image(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise RankerError(f"An image in the messages could not be decoded: {exc}.") from exc
    return img.convert("RGB")


def _image_from_url(url: str) -> Any:
    if not url.startswith("data:"):
        raise RankerError(
            "The local model only takes inline images (base64 blocks or data: URLs), not "
            f"{url[:60]!r}; load the image first and send its bytes."
        )
    _, _, payload = url.partition(",")
    return _image_from_base64(payload)


def _image_from_base64(payload: str) -> Any:
    try:
        return _decode_image(base64.b64decode(payload, validate=False))
    except binascii.Error as exc:
        raise RankerError(f"An image block holds invalid base64 data: {exc}.") from exc


def _block_image(block: dict[str, Any]) -> Any | None:
    """The PIL image of an image content block, or None when the block is not an image."""
    kind = block.get("type")
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        return _image_from_url(str(url))
    if kind != "image":
        return None
    if block.get("base64"):
        return _image_from_base64(block["base64"])
    if block.get("source_type") == "base64" and block.get("data"):
        return _image_from_base64(block["data"])
    url = block.get("url") or (block.get("data") if block.get("source_type") == "url" else None)
    if url:
        return _image_from_url(str(url))
    raise RankerError("An image block has no base64 data or data: URL the local model can use.")


def to_processor_messages(messages: list[BaseMessage]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Convert LangChain messages to a processor chat (with image placeholders) + the images.

    Args:
        messages: LangChain messages; content may be a string or a list of content blocks.

    Returns:
        ``(conversation, images)``: ``[{"role", "content": [{"type": "text"|"image", ...}]}]``
        for ``processor.apply_chat_template`` and the PIL images in placeholder order.

    Raises:
        RankerError: An image block cannot be decoded or points to a remote URL.
    """
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for msg in messages:
        role = msg.role if isinstance(msg, ChatMessage) else _ROLES.get(msg.type, "user")
        content: list[dict[str, Any]] = []
        blocks = [msg.content] if isinstance(msg.content, str) else msg.content
        for block in blocks:
            if isinstance(block, str):
                content.append({"type": "text", "text": block})
                continue
            image = _block_image(block)
            if image is not None:
                images.append(image)
                content.append({"type": "image"})
            elif block.get("type") == "text":
                content.append({"type": "text", "text": block.get("text", "")})
            else:
                logger.debug("skipping content block of type %r", block.get("type"))
        conversation.append({"role": role, "content": content})
    return conversation, images


def merge_system_turns(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold system turns into the next user turn, for templates without a system role."""
    merged: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for turn in conversation:
        if turn["role"] == "system":
            pending.extend(turn["content"])
            continue
        if pending and turn["role"] == "user":
            turn = {"role": "user", "content": pending + turn["content"]}
            pending = []
        merged.append(turn)
    if pending:
        merged.insert(0, {"role": "user", "content": pending})
    return merged
