"""The read-only tools: recognize an image (or its regions), search the categories by text."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from pydantic import BaseModel, Field, field_validator

from rar_agent.errors import RarError
from rar_agent.results import Candidate, RecognitionResult, RegionResults
from rar_agent.tools.base import ImageSource, RecognizerTool, ToolK, tool_error
from rar_agent.tools.provenance import serving_teacher

__all__ = [
    "CategorySearchInput",
    "CategorySearchTool",
    "RecognizeInput",
    "RECOGNIZE_WHAT",
    "RecognizeTool",
    "EXAMPLE_BLOCKS",
    "caveat_line",
    "example_blocks",
    "format_result",
]

_MAX_BOXES = 32

RECOGNIZE_WHAT = (
    "Recognize what an image shows (its category) by comparing it with a memory of known "
    "categories and ranking the candidates. Returns the answer and the ranked candidate "
    "categories with scores, or says the image is not a category in memory and lists the "
    "closest ones."
)
"""What the recognize tool does; :func:`~rar_agent.tools.make_tools` adds the image forms."""

# ---------------------------------------------------------------------------- formatting


def format_result(
    result: RecognitionResult,
    *,
    image_name: str | None = None,
    can_learn: bool = False,
    caveat: bool = True,
) -> str:
    """The short text a model sees: the answer, how it was ranked, the scored candidates.

    It formats the result's one explanation (``result.explanation``, decided by the
    pipeline) and works nothing out itself. An unknown image is reported plainly as "not a
    category in memory", with the closest categories; ``can_learn`` adds how to teach it.
    ``caveat``: end with the measured encoder prior's caveat where it judged the image
    (off where the caller says it once for several results).
    """
    from rar_agent.pipeline import explanation_of
    from rar_agent.regions import coords_text

    ex = explanation_of(result)
    where = f" for {image_name}" if image_name else ""
    if result.error:
        return f"Recognition failed{where}: {result.error}"
    if not result.candidates:
        return f"No categories found{where}: the memory returned nothing."
    box = ""
    if result.box is not None:
        box = f" in box {coords_text(result.box)}"
    listing = [
        "Candidates (label: retrieval score):",
        *(f"{i}. {c.label}: {c.score:.3f}" for i, c in enumerate(result.candidates, 1)),
    ]
    said = [caveat_line(ex.prior_caveat)] if caveat and ex.prior_caveat else []
    if not ex.unknown:
        return "\n".join([f"Answer{where}{box}: {ex.answer} ({ex.how}).", *listing, *said])
    closest = ", ".join(f"{c.label} ({c.score:.3f})" for c in result.candidates[:3])
    teach = "; once they name it, add_category_example(label=...) teaches the memory."
    if result.novel_group is not None:
        teach = (
            f"; once they name it, teach_unknown_group(group='{result.novel_group.id}', "
            "label=...) teaches the whole group (add_category_example this image alone)."
        )
    lines = [
        f"Unknown{where}{box}: not a category in memory; closest: {closest}.",
        "Why: " + "; ".join(ex.why_unknown) + "." if ex.why_unknown else "",
        "list_unknown_groups shows that group; ask once for all." if ex.novel_group else "",
        f"Ranking: {ex.how}.",
        *listing,
        *said,
        "Ask the user what it shows" + (teach if can_learn else "."),
    ]
    return "\n".join(line for line in lines if line)


def caveat_line(caveat: str) -> str:
    """The measured encoder prior's caveat (:attr:`Explanation.prior_caveat`) as a line of
    the tool text and the chat page."""
    return f"Open-set check: {caveat}, so its 'known' and 'unknown' are an estimate."


# ---------------------------------------------------------------------------- recognize


class RecognizeInput(BaseModel):
    """Arguments of :class:`RecognizeTool`."""

    image: str | None = Field(
        default=None,
        description="The image, in one of the forms the tool description lists.",
    )
    k: ToolK = Field(default=None, description="How many candidate categories to return.")
    boxes: list[list[float]] | None = Field(
        default=None,
        description="Optional regions as [x0, y0, x1, y1] pixel boxes (x0 < x1, y0 < y1); "
        "each is recognized separately.",
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
                raise ValueError(f"a box needs 4 numbers [x0, y0, x1, y1], got {box}")
        return boxes


class RecognizeTool(RecognizerTool):
    """Recognize what an image shows by retrieving candidate categories and ranking them.

    The model sees a short text (the answer plus the ranked candidates with their retrieval
    scores); the full :class:`~rar_agent.results.RecognitionResult` (as a dict) is the tool
    message's artifact. With ``boxes``, each region is recognized and the artifact is
    ``{"image": ..., "regions": [result, ...]}``.
    """

    name: str = "recognize_image"
    description: str = (
        RECOGNIZE_WHAT + " Pass the image id from the conversation (e.g. 'img-3fa4c2d19b07'), "
        "or nothing for the latest image."
    )
    args_schema: type[BaseModel] = RecognizeInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = RecognitionResult | RegionResults
    can_learn: bool = Field(
        default=False, description="An add_category_example tool is available (text hint)."
    )
    example_images: bool = Field(
        default=False,
        description="Return the closest stored examples of the top candidates as image "
        "content blocks after the text (for multimodal models; opt-in).",
    )

    def teaching_offered(self) -> bool:
        """Whether an unknown answer says how to teach it: an add_category_example tool
        exists and the caller being served may call it."""
        caller = serving_teacher()
        return self.can_learn and (caller is None or caller.may_teach)

    def _run(
        self,
        image: str | None = None,
        k: int | None = None,
        boxes: list[list[float]] | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[str | dict[str, Any]], dict[str, Any]]:
        source: ImageSource | None = None
        try:
            source = self.resolver().resolve(image, sent=f"sent inline to {self.name}")
            if boxes:
                results = self.recognizer.recognize_regions(
                    source.payload, boxes, k=k, normalized=False, name=source.name
                )
                source.settle()
                for region in results:
                    self.hide_others_teaching(region.candidates)
                refusal = _no_box_recognized(results, source.name)
                if refusal is not None:  # a ToolException: not caught below
                    raise tool_error(refusal, source)
                return _regions_output(results, source.name, self.teaching_offered())
            result = self.recognizer.recognize(source.payload, k=k, name=source.name)
        except RarError as e:
            if source is not None:
                source.settle(e)
            raise tool_error(e, source) from e
        source.settle()
        result.image = source.name
        self.hide_others_teaching(result.candidates)
        self.group_as_listed(result)
        text = format_result(result, image_name=source.name, can_learn=self.teaching_offered())
        blocks = example_blocks(result) if self.example_images else []
        return ([{"type": "text", "text": text}, *blocks] if blocks else text), result.model_dump(
            mode="json"
        )

    async def _arun(
        self,
        image: str | None = None,
        k: int | None = None,
        boxes: list[list[float]] | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str | list[str | dict[str, Any]], dict[str, Any]]:
        return await asyncio.to_thread(self._run, image, k, boxes)


EXAMPLE_BLOCKS = 3
"""Candidates whose closest stored example is returned as an image block (opt-in)."""


def example_blocks(result: RecognitionResult) -> list[dict[str, Any]]:
    """Content blocks showing why: for each of the top candidates with a stored thumbnail, a
    caption and its closest example as a LangChain standard image block."""
    blocks: list[dict[str, Any]] = []
    for cand in result.candidates[:EXAMPLE_BLOCKS]:
        example = next((e for e in cand.examples if e.thumbnail), None)
        if example is None or example.thumbnail is None:
            continue
        mime, _, data = example.thumbnail.removeprefix("data:").partition(";base64,")
        caption = f"Closest stored example of {cand.label} (similarity {example.score:.3f}):"
        blocks += [
            {"type": "text", "text": caption},
            {"type": "image", "base64": data, "mime_type": mime or "image/jpeg"},
        ]
    return blocks


def _no_box_recognized(results: Sequence[RecognitionResult], name: str) -> RarError | None:
    """The error of a call whose every box was unusable, explaining each box (the caller
    fixes them and calls again): it recognized nothing, so it is no answer. One good box makes
    it an answer, each bad box explained in its place (``None``)."""
    from rar_agent.regions import BoxError

    if not results or not all(r.error for r in results):
        return None
    errors = "; ".join(str(r.error) for r in results)
    if len(results) == 1:
        return BoxError(f"the box could not be recognized in {name}: {errors}")
    return BoxError(f"none of the {len(results)} boxes could be recognized in {name}: {errors}")


def _regions_output(
    results: Sequence[RecognitionResult], name: str, can_learn: bool
) -> tuple[str, dict[str, Any]]:
    from rar_agent.pipeline import explanation_of

    texts = []
    caveats = {explanation_of(r).prior_caveat for r in results} - {None}
    for i, result in enumerate(results, 1):
        result.image = name
        text = format_result(result, can_learn=can_learn, caveat=False)
        if result.error:  # it names the box
            texts.append(text)
            continue
        # named by its id (its position in `boxes`, from 0, unless given), as its errors are
        head = f"Box {result.box_id}" if result.box_id is not None else f"Region {i}"
        texts.append(f"{head}: {text}")
    texts += [caveat_line(c) for c in sorted(c for c in caveats if c)]  # once for all boxes
    content = "\n".join(texts) if texts else f"No regions were recognized in {name}."
    return content, RegionResults(image=name, regions=list(results)).model_dump(mode="json")


# ---------------------------------------------------------------------------- search


def _matching(query: str, candidates: Sequence[Candidate]) -> str:
    """The categories a word search found, as the model reads them. Where class names and
    example photos (taught, or a memory's own) both answered, they take turns, each scored
    on its own scale (:func:`rar_agent.retrieval.take_turns`): the lines say which is which."""
    both = {c.kind for c in candidates} >= {"image", "text"}
    note = "; class names and example photos take turns, each on its own scale" if both else ""
    lines = [f"Categories matching {query!r} (label: similarity{note}):"]
    for i, c in enumerate(candidates, 1):
        side = f" ({'example photos' if c.kind == 'image' else 'class name'})" if both else ""
        lines.append(f"{i}. {c.label}: {c.score:.3f}{side}")
    return "\n".join(lines)


class CategorySearchInput(BaseModel):
    """Arguments of :class:`CategorySearchTool`."""

    query: str = Field(
        min_length=1,
        max_length=500,
        description="Words describing the categories to look for, e.g. 'heron'.",
    )
    k: ToolK = Field(default=None, description="How many categories.")


class CategorySearchTool(RecognizerTool):
    """Find the categories in memory whose entries best match a text (text embedding)."""

    name: str = "search_categories"
    description: str = (
        "Search the memory of known categories by text, e.g. 'which herons do you know?'. "
        "Returns matching category names with similarity scores."
    )
    args_schema: type[BaseModel] = CategorySearchInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = list[Candidate]

    def _run(
        self,
        query: str,
        k: int | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        try:
            candidates = self.recognizer.retriever.search_text(query, k=k)
        except RarError as e:
            raise tool_error(e) from e
        if not candidates:
            return f"No categories in memory match {query!r}.", []
        self.hide_others_teaching(candidates)
        return _matching(query, candidates), [c.model_dump(mode="json") for c in candidates]

    async def _arun(
        self,
        query: str,
        k: int | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[str, list[dict[str, Any]]]:
        return await asyncio.to_thread(self._run, query, k)
