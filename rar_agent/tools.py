"""LangChain tools over a :class:`~rar_agent.pipeline.Recognizer` (langchain-core only).

- :class:`RecognizeTool` recognizes an image given by reference: a registered image id
  (``img-...``), a file inside the allowed directories, or an ``http(s)`` URL when URLs are
  allowed. With no reference it takes the latest registered image.
- :class:`CategorySearchTool` finds the categories in memory that match a text.
- :class:`AddCategoryTool` teaches the memory a new example (off unless learning is allowed).
- :class:`ImageRegistry` holds the images of a conversation by id, so a model passes short
  ids and never raw bytes; the agent middleware, the chat page and the tools share one. It
  lives in :mod:`rar_agent.registry` and is re-exported here.

Every failure reaches the model as a tool error (``ToolException`` with
``handle_tool_error=True``), never as a crash.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rar_agent.errors import ImageError, RarError, UnsafeInputError
from rar_agent.registry import IMAGE_ID_PATTERN as IMAGE_ID_PATTERN
from rar_agent.registry import ImageRegistry, RegisteredImage, _decode_base64_image
from rar_agent.safety import fetch_public_url, normalize_roots, resolve_inside_roots

if TYPE_CHECKING:
    from rar_agent.results import RecognitionResult

__all__ = [
    "AddCategoryInput",
    "AddCategoryTool",
    "CategorySearchInput",
    "CategorySearchTool",
    "ImageRegistry",
    "RecognizeInput",
    "RecognizeTool",
    "RegisteredImage",
    "format_result",
    "make_tools",
]


_ID_REF = re.compile(r"^\[?\s*(?:image(?:\s+id)?\s*[:=]?\s*)?(img-[0-9a-f]{6,64})\s*\]?$", re.I)
_LATEST = {"latest", "last", "latest image", "the latest image", "last image", "current"}
_MAX_BOXES = 32

# ---------------------------------------------------------------------------- references


@dataclass(frozen=True)
class _ImageSource:
    """Where an image reference led: its bytes (or a safe file path) and a display name."""

    name: str
    data: bytes | None = None
    path: Path | None = None

    def payload(self) -> bytes | Path:
        return self.data if self.data is not None else self.path  # type: ignore[return-value]


@dataclass(frozen=True)
class _ImageResolver:
    """Turns a model-chosen image reference into image data, applying the safety rules."""

    registry: ImageRegistry | None = None
    allowed_roots: tuple[Path, ...] = ()
    allow_urls: bool = False

    def resolve(self, ref: str | None) -> _ImageSource:
        text = (ref or "").strip()
        if not text or text.lower() in _LATEST:
            latest = self.registry.latest() if self.registry is not None else None
            if latest is None:
                raise ImageError(
                    "no image in this conversation yet: ask the user to upload a photo, or "
                    "pass an image id, a file path or a URL"
                )
            return _ImageSource(latest.id, data=latest.data)
        match = _ID_REF.match(text)
        if match:
            if self.registry is None:
                raise ImageError(f"image ids like {text!r} need an image registry")
            item = self.registry.get(match.group(1).lower())
            return _ImageSource(item.id, data=item.data)
        if text.startswith(("http://", "https://")):
            if not self.allow_urls:
                raise UnsafeInputError(
                    "fetching URLs is disabled for this tool: ask the user to upload the image"
                )
            return _ImageSource(text, data=fetch_public_url(text))
        if text.startswith("data:"):
            data, _ = _decode_base64_image(text)
            return _ImageSource("<data URI>", data=data)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            raise UnsafeInputError(f"unsupported reference {text[:40]!r}: use an image id")
        return _ImageSource(text, path=resolve_inside_roots(text, self.allowed_roots))


def _tool_error(e: Exception) -> ToolException:
    return ToolException(str(e))


# ---------------------------------------------------------------------------- formatting


def format_result(
    result: RecognitionResult, *, image_name: str | None = None, can_learn: bool = False
) -> str:
    """The short text a model sees: the answer, how it was ranked, the scored candidates.

    An unknown image is reported plainly as "not a category in memory", with the closest
    categories; ``can_learn`` adds how to teach it.
    """
    where = f" for {image_name}" if image_name else ""
    if result.error:
        return f"Recognition failed{where}: {result.error}"
    if not result.candidates:
        return f"No categories found{where}: the memory returned nothing."
    if result.unknown:
        return _format_unknown(result, where, can_learn)
    info = result.ranking
    if info.status == "ranked":
        how = f"ranked by {info.model}" if info.model else "ranked by the model"
    elif info.status == "skipped":
        how = (
            f"retrieval order, ranking skipped ({info.reason})"
            if info.reason
            else ("retrieval order, ranking skipped")
        )
    elif info.status == "fallback":
        how = "retrieval order, the ranker's reply could not be used"
    else:
        how = "retrieval order only, no ranker"
    box = ""
    if result.box is not None:
        box = " in box [" + ", ".join(f"{v:g}" for v in result.box) + "]"
    lines = [f"Answer{where}{box}: {result.label} ({how})."]
    lines.append("Candidates (label: retrieval score):")
    lines += [f"{i}. {c.label}: {c.score:.3f}" for i, c in enumerate(result.candidates, 1)]
    return "\n".join(lines)


def _format_unknown(result: RecognitionResult, where: str, can_learn: bool) -> str:
    closest = ", ".join(f"{c.label} ({c.score:.3f})" for c in result.candidates[:3])
    box = ""
    if result.box is not None:
        box = " in box [" + ", ".join(f"{v:g}" for v in result.box) + "]"
    why = []
    rej = result.rejection
    if "below_threshold" in rej.reasons and rej.similarity is not None and rej.threshold:
        why.append(
            f"its best match scores {rej.similarity:.3f}, below the {rej.threshold:.3f} that "
            "images of that category reach"
        )
    if "ranker_none" in rej.reasons:
        why.append("the ranking model said none of the candidates fits")
    lines = [
        f"Unknown{where}{box}: not a category in memory; closest: {closest}.",
        "Why: " + "; ".join(why) + "." if why else "",
        "Candidates (label: retrieval score):",
        *(f"{i}. {c.label}: {c.score:.3f}" for i, c in enumerate(result.candidates, 1)),
        "Ask the user what it shows"
        + (
            "; once they name it, add_category_example(label=...) teaches the memory."
            if can_learn
            else "."
        ),
    ]
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------- recognize


class RecognizeInput(BaseModel):
    """Arguments of :class:`RecognizeTool`."""

    image: str | None = Field(
        default=None,
        description="The image: an id like 'img-3fa4c2d19b07' from the conversation. Omit it "
        "to use the latest image the user sent.",
    )
    k: int | None = Field(
        default=None, ge=1, le=50, description="How many candidate categories to return."
    )
    boxes: list[list[float]] | None = Field(
        default=None,
        description="Optional regions as [x1, y1, x2, y2] pixel boxes; each is recognized "
        "separately.",
    )

    @field_validator("boxes")
    @classmethod
    def _check_boxes(cls, boxes: list[list[float]] | None) -> list[list[float]] | None:
        if boxes is None:
            return None
        if len(boxes) > _MAX_BOXES:
            raise ValueError(f"at most {_MAX_BOXES} boxes per call")
        for box in boxes:
            if len(box) != 4:
                raise ValueError(f"a box needs 4 numbers [x1, y1, x2, y2], got {box}")
        return boxes


def explain_validation_error(error: Exception) -> str:
    """Tell the model which argument was wrong and why, so it can correct the call."""
    details = getattr(error, "errors", None)
    if not callable(details):
        return f"invalid tool arguments: {error}"
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item.get('loc', ())) or 'arguments'}: {item.get('msg')}"
        for item in details()
    )
    return f"invalid tool arguments ({problems}); fix them and call the tool again"


class _RecognizerTool(BaseTool):
    """Shared fields of the tools that work on images and the recognizer."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recognizer: Any = Field(description="A rar_agent.pipeline.Recognizer.", exclude=True)
    registry: ImageRegistry | None = Field(default=None, exclude=True)
    allowed_roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    handle_tool_error: bool | str | Any = True
    handle_validation_error: bool | str | Any = Field(
        default_factory=lambda: explain_validation_error
    )

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots(cls, roots: Any) -> tuple[Path, ...]:
        if isinstance(roots, str | os.PathLike):
            roots = [roots]
        return normalize_roots(roots or ())

    def _resolver(self) -> _ImageResolver:
        return _ImageResolver(
            registry=self.registry, allowed_roots=self.allowed_roots, allow_urls=self.allow_urls
        )


