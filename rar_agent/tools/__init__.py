"""LangChain tools over a :class:`~rar_agent.pipeline.Recognizer` (langchain-core only).

- :class:`RecognizeTool` recognizes an image given by reference: a registered image id
  (``img-...``), a file inside the allowed directories, or an ``http(s)`` URL when URLs are
  allowed. With no reference it takes the latest registered image.
- :class:`CategorySearchTool` finds the categories in memory that match a text.
- :class:`AddCategoryTool` teaches the memory a new example (off unless learning is allowed).
- :class:`ImageRegistry` holds the images of a conversation by id, so a model passes short
  ids and never raw bytes; the agent middleware, the chat page and the tools share one. It
  lives in :mod:`rar_agent.registry` and is re-exported here.
- :class:`RecognizerLike` is what the tools need of a recognizer
  (:class:`~rar_agent.pipeline.Recognizer` is one).

Every failure reaches the model as a tool error (``ToolException`` with
``handle_tool_error=True``), never as a crash. Modules: ``base`` (the recognizer protocol,
image references, the shared base tool), ``recognize`` (recognize and search), ``learn``
(add an example).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain_core.tools import BaseTool

from rar_agent.registry import IMAGE_ID_PATTERN as IMAGE_ID_PATTERN
from rar_agent.registry import ImageRegistry, RegisteredImage
from rar_agent.safety import normalize_roots
from rar_agent.tools.base import RecognizerLike
from rar_agent.tools.learn import AddCategoryInput, AddCategoryTool
from rar_agent.tools.recognize import (
    CategorySearchInput,
    CategorySearchTool,
    RecognizeInput,
    RecognizeTool,
    format_result,
)

__all__ = [
    "AddCategoryInput",
    "AddCategoryTool",
    "CategorySearchInput",
    "CategorySearchTool",
    "ImageRegistry",
    "RecognizeInput",
    "RecognizeTool",
    "RecognizerLike",
    "RegisteredImage",
    "format_result",
    "make_tools",
]


def make_tools(
    recognizer: RecognizerLike,
    *,
    registry: ImageRegistry | None = None,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
) -> list[BaseTool]:
    """The recognition tools over one recognizer, sharing one image registry.

    Args:
        recognizer: A :class:`~rar_agent.pipeline.Recognizer`.
        registry: Where conversation images live (a new one if ``None``).
        allowed_roots: Directories whose files the tools may read (none by default).
        allow_urls: Let the tools fetch public ``http(s)`` URLs (off by default; loopback,
            private and link-local addresses are always refused).
        allow_learning: Include :class:`AddCategoryTool` (off by default).

    Returns:
        ``[RecognizeTool, CategorySearchTool]`` plus ``AddCategoryTool`` when learning is
        allowed.
    """
    shared: dict[str, Any] = {
        "recognizer": recognizer,
        "registry": registry if registry is not None else ImageRegistry(),
        "allowed_roots": normalize_roots(allowed_roots),  # ConfigError here, not in pydantic
        "allow_urls": allow_urls,
    }
    tools: list[BaseTool] = [RecognizeTool(**shared), CategorySearchTool(**shared)]
    if allow_learning:
        tools.append(AddCategoryTool(enabled=True, **shared))
    return tools
