"""LangChain tools over a :class:`~rar_agent.pipeline.Recognizer` (langchain-core only).

- :class:`RecognizeTool` recognizes an image given by reference: a registered image id
  (``img-...``), a file inside the allowed directories, or an ``http(s)`` URL when URLs are
  allowed. With no reference it takes the conversation's latest image (from an
  :class:`~rar_agent.registry.ImageScope`, or filled in by the agent's middleware).
- :class:`CategorySearchTool` finds the categories in memory that match a text.
- :class:`ListCategoriesTool` lists what the memory knows: its labels and how many entries each.
- :class:`UnknownGroupsTool` lists the groups of look-alike unknown images seen lately, so an
  agent asks once about a new thing seen many times.
- :class:`RecognizeImagesTool` recognizes many photos in one call (a folder inside the
  allowed directories, or a list of images), a bounded number per call, with a progress note;
  :func:`folder_tools` adds langchain-community's read-only ``list_directory`` and
  ``file_search`` confined to those folders.
- :class:`AddCategoryTool` teaches the memory a new example or corrects an answer;
  :class:`TeachGroupTool` teaches a whole group of look-alike unknown images at once;
  :class:`RelabelExampleTool`, :class:`TeachingHistoryTool` and :class:`UndoTeachingTool`
  move an example, list and undo what was taught (all off unless learning is allowed; all
  through :class:`~rar_agent.pipeline.teacher.Teacher`).
- :class:`ImageRegistry` holds the images of a conversation by id, so a model passes short
  ids and never raw bytes; the agent middleware, the chat page and the tools share one. It
  lives in :mod:`rar_agent.registry` and is re-exported here.
- :class:`RecognizerLike` is what the tools need of a recognizer
  (:class:`~rar_agent.pipeline.Recognizer` is one).

Every failure reaches the model as a tool error (``ToolException`` with
``handle_tool_error=True``; arguments that do not validate as which one and why), never as
a crash: every tool of ours derives from ``base.ErrorAnsweringTool``. Each tool's artifact
has a declared shape (``artifact_type``, a pydantic type), which the MCP server publishes as
its output schema.
Modules: ``base`` (the recognizer protocol, image references, the shared base tool),
``recognize`` (recognize and search), ``listing`` (list categories), ``learn`` (the
teaching tools), ``folders`` (browse photo folders, recognize many photos).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool

from rar_agent.encoders.base import has_text_tower
from rar_agent.openset.groups import LOG_CAPACITY
from rar_agent.registry import IMAGE_ID_PATTERN as IMAGE_ID_PATTERN
from rar_agent.registry import ImageRegistry, ImageScope, RegisteredImage
from rar_agent.safety import normalize_roots
from rar_agent.tools.base import ImageResolver, RecognizerLike
from rar_agent.tools.folders import RecognizeImagesInput, RecognizeImagesTool, folder_tools
from rar_agent.tools.learn import (
    AddCategoryInput,
    AddCategoryTool,
    RelabelExampleInput,
    RelabelExampleTool,
    TeachGroupInput,
    TeachGroupTool,
    TeachingHistoryInput,
    TeachingHistoryTool,
    UndoTeachingInput,
    UndoTeachingTool,
)
from rar_agent.tools.listing import (
    ListCategoriesInput,
    ListCategoriesTool,
    UnknownGroupsInput,
    UnknownGroupsTool,
)
from rar_agent.tools.recognize import (
    RECOGNIZE_WHAT,
    CategorySearchInput,
    CategorySearchTool,
    RecognizeInput,
    RecognizeTool,
    format_result,
)

if TYPE_CHECKING:
    from rar_agent.results import TeachVia

__all__ = [
    "AddCategoryInput",
    "AddCategoryTool",
    "CategorySearchInput",
    "CategorySearchTool",
    "ImageRegistry",
    "ImageScope",
    "KEPT_BYTES",
    "KEPT_IMAGES",
    "ListCategoriesInput",
    "ListCategoriesTool",
    "RecognizeImagesInput",
    "RecognizeImagesTool",
    "RecognizeInput",
    "RecognizeTool",
    "RecognizerLike",
    "RegisteredImage",
    "RelabelExampleInput",
    "RelabelExampleTool",
    "TeachGroupInput",
    "TeachGroupTool",
    "TeachingHistoryInput",
    "TeachingHistoryTool",
    "UndoTeachingInput",
    "UndoTeachingTool",
    "UnknownGroupsInput",
    "UnknownGroupsTool",
    "folder_tools",
    "format_result",
    "make_tools",
]


KEPT_IMAGES = LOG_CAPACITY
"""Images sent inline that tools with no conversation keep, so a later call may pass their id
(as many as the unknown images' log holds: each of its groups can be taught)."""
KEPT_BYTES = 256 * 2**20
"""The encoded bytes those kept images may take in all (the oldest go first)."""


def make_tools(
    recognizer: RecognizerLike,
    *,
    registry: ImageRegistry | ImageScope | None = None,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
    image_ids: bool = True,
    reject: str | float | None = None,
    via: TeachVia = "tool",
    by: str | None = None,
    example_images: bool = False,
    max_pixels: int | None = None,
) -> list[BaseTool]:
    """The recognition tools over one recognizer, sharing one image registry.

    The descriptions of the tools that take an image list the forms this configuration
    accepts, so a model knows whether it may pass a path or a URL.

    Args:
        recognizer: A :class:`~rar_agent.pipeline.Recognizer`.
        registry: Where conversation images live (a new one if ``None``): one
            conversation's :class:`~rar_agent.registry.ImageScope` (then "latest" is its
            latest image), or a registry shared by conversations (ids only; an agent's
            middleware fills in each conversation's latest).
        allowed_roots: Directories whose files the tools may read (none by default).
        allow_urls: Let the tools fetch public ``http(s)`` URLs (off by default; loopback,
            private and link-local addresses are always refused).
        allow_learning: Include the teaching tools (off by default).
        image_ids: Accept image ids from a conversation's registry. ``False`` for callers
            that hold no conversation (the MCP server): images come as paths, URLs or data
            URIs, ``registry`` is ignored, and an image sent inline is named by an id that a
            later call may pass instead (the last :data:`KEPT_IMAGES` are kept).
        reject: When an image is "not a category in memory" (``off``, ``auto`` or a
            threshold); ``None`` keeps the recognizer's own setting (``RAR_REJECT``).
        max_pixels: Refuse images larger than this before decoding them (a served
            memory's limit); ``None`` leaves the decoder's own limit.

    Returns:
        ``[RecognizeTool, CategorySearchTool, ListCategoriesTool, UnknownGroupsTool]``, plus
        ``RecognizeImagesTool`` when there are allowed directories (a folder's photos in one
        call) and the teaching tools when learning is allowed.
    """
    if reject is not None:
        recognizer = recognizer.with_reject(reject)
    kept = None
    if not image_ids:
        registry = None
        kept = ImageRegistry(max_items=KEPT_IMAGES, max_bytes=KEPT_BYTES)
    elif registry is None:
        registry = ImageRegistry()
    roots = normalize_roots(allowed_roots)  # ConfigError here, not in pydantic
    shared: dict[str, Any] = {
        "recognizer": recognizer,
        "registry": registry,
        "kept_images": kept,
        "allowed_roots": roots,
        "allow_urls": allow_urls,
        "max_pixels": max_pixels,
    }
    forms = ImageResolver(registry=registry, allowed_roots=roots, allow_urls=allow_urls, kept=kept)
    accepts = f" Images it accepts: {forms.accepted()}."
    tools: list[BaseTool] = [
        RecognizeTool(
            description=RECOGNIZE_WHAT + accepts,
            can_learn=allow_learning,
            example_images=example_images,
            **shared,
        ),
        CategorySearchTool(**shared),
        ListCategoriesTool(**shared),
        UnknownGroupsTool(can_learn=allow_learning, **shared),
    ]
    if not has_text_tower(recognizer.encoder):  # it could only ever fail
        tools = [t for t in tools if not isinstance(t, CategorySearchTool)]
    if roots:
        batch = RecognizeImagesTool.model_fields["description"].default + accepts
        tools.append(RecognizeImagesTool(description=batch, **shared))
    if allow_learning:
        description = AddCategoryTool.model_fields["description"].default + accepts
        teach = {"enabled": True, "via": via, "by": by, **shared}
        tools += [
            AddCategoryTool(description=description, **teach),
            TeachGroupTool(**teach),
            RelabelExampleTool(**teach),
            TeachingHistoryTool(**teach),
            UndoTeachingTool(**teach),
        ]
    return tools