class RecognizeTool(_RecognizerTool):
    """Recognize what an image shows by retrieving candidate categories and ranking them.

    The model sees a short text (the answer plus the ranked candidates with their retrieval
    scores); the full :class:`~rar_agent.results.RecognitionResult` (as a dict) is the tool
    message's artifact. With ``boxes``, each region is recognized and the artifact is
    ``{"image": ..., "regions": [result, ...]}``.
    """

    name: str = "recognize_image"
    description: str = (
        "Recognize what an image shows (its category) by comparing it with a memory of known "
        "categories and ranking the candidates. Pass the image id from the conversation "
        "(e.g. 'img-3fa4c2d19b07'), or nothing for the latest image. Returns the answer and "
        "the ranked candidate categories with scores, or says the image is not a category "
        "in memory and lists the closest ones."
    )
    args_schema: type[BaseModel] = RecognizeInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    can_learn: bool = Field(
        default=False, description="An add_category_example tool is available (text hint)."
    )

    def _run(
        self,
        image: str | None = None,
        k: int | None = None,
        boxes: list[list[float]] | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        try:
            source = self._resolver().resolve(image)
            if boxes:
                results = self.recognizer.recognize_regions(
                    source.payload(), boxes, k=k, kind="auto", normalized=False
                )
                return _regions_output(results, source.name, self.can_learn)
            result = self.recognizer.recognize(source.payload(), k=k)
        except RarError as e:
            raise _tool_error(e) from e
        result.image = source.name
        text = format_result(result, image_name=source.name, can_learn=self.can_learn)
        return text, result.model_dump(mode="json")

    async def _arun(
        self,
        image: str | None = None,
        k: int | None = None,
        boxes: list[list[float]] | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        try:
            source = await asyncio.to_thread(self._resolver().resolve, image)
            if boxes:
                results = await self.recognizer.arecognize_regions(
                    source.payload(), boxes, k=k, kind="auto", normalized=False
                )
                return _regions_output(results, source.name, self.can_learn)
            result = await self.recognizer.arecognize(source.payload(), k=k)
        except RarError as e:
            raise _tool_error(e) from e
        result.image = source.name
        text = format_result(result, image_name=source.name, can_learn=self.can_learn)
        return text, result.model_dump(mode="json")


def _regions_output(
    results: Sequence[RecognitionResult], name: str, can_learn: bool
) -> tuple[str, dict[str, Any]]:
    texts = []
    for i, result in enumerate(results, 1):
        result.image = name
        texts.append(f"Region {i}: " + format_result(result, can_learn=can_learn))
    content = "\n".join(texts) if texts else f"No regions were recognized in {name}."
    return content, {"image": name, "regions": [r.model_dump(mode="json") for r in results]}


# ---------------------------------------------------------------------------- search


class CategorySearchInput(BaseModel):
    """Arguments of :class:`CategorySearchTool`."""

    query: str = Field(
        min_length=1,
        max_length=500,
        description="Words describing the categories to look for, e.g. 'heron'.",
    )
    k: int | None = Field(default=None, ge=1, le=50, description="How many categories.")


class CategorySearchTool(_RecognizerTool):
    """Find the categories in memory whose entries best match a text (text embedding)."""

    name: str = "search_categories"
    description: str = (
        "Search the memory of known categories by text, e.g. 'which herons do you know?'. "
        "Returns matching category names with similarity scores."
    )
    args_schema: type[BaseModel] = CategorySearchInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    def _run(
        self,
        query: str,
        k: int | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        try:
            candidates = self.recognizer.retriever.search_text(query, k=k)
        except RarError as e:
            raise _tool_error(e) from e
        if not candidates:
            return f"No categories in memory match {query!r}.", []
        lines = [f"Categories matching {query!r} (label: similarity):"]
        lines += [f"{i}. {c.label}: {c.score:.3f}" for i, c in enumerate(candidates, 1)]
        return "\n".join(lines), [c.model_dump(mode="json") for c in candidates]

    async def _arun(
        self,
        query: str,
        k: int | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        return await asyncio.to_thread(self._run, query, k)


# ---------------------------------------------------------------------------- learning


class AddCategoryInput(BaseModel):
    """Arguments of :class:`AddCategoryTool`."""

    label: str = Field(
        min_length=1, max_length=200, description="The category name to teach, e.g. 'grey heron'."
    )
    image: str | None = Field(
        default=None,
        description="The example image id from the conversation; omit for the latest image.",
    )


class AddCategoryTool(_RecognizerTool):
    """Teach the memory a category from an example image (a new category or a new example).

    Off unless ``enabled=True``: an agent that talks to untrusted people should not be able
    to rewrite what the memory knows. :func:`make_tools` sets it from ``allow_learning``.
    """

    name: str = "add_category_example"
    description: str = (
        "Teach the memory: store an image from the conversation as an example of a category "
        "(label), so it is recognized next time. Use only when the user asks to teach or "
        "correct a category."
    )
    args_schema: type[BaseModel] = AddCategoryInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    enabled: bool = False

    def _run(
        self,
        label: str,
        image: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        if not self.enabled:
            raise ToolException("learning is disabled for this agent: the memory is read-only")
        from rar_agent.images import load_image
        from rar_agent.memory import MemoryEntry, normalize_label

        start = time.perf_counter()
        try:
            clean = normalize_label(label)
            source = self._resolver().resolve(image)
            loaded = load_image(source.payload())
            memory, encoder = self.recognizer.memory, self.recognizer.encoder
            memory.bind_encoder(encoder.fingerprint, encoder.dim)
            # Same content hash as the memory builders (SHA-256 of the bytes): no duplicates.
            entry = MemoryEntry(
                clean, "image", source.name, loaded.sha256, extra={"added_by": self.name}
            )
            added = 0
            if not memory.existing_ids([entry.point_id]):
                memory.add_entries([entry], encoder.embed_images([loaded.image]))
                added = 1
            examples = memory.labels("image").get(clean, 0)
            if added and examples == 1:
                # A new category: an augmented view of its one example calibrates it.
                from rar_agent.memory.calibration import add_view_standins

                add_view_standins(memory, encoder, [(clean, loaded.image)])
            after = memory.count("image")
        except RarError as e:
            raise _tool_error(e) from e
        if not added:
            text = f"{source.name} was already stored as an example of {clean!r}."
        elif examples == 1:
            text = (
                f"Stored {source.name} as the first example of the new category {clean!r}; "
                "images like it are now recognized as it."
            )
        else:
            text = f"Stored {source.name} as an example of {clean!r} ({examples} examples now)."
        artifact = {
            "label": clean,
            "image": source.name,
            "added": added,
            "new_category": bool(added and examples == 1),
            "category_examples": examples,
            "image_entries": after,
            "seconds": round(time.perf_counter() - start, 3),
        }
        return text, artifact

    async def _arun(
        self,
        label: str,
        image: str | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, label, image)


# ---------------------------------------------------------------------------- factory


def make_tools(
    recognizer: Any,
    *,
    registry: ImageRegistry | None = None,
    allowed_roots: Sequence[str | os.PathLike[str]] = (),
    allow_urls: bool = False,
    allow_learning: bool = False,
    reject: str | float | None = None,
) -> list[BaseTool]:
    """The recognition tools over one recognizer, sharing one image registry.

    Args:
        recognizer: A :class:`~rar_agent.pipeline.Recognizer`.
        registry: Where conversation images live (a new one if ``None``).
        allowed_roots: Directories whose files the tools may read (none by default).
        allow_urls: Let the tools fetch public ``http(s)`` URLs (off by default; loopback,
            private and link-local addresses are always refused).
        allow_learning: Include :class:`AddCategoryTool` (off by default).
        reject: When an image is "not a category in memory" (``off``, ``auto`` or a
            threshold); ``None`` keeps the recognizer's own setting (``RAR_REJECT``).

    Returns:
        ``[RecognizeTool, CategorySearchTool]`` plus ``AddCategoryTool`` when learning is
        allowed.
    """
    if reject is not None:
        recognizer = recognizer.with_reject(reject)
    shared = {
        "recognizer": recognizer,
        "registry": registry if registry is not None else ImageRegistry(),
        "allowed_roots": normalize_roots(allowed_roots),  # ConfigError here, not in pydantic
        "allow_urls": allow_urls,
    }
    tools: list[BaseTool] = [
        RecognizeTool(can_learn=allow_learning, **shared),
        CategorySearchTool(**shared),
    ]
    if allow_learning:
        tools.append(AddCategoryTool(enabled=True, **shared))
    return tools
