"""The listing tools: what the memory knows (its labels and how many entries each), and the
groups of look-alike unknown images seen lately."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import ToolException
from pydantic import BaseModel, Field

from rar_agent.errors import RarError
from rar_agent.results import CategoryCount, CategoryListing, NovelGroups, counted
from rar_agent.tools.base import RecognizerTool, tool_error
from rar_agent.tools.provenance import serving_name, serving_teacher

if TYPE_CHECKING:
    from rar_agent.memory import MemoryInfo

__all__ = [
    "ListCategoriesInput",
    "ListCategoriesTool",
    "UnknownGroupsInput",
    "UnknownGroupsTool",
    "listing_text",
    "memory_named",
]


class ListCategoriesInput(BaseModel):
    """Arguments of :class:`ListCategoriesTool`."""

    contains: str | None = Field(
        default=None,
        max_length=200,
        description="Only labels containing this text (case-insensitive), e.g. 'heron'.",
    )
    limit: int = Field(default=100, ge=1, le=1000, description="At most this many labels.")


class ListCategoriesTool(RecognizerTool):
    """List the categories the memory knows, with their entry counts (alphabetical)."""

    name: str = "list_categories"
    description: str = (
        "List the categories the memory knows (what can be recognized), with how many example "
        "images each has; optionally only the labels containing a text."
    )
    args_schema: type[BaseModel] = ListCategoriesInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = CategoryListing

    def _run(
        self,
        contains: str | None = None,
        limit: int = 100,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        memory = self.recognizer.memory
        try:
            images, texts = memory.labels("image"), memory.labels("text")
            info = memory.info
        except RarError as e:
            raise tool_error(e) from e
        needle = (contains or "").strip().casefold()
        names = sorted(n for n in images.keys() | texts.keys() if needle in n.casefold())
        listing = CategoryListing(
            collection=info.collection,
            description=info.description,
            total=len(names),
            categories=[
                CategoryCount(
                    label=n, image_examples=images.get(n, 0), text_entries=texts.get(n, 0)
                )
                for n in names[:limit]
            ],
            truncated=len(names) > limit,
        )
        text = listing_text(listing, contains, named=memory_named(info))
        return text, listing.model_dump(mode="json")

    async def _arun(
        self,
        contains: str | None = None,
        limit: int = 100,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, contains, limit)


def memory_named(memory: MemoryInfo) -> str:
    """How answers to a model name the memory: by its collection, except an embedded memory
    in a folder of another name (``--memory DIR``: its collection is 'default' whatever the
    folder), named by its folder as the CLI does ("the memory at DIR"), though by the
    folder's name only: a tool's answer never says where the server's files lie."""
    folder = Path(memory.location).name
    if memory.backend == "edge" and folder and folder != memory.collection:
        return f"the memory in the folder {folder!r}"
    return f"the category memory {memory.collection!r}"


def listing_text(listing: CategoryListing, contains: str | None = None, *, named: str) -> str:
    """The short text a model sees for a listing: the labels with their example counts
    (``named``: the memory, as :func:`memory_named` names it)."""
    matching = f" matching {contains!r}" if contains else ""
    if not listing.total:
        return f"No categories{matching} in {named}."
    about = f" ({listing.description})" if listing.description else ""
    items = [
        f"{c.label} ({counted(c.image_examples, 'example')})"
        if c.image_examples
        else f"{c.label} (name only)"
        for c in listing.categories
    ]
    more = ""
    if listing.truncated:
        more = f"; and {listing.total - len(items)} more (narrow the list with 'contains')"
    known = counted(listing.total, "category", "categories")
    return (
        f"{named[0].upper()}{named[1:]}{about} knows {known}{matching}: "
        + ", ".join(items)
        + more
        + "."
    )


class UnknownGroupsInput(BaseModel):
    """Arguments of :class:`UnknownGroupsTool` (none needed)."""

    min_size: int = Field(
        default=2, ge=1, le=1000, description="Only groups of at least this many images."
    )


class UnknownGroupsTool(RecognizerTool):
    """List groups of recent unknown images that look alike, with their member images."""

    name: str = "list_unknown_groups"
    description: str = (
        "List groups of recently recognized images that were NOT a category in memory but "
        "look alike (probably one new thing seen several times), with their images. Ask the "
        "user once what a group shows instead of asking about each image."
    )
    args_schema: type[BaseModel] = UnknownGroupsInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = NovelGroups
    can_learn: bool = Field(
        default=False, description="A teach_unknown_group tool is available (text hint)."
    )

    def _run(
        self, min_size: int = 2, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        unknown_groups = getattr(self.recognizer, "unknown_groups", None)
        if unknown_groups is None:
            raise ToolException("this recognizer keeps no log of unknown images")
        # a conversation of a shared page, a token of a shared server: no one else's images
        found: NovelGroups = unknown_groups(min_size=min_size, shown=self.shown_unknown())
        found.sent = self._sent(found)
        if not found.groups:
            seen = f"{counted(found.unknown_images, 'unknown image')} seen lately"
            text = (
                f"No group of look-alike unknown images yet ({seen})."
                if found.no_groups is None
                else f"{found.no_groups[0].upper()}{found.no_groups[1:]} ({seen})."
            )
        else:
            lines = [
                f"- {g.id}: {counted(g.size, 'image')}: "
                + ", ".join(f"{i} ({found.sent[i]})" if i in found.sent else i for i in g.images)
                + (" ..." if g.size > len(g.images) else "")
                for g in found.groups
            ]
            caller = serving_teacher()
            teach = self.can_learn and (caller is None or caller.may_teach)
            then = "; once told, teach_unknown_group teaches a whole group" if teach else ""
            text = f"Groups of look-alike unknown images (ask what each shows{then}):\n"
            text += "\n".join(lines)
        return text, found.model_dump(mode="json")

    async def _arun(
        self, min_size: int = 2, run_manager: AsyncCallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, min_size)

    def _sent(self, found: NovelGroups) -> dict[str, str]:
        """How the listed images that were sent inline came, by their ids."""
        kept = self.kept_images
        if kept is None:
            return {}
        owner = serving_name()
        named = {i: kept.name_of(i, owner=owner) for g in found.groups for i in g.images}
        return {i: how for i, how in named.items() if how}
